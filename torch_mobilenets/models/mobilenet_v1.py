"""MobileNet (V1), layer for layer as `keras.applications.MobileNet` builds it.

The builder makes the model with Keras' initialisation; `weights` is checked by Keras' rules
but loaded by the public constructor, `torch_mobilenets.MobileNet`.

Reference: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications" (2017).
"""

from __future__ import annotations

from torch import nn

from ..nn.graph import KerasModel, KerasTensor
from ..nn.layers import (
    BatchNorm2d,
    Conv2d,
    DepthwiseConv2d,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    ReLU6,
    ZeroPadding2D,
)
from . import arguments, official

# (pointwise filters before alpha, stride) of the 13 depthwise-separable blocks.
BLOCKS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]

# Keras' V1 BatchNormalization uses the layer defaults: momentum 0.99, epsilon 1e-3.
BN_MOMENTUM = 0.99


def MobileNet(
    input_shape=None,
    alpha=1.0,
    depth_multiplier=1,
    dropout=1e-3,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
) -> KerasModel:
    """Instantiates the MobileNet architecture, as `keras.applications.MobileNet` does.

    Args:
        input_shape: channels-first `(3, H, W)`. With `include_top` the model has a static size,
            224x224 by default; without the top the default is dynamic `(3, None, None)`. Height
            and width must be at least 32.
        alpha: width multiplier: filters of every layer are `int(filters * alpha)`.
        depth_multiplier: depth multiplier of the depthwise convolutions (an integer).
        dropout: dropout rate before `conv_preds`.
        include_top: whether to include the classifier (`conv_preds`).
        weights: `None` (random initialization); `"imagenet"`, the official Keras ImageNet file
            Keras would load, downloaded once, verified and cached; or the path to a Keras
            weights file (`.h5`, `.weights.h5`, `.keras`) or a converted `.safetensors`. (The
            builder in `torch_mobilenets.models` applies Keras' rules for it; the public
            constructor loads it.)
        input_tensor: has no PyTorch meaning (a module is not bound to a tensor); must be None.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        classes: number of classes, with the top.
        classifier_activation: `"softmax"`, `None` (logits), another Keras activation name, or a
            callable; only `None`/`"softmax"` with pretrained weights.
        name: the model's name (Keras' default `mobilenet_{alpha:0.2f}_{rows}`).

    Returns:
        A `KerasModel` taking NCHW float input scaled by `preprocess_input` (to [-1, 1]),
        returning `(N, classes)` with the top, else `(N, C, H, W)` or `(N, C)` when pooled.
    """
    arguments.check_common(weights, include_top, classes, input_tensor, pooling)
    size = official.default_size("mobilenet", input_shape)
    input_shape = arguments.obtain_input_shape(input_shape, size, include_top, weights)
    rows = input_shape[1]
    if weights == "imagenet":
        rows = official.weights_rows("mobilenet", input_shape)  # the name says it, as Keras
    if depth_multiplier != int(depth_multiplier) or depth_multiplier < 1:
        raise ValueError(f"depth_multiplier must be a positive integer; got {depth_multiplier}")
    depth_multiplier = int(depth_multiplier)
    if weights == "imagenet":
        official.check_alpha("mobilenet", alpha, depth_multiplier=depth_multiplier)
    if include_top:
        top_activation = arguments.classifier_activation(classifier_activation, weights)

    model = KerasModel(
        name or f"mobilenet_{alpha:0.2f}_{rows}",
        input_shape,
        dict(
            family="mobilenet",
            input_shape=input_shape,
            alpha=alpha,
            depth_multiplier=depth_multiplier,
            dropout=dropout,
            include_top=include_top,
            pooling=pooling,
            classes=classes,
        ),
    )
    x = model.input()
    filters = int(32 * alpha)
    x = model.add("conv1", Conv2d(input_shape[0], filters, 3, stride=2), x)
    x = model.add("conv1_bn", BatchNorm2d(filters, BN_MOMENTUM), x)
    x = model.add("conv1_relu", ReLU6(), x)

    for block_id, (pointwise_filters, stride) in enumerate(BLOCKS, start=1):
        channels = x.shape[0]
        if stride == 2:
            # Keras pads bottom/right by one whatever the size, then runs a "valid" conv.
            x = model.add(f"conv_pad_{block_id}", ZeroPadding2D(((0, 1), (0, 1))), x)
        x = model.add(
            f"conv_dw_{block_id}",
            DepthwiseConv2d(
                channels,
                3,
                stride=stride,
                padding="same" if stride == 1 else "valid",
                depth_multiplier=depth_multiplier,
            ),
            x,
        )
        x = model.add(f"conv_dw_{block_id}_bn", BatchNorm2d(x.shape[0], BN_MOMENTUM), x)
        x = model.add(f"conv_dw_{block_id}_relu", ReLU6(), x)
        filters = int(pointwise_filters * alpha)
        x = model.add(f"conv_pw_{block_id}", Conv2d(x.shape[0], filters, 1), x)
        x = model.add(f"conv_pw_{block_id}_bn", BatchNorm2d(filters, BN_MOMENTUM), x)
        x = model.add(f"conv_pw_{block_id}_relu", ReLU6(), x)

    def top(model: KerasModel, x: KerasTensor) -> None:
        add_top(model, x, classes, dropout, top_activation)

    return arguments.add_tail(model, x, include_top, pooling, top)


def add_top(
    model: KerasModel, x: KerasTensor, classes: int, dropout: float, activation: nn.Module
) -> KerasTensor:
    """Keras' V1 top on the body's output `x`: pooling, dropout, the 1x1 `conv_preds`, then
    the classifier activation (also the fresh top `reset_classifier` gives a model without)."""
    x = model.add("global_average_pooling2d", GlobalAveragePooling2D(keepdims=True), x)
    x = model.add("dropout", Dropout(dropout), x)
    x = model.add("conv_preds", Conv2d(x.shape[0], classes, 1, bias=True), x)
    x = model.add("reshape_2", Flatten(), x)
    return model.add("predictions", activation, x)
