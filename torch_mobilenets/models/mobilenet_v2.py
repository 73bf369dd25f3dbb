"""MobileNetV2, layer for layer as `keras.applications.MobileNetV2` builds it.

The builder makes the model with Keras' initialisation; `weights` is checked by Keras' rules
but loaded by the public constructor, `torch_mobilenets.MobileNetV2`.

Reference: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018).
"""

from __future__ import annotations

from torch import nn

from ..nn.graph import KerasModel, KerasTensor
from ..nn.layers import (
    Add,
    BatchNorm2d,
    Conv2d,
    Dense,
    DepthwiseConv2d,
    GlobalAveragePooling2D,
    ReLU6,
    ZeroPadding2D,
    correct_pad,
    make_divisible,
)
from . import arguments, official

# (filters before alpha, stride, expansion) of blocks 0..16.
BLOCKS = [
    (16, 1, 1),
    (24, 2, 6),
    (24, 1, 6),
    (32, 2, 6),
    (32, 1, 6),
    (32, 1, 6),
    (64, 2, 6),
    (64, 1, 6),
    (64, 1, 6),
    (64, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (160, 2, 6),
    (160, 1, 6),
    (160, 1, 6),
    (320, 1, 6),
]

BN_MOMENTUM = 0.999


def MobileNetV2(
    input_shape=None,
    alpha=1.0,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
) -> KerasModel:
    """Instantiates the MobileNetV2 architecture, as `keras.applications.MobileNetV2` does.

    Args:
        input_shape: channels-first `(3, H, W)`. With `include_top` the model has a static size,
            224x224 by default; without the top the default is dynamic `(3, None, None)`. Height
            and width must be at least 32. The stride-2 paddings are fixed from this static size,
            as in Keras: a dynamic model assumes even sizes.
        alpha: width multiplier (filters rounded to multiples of 8).
        include_top: whether to include the classifier (`predictions`, a Dense layer).
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
        name: the model's name (Keras' default `mobilenetv2_{alpha:0.2f}_{rows}`).

    Returns:
        A `KerasModel` taking NCHW float input scaled by `preprocess_input` (to [-1, 1]),
        returning `(N, classes)` with the top, else `(N, C, H, W)` or `(N, C)` when pooled.
    """
    arguments.check_common(weights, include_top, classes, input_tensor, pooling)
    size = official.default_size("mobilenet_v2", input_shape)
    input_shape = arguments.obtain_input_shape(input_shape, size, include_top, weights)
    rows = input_shape[1]
    if weights == "imagenet":
        rows = official.weights_rows("mobilenet_v2", input_shape)  # the name says it, as Keras
        official.check_alpha("mobilenet_v2", alpha)
    if include_top:
        top_activation = arguments.classifier_activation(classifier_activation, weights)

    model = KerasModel(
        name or f"mobilenetv2_{alpha:0.2f}_{rows}",
        input_shape,
        dict(
            family="mobilenet_v2",
            input_shape=input_shape,
            alpha=alpha,
            include_top=include_top,
            pooling=pooling,
            classes=classes,
        ),
    )
    x = model.input()
    filters = make_divisible(32 * alpha)
    x = model.add("Conv1", Conv2d(input_shape[0], filters, 3, stride=2), x)
    x = model.add("bn_Conv1", BatchNorm2d(filters, BN_MOMENTUM), x)
    x = model.add("Conv1_relu", ReLU6(), x)

    for block_id, (block_filters, stride, expansion) in enumerate(BLOCKS):
        x = _inverted_res_block(model, x, block_filters, alpha, stride, expansion, block_id)

    # Only widening grows the last conv; narrower models keep 1280 features.
    last_filters = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = model.add("Conv_1", Conv2d(x.shape[0], last_filters, 1), x)
    x = model.add("Conv_1_bn", BatchNorm2d(last_filters, BN_MOMENTUM), x)
    x = model.add("out_relu", ReLU6(), x)

    def top(model: KerasModel, x: KerasTensor) -> None:
        add_top(model, x, classes, top_activation)

    return arguments.add_tail(model, x, include_top, pooling, top)


def add_top(model: KerasModel, x: KerasTensor, classes: int, activation: nn.Module) -> KerasTensor:
    """Keras' V2 top on the body's output `x`: pooling, then the Dense `predictions` with the
    classifier activation (also the fresh top `reset_classifier` gives a model without)."""
    x = model.add("global_average_pooling2d", GlobalAveragePooling2D(), x)
    return model.add("predictions", Dense(x.shape[0], classes, activation), x)


def _inverted_res_block(model, inputs, filters, alpha, stride, expansion, block_id):
    in_channels = inputs.shape[0]
    pointwise_filters = make_divisible(int(filters * alpha))
    x = inputs
    if block_id:
        prefix = f"block_{block_id}_"
        # The expansion is not rounded: in_channels is already a multiple of 8.
        x = model.add(f"{prefix}expand", Conv2d(in_channels, expansion * in_channels, 1), x)
        x = model.add(f"{prefix}expand_BN", BatchNorm2d(x.shape[0], BN_MOMENTUM), x)
        x = model.add(f"{prefix}expand_relu", ReLU6(), x)
    else:
        prefix = "expanded_conv_"
    if stride == 2:
        x = model.add(f"{prefix}pad", ZeroPadding2D(correct_pad(x.shape, 3)), x)
    x = model.add(
        f"{prefix}depthwise",
        DepthwiseConv2d(x.shape[0], 3, stride=stride, padding="same" if stride == 1 else "valid"),
        x,
    )
    x = model.add(f"{prefix}depthwise_BN", BatchNorm2d(x.shape[0], BN_MOMENTUM), x)
    x = model.add(f"{prefix}depthwise_relu", ReLU6(), x)
    x = model.add(f"{prefix}project", Conv2d(x.shape[0], pointwise_filters, 1), x)
    x = model.add(f"{prefix}project_BN", BatchNorm2d(pointwise_filters, BN_MOMENTUM), x)
    if in_channels == pointwise_filters and stride == 1:
        x = model.add(f"{prefix}add", Add(), inputs, x)
    return x
