"""MobileNetV3 Small and Large, layer for layer as `keras.applications.MobileNetV3Small` /
`MobileNetV3Large` build them (Keras 3 names and Keras 3's hard_sigmoid).

Reference: Howard et al., "Searching for MobileNetV3" (ICCV 2019).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

from . import arguments
from .functional import KerasModel
from .imagenet import decode_predictions  # noqa: F401  (the Keras module exports it too)
from .layers import (Add, BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, Flatten,
                     GlobalAveragePooling2D, GlobalMaxPooling2D, HardSwish, ReLU, Rescaling,
                     ZeroPadding2D, correct_pad, make_divisible, squeeze_excite)

BN_MOMENTUM = 0.999
SE_RATIO = 0.25


class Block(NamedTuple):
    """One inverted-residual block. `kernel` "k" and activation "hard_swish" are the model's
    large kernel (5) and hard-swish, both of which the minimalistic variants replace by 3 and
    ReLU; `se` squeeze-excite blocks lose it there too."""

    expansion: float
    filters: int
    kernel: Union[int, str]
    stride: int
    se: bool
    activation: str


SMALL = [
    Block(1, 16, 3, 2, True, "relu"),
    Block(72 / 16, 24, 3, 2, False, "relu"),
    Block(88 / 24, 24, 3, 1, False, "relu"),
    Block(4, 40, "k", 2, True, "hard_swish"),
    Block(6, 40, "k", 1, True, "hard_swish"),
    Block(6, 40, "k", 1, True, "hard_swish"),
    Block(3, 48, "k", 1, True, "hard_swish"),
    Block(3, 48, "k", 1, True, "hard_swish"),
    Block(6, 96, "k", 2, True, "hard_swish"),
    Block(6, 96, "k", 1, True, "hard_swish"),
    Block(6, 96, "k", 1, True, "hard_swish"),
]

LARGE = [
    Block(1, 16, 3, 1, False, "relu"),
    Block(4, 24, 3, 2, False, "relu"),
    Block(3, 24, 3, 1, False, "relu"),
    Block(3, 40, "k", 2, True, "relu"),
    Block(3, 40, "k", 1, True, "relu"),
    Block(3, 40, "k", 1, True, "relu"),
    Block(6, 80, 3, 2, False, "hard_swish"),
    Block(2.5, 80, 3, 1, False, "hard_swish"),
    Block(2.3, 80, 3, 1, False, "hard_swish"),
    Block(2.3, 80, 3, 1, False, "hard_swish"),
    Block(6, 112, 3, 1, True, "hard_swish"),
    Block(6, 112, 3, 1, True, "hard_swish"),
    Block(6, 160, "k", 2, True, "hard_swish"),
    Block(6, 160, "k", 1, True, "hard_swish"),
    Block(6, 160, "k", 1, True, "hard_swish"),
]

ACTIVATIONS = {"relu": ReLU, "hard_swish": HardSwish}

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


def MobileNetV3Small(input_shape=None, alpha=1.0, minimalistic=False, include_top=True,
                     weights="imagenet", input_tensor=None, classes=1000, pooling=None,
                     dropout_rate=0.2, classifier_activation="softmax",
                     include_preprocessing=True, name="MobileNetV3Small") -> KerasModel:
    return _mobilenet_v3("small", SMALL, 1024, **locals())


def MobileNetV3Large(input_shape=None, alpha=1.0, minimalistic=False, include_top=True,
                     weights="imagenet", input_tensor=None, classes=1000, pooling=None,
                     dropout_rate=0.2, classifier_activation="softmax",
                     include_preprocessing=True, name="MobileNetV3Large") -> KerasModel:
    return _mobilenet_v3("large", LARGE, 1280, **locals())


MobileNetV3Small.__doc__ = _DOC.format(name="MobileNetV3Small")
MobileNetV3Large.__doc__ = _DOC.format(name="MobileNetV3Large")


def _mobilenet_v3(model_type, blocks, last_point_ch, *, input_shape, alpha, minimalistic,
                  include_top, weights, input_tensor, classes, pooling, dropout_rate,
                  classifier_activation, include_preprocessing, name) -> KerasModel:
    arguments.check_common(weights, include_top, classes, input_tensor, pooling)
    input_shape = (3, None, None) if input_shape is None else arguments.check_input_shape(input_shape)
    if weights == "imagenet" and (alpha not in (0.75, 1.0) if not minimalistic else alpha != 1.0):
        raise ValueError("If imagenet weights are being loaded, alpha can be one of `0.75`, "
                         "`1.0` for non minimalistic or `1.0` for minimalistic only.")
    if include_top:
        top_activation = arguments.classifier_activation(classifier_activation, weights)
    large_kernel = 3 if minimalistic else 5
    activation = ReLU if minimalistic else HardSwish

    model = KerasModel(
        name, input_shape,
        dict(family=f"mobilenet_v3_{model_type}", input_shape=input_shape, alpha=alpha,
             minimalistic=minimalistic, include_top=include_top, pooling=pooling,
             classes=classes, dropout_rate=dropout_rate,
             include_preprocessing=include_preprocessing))
    x = model.input()
    if include_preprocessing:
        x = model.add("rescaling", Rescaling(1.0 / 127.5, offset=-1.0), x)
    # The stem is not scaled by alpha.
    x = model.add("conv", Conv2d(input_shape[0], 16, 3, stride=2), x)
    x = model.add("conv_bn", BatchNorm2d(16, BN_MOMENTUM), x)
    x = model.add("conv_activation", activation(), x)

    for block_id, block in enumerate(blocks):
        x = _inverted_res_block(
            model, x, block.expansion, make_divisible(block.filters * alpha),
            large_kernel if block.kernel == "k" else block.kernel, block.stride,
            SE_RATIO if block.se and not minimalistic else None,
            ReLU if minimalistic else ACTIVATIONS[block.activation], block_id)

    last_conv_ch = make_divisible(x.shape[0] * 6)
    if alpha > 1.0:
        last_point_ch = make_divisible(last_point_ch * alpha)
    x = model.add("conv_1", Conv2d(x.shape[0], last_conv_ch, 1), x)
    x = model.add("conv_1_bn", BatchNorm2d(last_conv_ch, BN_MOMENTUM), x)
    x = model.add("conv_1_activation", activation(), x)
    model.feature_layer = model.layer_names[-1]

    if include_top:
        x = model.add("global_average_pooling2d", GlobalAveragePooling2D(keepdims=True), x)
        x = model.add("conv_2", Conv2d(last_conv_ch, last_point_ch, 1, bias=True), x)
        x = model.add("conv_2_activation", activation(), x)
        if dropout_rate > 0:
            x = model.add("dropout", Dropout(dropout_rate), x)
        x = model.add("logits", Conv2d(last_point_ch, classes, 1, bias=True), x)
        x = model.add("flatten", Flatten(), x)
        model.add("predictions", top_activation, x)
    elif pooling == "avg":
        model.add("avg_pool", GlobalAveragePooling2D(), x)
    elif pooling == "max":
        model.add("max_pool", GlobalMaxPooling2D(), x)
    return arguments.load_requested_weights(model, weights)


class Naming(NamedTuple):
    """How a Keras code base names the layers of a V3 block and packages its squeeze-excite.
    The applications and KerasCV build the same function under different names."""

    batch_norm: str  # suffix of the BatchNormalization layers
    add: str  # name of the residual Add within the block
    squeeze_excite: Callable  # (model, x, filters, se_ratio, prefix) -> x


APPLICATIONS = Naming("bn", "add", squeeze_excite)


def _inverted_res_block(model, inputs, expansion, filters, kernel_size, stride, se_ratio,
                        activation, block_id, naming: Naming = APPLICATIONS):
    in_channels = inputs.shape[0]
    x = inputs
    prefix = "expanded_conv_"
    bn = naming.batch_norm
    if block_id:
        prefix = f"expanded_conv_{block_id}_"
        expanded = make_divisible(in_channels * expansion)
        x = model.add(f"{prefix}expand", Conv2d(in_channels, expanded, 1), x)
        x = model.add(f"{prefix}expand_{bn}", BatchNorm2d(expanded, BN_MOMENTUM), x)
        x = model.add(f"{prefix}expand_activation", activation(), x)
    if stride == 2:
        x = model.add(f"{prefix}depthwise_pad", ZeroPadding2D(correct_pad(x.shape, kernel_size)), x)
    x = model.add(f"{prefix}depthwise", DepthwiseConv2d(
        x.shape[0], kernel_size, stride=stride, padding="same" if stride == 1 else "valid"), x)
    x = model.add(f"{prefix}depthwise_{bn}", BatchNorm2d(x.shape[0], BN_MOMENTUM), x)
    x = model.add(f"{prefix}depthwise_activation", activation(), x)
    if se_ratio:
        x = naming.squeeze_excite(model, x, x.shape[0], se_ratio, prefix)
    x = model.add(f"{prefix}project", Conv2d(x.shape[0], filters, 1), x)
    x = model.add(f"{prefix}project_{bn}", BatchNorm2d(filters, BN_MOMENTUM), x)
    if stride == 1 and in_channels == filters:
        x = model.add(f"{prefix}{naming.add}", Add(), inputs, x)
    return x


def preprocess_input(x):
    """A pass-through, as in Keras: V3 models scale their input themselves (`rescaling`)."""
    return x
