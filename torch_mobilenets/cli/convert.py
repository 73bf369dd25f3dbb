"""`torch-mobilenets convert SRC DST`: a Keras MobileNet weights file to a safetensors checkpoint,
and back (`--to keras`, a user's own model `--like` its original file), or every official file
(`--all-official OUT_DIR`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..keras_io import WriteBackUsageError, convert, describe_config, safetensors_to_keras
from .all_official import run_all
from .common import (
    ARCHITECTURE_OPTIONS,
    EXIT_BAD_INPUT,
    EXIT_USAGE,
    add_architecture_options,
    add_debug,
    fail,
    known_architecture,
    run_guarded,
)

EXIT_INCOMPLETE = 4  # --all-official: some checkpoints failed; the rest are done
FLAGS = ("force", "allow_nonfinite", "skip_extra_layers")  # store_true: False when not given
# Options that shape one SRC -> DST conversion, refused with --all-official.
CONVERSION_OPTIONS = (*ARCHITECTURE_OPTIONS, *FLAGS, "like", "config")

DESCRIPTION = """\
Convert a Keras MobileNet weights file to a PyTorch safetensors checkpoint.

SRC may be any Keras layout: legacy .h5 (the official ImageNet files, Keras 2 or 3), a legacy
full-model .h5, a Keras 3 .weights.h5, a .keras archive or a KerasCV preset folder. The
architecture is inferred from the file; the options fix what a file cannot tell (an unusual
width, say). The output records the architecture and the source file's sha256, and is written
atomically: on any error nothing is left at DST. A user's own model (a MobileNet base nested or
inlined, a custom head, preprocessing) converts from its .keras or full-model .h5, or from a
weights file with --config model.json (`model.to_json()`).

--to keras writes a checkpoint back to Keras: an official architecture as a legacy weights-only
.h5 that keras.applications loads; a user's own model --like ORIGINAL, the Keras file it came
from (with --config for a weights file), in that file's format: a .keras archive that
keras.models.load_model opens, a full-model .h5, or weights that model.load_weights takes,
everything but the weights kept as it was. A model whose graph is not ORIGINAL's is refused,
naming the layer.

--all-official OUT_DIR downloads, verifies and converts every official Keras ImageNet file,
with a parity report against Keras per checkpoint where Keras is installed. Resumable."""

EPILOG = """\
examples:
  torch-mobilenets convert mobilenet_1_0_224_tf.h5 mobilenet_1_0_224.safetensors
  torch-mobilenets convert odd.h5 odd.safetensors --family mobilenet_v2 --alpha 0.6
  torch-mobilenets convert my_model.keras my_model.safetensors
  torch-mobilenets convert weights.h5 my_model.safetensors --config model.json
  torch-mobilenets convert --to keras fine_tuned.safetensors fine_tuned.h5
  torch-mobilenets convert --to keras tuned.safetensors tuned.keras --like my_model.keras
  torch-mobilenets convert --to keras tuned.safetensors tuned.h5 --like weights.h5 \
      --config model.json
  torch-mobilenets convert --all-official official/ --only 'mobilenet_v3_*'

