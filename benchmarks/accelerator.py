"""Images per second on an accelerator, for benchmarks/run.py: ours (`optimize_for_inference`)
against torchvision, at a large batch, channels-last and (by default) `torch.compile`d."""

from __future__ import annotations

import time

import torch

from benchmarks.calibration import calibrate
from benchmarks.contenders import PEERS
from benchmarks.records import OPTIMIZED, TORCHVISION


def accelerator_records(device, batch, dtypes, compile_models):
    """An `accelerator` record per family torchvision has, dtype and contender."""
    import torchvision

    import torch_mobilenets as tm

    records = []
    for family, (_, torchvision_name, _) in PEERS.items():
        if torchvision_name is None:
            continue
        for dtype in dtypes:
            ours = tm.optimize_for_inference(calibrate(tm.FAMILIES[family](weights=None)))
            peer = calibrate(getattr(torchvision.models, torchvision_name)())
            for name, model in ((OPTIMIZED, ours), (TORCHVISION, peer)):
                model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
                if compile_models:
                    model = torch.compile(model)
                x = torch.rand(batch, 3, 224, 224, device=device, dtype=dtype).contiguous(
                    memory_format=torch.channels_last
                )
                records.append(
                    {
                        "table": "accelerator",
                        "family": family,
                        "dtype": str(dtype).removeprefix("torch."),
                        "contender": name,
                        "images_per_second": images_per_second(model, x, device),
                    }
                )
    return records


def images_per_second(model, x, device, calls=20):
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):  # compilation, autotuning
            model(x)
        synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            model(x)
        synchronize()
    return calls * x.shape[0] / (time.perf_counter() - start)
