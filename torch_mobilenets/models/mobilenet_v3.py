"""MobileNetV3 Small and Large, layer for layer as `keras.applications.MobileNetV3Small` /
`MobileNetV3Large` build them (Keras 3 names and Keras 3's hard_sigmoid).

`SMALL` and `LARGE` are the architecture: one row per inverted-residual block. KerasCV's
`MobileNetV3Backbone` (mobilenet_v3_backbone.py) builds its presets from the same tables and the
same block, under its own layer names. The builders make the model with Keras' initialisation;
`weights` is checked by Keras' rules but loaded by the public constructors.

Reference: Howard et al., "Searching for MobileNetV3" (ICCV 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from ..nn.graph import KerasModel, KerasTensor
from ..nn.layers import (
    Add,
    BatchNorm2d,
    Conv2d,
    DepthwiseConv2d,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    HardSigmoid,
    HardSwish,
    Multiply,
    ReLU,
    Rescaling,
    ZeroPadding2D,
    correct_pad,
    make_divisible,
)
from . import arguments, official

BN_MOMENTUM = 0.999
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": ReLU, "hard_swish": HardSwish}


class Block(NamedTuple):
    """One inverted-residual block: its expansion ratio, output filters before alpha, depthwise
    kernel size and stride, squeeze-excite ratio (None: no squeeze-excite), and activation."""

    expansion: float
    filters: int
    kernel_size: int
    stride: int
    se_ratio: float | None
    activation: str


SMALL = (
    Block(1, 16, 3, 2, 0.25, "relu"),
    Block(72 / 16, 24, 3, 2, None, "relu"),
    Block(88 / 24, 24, 3, 1, None, "relu"),
    Block(4, 40, 5, 2, 0.25, "hard_swish"),
    Block(6, 40, 5, 1, 0.25, "hard_swish"),
    Block(6, 40, 5, 1, 0.25, "hard_swish"),
    Block(3, 48, 5, 1, 0.25, "hard_swish"),
    Block(3, 48, 5, 1, 0.25, "hard_swish"),
    Block(6, 96, 5, 2, 0.25, "hard_swish"),
    Block(6, 96, 5, 1, 0.25, "hard_swish"),
    Block(6, 96, 5, 1, 0.25, "hard_swish"),
)

LARGE = (
    Block(1, 16, 3, 1, None, "relu"),
    Block(4, 24, 3, 2, None, "relu"),
    Block(3, 24, 3, 1, None, "relu"),
    Block(3, 40, 5, 2, 0.25, "relu"),
    Block(3, 40, 5, 1, 0.25, "relu"),
    Block(3, 40, 5, 1, 0.25, "relu"),
    Block(6, 80, 3, 2, None, "hard_swish"),
    Block(2.5, 80, 3, 1, None, "hard_swish"),
    Block(2.3, 80, 3, 1, None, "hard_swish"),
    Block(2.3, 80, 3, 1, None, "hard_swish"),
    Block(6, 112, 3, 1, 0.25, "hard_swish"),
    Block(6, 112, 3, 1, 0.25, "hard_swish"),
    Block(6, 160, 5, 2, 0.25, "hard_swish"),
    Block(6, 160, 5, 1, 0.25, "hard_swish"),
    Block(6, 160, 5, 1, 0.25, "hard_swish"),
)

# Features of `conv_2`, the top's widest layer, before alpha.
LAST_POINT_FILTERS = {"small": 1024, "large": 1280}


def minimalistic_blocks(blocks: tuple) -> tuple:
    """The minimalistic variant of a table, as Keras makes it: no squeeze-excite, no
    hard-swish, no 5x5 kernels."""
    return tuple(b._replace(kernel_size=3, se_ratio=None, activation="relu") for b in blocks)


_DOC = """Instantiates the {name} architecture, as `keras.applications.{name}` does.

    Args:
        input_shape: channels-first `(3, H, W)`, or None (the default) for a dynamic size, even
            with the top. The stride-2 paddings are fixed from this static size, as in Keras: a
            dynamic model assumes even sizes, so on odd sizes it differs from a static one.
        alpha: width multiplier of the blocks (filters rounded to multiples of 8); widening
            (alpha > 1) also widens `conv_2`.
        minimalistic: no squeeze-excite, no hard-swish, no 5x5 kernels.
        include_top: whether to include the classifier (`conv_2`, `logits`).
        weights: `None` (random initialization); `"imagenet"`, the official Keras ImageNet file
            Keras would load, downloaded once, verified and cached; or the path to a Keras
            weights file (`.h5`, `.weights.h5`, `.keras`) or a converted `.safetensors`.
        input_tensor: has no PyTorch meaning (a module is not bound to a tensor); must be None.
        classes: number of classes, with the top.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        dropout_rate: dropout before `logits`.
        classifier_activation: `"softmax"`, `None` (logits), another Keras activation name, or a
            callable; only `None`/`"softmax"` with pretrained weights.
        include_preprocessing: include the `rescaling` layer, so inputs are pixels in [0, 255];
            without it inputs are in [-1, 1].
        name: the model's name.

    Returns:
        A `KerasModel` on NCHW float input, returning `(N, classes)` with the top, else
        `(N, C, H, W)` or `(N, C)` when pooled.
    """


def MobileNetV3Small(
    input_shape=None,
    alpha=1.0,
    minimalistic=False,
    include_top=True,
    weights=None,
    input_tensor=None,
    classes=1000,
    pooling=None,
    dropout_rate=0.2,
    classifier_activation="softmax",
    include_preprocessing=True,
    name="MobileNetV3Small",
) -> KerasModel:
    return _mobilenet_v3("small", SMALL, **locals())


def MobileNetV3Large(
    input_shape=None,
    alpha=1.0,
    minimalistic=False,
    include_top=True,
    weights=None,
    input_tensor=None,
    classes=1000,
    pooling=None,
    dropout_rate=0.2,
    classifier_activation="softmax",
    include_preprocessing=True,
    name="MobileNetV3Large",
) -> KerasModel:
    return _mobilenet_v3("large", LARGE, **locals())


MobileNetV3Small.__doc__ = _DOC.format(name="MobileNetV3Small")
MobileNetV3Large.__doc__ = _DOC.format(name="MobileNetV3Large")


def _mobilenet_v3(
    model_type,
    blocks,
    *,
    input_shape,
    alpha,
    minimalistic,
    include_top,
    weights,
    input_tensor,
    classes,
    pooling,
    dropout_rate,
    classifier_activation,
    include_preprocessing,
    name,
) -> KerasModel:
    arguments.check_common(weights, include_top, classes, input_tensor, pooling)
    input_shape = (
        (3, None, None) if input_shape is None else arguments.check_input_shape(input_shape)
    )
    if weights == "imagenet":
        official.check_alpha(f"mobilenet_v3_{model_type}", alpha, minimalistic)
    if include_top:
        top_activation = arguments.classifier_activation(classifier_activation, weights)
    if minimalistic:
        blocks = minimalistic_blocks(blocks)
    activation = ReLU if minimalistic else HardSwish

    model = KerasModel(
        name,
        input_shape,
        dict(
            family=f"mobilenet_v3_{model_type}",
            input_shape=input_shape,
            alpha=alpha,
            minimalistic=minimalistic,
            include_top=include_top,
            pooling=pooling,
            classes=classes,
            dropout_rate=dropout_rate,
            include_preprocessing=include_preprocessing,
        ),
    )
    x = model.input()
    if include_preprocessing:
        x = model.add("rescaling", Rescaling(1.0 / 127.5, offset=-1.0), x)
    # The stem is not scaled by alpha.
    x = model.add("conv", Conv2d(input_shape[0], 16, 3, stride=2), x)
    x = model.add("conv_bn", BatchNorm2d(16, BN_MOMENTUM), x)
    x = model.add("conv_activation", activation(), x)

    for block_id, block in enumerate(blocks):
        x = inverted_res_block(model, x, block, alpha, block_id)

    last_conv_ch = make_divisible(x.shape[0] * 6)
    x = model.add("conv_1", Conv2d(x.shape[0], last_conv_ch, 1), x)
    x = model.add("conv_1_bn", BatchNorm2d(last_conv_ch, BN_MOMENTUM), x)
    x = model.add("conv_1_activation", activation(), x)

    def top(model: KerasModel, x: KerasTensor) -> None:
        add_top(
            model,
            x,
            classes,
            last_point_filters(model_type, alpha),
            activation,
            dropout_rate,
            top_activation,
        )

    return arguments.add_tail(model, x, include_top, pooling, top, POOLING_NAMES)


# The names of V3's optional pooling without the top (`pooling="avg"` / `"max"`).
POOLING_NAMES = ("avg_pool", "max_pool")


def last_point_filters(model_type: str, alpha: float) -> int:
    """The width of `conv_2`, the top's hidden layer: only widening (alpha > 1) grows it."""
    filters = LAST_POINT_FILTERS[model_type]
    return make_divisible(filters * alpha) if alpha > 1.0 else filters


