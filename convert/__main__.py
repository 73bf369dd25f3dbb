"""python -m convert SRC DST.safetensors: a Keras MobileNet weights file to a PyTorch checkpoint.

SRC may be any Keras layout: legacy `.h5` (the official ImageNet files, Keras 2 or 3), a legacy
full-model `.h5`, a Keras 3 `.weights.h5` or a `.keras` archive. The architecture is inferred
from the file; the options fix what a file cannot tell (an unusual width, say).

python -m convert --all-official OUT_DIR [--only PATTERN ...]: download, verify and convert every
official Keras ImageNet checkpoint (see convert/all_official.py), with a parity report against
Keras per checkpoint where Keras is installed. Resumable: run it again to continue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INCOMPLETE = 4  # --all-official: some checkpoints failed; the rest are done
# Options that shape one SRC -> DST conversion.
CONVERSION_OPTIONS = ("family", "alpha", "depth_multiplier", "minimalistic", "include_top",
                      "classes", "force")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m convert", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 success, 2 usage error, 3 unreadable or unfitting input, "
               "4 (--all-official) some checkpoints failed.")
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
                  if (args.force if name == "force" else getattr(args, name) is not None)]
        if given:
            parser.error(f"--all-official OUT_DIR takes no {', '.join(given)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.all_official is not None:
        return all_official(args)
    known = {k: v for k, v in vars(args).items()
             if k in CONVERSION_OPTIONS and k != "force" and v is not None}
    if args.dst.suffix != ".safetensors":
        print(f"convert: error: DST must end in .safetensors, got {args.dst}", file=sys.stderr)
        return EXIT_USAGE
    if args.dst.exists() and not args.force:
        print(f"convert: error: {args.dst} exists; pass --force to overwrite it", file=sys.stderr)
        return EXIT_USAGE

    from torch_mobilenets.conversion import convert, describe_config

    try:
        config = convert(args.src, args.dst, **known)
    except ValueError as error:  # WeightsFileError and builder argument errors
        if args.debug:
            raise
        print(f"convert: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
        print(f"convert: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_INCOMPLETE if failures else 0


if __name__ == "__main__":
    sys.exit(main())
