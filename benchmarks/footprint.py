"""Resident memory, for benchmarks/run.py: our optimized copy (keeping its activation memory,
and not) beside ONNX Runtime on the same export, at one batch, each in a fresh process.

A runtime that keeps its activation memory holds it between calls; one that takes it from malloc
afresh may give most of it back. So each contender is made (weights loaded, input ready), its
process's resident memory (VmRSS) read, and read again after `CALLS` calls, with the peak
(VmHWM, reset through /proc/self/clear_refs before the calls) beside it: steady = after -
before, what the runtime holds between calls (activations, packed kernels, its allocator's
cache); peak = the peak during the calls - before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import deploy
from benchmarks.contenders import model_input, our_model
from benchmarks.records import ONNXRUNTIME, OPTIMIZED, ROOT, UNPLANNED

CALLS = 10

# What each child runs: `run` is a zero-argument call of one batch, made by the setup.
_MEASURE = """
import sys, torch
def vm(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
torch.set_num_threads({threads})
{setup}
before = vm('VmRSS')
with open('/proc/self/clear_refs', 'w') as refs:
    refs.write('5')  # the peak from here on
with torch.inference_mode():
    for _ in range({calls}):
        run()
print(vm('VmRSS') - before, vm('VmHWM') - before)
"""

_OURS = """
import torch_mobilenets as tm
from benchmarks.contenders import our_model
model = tm.optimize_for_inference(our_model({family!r}).eval(), keep_memory={keep})
x = torch.load({inputs!r}).contiguous(memory_format=torch.channels_last)
run = lambda: model(x)
"""

_ONNXRUNTIME = """
from benchmarks import deploy
session = deploy.onnxruntime_runner({onnx!r}, {threads})
x = torch.load({inputs!r})
run = lambda: session(x)
"""


def _child(setup: str, threads: int) -> tuple[float, float]:
    script = _MEASURE.format(threads=threads, setup=setup, calls=CALLS)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    steady, peak = map(float, out[-2:])
    return steady, peak


def memory_records(family: str, batch: int, workdir: Path, threads: int) -> list[dict]:
    """The `memory` records of `family` at `batch`: ours optimized, ours with keep_memory=False,
    ONNX Runtime on our dynamo export at the batch's shape."""
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = workdir / f"{family}-{batch}.pt"
    torch.save(model_input(family, batch), inputs)
    onnx = deploy.export_onnx(
        our_model(family).eval(),
        torch.load(inputs),
        False,
        workdir / f"{family}-{batch}.onnx",
        True,
    )
    setups = {
        OPTIMIZED: _OURS.format(family=family, keep=True, inputs=str(inputs)),
        UNPLANNED: _OURS.format(family=family, keep=False, inputs=str(inputs)),
        ONNXRUNTIME: _ONNXRUNTIME.format(onnx=str(onnx), threads=threads, inputs=str(inputs)),
    }
    found = []
    for contender, setup in setups.items():
        steady, peak = _child(setup, threads)
        found.append(
            {
                "table": "memory",
                "family": family,
                "batch": batch,
                "contender": contender,
                "steady_mb": steady,
                "peak_mb": peak,
            }
        )
    return found
