"""Conversion, for benchmarks/run.py: converting an official-size file and loading its
safetensors, with the converter's peak memory."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.records import ROOT


def conversion_record(workdir):
    """Convert an official-size V2 file (alpha 1.0, 224, official layout) in a fresh process,
    reporting wall time and peak memory; then load the safetensors and time that."""
    from convert import keras_reference as kr

    keras_model = kr.build_keras("mobilenet_v2", input_shape=(224, 224, 3))
    src = kr.write_keras_file(
        keras_model, workdir / "conversion", "keras2_h5", family="mobilenet_v2"
    )
    dst = workdir / "conversion" / "v2.safetensors"
    script = (
        "import time\n"
        "def vm(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) / 1024\n"
        "from torch_mobilenets.keras_io import convert, load_weights\n"
        "before = vm('VmRSS')\n"
        "start = time.perf_counter()\n"
        f"convert({str(src)!r}, {str(dst)!r})\n"
        "done = time.perf_counter()\n"
        "peak = vm('VmHWM') - before\n"
        "import torch_mobilenets as tm\n"
        "model = tm.MobileNetV2(weights=None)\n"
        "before = time.perf_counter()\n"
        f"load_weights(model, {str(dst)!r}, assign=True)\n"
        "loaded = time.perf_counter()\n"
        "print(done - start, loaded - before, peak)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    convert_s, load_s, peak_mb = map(float, out[-3:])
    return {
        "table": "conversion",
        "convert_s": convert_s,
        "load_s": load_s,
        "peak_mb": peak_mb,
        "size_mb": src.stat().st_size / 2**20,
    }
