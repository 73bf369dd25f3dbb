"""Training speed, for benchmarks/run.py: one SGD step (cross-entropy, backward, update) of each
family in train mode, ours against torchvision's same architecture (V1 has none), eager and
under `torch.compile`. All contenders of a family take turns step by step, the order
alternating; every ratio is the median of the ratios of steps that took turns. Compiling is
timed apart: the first compiled steps (Dynamo, AOT autograd and Inductor for the forward and
the backward), less the median step."""

from __future__ import annotations

import functools
import statistics
import time

import torch
from torch import nn

from benchmarks.contenders import PEERS, model_input, our_model

# The first compiled step compiles the forward and the backward; the second makes the
# optimizer's lazy state. Both are left out of the timed steps.
COMPILING_STEPS = 2


def train_step(model, optimizer, x, labels):
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()


def training_records(families, batch, steps, warmup, compiled=False):
    """A `training` record per family: median ms per step of each contender (null where it
    does not exist), the paired ratios, and with `compiled` the compiled steps and the seconds
    each took to compile."""
    return [_training_record(f, batch, steps, warmup, compiled) for f in families]


def _training_record(family, batch, steps, warmup, compiled):
    import torchvision

    torchvision_name = PEERS[family][1]
    torch.manual_seed(0)
    models = {"ours": our_model(family).train()}
    if torchvision_name is not None:
        models["torchvision"] = getattr(torchvision.models, torchvision_name)().train()
    # The same images for all: in train mode BatchNorm normalises by the batch, so the range
    # torchvision expects would change no time.
    x = model_input(family, batch)
    labels = torch.randint(0, 1000, (batch,))
    steps_of = {}
    for name, model in models.items():
        steps_of[name] = _step(model, model, x, labels)
        if compiled:  # the same parameters, through Inductor
            steps_of[f"{name} compiled"] = _step(torch.compile(model), model, x, labels)
    compiling_s = {}
    for name, step in steps_of.items():
        if name.endswith("compiled"):
            start = time.perf_counter()
            for _ in range(COMPILING_STEPS):
                step()
            compiling_s[name] = time.perf_counter() - start
    time.sleep(0.2)  # other thread pools stop spinning
    for _ in range(warmup):
        for step in steps_of.values():
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps_of}
    names = list(steps_of)
    for i in range(steps):
        for name in names[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            steps_of[name]()
            samples[name].append(time.perf_counter() - start)
    median_ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}

    def paired(a, b):
        if a not in samples or b not in samples:
            return None
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    def compile_s(name):
        if name not in compiling_s:
            return None
        return max(compiling_s[name] - COMPILING_STEPS * median_ms[name] / 1e3, 0.0)

    return {
        "table": "training",
        "family": family,
        "batch": batch,
        "ours_ms": median_ms["ours"],
        "torchvision_ms": median_ms.get("torchvision"),
        "ratio": paired("ours", "torchvision"),
        "ours_compiled_ms": median_ms.get("ours compiled"),
        "torchvision_compiled_ms": median_ms.get("torchvision compiled"),
        "ours_compile_s": compile_s("ours compiled"),
        "torchvision_compile_s": compile_s("torchvision compiled"),
        "compiled_ratio": paired("ours compiled", "ours"),
        "compiled_torchvision_ratio": paired("ours compiled", "torchvision compiled"),
    }


def _step(run, model, x, labels):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return functools.partial(train_step, run, optimizer, x, labels)
