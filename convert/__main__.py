"""python -m convert SRC DST.safetensors: a Keras MobileNet weights file to a PyTorch checkpoint.

SRC may be any Keras layout: legacy `.h5` (the official ImageNet files, Keras 2 or 3), a legacy
full-model `.h5`, a Keras 3 `.weights.h5` or a `.keras` archive. The architecture is inferred
from the file; the options fix what a file cannot tell (an unusual width, say).

python -m convert --all-official OUT_DIR [--only PATTERN ...]: download, verify and convert every
official Keras ImageNet checkpoint (see convert/all_official.py), with a parity report against
Keras per checkpoint where Keras is installed. Resumable: run it again to continue.

Errors are one line on stderr (`--debug` for the traceback) and leave no output file: exit 2 for
usage errors (bad options, DST not `.safetensors` or a folder, an existing DST without
`--force`), 3 for input that cannot be read or does not fit (see torch_mobilenets/keras_files.py
for what is refused) or an output that cannot be written (no such folder), 4 when
`--all-official` did not finish every checkpoint, 1 for an internal error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INTERNAL = 1  # a bug: the one-line message asks for --debug
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INCOMPLETE = 4  # --all-official: some checkpoints failed; the rest are done
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
# Options that shape one SRC -> DST conversion.
CONVERSION_OPTIONS = ("family", "alpha", "depth_multiplier", "minimalistic", "include_top",
                      "classes", "force", "allow_nonfinite")
FLAGS = ("force", "allow_nonfinite")  # store_true options: False when not given


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error here (exit code 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


def _one_line(text) -> str:
    # Not keras_files.one_line: importing the package loads torch, too slow for a usage error.
    return " ".join(str(text).split())


def _fail(message, code: int) -> int:
    print(f"convert: error: {_one_line(message)}", file=sys.stderr)
    return code


def parse_args(argv):
    parser = _Parser(
        prog="python -m convert", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 success, 1 internal error, 2 usage error, 3 unreadable or unfitting "
               "input or unwritable output, 4 (--all-official) some checkpoints failed, "
               "130 interrupted.")
    # Optional here only so that --all-official can go without them; checked below.
    parser.add_argument("src", type=Path, nargs="?", help="Keras weights file")
    parser.add_argument("dst", type=Path, nargs="?", help="output .safetensors file")
    parser.add_argument("--family", choices=["mobilenet", "mobilenet_v2", "mobilenet_v3_small",
                                             "mobilenet_v3_large", "mobilenet_v3_backbone"])
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--depth-multiplier", type=int, dest="depth_multiplier")
    parser.add_argument("--minimalistic", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--include-top", action=argparse.BooleanOptionalAction, default=None,
                        dest="include_top")
    parser.add_argument("--classes", type=int)
    parser.add_argument("--force", action="store_true", help="overwrite an existing DST")
    parser.add_argument("--allow-nonfinite", action="store_true", dest="allow_nonfinite",
                        help="convert weights holding NaN or infinities instead of refusing them")
    parser.add_argument("--to", choices=["safetensors", "keras"], default="safetensors",
                        help="keras: SRC is a .safetensors checkpoint with its config, DST a "
                             "legacy Keras .h5 that keras.applications loads")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    official = parser.add_argument_group("every official checkpoint")
    official.add_argument("--all-official", type=Path, metavar="OUT_DIR", dest="all_official",
                          help="download, verify and convert every official Keras ImageNet file "
                               "into OUT_DIR (then SRC and DST are not given)")
    official.add_argument("--only", action="append", metavar="PATTERN",
                          help="with --all-official: only checkpoints whose name "
                               "(mobilenet_v2_0.35_96_no_top) or file name matches this shell "
                               "pattern; repeatable")
    official.add_argument("--parity", action=argparse.BooleanOptionalAction, default=None,
                          help="with --all-official: write parity reports against Keras "
                               "(default: when Keras is installed)")
    args = parser.parse_args(argv)
    if args.all_official is None:
        missing = [name for name in ("src", "dst") if getattr(args, name) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
        if args.only or args.parity is not None:
            parser.error("--only and --parity go with --all-official")
    else:
        given = [name for name in ("src", "dst") if getattr(args, name) is not None]
        given += [f"--{name.replace('_', '-')}" for name in CONVERSION_OPTIONS
                  if (getattr(args, name) if name in FLAGS else getattr(args, name) is not None)]
        if given:
            parser.error(f"--all-official OUT_DIR takes no {', '.join(given)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return all_official(args) if args.all_official is not None else convert_one(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        # Every write is atomic: an interrupted run leaves no partial file.
        return _fail("interrupted; " + ("run again to resume" if args.all_official is not None
                                        else f"nothing was written to {args.dst}"),
                     EXIT_INTERRUPTED)


def convert_one(args) -> int:
    problem = _usage_problem(args)
    if problem:
        return _fail(problem, EXIT_USAGE)
    if not args.dst.parent.is_dir():  # checked before the work, not after it
        return _fail(f"{args.dst}: the output directory {args.dst.parent} does not exist",
                     EXIT_BAD_INPUT)
    try:
        return _convert(args)
    except ValueError as error:  # WeightsFileError and builder argument errors
        if args.debug:
            raise
        return _fail(error, EXIT_BAD_INPUT)
    except OSError as error:  # writing the output: permissions, a full disk
        if args.debug:
            raise
        return _fail(f"{args.dst}: cannot write ({error})", EXIT_BAD_INPUT)
    except Exception as error:  # a bug; still no traceback unless asked for
        if args.debug:
            raise
        return _fail(f"internal error ({type(error).__name__}: {error}); rerun with --debug for "
                     "the traceback", EXIT_INTERNAL)


def _usage_problem(args):
    suffix = ".h5" if args.to == "keras" else ".safetensors"
    if args.dst.suffix != suffix:
        return f"DST must end in {suffix}, got {args.dst}"
    if args.dst.is_dir():
        return f"DST {args.dst} is a folder; name the .safetensors file to write"
    if args.dst.exists() and not args.force:
        return f"{args.dst} exists; pass --force to overwrite it"
    return None


def _convert(args) -> int:
    from torch_mobilenets.conversion import convert, describe_config

    if args.to == "keras":
        from torch_mobilenets.saving import safetensors_to_keras

        config = safetensors_to_keras(args.src, args.dst)
        print(f"{args.src} -> {args.dst}: Keras {describe_config(config)}")
        return 0
    known = {k: v for k, v in vars(args).items()
             if k in CONVERSION_OPTIONS and k not in FLAGS and v is not None}
    config = convert(args.src, args.dst, allow_nonfinite=args.allow_nonfinite, **known)
    print(f"{args.src} -> {args.dst}: {describe_config(config)}")
    return 0


def all_official(args) -> int:
    from convert.all_official import run_all

    try:
        failures = run_all(args.all_official, only=args.only, parity=args.parity,
                           debug=args.debug, log=lambda message: print(message, flush=True))
    except ValueError as error:  # no checkpoint matches --only
        if args.debug:
            raise
        return _fail(error, EXIT_USAGE)
    return EXIT_INCOMPLETE if failures else 0


if __name__ == "__main__":
    sys.exit(main())