def add_top(
    model: KerasModel,
    x: KerasTensor,
    classes: int,
    last_point_ch: int,
    activation: Callable[[], nn.Module],
    dropout_rate: float,
    top_activation: nn.Module,
) -> KerasTensor:
    """Keras' V3 top on the body's output `x`: pooling, the 1x1 `conv_2` and its activation,
    dropout, the 1x1 `logits`, then the classifier activation (also the fresh top
    `reset_classifier` gives a model without)."""
    x = model.add("global_average_pooling2d", GlobalAveragePooling2D(keepdims=True), x)
    x = model.add("conv_2", Conv2d(x.shape[0], last_point_ch, 1, bias=True), x)
    x = model.add("conv_2_activation", activation(), x)
    if dropout_rate > 0:
        x = model.add("dropout", Dropout(dropout_rate), x)
    x = model.add("logits", Conv2d(last_point_ch, classes, 1, bias=True), x)
    x = model.add("flatten", Flatten(), x)
    return model.add("predictions", top_activation, x)


def squeeze_excite(
    model: KerasModel, x: KerasTensor, filters: int, se_ratio: float, prefix: str
) -> KerasTensor:
    """The applications' squeeze-and-excite, as separate layers `{prefix}squeeze_excite_*`."""
    inputs = x
    squeezed = make_divisible(filters * se_ratio)
    x = model.add(f"{prefix}squeeze_excite_avg_pool", GlobalAveragePooling2D(keepdims=True), x)
    x = model.add(f"{prefix}squeeze_excite_conv", Conv2d(filters, squeezed, 1, bias=True), x)
    x = model.add(f"{prefix}squeeze_excite_relu", ReLU(), x)
    x = model.add(f"{prefix}squeeze_excite_conv_1", Conv2d(squeezed, filters, 1, bias=True), x)
    x = model.add(f"{prefix}squeeze_excite_hard_sigmoid", HardSigmoid(), x)
    return model.add(f"{prefix}squeeze_excite_mul", Multiply(), inputs, x)


