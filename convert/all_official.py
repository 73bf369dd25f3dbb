"""python -m convert --all-official OUT_DIR: every official Keras ImageNet checkpoint, downloaded,
verified, converted and, where Keras is installed, compared with Keras.

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

import torch  # noqa: F401  (torch and torch._dynamo before TensorFlow)
import torch._dynamo  # noqa: F401

import fnmatch
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Relative to max(1, max |Keras output|), as the parity tests measure it.
PARITY_TOLERANCE = 1e-4
IMAGES = 4


def select(only=None) -> list:
    """The registry's checkpoints whose name (`mobilenet_v2_0.35_96_no_top`) or file name
    matches one of the `only` shell patterns; all of them without patterns."""
    from torch_mobilenets.weights import list_weights

    return [c for c in list_weights()
            if not only or any(fnmatch.fnmatchcase(c.name, p) or fnmatch.fnmatchcase(c.file_name, p)
                               for p in only)]


def run_all(out_dir, only=None, parity=None, progress=None, debug=False, log=print) -> int:
    """Fetch, convert and (parity: True, False, or None for "if Keras is installed") compare every
    selected checkpoint; returns the number that failed. Messages go to `log`."""
    from torch_mobilenets.download import converted_checkpoint

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
                result = parity_report(checkpoint, out_dir / "keras" / checkpoint.file_name,
                                       converted)
                _write_json(report, result)
                message += (f"; max |difference| vs Keras {result['max_abs_difference']:.2e} "
                            f"(relative {result['relative_difference']:.2e})")
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
    log(f"{len(checkpoints) - failures} of {len(checkpoints)} checkpoints done"
        + (f", {failures} failed (run again to retry)" if failures else ""))
    return failures


def images(size: int, n: int = IMAGES, seed: int = 0) -> np.ndarray:
    """Seeded smooth NHWC pixels in [0, 255]: image-like enough to exercise every channel."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, size // 16 + 1, size // 16 + 1, 3))
    smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    return np.clip(np.round(smooth + rng.normal(0, 16, smooth.shape)), 0, 255).astype(np.float32)


def parity_report(checkpoint, keras_file: Path, converted: Path) -> dict:
    """Keras loading `keras_file` and PyTorch loading `converted`, on the same images at the
    checkpoint's size: logits with the top, the final feature map without."""
    import keras

    import torch_mobilenets as tm
    from convert.keras_reference import FAMILIES as KERAS_BUILDERS
    from torch_mobilenets.conversion import sha256

    kwargs = checkpoint.builder_kwargs()
    if checkpoint.include_top:
        kwargs["classifier_activation"] = None  # compare logits, not softmax
    keras_kwargs = dict(kwargs)
    if "input_shape" in kwargs:
        channels, height, width = kwargs["input_shape"]
        keras_kwargs["input_shape"] = (height, width, channels)
    keras_model = KERAS_BUILDERS[checkpoint.family](weights=None, **keras_kwargs)
    keras_model.load_weights(str(keras_file))
    torch_model = tm.FAMILIES[checkpoint.family](weights=str(converted), **kwargs).eval()

    x = images(checkpoint.rows)
    keras_input, torch_input = x.copy(), torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    if checkpoint.family in ("mobilenet", "mobilenet_v2"):  # V3 models rescale themselves
        keras_input = keras.applications.mobilenet.preprocess_input(keras_input)
        torch_input = tm.mobilenet_v1.preprocess_input(torch_input)
    expected = np.asarray(keras.ops.convert_to_numpy(keras_model(keras_input, training=False)))
    with torch.no_grad():
        got = torch_model(torch_input).numpy()
    if got.ndim == 4:
        got = got.transpose(0, 2, 3, 1)
    difference = float(np.abs(got - expected).max())
    relative = difference / max(1.0, float(np.abs(expected).max()))
    result = {
        "checkpoint": checkpoint.name,
        "file": checkpoint.file_name,
        "url": checkpoint.url,
        "sha256": sha256(keras_file),
        "checksum": f"{checkpoint.hash_algorithm or 'none'} ({checkpoint.hash_status})",
        "compared": "logits" if checkpoint.include_top else "final feature map",
        "input": [IMAGES, checkpoint.rows, checkpoint.rows, 3],
        "max_abs_difference": difference,
        "relative_difference": relative,
        "within_tolerance": relative <= PARITY_TOLERANCE,
        "tolerance": PARITY_TOLERANCE,
        "keras_version": keras.__version__,
        "torch_version": torch.__version__,
    }
    if checkpoint.include_top:
        result["top1_agreement"] = float((got.argmax(1) == expected.argmax(1)).mean())
    return result


def write_summary(out_dir: Path) -> Path:
    """OUT_DIR/parity.md from every report in OUT_DIR/parity/."""
    rows = [json.loads(p.read_text()) for p in sorted((out_dir / "parity").glob("*.json"))]
    lines = ["# Parity of the converted official checkpoints against Keras", "",
             "| checkpoint | compared | max abs difference | relative | top-1 agreement | "
             "checksum | within tolerance |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        agreement = f"{r['top1_agreement']:.0%}" if "top1_agreement" in r else "-"
        lines.append(f"| {r['checkpoint']} | {r['compared']} | {r['max_abs_difference']:.2e} | "
                     f"{r['relative_difference']:.2e} | {agreement} | {r['checksum']} | "
                     f"{'yes' if r['within_tolerance'] else 'NO'} |")
    summary = out_dir / "parity.md"
    _atomic_write_text(summary, "\n".join(lines) + "\n")
    return summary


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

