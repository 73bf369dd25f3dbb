"""What every subcommand shares: argparse with one-line usage errors, the exit codes, and running
a command so that any failure is one line on stderr (`--debug` for the traceback)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

from ..keras_io.pairing import ARCHITECTURE_KEYS
from ..models import FAMILIES

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: the one-line message asks for --debug
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
EXIT_TERMINATED = 143  # as a shell reports SIGTERM


class Terminated(BaseException):
    """SIGTERM, as an exception (see `sigterm_as_exception`)."""


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated, so that the temporary files of atomic writes
    and downloads are removed as on Ctrl-C: Python's default SIGTERM ends the process without
    running any cleanup. Only where SIGTERM has its default action, in the main thread (a program
    calling `main` keeps its own handler)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def one_line(text) -> str:
    return " ".join(str(text).split())


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error here (exit code 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


# An error line stays readable: a library's message may quote a whole model config (100 KB).
MAX_MESSAGE = 1200


def fail(args: argparse.Namespace, message, code: int) -> int:
    line = one_line(message)
    if len(line) > MAX_MESSAGE and not getattr(args, "debug", False):
        line = f"{line[: MAX_MESSAGE - 60]}... ({len(line)} characters; --debug shows them all)"
    print(f"{args.prog}: error: {line}", file=sys.stderr)
    return code


@contextlib.contextmanager
def warnings_on_one_line(prog: str) -> Iterator[None]:
    """Within the block, each warning is one line on stderr, `PROG: warning: ...`, like the
    errors, instead of Python's two lines with the source line that warned."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {one_line(message)}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def run_guarded(
    args: argparse.Namespace,
    command: Callable[[argparse.Namespace], int],
    expected: dict,
    interrupted: str = "interrupted",
    internal: int = EXIT_INTERNAL,
) -> int:
    """`command(args)`, with each exception of a class in `expected` (class -> exit code, the
    first match wins) turned into one line on stderr and that code; anything else is an
    internal error (exit code `internal`), and an interrupt exits 130 (SIGINT) or 143 (SIGTERM)
    saying `interrupted`. `--debug` re-raises instead."""
    try:
        return command(args)
    except (KeyboardInterrupt, Terminated) as interruption:
        if args.debug:
            raise
        if isinstance(interruption, Terminated):
            return fail(args, f"{interrupted} (SIGTERM)", EXIT_TERMINATED)
        return fail(args, interrupted, EXIT_INTERRUPTED)
    except Exception as error:
        if args.debug:
            raise
        for kind, code in expected.items():
            if isinstance(error, kind):
                return fail(args, error, code)
        return fail(
            args,
            f"internal error ({type(error).__name__}: {error}); rerun with "
            "--debug for the traceback",
            internal,
        )


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def add_architecture_options(parser: argparse.ArgumentParser) -> None:
    """What a weights file cannot always tell about its architecture."""
    group = parser.add_argument_group("architecture (inferred from the file unless given)")
    group.add_argument("--family", choices=list(FAMILIES))
    group.add_argument("--alpha", type=float)
    group.add_argument("--depth-multiplier", type=int, dest="depth_multiplier")
    group.add_argument("--minimalistic", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument(
        "--include-top", action=argparse.BooleanOptionalAction, default=None, dest="include_top"
    )
    group.add_argument("--classes", type=int)


# What a file may leave open: the discrete configuration, not KerasCV's per-block lists.
ARCHITECTURE_OPTIONS = tuple(k for k in ARCHITECTURE_KEYS if not k.startswith("stackwise_"))


def known_architecture(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ARCHITECTURE_OPTIONS if getattr(args, k) is not None}
