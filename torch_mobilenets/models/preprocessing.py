"""Keras' `preprocess_input` for the MobileNets: what a model expects of its pixels, and
whether a model scales them itself."""

from __future__ import annotations

import torch

from ..nn import layers
from ..nn.graph import KerasModel


def scale_to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Keras' "tf" mode (V1, V2): pixels in [0, 255] to [-1, 1] (`x / 127.5 - 1`). Returns a new
    float tensor (Keras scales numpy float arrays in place; PyTorch users expect no mutation)."""
    x = x if torch.is_floating_point(x) else x.float()
    return x / 127.5 - 1.0


def pass_through(x):
    """V3's, as in Keras: V3 models scale their input themselves (their `rescaling` layer)."""
    return x


# Layers that scale pixels, first in a model that preprocesses its input itself: V3's
# `rescaling`, a user's Rescaling or Normalization, preprocess_input's arithmetic.
SCALING = (layers.Rescaling, layers.Normalization, layers.Scale)


def preprocesses_input(model: KerasModel) -> bool:
    """Whether the model scales pixels itself, so that it takes them in [0, 255]: its first
    layer that computes (past augmentation, the identity at inference, and resizing) is a
    Rescaling, a Normalization or `preprocess_input`'s arithmetic, in the model or in the first
    model nested in it."""
    nodes, readers = model.nodes(), model.readers()
    node = 0
    while len(readers.get(node, ())) == 1:
        step = nodes[readers[node][0] - 1]
        layer = step.layer
        if _scales(layer):
            return True
        if isinstance(layer, KerasModel) and not _passes(layer):
            return preprocesses_input(layer)
        if not _passes(layer):
            return False
        node = step.number
    return False


def _scales(layer) -> bool:
    if isinstance(layer, layers.Chain):
        return len(layer) > 0 and all(isinstance(m, SCALING) for m in layer)
    return isinstance(layer, SCALING)


def _passes(layer) -> bool:
    """The layer leaves pixel values as they are at inference (augmentation, dropout, noise,
    resizing or cropping)."""
    if isinstance(layer, KerasModel):
        return all(_passes(step.layer) for step in layer.nodes())
    if getattr(layer, "keras_class", None) in ("Resizing", "CenterCrop"):
        return True
    return isinstance(
        layer,
        (
            layers.Identity,
            layers.Dropout,
            layers.SpatialDropout2D,
            layers.GaussianDropout,
            layers.AlphaDropout,
            layers.GaussianNoise,
        ),
    )
