"""Keras' argument rules for the application builders, with Keras' meaning, channels first, and
the end every builder shares (`add_tail`: the top or the optional pooling).

Shapes here are `(channels, height, width)`, as a PyTorch user writes them; Keras' own checks are
written for `(height, width, channels)` but say the same thing. `weights` is checked here as Keras
checks it (some rules depend on it); loading it is the public constructors' job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Union

from torch import nn

from ..nn import layers
from ..nn.graph import KerasModel, KerasTensor

Weights = Union[None, str, os.PathLike]  # noqa: UP007  (a runtime alias: 3.10 has no `str | PathLike`)

INPUT_TENSOR_NOTE = (
    "`input_tensor` has no PyTorch meaning: a PyTorch module is not bound to an input tensor. "
    "Leave it None and call the model on your tensor."
)


def check_common(weights: Weights, include_top: bool, classes: int, input_tensor, pooling) -> None:
    """The checks every Keras MobileNet builder starts with."""
    if input_tensor is not None:
        raise ValueError(INPUT_TENSOR_NOTE)
    if not (weights is None or weights == "imagenet" or os.path.exists(os.fspath(weights))):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization), "
            "'imagenet' (pre-training on ImageNet), or the path to a weights file to be loaded "
            "(a Keras .h5, .weights.h5 or .keras file, or a converted .safetensors file). "
            f"Received weights={weights!r}, which is not an existing file."
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            "If using `weights='imagenet'` with `include_top=True`, `classes` should be 1000. "
            f"Received classes={classes}"
        )
    # Keras silently ignores an unknown `pooling`; a typo should not quietly change the output.
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'; received pooling={pooling!r}")


def obtain_input_shape(
    input_shape: tuple | None,
    default_size: int,
    require_flatten: bool,
    weights: Weights,
    min_size: int = 32,
) -> tuple:
    """Keras' `imagenet_utils.obtain_input_shape` for V1 and V2, channels first.

    With the top, the model needs a static size (224 by default); without it, the default is
    dynamic `(3, None, None)`.
    """
    default_shape = (3, default_size, default_size)
    if input_shape is not None:
        input_shape = tuple(input_shape)
    if weights == "imagenet" and require_flatten:
        if input_shape is not None and input_shape != default_shape:
            raise ValueError(
                "When setting `include_top=True` and loading `imagenet` weights, `input_shape` "
                f"should be {default_shape}. Received: input_shape={input_shape}"
            )
        return default_shape
    if input_shape:
        input_shape = check_input_shape(input_shape, min_size)
        if input_shape[0] != 3 and weights == "imagenet":
            raise ValueError(f"The input must have 3 channels; Received input_shape={input_shape}")
    elif require_flatten:
        input_shape = default_shape
    else:
        input_shape = (3, None, None)
    if require_flatten and None in input_shape:
        raise ValueError(
            "If `include_top` is True, you should specify a static `input_shape`. "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


def channels_warning(family: str, input_shape: tuple | None, weights: Weights) -> str | None:
    """Keras' warning for V1 and V2 built for an unusual channel count (from
    `obtain_input_shape`). The public constructors give it, so that it points at their caller."""
    if (
        family in ("mobilenet", "mobilenet_v2")
        and weights != "imagenet"
        and input_shape is not None
        and len(input_shape) == 3
        and input_shape[0] not in (1, 3)
    ):
        return (
            "This model usually expects 1 or 3 input channels. However, it was passed an "
            f"input_shape with {input_shape[0]} input channels."
        )
    return None


def classifier_activation(activation: str | Callable | None, weights: Weights) -> nn.Module:
    """The `predictions` activation. With pretrained weights Keras allows only None or softmax."""
    if weights is not None and activation not in (None, "softmax", "linear"):
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the `classifier_activation` "
            "argument when using pretrained weights, with `include_top=True`; "
            f"Received: classifier_activation={activation!r}"
        )
    if activation is None:
        return layers.Activation(nn.Identity())
    if callable(activation):
        return layers.Activation(activation)
    if activation not in layers.CLASSIFIER_ACTIVATIONS:
        raise ValueError(
            f"Unknown classifier_activation={activation!r}: use None, a callable, or one of "
            f"{sorted(layers.CLASSIFIER_ACTIVATIONS)}"
        )
    return layers.CLASSIFIER_ACTIVATIONS[activation]()


def check_input_shape(input_shape: tuple, min_size: int = 32) -> tuple:
    """Validate a channels-first `(C, H, W)` input shape; H and W may be None."""
    if len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be a tuple of three integers (channels, height, width), "
            f"channels first; got input_shape={input_shape}"
        )
    channels, height, width = input_shape
    if channels is None:
        raise ValueError(f"the channel count of `input_shape` must be given; got {input_shape}")
    if (height is not None and height < min_size) or (width is not None and width < min_size):
        # Keras' own order (H, W, C) is the likely slip of a user porting Keras code.
        hint = (
            f" (channels first: did you mean {(width, channels, height)}?)"
            if width in (1, 3) and channels is not None and channels >= min_size
            else ""
        )
        raise ValueError(
            f"Input size must be at least {min_size}x{min_size}; got "
            f"input_shape={input_shape}{hint}"
        )
    return tuple(input_shape)


def add_tail(
    model: KerasModel,
    x: KerasTensor,
    include_top: bool,
    pooling: str | None,
    top: Callable[[KerasModel, KerasTensor], object],
    pooling_names: tuple = ("global_average_pooling2d", "global_max_pooling2d"),
) -> KerasModel:
    """The end of every builder: the body's last layer becomes the model's `feature_layer`,
    then comes the family's top (`top(model, x)`) or, without it, Keras' optional global
    pooling, under the family's names for those layers."""
    model.feature_layer = model.layer_names[-1]
    if include_top:
        top(model, x)
    elif pooling == "avg":
        model.add(pooling_names[0], layers.GlobalAveragePooling2D(), x)
    elif pooling == "max":
        model.add(pooling_names[1], layers.GlobalMaxPooling2D(), x)
    return model
