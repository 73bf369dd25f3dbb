"""`torch-mobilenets weights`: the official Keras ImageNet checkpoints, as a table or JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..pretrained.download import cache_dir
from ..pretrained.registry import HASH_STATUS_NOTES, Checkpoint, list_weights
from .common import add_debug, run_guarded

DESCRIPTION = """\
List the official Keras ImageNet checkpoints that weights="imagenet" can load: one row per file,
with its published top-1 and MACs, exact parameter count, checksum (and how far it can be
trusted), and whether it is in the cache already."""

EPILOG = (
    """\
examples:
  torch-mobilenets weights
  torch-mobilenets weights --family mobilenet_v3_small --no-include-top
  torch-mobilenets weights --json | jq '.[] | select(.top1 > 70) | .url'

checksums: """
    + "; ".join(f"{status}: {note}" for status, note in HASH_STATUS_NOTES.items())
    + """

exit codes: 0 done, 1 internal error, 2 usage."""
)

COLUMNS = ("name", "top-1 %", "MACs (M)", "parameters", "checksum", "cached", "file")


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "weights", help="the official checkpoints", description=DESCRIPTION, epilog=EPILOG
    )
    families = list(dict.fromkeys(c.family for c in list_weights()))
    parser.add_argument("--family", choices=families, help="only this family")
    parser.add_argument(
        "--include-top",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="include_top",
        help="only files with (or without) the classifier",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    add_debug(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_guarded(args, _list, {})


def _list(args: argparse.Namespace) -> int:
    checkpoints = list_weights(args.family, args.include_top)
    cache = cache_dir()
    if args.json:
        print(
            json.dumps(
                [_record(c, (cache / c.converted_name).exists()) for c in checkpoints], indent=1
            )
        )
        return 0
    rows = [
        (
            c.name,
            f"{c.top1}",
            f"{c.macs_m}",
            f"{c.parameters:,}",
            f"{c.hash_algorithm or 'none'}, {c.hash_status}",
            "yes" if (cache / c.converted_name).exists() else "no",
            c.file_name,
        )
        for c in checkpoints
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for row in [COLUMNS, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\n{len(rows)} files; cache: {cache}")
    return 0


def _record(checkpoint: Checkpoint, cached: bool) -> dict:
    return {
        **dataclasses.asdict(checkpoint),
        "name": checkpoint.name,
        "url": checkpoint.url,
        "parameters": checkpoint.parameters,
        "cached": cached,
    }
