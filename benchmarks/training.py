"""Training speed, for benchmarks/run.py: one SGD step (cross-entropy, backward, update) of our
V2, V3 Large and V3 Small against torchvision's, both in train mode, the two taking turns step by
step with the order alternating; "ours / torchvision" is the median of the paired ratios."""

from __future__ import annotations

import functools
import statistics
import time

import torch
from torch import nn

from benchmarks.contenders import PEERS, model_input, our_model


def train_step(model, optimizer, x, labels):
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()


def training_records(families, batch, steps, warmup):
    """A `training` record per family torchvision has: median ms per step, ours and
    torchvision's, and the median of the paired ratios."""
    import torchvision

    records = []
    for family in families:
        torchvision_name = PEERS[family][1]
        if torchvision_name is None:
            continue
        torch.manual_seed(0)
        models = {
            "ours": our_model(family).train(),
            "torchvision": getattr(torchvision.models, torchvision_name)().train(),
        }
        # The same images for both: in train mode BatchNorm normalises by the batch, so the
        # range torchvision expects would change no time.
        x = model_input(family, batch)
        labels = torch.randint(0, 1000, (batch,))
        steps_of = {
            name: functools.partial(
                train_step, model, torch.optim.SGD(model.parameters(), lr=1e-3), x, labels
            )
            for name, model in models.items()
        }
        time.sleep(0.2)  # other thread pools stop spinning
        for _ in range(warmup):
            steps_of["ours"](), steps_of["torchvision"]()
        samples: dict[str, list[float]] = {"ours": [], "torchvision": []}
        for i in range(steps):
            for name in ("ours", "torchvision")[:: 1 if i % 2 else -1]:
                start = time.perf_counter()
                steps_of[name]()
                samples[name].append(time.perf_counter() - start)
        records.append(
            {
                "table": "training",
                "family": family,
                "batch": batch,
                "ours_ms": statistics.median(samples["ours"]) * 1e3,
                "torchvision_ms": statistics.median(samples["torchvision"]) * 1e3,
                "ratio": statistics.median(
                    a / b for a, b in zip(samples["ours"], samples["torchvision"])
                ),
            }
        )
    return records