exit codes: 0 done, 1 internal error (rerun with --debug), 2 usage (bad options, DST not
.safetensors or a folder, an existing DST without --force, --to keras on a user's model without
--like, a DST name Keras would not open as ORIGINAL's format), 3 input that cannot be read or
does not fit, or an output folder that does not exist, 4 --all-official did not finish every
checkpoint, 130 interrupted (143 by SIGTERM)."""


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "convert",
        help="Keras weights file -> safetensors (and back)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    # Optional here only so that --all-official can go without them; checked in `run`.
    parser.add_argument(
        "src", type=Path, nargs="?", help="Keras weights file (--to keras: a checkpoint)"
    )
    parser.add_argument(
        "dst",
        type=Path,
        nargs="?",
        help="output .safetensors file (--to keras: .h5, or in the format of --like)",
    )
    add_architecture_options(parser)
    parser.add_argument("--force", action="store_true", help="overwrite an existing DST")
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        dest="allow_nonfinite",
        help="convert weights holding NaN or infinities instead of refusing them",
    )
    parser.add_argument(
        "--skip-extra-layers",
        action="store_true",
        dest="skip_extra_layers",
        help="convert a legacy .h5 holding layers after those of the model it fits (a "
        "MobileNetV3 _no_top.h5 from before October 2021 holds the top's Conv_2) without them, "
        "naming them, instead of refusing it",
    )
    parser.add_argument(
        "--to",
        choices=["safetensors", "keras"],
        default="safetensors",
        help="keras: SRC is a .safetensors checkpoint with its config, DST a "
        "legacy Keras .h5 that keras.applications loads, or a user's model in the format of "
        "--like",
    )
    parser.add_argument(
        "--like",
        type=Path,
        metavar="ORIGINAL",
        help="with --to keras: the Keras file the model came from (.keras, full-model .h5, or "
        "a weights file with --config); DST is written in its format, with its structure and "
        "config, and our weights; needed for a user's own model",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="MODEL_JSON",
        help="the model's JSON (model.to_json()) for a weights-only file: SRC's, or with "
        "--to keras, ORIGINAL's",
    )
    add_debug(parser)
    official = parser.add_argument_group("every official checkpoint")
    official.add_argument(
        "--all-official",
        type=Path,
        metavar="OUT_DIR",
        dest="all_official",
        help="download, verify and convert every official Keras ImageNet file "
        "into OUT_DIR (then SRC and DST are not given)",
    )
    official.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="with --all-official: only checkpoints whose name "
        "(mobilenet_v2_0.35_96_no_top) or file name matches this shell "
        "pattern; repeatable",
    )
    official.add_argument(
        "--parity",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --all-official: write parity reports against Keras "
        "(default: when Keras is installed)",
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    _check_usage(args)
    if args.all_official is not None:
        # Every write is atomic: an interrupted run leaves no partial file.
        return run_guarded(
            args,
            _all_official,
            {ValueError: EXIT_USAGE},  # no match for --only
            "interrupted; run again to resume",
        )
    problem = _usage_problem(args)
    if problem:
        return fail(args, problem, EXIT_USAGE)
    if not args.dst.parent.is_dir():  # checked before the work, not after it
        return fail(
            args,
            f"{args.dst}: the output directory {args.dst.parent} does not exist",
            EXIT_BAD_INPUT,
        )
    # ValueError: WeightsFileError and builder argument errors; OSError: writing the output.
    return run_guarded(
        args,
        _convert,
        {WriteBackUsageError: EXIT_USAGE, ValueError: EXIT_BAD_INPUT, OSError: EXIT_BAD_INPUT},
        f"interrupted; nothing was written to {args.dst}",
    )


def _check_usage(args: argparse.Namespace) -> None:
    parser = args.parser
    if args.all_official is None:
        missing = [name for name in ("src", "dst") if getattr(args, name) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
        if args.only or args.parity is not None:
            parser.error("--only and --parity go with --all-official")
        if args.like is not None and args.to != "keras":
            parser.error("--like goes with --to keras")
    else:
        given = [name for name in ("src", "dst") if getattr(args, name) is not None]
        given += [
            f"--{name.replace('_', '-')}"
            for name in CONVERSION_OPTIONS
            if (getattr(args, name) if name in FLAGS else getattr(args, name) is not None)
        ]
        if given:
            parser.error(f"--all-official OUT_DIR takes no {', '.join(given)}")


def _usage_problem(args: argparse.Namespace):
    suffix = ".h5" if args.to == "keras" else ".safetensors"
    # With --like, DST's name is checked against ORIGINAL's format once that is read.
    if args.dst.suffix != suffix and args.like is None:
        hint = (
            " (a user's own model goes back --like ORIGINAL, in ORIGINAL's format)"
            if args.to == "keras"
            else ""
        )
        return f"DST must end in {suffix}, got {args.dst}{hint}"
    if args.dst.is_dir():
        return f"DST {args.dst} is a folder; name the {suffix} file to write"
    if args.dst.exists() and not args.force:
        return f"{args.dst} exists; pass --force to overwrite it"
    return None


def _convert(args: argparse.Namespace) -> int:
    try:
        if args.to == "keras":
            config = safetensors_to_keras(args.src, args.dst, like=args.like, config=args.config)
            like = f", like {args.like}" if args.like is not None else ""
            print(f"{args.src} -> {args.dst}: Keras {describe_config(config)}{like}")
            return 0
        config = convert(
            args.src,
            args.dst,
            allow_nonfinite=args.allow_nonfinite,
            skip_extra_layers=args.skip_extra_layers,
            model_config_json=args.config,
            **known_architecture(args),
        )
    except OSError as error:  # reading errors are WeightsFileErrors: this is the output
        raise OSError(f"{args.dst}: cannot write ({error})") from error
    print(f"{args.src} -> {args.dst}: {describe_config(config)}")
    return 0


def _all_official(args: argparse.Namespace) -> int:
    failures = run_all(
        args.all_official,
        only=args.only,
        parity=args.parity,
        debug=args.debug,
        log=lambda message: print(message, flush=True),
    )
    return EXIT_INCOMPLETE if failures else 0
