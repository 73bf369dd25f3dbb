"""Weights that make timings and comparisons mean something: BatchNorm statistics like a trained
model's, and the photo-like images they are taken from.

A fresh init's BatchNorm statistics (mean 0, variance 1) let activations grow layer after layer
or go denormal, and a comparison of outputs that barely depend on the input cannot fail. The
benchmarks calibrate every model they time; the tests (tests/helpers.py) use the same functions.
Imports torch and nothing of the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CALIBRATION_BATCH = 4


def photo_like(n, height, width, seed=0, scaled=False, channels=3):
    """Seeded NCHW float32 images, smooth as photos are: noise at an eighth of the size,
    upsampled bilinearly, plus a little pixel noise. Pixels in [0, 255], or in [-1, 1] with
    `scaled` (V1 and V2's `preprocess_input`)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, max(2, height // 8), max(2, width // 8), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.randn(n, channels, height, width, generator=generator)
    x = (smooth * 255 + noise * 8).clamp_(0, 255).round_()
    return x / 127.5 - 1 if scaled else x


def takes_pixels(model) -> bool:
    """Whether `model` takes [0, 255] pixels (V3 and KerasCV's backbone rescale inside) rather
    than V1 and V2's [-1, 1]."""
    config = getattr(model, "config", {})
    return bool(config.get("include_preprocessing") or config.get("include_rescaling"))


def model_images(model, n, height, width, seed=0):
    """photo_like images in the range `model` expects, with its number of channels."""
    channels = model.input_shape[0]
    return photo_like(n, height, width, seed, scaled=not takes_pixels(model), channels=channels)


def trained_like(model, size=None, seed=0):
    """Weights like a trained model's, so that a layer skipped, applied twice, padded or folded
    wrongly shows: BatchNorm gamma ~ U(0.5, 1.5) and beta ~ N(0, 0.1), conv and dense biases
    ~ N(0, 0.1), and BatchNorm moving statistics taken from the batch statistics of one pass
    over photo-like images (so every BatchNorm normalises what it gets, and the output depends
    on the input, as a trained model's does). Calibrated at `size` (an int or (height, width))
    where given, else at the model's static size or 224x224. Seeded; in eval mode.

    A module without an input shape (a bare layer) gets random moving statistics instead."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.normal_(0, 0.1, generator=generator)
    input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        with torch.no_grad():
            for module in norms:
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
        return model.eval()
    if size is None:
        size = tuple(input_shape[1:]) if input_shape[1] else (224, 224)
    height, width = (size, size) if isinstance(size, int) else size
    first = next(model.parameters())
    x = model_images(model, CALIBRATION_BATCH, height, width, seed=seed)
    x = x.to(first.device, first.dtype)
    # Momentum 1 in PyTorch's terms: the moving statistics become this batch's. The layers
    # frozen (Keras' trainable=False) would run in inference mode, so are thawed for the pass;
    # everything else (Dropout) stays in inference mode.
    kept = [
        (m, m.momentum, getattr(m, "trainable", None), m.num_batches_tracked.clone()) for m in norms
    ]
    model.eval()
    for module in norms:
        module.momentum = 1.0
        if getattr(module, "trainable", None) is not None:
            module.trainable = True
        module.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for module, momentum, trainable, tracked in kept:
            module.momentum = momentum
            if trainable is not None:
                module.trainable = trainable
            module.num_batches_tracked.copy_(tracked)
    return model.eval()


def calibrate(model: torch.nn.Module, size: int = 224) -> torch.nn.Module:
    """BatchNorm statistics from a batch of random images, so activations have realistic
    ranges (a fresh init's unit variance lets them grow layer after layer): how the speed
    benchmark calibrates the peers (torchvision's, timm's), which keep their own init."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size))
    return model.eval()
