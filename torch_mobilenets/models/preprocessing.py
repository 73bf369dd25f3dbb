"""Keras' `preprocess_input` for the MobileNets: what a model expects of its pixels."""

from __future__ import annotations

import torch


def scale_to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Keras' "tf" mode (V1, V2): pixels in [0, 255] to [-1, 1] (`x / 127.5 - 1`). Returns a new
    float tensor (Keras scales numpy float arrays in place; PyTorch users expect no mutation)."""
    x = x if torch.is_floating_point(x) else x.float()
    return x / 127.5 - 1.0


def pass_through(x):
    """V3's, as in Keras: V3 models scale their input themselves (their `rescaling` layer)."""
    return x