class Naming(NamedTuple):
    """How a Keras code base names the layers of a V3 block and packages its squeeze-excite.
    The applications and KerasCV build the same function under different names."""

    batch_norm: str  # suffix of the BatchNormalization layers
    add: str  # name of the residual Add within the block
    squeeze_excite: Callable  # (model, x, filters, se_ratio, prefix) -> x


APPLICATIONS = Naming("bn", "add", squeeze_excite)


def inverted_res_block(
    model: KerasModel,
    inputs: KerasTensor,
    block: Block,
    alpha: float,
    block_id: int,
    naming: Naming = APPLICATIONS,
) -> KerasTensor:
    """One row of the table, under `naming`'s layer names."""
    in_channels = inputs.shape[0]
    filters = make_divisible(block.filters * alpha)
    kernel_size, stride = block.kernel_size, block.stride
    activation = ACTIVATIONS[block.activation]
    x = inputs
    prefix = "expanded_conv_"
    bn = naming.batch_norm
    if block_id:
        prefix = f"expanded_conv_{block_id}_"
        expanded = make_divisible(in_channels * block.expansion)
        x = model.add(f"{prefix}expand", Conv2d(in_channels, expanded, 1), x)
        x = model.add(f"{prefix}expand_{bn}", BatchNorm2d(expanded, BN_MOMENTUM), x)
        x = model.add(f"{prefix}expand_activation", activation(), x)
    if stride == 2:
        x = model.add(f"{prefix}depthwise_pad", ZeroPadding2D(correct_pad(x.shape, kernel_size)), x)
    x = model.add(
        f"{prefix}depthwise",
        DepthwiseConv2d(
            x.shape[0], kernel_size, stride=stride, padding="same" if stride == 1 else "valid"
        ),
        x,
    )
    x = model.add(f"{prefix}depthwise_{bn}", BatchNorm2d(x.shape[0], BN_MOMENTUM), x)
    x = model.add(f"{prefix}depthwise_activation", activation(), x)
    if block.se_ratio:
        x = naming.squeeze_excite(model, x, x.shape[0], block.se_ratio, prefix)
    x = model.add(f"{prefix}project", Conv2d(x.shape[0], filters, 1), x)
    x = model.add(f"{prefix}project_{bn}", BatchNorm2d(filters, BN_MOMENTUM), x)
    if stride == 1 and in_channels == filters:
        x = model.add(f"{prefix}{naming.add}", Add(), inputs, x)
    return x
