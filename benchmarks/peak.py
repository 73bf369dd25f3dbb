"""The physical limit, for benchmarks/run.py: multiply-accumulates per image (every convolution
and linear layer of our model at 224x224), the time they take at the nominal fp32 peak of the
cores used, and the fraction of that peak our `optimize_for_inference` copy reaches."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn


def macs_per_image(model, size=224):
    """Multiply-accumulates of one image through every nn.Conv2d and nn.Linear of `model`:
    output elements x inputs per output (in_channels / groups x kernel area, or in_features)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
        else:
            per_output = module.in_features
        total += output.numel() * per_output

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return total


class Peak(NamedTuple):
    flops: float  # per second, fp32
    mhz: float
    clock_source: str
    floats: int  # per vector
    vector_source: str
    cores: int


def nominal_peak(cores):
    """fp32 FLOP/s of `cores` cores: cores x clock x floats per vector x 2 FMA units x 2 FLOPs
    per FMA. The clock is lscpu's maximum, else the highest "cpu MHz" of /proc/cpuinfo (the
    clock now); None where neither says."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        lscpu = ""
    if found := re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M):
        mhz, clock_source = float(found.group(1)), "lscpu's CPU max MHz"
    elif clocks := re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M):
        mhz, clock_source = max(map(float, clocks)), "/proc/cpuinfo's cpu MHz"
    else:
        return None
    found = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    flags = set(found.group(1).split()) if found else set()
    if "avx512f" in flags:
        floats, vector_source = 16, "avx512f"
    elif flags & {"avx2", "fma"}:
        floats, vector_source = 8, "avx2/fma"
    else:
        floats, vector_source = 4, "no avx2, fma or avx512f flag"
    return Peak(cores * mhz * 1e6 * floats * 2 * 2, mhz, clock_source, floats, vector_source, cores)


def limit_records(families, optimized_ms, batch, peak):
    """A `limit` record per family: MACs per image, ms per image at `peak` and the fraction of
    it reached by the optimized copy at `batch` (`optimized_ms`: family -> its ms per batch);
    the last two None without a peak."""
    from benchmarks.contenders import our_model

    records = []
    for family in families:
        macs = macs_per_image(our_model(family))
        peak_ms = fraction = None
        if peak is not None:
            peak_ms = 2 * macs / peak.flops * 1e3
            fraction = 2 * macs * batch / (optimized_ms[family] / 1e3) / peak.flops
        records.append(
            {
                "table": "limit",
                "family": family,
                "batch": batch,
                "macs": macs,
                "peak_ms": peak_ms,
                "fraction": fraction,
            }
        )
    return records
