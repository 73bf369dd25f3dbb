"""The command line: `torch-mobilenets` (or `python -m torch_mobilenets`) and its subcommands.

Each subcommand module registers its arguments (`add_parser`) and the function that runs it;
every error is one line on stderr with a documented exit code (`common`). SIGTERM is turned into
an exception while a command runs, so that it leaves no temporary file behind, as Ctrl-C.
"""

from __future__ import annotations

import sys

from . import convert, parity, predict, weights
from .common import Parser, sigterm_as_exception, warnings_on_one_line

SUBCOMMANDS = (convert, predict, weights, parity)

DESCRIPTION = """\
Keras' MobileNets in PyTorch: convert Keras weight files, predict, list the official
checkpoints, and check PyTorch against Keras on your own file."""

EPILOG = """\
examples:
  torch-mobilenets convert mobilenet_1_0_224_tf.h5 mobilenet_1_0_224.safetensors
  torch-mobilenets predict elephant.jpg --model mobilenet_v3_large
  torch-mobilenets weights --family mobilenet_v2
  torch-mobilenets parity my_model.keras cat.jpg

`torch-mobilenets COMMAND --help` describes each command and its exit codes."""


def main(argv: list | None = None, prog: str = "torch-mobilenets") -> int:
    parser = Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    subcommands = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", required=True, parser_class=Parser
    )
    for command in SUBCOMMANDS:
        command.add_parser(subcommands)
    args = parser.parse_args(argv)
    args.prog = f"{prog} {args.command}"
    with sigterm_as_exception(), warnings_on_one_line(args.prog):
        return args.run(args)


def console() -> None:
    """The `torch-mobilenets` console script."""
    sys.exit(main())
