"""`torch-mobilenets convert --all-official OUT_DIR`: every official Keras ImageNet checkpoint,
downloaded, verified, converted and, where Keras is installed, compared with Keras.

    OUT_DIR/keras/<official name>.h5            the verified downloads (+ sha256_seen.json for
                                                the files Keras publishes no checksum for)
    OUT_DIR/<official name>.safetensors         the conversions
    OUT_DIR/parity/<official name>.json         per checkpoint: max |logit difference| against
                                                Keras loading the same .h5
    OUT_DIR/parity.md                           all reports as one table

Resumable: a checkpoint whose conversion (and report) exists is skipped; a download cut off by
an interrupted run is discarded and fetched again from the start.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
from pathlib import Path

from ..keras_io import sha256
from ..keras_io.atomic import atomic_write_text
from ..keras_io.parity import PARITY_TOLERANCE
from ..pretrained.download import converted_checkpoint
from ..pretrained.registry import Checkpoint, list_weights
from . import parity as parity_check

IMAGES = 4


def select(only=None) -> list:
    """The registry's checkpoints whose name (`mobilenet_v2_0.35_96_no_top`) or file name
    matches one of the `only` shell patterns; all of them without patterns."""
    return [
        c
        for c in list_weights()
        if not only
        or any(fnmatch.fnmatchcase(c.name, p) or fnmatch.fnmatchcase(c.file_name, p) for p in only)
    ]


def run_all(out_dir, only=None, parity=None, progress=None, debug=False, log=print) -> int:
    """Fetch, convert and (parity: True, False, or None for "if Keras is installed") compare every
    selected checkpoint; returns the number that failed. Messages go to `log`."""
    out_dir = Path(out_dir)
    checkpoints = select(only)
    if not checkpoints:
        raise ValueError(f"no official checkpoint matches {only}")
    if parity is None:
        parity = importlib.util.find_spec("keras") is not None
        if not parity:
            log("Keras is not installed: converting without parity reports")
    failures = 0
    for i, checkpoint in enumerate(checkpoints, start=1):
        step = f"[{i}/{len(checkpoints)}] {checkpoint.name}"
        converted = out_dir / checkpoint.converted_name
        report = out_dir / "parity" / (Path(checkpoint.file_name).stem + ".json")
        if converted.exists() and (not parity or report.exists()):
            log(f"{step}: done already, skipped")
            continue
        try:
            converted_checkpoint(checkpoint, out_dir, out_dir / "keras", progress)
            message = f"{step}: converted -> {converted}"
            if parity:
                result = parity_report(
                    checkpoint, out_dir / "keras" / checkpoint.file_name, converted
                )
                _write_json(report, result)
                message += (
                    f"; max |difference| vs Keras {result['max_abs_difference']:.2e} "
                    f"(relative {result['relative_difference']:.2e})"
                )
                if not result["within_tolerance"]:
                    failures += 1
                    message += f", ABOVE the tolerance {PARITY_TOLERANCE}"
            log(message)
        except (OSError, ValueError) as error:  # download, checksum, conversion
            if debug:
                raise
            failures += 1
            log(f"{step}: FAILED: {error}")
    if parity:
        summary = write_summary(out_dir)
        log(f"parity reports: {summary}")
    log(
        f"{len(checkpoints) - failures} of {len(checkpoints)} checkpoints done"
        + (f", {failures} failed (run again to retry)" if failures else "")
    )
    return failures


def parity_report(checkpoint: Checkpoint, keras_file: Path, converted: Path) -> dict:
    """Keras loading `keras_file` and PyTorch loading `converted`, on the same seeded images at
    the checkpoint's size: logits with the top, the final feature map without."""
    report = parity_check.check(
        keras_file,
        known=checkpoint.architecture(),
        input_shape=checkpoint.builder_kwargs().get("input_shape"),
        size=(checkpoint.rows, checkpoint.rows),
        seeded=IMAGES,
        tolerance=PARITY_TOLERANCE,
        torch_weights=converted,
    )
    output = report["outputs"][0]
    result = {
        "checkpoint": checkpoint.name,
        "file": checkpoint.file_name,
        "url": checkpoint.url,
        "sha256": sha256(keras_file),
        "checksum": f"{checkpoint.hash_algorithm or 'none'} ({checkpoint.hash_status})",
        "compared": "logits" if checkpoint.include_top else "final feature map",
        "input": report["inputs"]["shape"],
        "max_abs_difference": output["max_abs_difference"],
        "relative_difference": output["relative_difference"],
        "within_tolerance": report["within_tolerance"],
        "tolerance": PARITY_TOLERANCE,
        "keras_version": report["versions"]["keras"],
        "torch_version": report["versions"]["torch"],
    }
    if "top1_agreement" in output:
        result["top1_agreement"] = output["top1_agreement"]
    return result


def write_summary(out_dir: Path) -> Path:
    """OUT_DIR/parity.md from every report in OUT_DIR/parity/."""
    rows = [json.loads(p.read_text()) for p in sorted((out_dir / "parity").glob("*.json"))]
    lines = [
        "# Parity of the converted official checkpoints against Keras",
        "",
        "| checkpoint | compared | max abs difference | relative | top-1 agreement | "
        "checksum | within tolerance |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        agreement = f"{r['top1_agreement']:.0%}" if "top1_agreement" in r else "-"
        lines.append(
            f"| {r['checkpoint']} | {r['compared']} | {r['max_abs_difference']:.2e} | "
            f"{r['relative_difference']:.2e} | {agreement} | {r['checksum']} | "
            f"{'yes' if r['within_tolerance'] else 'NO'} |"
        )
    summary = out_dir / "parity.md"
    atomic_write_text(summary, "\n".join(lines) + "\n")
    return summary


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
