"""Keras' argument rules for the application builders, with Keras' meaning, channels first.

Shapes here are `(channels, height, width)`, as a PyTorch user writes them; Keras' own checks are
written for `(height, width, channels)` but say the same thing.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Union

from torch import nn

from . import layers

Weights = Union[None, str, os.PathLike]

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


def default_size(input_shape: Optional[tuple], official_sizes: tuple) -> int:
    """The size Keras checks a top against: the given square size if official weights exist for
    it, else 224."""
    if input_shape is not None and len(input_shape) == 3:
        rows, cols = input_shape[1], input_shape[2]
        if rows == cols and rows in official_sizes:
            return rows
    return 224


def obtain_input_shape(input_shape: Optional[tuple], default_size: int, require_flatten: bool,
                       weights: Weights, min_size: int = 32) -> tuple:
    """Keras' `imagenet_utils.obtain_input_shape` for V1 and V2, channels first.

    With the top, the model needs a static size (224 by default); without it, the default is
    dynamic `(3, None, None)`.
    """
    default_shape = (3, default_size, default_size)
    if input_shape is not None:
        input_shape = tuple(input_shape)
        if weights != "imagenet" and len(input_shape) == 3 and input_shape[0] not in (1, 3):
            warnings.warn(
                "This model usually expects 1 or 3 input channels. However, it was passed an "
                f"input_shape with {input_shape[0]} input channels.", stacklevel=3)
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


def classifier_activation(activation: Union[None, str, Callable], weights: Weights) -> nn.Module:
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


def load_requested_weights(model, weights: Weights):
    """The last step of every builder: load what `weights` names into `model`."""
    if weights is None:
        return model
    if weights == "imagenet":
        # Keras' choice of official file for this model, downloaded, verified and converted once
        # into torch's hub cache.
        from .download import imagenet_weights

        weights = imagenet_weights(model.config)
    from .conversion import load_weights  # the converter imports the builders

    load_weights(model, weights, assign=True)  # a fresh model: take the tensors as they are
    return model


def check_input_shape(input_shape: Optional[tuple], min_size: int = 32) -> tuple:
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
        raise ValueError(
            f"Input size must be at least {min_size}x{min_size}; got input_shape={input_shape}"
        )
    return tuple(input_shape)
