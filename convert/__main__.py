"""python -m convert SRC DST.safetensors: a Keras MobileNet weights file to a PyTorch checkpoint.

SRC may be any Keras layout: legacy `.h5` (the official ImageNet files, Keras 2 or 3), a legacy
full-model `.h5`, a Keras 3 `.weights.h5` or a `.keras` archive. The architecture is inferred
from the file; the options fix what a file cannot tell (an unusual width, say).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_BAD_INPUT = 3


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m convert", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 success, 2 usage error, 3 unreadable or unfitting input.")
    parser.add_argument("src", type=Path, help="Keras weights file")
    parser.add_argument("dst", type=Path, help="output .safetensors file")
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
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    known = {k: v for k, v in vars(args).items()
             if k not in ("src", "dst", "force", "debug") and v is not None}
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


if __name__ == "__main__":
    sys.exit(main())
