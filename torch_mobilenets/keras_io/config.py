"""Users' own Keras models, built from the model config their file carries.

A Keras model is a config: its layers, each with a class name, its arguments and the tensors it
is called on (Keras 2 and Keras 3 write these "inbound nodes" differently). This module reads
that config as untrusted input, in three steps, none of which runs anything from the file:

1. `model_spec(raw)`: Keras 2's or Keras 3's config (a Functional or Sequential model, models
   nested in it) -> a *spec*: the same graph in one plain form, each layer's arguments checked
   and reduced to those we compute with. Everything is refused here, before anything is built:
   a `Lambda` or custom class, a layer not in `LAYERS`, an argument we cannot compute exactly,
   references to missing layers, cycles, nesting past `reader.MAX_NESTING`, absurd sizes.
2. `build_model(spec)`: the spec -> a `KerasModel` of our layers (`nn.layers`), each nested
   model a `KerasModel` of its own under its Keras name. A converted checkpoint records the
   spec, so the same call rebuilds the model without Keras.
3. `spec_state_dict(keras_file, model, spec)`: the file's arrays, paired with the layers by
   their place in the config (legacy `.h5`: by layer and variable name; Keras 3: by the group
   Keras 3 names after each layer's class and index), each layer translating its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.mobilenet_v3_backbone import STACKWISE, MobileNetV3Backbone
from ..nn import layers as L
from ..nn.graph import KerasModel, KerasTensor
from . import reader
from .matching import keras_ordered_arrays, match_layers
from .reader import KerasFile, WeightsFileError, snake_case

SPEC_FAMILY = "keras_model"  # what a checkpoint's config names as its family for a spec
MAX_UNITS = 1 << 16  # filters, units, channels
MAX_KERNEL = 64  # kernel, pool and stride sizes
MAX_SIZE = 1 << 16  # input height and width
MAX_NAME = 256
# Modules Keras' own classes come from; anything else is a user's class.
KERAS_MODULES = ("keras", "tf_keras", "keras_cv", "tensorflow")
SUPPORTED = "see the supported layers in docs/your-own-keras-model.md"
# KerasCV classes built here from their recorded arguments: name -> Keras' registered name.
KERAS_CV_CLASSES = {"MobileNetV3Backbone": "keras_cv>MobileNetV3Backbone"}
MAX_BLOCKS = 64  # a KerasCV backbone's stackwise_* entries


class ConfigError(WeightsFileError):
    """A model config we refuse: the message names the layer, its class and what is wrong."""


# ------------------------------------------------------------------------- the spec's layers
@dataclass
class Layer:
    """One layer of a spec: Keras' class name and layer name, the arguments we compute with,
    and what it is called on: ("tensor", layer name) or ("constant", number) per argument."""

    class_name: str
    name: str
    args: dict
    inbound: list
    trainable: bool = True
    # Called with training=False in a file Keras 2 wrote, which honours it in training too
    # (Keras 3 lets the model's own training flag win).
    inference: bool = False

    def to_json(self) -> dict:
        args = dict(self.args)
        if "model" in args:
            args["model"] = args["model"].to_json()
        return {
            "class_name": self.class_name,
            "name": self.name,
            "args": args,
            "inbound": [list(i) for i in self.inbound],
            "trainable": self.trainable,
            "inference": self.inference,
        }


@dataclass
class Spec:
    """A model: its layers in an order where each comes after what it reads, its input layer
    and its outputs (layer names), and the Keras major version that wrote it."""

    name: str
    layers: list
    input: str
    outputs: list
    keras_version: int
    trainable: bool = True

    def to_json(self) -> dict:
        return {
            "class_name": "Functional",
            "name": self.name,
            "layers": [layer.to_json() for layer in self.layers],
            "input": self.input,
            "outputs": list(self.outputs),
            "keras_version": self.keras_version,
            "trainable": self.trainable,
        }


def _where(layer: dict | Layer | str, class_name: str = "") -> str:
    if isinstance(layer, Layer):
        return f"layer {layer.name!r} ({layer.class_name})"
    if isinstance(layer, str):
        return f"layer {layer!r}" + (f" ({class_name})" if class_name else "")
    return f"layer {_name_of(layer)!r} ({layer.get('class_name')})"


def _name_of(entry: dict) -> str:
    name = entry.get("name")
    if name is None and isinstance(entry.get("config"), dict):
        name = entry["config"].get("name")
    return name if isinstance(name, str) else "?"


# --------------------------------------------------------------------- checked arguments
class _Args:
    """A layer's Keras config, read one checked argument at a time."""

    def __init__(self, config: dict, where: str):
        self.config, self.where = config, where

    def fail(self, key: str, expected: str) -> ConfigError:
        value = reader.one_line(repr(self.config.get(key)))[:80]
        return ConfigError(f"{self.where}: argument {key}={value}: expected {expected}")

    def get(self, key: str, default=None):
        return self.config.get(key, default)

    def integer(self, key: str, default=None, low: int = 1, high: int = MAX_UNITS) -> int:
        value = self.config.get(key, default)
        if type(value) is not int or not low <= value <= high:
            raise self.fail(key, f"an integer from {low} to {high}")
        return value

    def pair(self, key: str, default=None, high: int = MAX_KERNEL) -> list:
        value = self.config.get(key, default)
        if type(value) is int:
            value = [value, value]
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(type(v) is int and 1 <= v <= high for v in value)
        ):
            raise self.fail(key, f"one or two integers from 1 to {high}")
        return list(value)

    def number(self, key: str, default=None) -> float:
        value: Any = self.config.get(key, default)
        if type(value) not in (int, float) or not math.isfinite(value):
            raise self.fail(key, "a finite number")
        return float(value)

    def optional_number(self, key: str) -> float | None:
        return None if self.config.get(key) is None else self.number(key)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if type(value) is not bool:
            raise self.fail(key, "true or false")
        return value

    def choice(self, key: str, default, choices: tuple):
        value = self.config.get(key, default)
        if value not in choices:
            raise self.fail(key, f"one of {list(choices)}")
        return value

    def channels_last(self) -> None:
        if self.config.get("data_format", "channels_last") not in ("channels_last", None):
            raise self.fail("data_format", "'channels_last' (Keras' default)")

    def last_axis(self, key: str = "axis") -> dict:
        """The channel axis: -1, or the last one by number (checked against the input's rank
        when the layer is made)."""
        axis = self.config.get(key, -1)
        if isinstance(axis, list) and len(axis) == 1:
            axis = axis[0]
        if axis not in (-1, 1, 3):
            raise self.fail(key, "-1, the channels")
        return {"axis": axis}

    def activation(self, key: str = "activation") -> str:
        value = self.config.get(key, "linear")
        if value is None:
            return "linear"
        if isinstance(value, dict) and isinstance(value.get("config"), str):
            value = value["config"]  # Keras 3 may write {"class_name": "function", ...}
        if not isinstance(value, str) or value not in L.ACTIVATIONS:
            raise self.fail(key, f"a Keras activation: one of {sorted(L.ACTIVATIONS)}")
        return value

    def numbers(self, key: str, count_high: int = MAX_UNITS):
        """A number, or a flat list of them (one per channel)."""
        value: Any = self.config.get(key)
        if type(value) in (int, float) and math.isfinite(value):
            return float(value)
        if (
            isinstance(value, list)
            and 0 < len(value) <= count_high
            and all(type(v) in (int, float) and math.isfinite(v) for v in value)
        ):
            return [float(v) for v in value]
        raise self.fail(key, "a number or a list of numbers, one per channel")


def _conv_args(a: _Args) -> dict:
    a.channels_last()
    args = {
        "kernel_size": a.pair("kernel_size"),
        "strides": a.pair("strides", 1),
        "padding": a.choice("padding", "valid", ("valid", "same")),
        "dilation_rate": a.pair("dilation_rate", 1),
        "use_bias": a.boolean("use_bias", True),
        "activation": a.activation(),
    }
    if args["strides"] != [1, 1] and args["dilation_rate"] != [1, 1]:
        raise a.fail("dilation_rate", "1 where strides are not (as Keras requires)")
    return args


def _parse_conv(a: _Args) -> dict:
    return {**_conv_args(a), "filters": a.integer("filters"), "groups": a.integer("groups", 1)}


def _parse_depthwise(a: _Args) -> dict:
    return {**_conv_args(a), "depth_multiplier": a.integer("depth_multiplier", 1)}


def _parse_separable(a: _Args) -> dict:
    return {**_parse_depthwise(a), "filters": a.integer("filters")}


def _parse_batch_norm(a: _Args) -> dict:
    axis = a.last_axis()
    if a.get("renorm"):
        raise a.fail("renorm", "false")
    return {
        **axis,
        "momentum": a.number("momentum", 0.99),
        "epsilon": a.number("epsilon", 1e-3),
        "center": a.boolean("center", True),
        "scale": a.boolean("scale", True),
    }


def _parse_layer_norm(a: _Args) -> dict:
    axis = a.last_axis()
    if a.get("rms_scaling"):
        raise a.fail("rms_scaling", "false")
    return {
        **axis,
        "epsilon": a.number("epsilon", 1e-3),
        "center": a.boolean("center", True),
        "scale": a.boolean("scale", True),
    }


def _parse_dense(a: _Args) -> dict:
    return {
        "units": a.integer("units"),
        "activation": a.activation(),
        "use_bias": a.boolean("use_bias", True),
    }


def _parse_relu(a: _Args) -> dict:
    slope = a.number("negative_slope", 0.0)
    return {
        "max_value": a.optional_number("max_value"),
        "negative_slope": slope,
        "threshold": a.number("threshold", 0.0),
    }


def _parse_leaky_relu(a: _Args) -> dict:
    key = "negative_slope" if "negative_slope" in a.config else "alpha"
    return {"negative_slope": a.number(key, 0.3)}


def _parse_padding(a: _Args) -> dict:
    a.channels_last()
    value = a.get("padding", 1)
    if type(value) is int:
        value = [[value, value], [value, value]]
    elif isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        value = [[value[0], value[0]], [value[1], value[1]]]
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(
            isinstance(v, list)
            and len(v) == 2
            and all(type(n) is int and 0 <= n <= MAX_KERNEL for n in v)
            for v in value
        )
    )
    if not ok:
        raise a.fail("padding", f"an int, two ints or two pairs of ints from 0 to {MAX_KERNEL}")
    return {"padding": value}


def _parse_pooling(a: _Args) -> dict:
    a.channels_last()
    pool = a.pair("pool_size", 2)
    strides = a.get("strides")
    return {
        "pool_size": pool,
        "strides": pool if strides is None else a.pair("strides"),
        "padding": a.choice("padding", "valid", ("valid", "same")),
    }


def _parse_crop(a: _Args) -> dict:
    a.channels_last()
    return {
        "height": a.integer("height", high=MAX_SIZE),
        "width": a.integer("width", high=MAX_SIZE),
    }


def _parse_resizing(a: _Args) -> dict:
    # Bicubic and the others weigh neighbours unlike PyTorch's kernels; antialiasing and
    # padding to the aspect ratio are not computed here.
    interpolation = a.choice("interpolation", "bilinear", ("bilinear", "nearest"))
    for key in ("antialias", "pad_to_aspect_ratio"):
        if a.boolean(key, False):
            raise a.fail(key, "false (not computed here)")
    return {
        **_parse_crop(a),
        "interpolation": interpolation,
        "crop_to_aspect_ratio": a.boolean("crop_to_aspect_ratio", False),
    }


def _parse_backbone(a: _Args) -> dict:
    """KerasCV's `MobileNetV3Backbone` arguments, each entry checked."""
    if a.get("input_tensor") is not None:
        raise a.fail("input_tensor", "null")
    stacks = {}
    for key in STACKWISE:
        value = a.get(key)
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_BLOCKS:
            raise a.fail(key, f"a list of 1 to {MAX_BLOCKS} entries, one per block")
        stacks[key] = value
    checks = {
        "stackwise_expansion": lambda v: _is_number(v) and 0 < v <= MAX_KERNEL,
        "stackwise_filters": lambda v: type(v) is int and 1 <= v <= MAX_UNITS,
        "stackwise_kernel_size": lambda v: type(v) is int and 1 <= v <= MAX_KERNEL,
        "stackwise_stride": lambda v: type(v) is int and 1 <= v <= MAX_KERNEL,
        "stackwise_se_ratio": lambda v: v is None or (_is_number(v) and 0 < v <= 1),
        "stackwise_activation": lambda v: v in ("relu", "hard_swish"),
    }
    for key, fits in checks.items():
        if not all(fits(v) for v in stacks[key]):
            raise a.fail(key, "entries of KerasCV's kinds and ranges")
    alpha = a.number("alpha", 1.0)
    if not 0 < alpha <= MAX_KERNEL:
        raise a.fail("alpha", f"a number above 0 and at most {MAX_KERNEL}")
    shape = a.get("input_shape")
    if shape is not None and not isinstance(shape, list):
        raise a.fail("input_shape", "(height, width, channels)")
    return {
        **stacks,
        "name": a.config.get("name") if isinstance(a.config.get("name"), str) else "backbone",
        "include_rescaling": a.boolean("include_rescaling", True),
        "alpha": alpha,
        # channels first, as our models take it
        "input_shape": None if shape is None else _image_shape([None, *shape], a.where),
    }


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _make_backbone(args: dict, shapes: list, _: int) -> nn.Module:
    input_shape = tuple(args["input_shape"] or (3, None, None))
    if any(e is not None and e != s for e, s in zip(input_shape, shapes[0])):
        raise ValueError(f"its input is {input_shape}, it is called on {shapes[0]}")
    stacks = {key: args[key] for key in STACKWISE}
    return MobileNetV3Backbone(
        **stacks,
        include_rescaling=args["include_rescaling"],
        input_shape=input_shape,
        alpha=args["alpha"],
        name=args["name"],
    )


def _parse_global_pooling(a: _Args) -> dict:
    a.channels_last()
    return {"keepdims": a.boolean("keepdims", False)}


def _parse_reshape(a: _Args) -> dict:
    target = a.get("target_shape")
    if (
        not isinstance(target, list | tuple)
        or len(target) not in (1, 3)
        or not all(type(n) is int and 1 <= n <= MAX_UNITS * MAX_SIZE for n in target)
    ):
        raise a.fail("target_shape", "(features,) or (height, width, channels), all given")
    return {"target_shape": list(target)}


def _parse_rescaling(a: _Args) -> dict:
    return {
        "scale": a.numbers("scale"),
        "offset": a.numbers("offset") if "offset" in a.config else 0.0,
    }


def _parse_normalization(a: _Args) -> dict:
    axis = a.last_axis()
    if a.get("invert"):
        raise a.fail("invert", "false")
    mean, variance = a.get("mean"), a.get("variance")
    if (mean is None) != (variance is None):
        raise a.fail("mean", "mean and variance given together, or both adapted")
    if mean is None:
        return {**axis, "mean": None, "variance": None}
    return {**axis, "mean": a.numbers("mean"), "variance": a.numbers("variance")}


def _parse_rate(a: _Args) -> dict:
    rate = a.number("rate", 0.5)
    if not 0 <= rate < 1:
        raise a.fail("rate", "a number in [0, 1)")
    return {"rate": rate}


def _parse_merge_axis(a: _Args) -> dict:
    return a.last_axis()


def _no_args(a: _Args) -> dict:
    return {}


def _parse_activation(a: _Args) -> dict:
    return {"activation": a.activation()}


def _parse_softmax(a: _Args) -> dict:
    return a.last_axis()


def _parse_prelu(a: _Args) -> dict:
    shared = a.get("shared_axes") or []
    if isinstance(shared, int):
        shared = [shared]
    if not isinstance(shared, list) or not all(s in (1, 2, 3) for s in shared):
        raise a.fail("shared_axes", "axes among 1, 2, 3")
    return {"shared_axes": sorted(set(shared))}


def _parse_elu(a: _Args) -> dict:
    return {"alpha": a.number("alpha", 1.0)}


def _parse_noise(a: _Args) -> dict:
    return {"stddev": a.number("stddev", 0.0)}


# ----------------------------------------------------------------- the spec's layers, built
Shape = tuple
Maker = Callable[[dict, list, int], nn.Module]


def _channels(shapes: list) -> int:
    channels = shapes[0][0]
    if channels is None:
        raise ValueError("the input's channel count must be static")
    return channels


def _make_conv(args: dict, shapes: list, _: int) -> nn.Module:
    return L.Conv2d(
        _channels(shapes),
        args["filters"],
        tuple(args["kernel_size"]),
        stride=tuple(args["strides"]),
        padding=args["padding"],
        bias=args["use_bias"],
        groups=args["groups"],
        dilation=tuple(args["dilation_rate"]),
    )


def _make_depthwise(args: dict, shapes: list, _: int) -> nn.Module:
    return L.DepthwiseConv2d(
        _channels(shapes),
        tuple(args["kernel_size"]),
        stride=tuple(args["strides"]),
        padding=args["padding"],
        depth_multiplier=args["depth_multiplier"],
        bias=args["use_bias"],
        dilation=tuple(args["dilation_rate"]),
    )


def _make_separable(args: dict, shapes: list, _: int) -> nn.Module:
    return L.SeparableConv2d(
        _channels(shapes),
        args["filters"],
        tuple(args["kernel_size"]),
        tuple(args["strides"]),
        args["padding"],
        args["depth_multiplier"],
        args["use_bias"],
        tuple(args["dilation_rate"]),
    )


def _make_batch_norm(args: dict, shapes: list, _: int) -> nn.Module:
    return L.BatchNorm2d(
        _channels(shapes),
        args["momentum"],
        args["epsilon"],
        args.get("center", True),  # a checkpoint written before they were read
        args.get("scale", True),
    )


def activation(name: str, keras_version: int) -> nn.Module:
    """Keras' activation `name` as Keras `keras_version` computes it."""
    table = L.KERAS2_ACTIVATIONS if keras_version == 2 else L.ACTIVATIONS
    return table[name]()


def _make_dense(args: dict, shapes: list, keras_version: int) -> nn.Module:
    if len(shapes[0]) != 1:
        raise ValueError(
            f"Dense here reads flat (N, features) input, got shape {shapes[0]}: flatten or pool "
            "the map first"
        )
    act = None if args["activation"] == "linear" else activation(args["activation"], keras_version)
    return L.Dense(_channels(shapes), args["units"], act, args["use_bias"])


def _make_relu(args: dict, shapes: list, _: int) -> nn.Module:
    max_value, slope, threshold = args["max_value"], args["negative_slope"], args["threshold"]
    if slope == 0 and threshold == 0 and max_value in (None, 6.0):
        return L.ReLU() if max_value is None else L.ReLU6()
    return L.ClippedReLU(max_value, slope, threshold)


def _make_zero_padding(args: dict, shapes: list, _: int) -> nn.Module:
    (top, bottom), (left, right) = args["padding"]
    return L.ZeroPadding2D(((top, bottom), (left, right)))


def _make_rescaling(args: dict, shapes: list, _: int) -> nn.Module:
    scale, offset = args["scale"], args["offset"]
    if isinstance(scale, float) and isinstance(offset, float):
        return L.Rescaling(scale, offset)
    return L.Chain(L.Scale("multiply", scale), L.Scale("add", offset))


def _make_normalization(args: dict, shapes: list, _: int) -> nn.Module:
    channels = _channels(shapes)
    for key in ("mean", "variance"):
        value = args[key]
        if isinstance(value, list) and len(value) not in (1, channels):
            raise ValueError(f"{key} has {len(value)} values for {channels} channels")
    return L.Normalization(channels, args["mean"], args["variance"], args["mean"] is None)


def _make_prelu(args: dict, shapes: list, _: int) -> nn.Module:
    return L.PReLU(shapes[0], args["shared_axes"])


def _make_layer_norm(args: dict, shapes: list, _: int) -> nn.Module:
    return L.LayerNormalization(_channels(shapes), args["epsilon"], args["center"], args["scale"])


def _const(make: Callable[[dict], nn.Module]) -> Maker:
    return lambda args, shapes, version: make(args)


def _spatial_input(maker: Maker) -> Maker:
    def make(args: dict, shapes: list, version: int) -> nn.Module:
        if len(shapes[0]) != 3:
            raise ValueError(f"expects a (height, width, channels) map, got shape {shapes[0]}")
        return maker(args, shapes, version)

    return make


@dataclass(frozen=True)
class LayerKind:
    """A Keras layer class we compute: how to read its config, how to make our module, and
    what it is: 'weighted', 'merge' (several inputs), 'random' (identity at inference)."""

    parse: Callable[[_Args], dict]
    make: Maker
    kind: str = ""


_IDENTITY = _const(lambda args: L.Identity("augmentation"))


def _random(class_name: str) -> LayerKind:
    return LayerKind(_no_args, _const(lambda args: L.Identity(class_name)), "random")


# Keras' augmentation layers, each measured to return its input unchanged at inference
# (Keras 3.15). RandomCrop is not among them: Keras 2 crops at inference.
RANDOM_LAYERS = [
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "RandomGrayscale",
    "RandomHue",
    "RandomSaturation",
    "RandomSharpness",
    "RandomShear",
    "RandomColorJitter",
    "RandomPosterization",
    "RandomErasing",
    "RandomGaussianBlur",
    "RandomInvert",
    "RandomPerspective",
    "RandomElasticTransform",
    "RandomColorDegeneration",
]
# Every Keras layer class a user's model may hold, by Keras class name.
LAYERS: dict[str, LayerKind] = {
    # MobileNet bases, and small convolutional heads
    "Conv2D": LayerKind(_parse_conv, _spatial_input(_make_conv), "weighted"),
    "DepthwiseConv2D": LayerKind(_parse_depthwise, _spatial_input(_make_depthwise), "weighted"),
    "SeparableConv2D": LayerKind(_parse_separable, _spatial_input(_make_separable), "weighted"),
    "BatchNormalization": LayerKind(_parse_batch_norm, _make_batch_norm, "weighted"),
    "LayerNormalization": LayerKind(_parse_layer_norm, _make_layer_norm, "weighted"),
    "Dense": LayerKind(_parse_dense, _make_dense, "weighted"),
    "PReLU": LayerKind(_parse_prelu, _make_prelu, "weighted"),
    "ZeroPadding2D": LayerKind(_parse_padding, _spatial_input(_make_zero_padding)),
    "MaxPooling2D": LayerKind(
        _parse_pooling,
        _spatial_input(
            _const(lambda a: L.Pooling2D("max", a["pool_size"], a["strides"], a["padding"]))
        ),
    ),
    "AveragePooling2D": LayerKind(
        _parse_pooling,
        _spatial_input(
            _const(lambda a: L.Pooling2D("avg", a["pool_size"], a["strides"], a["padding"]))
        ),
    ),
    "GlobalAveragePooling2D": LayerKind(
        _parse_global_pooling,
        _spatial_input(_const(lambda a: L.GlobalPooling2D("avg", a["keepdims"]))),
    ),
    "GlobalMaxPooling2D": LayerKind(
        _parse_global_pooling,
        _spatial_input(_const(lambda a: L.GlobalPooling2D("max", a["keepdims"]))),
    ),
    "Flatten": LayerKind(_no_args, _const(lambda a: L.Reshape())),
    "Reshape": LayerKind(_parse_reshape, _const(lambda a: L.Reshape(tuple(a["target_shape"])))),
    # activations
    "Activation": LayerKind(_parse_activation, lambda a, s, v: activation(a["activation"], v)),
    "ReLU": LayerKind(_parse_relu, _make_relu),
    "LeakyReLU": LayerKind(_parse_leaky_relu, _const(lambda a: L.LeakyReLU(a["negative_slope"]))),
    "ELU": LayerKind(_parse_elu, _const(lambda a: L.ELU(a["alpha"]))),
    "Softmax": LayerKind(_parse_softmax, _const(lambda a: L.Softmax())),
    # preprocessing
    "Rescaling": LayerKind(_parse_rescaling, _make_rescaling),
    # KerasCV's backbone, nested in a user's model: built here, its weights paired as a whole
    "MobileNetV3Backbone": LayerKind(_parse_backbone, _spatial_input(_make_backbone), "weighted"),
    "Resizing": LayerKind(
        _parse_resizing,
        _spatial_input(
            _const(
                lambda a: L.Resizing(
                    a["height"], a["width"], a["interpolation"], a["crop_to_aspect_ratio"]
                )
            )
        ),
    ),
    "CenterCrop": LayerKind(
        _parse_crop, _spatial_input(_const(lambda a: L.CenterCrop(a["height"], a["width"])))
    ),
    "Normalization": LayerKind(_parse_normalization, _make_normalization, "weighted"),
    # the identity at inference
    "Dropout": LayerKind(_parse_rate, _const(lambda a: L.Dropout(a["rate"])), "dropout"),
    "SpatialDropout2D": LayerKind(
        _parse_rate, _const(lambda a: L.SpatialDropout2D(a["rate"])), "dropout"
    ),
    "GaussianDropout": LayerKind(
        _parse_rate, _const(lambda a: L.GaussianDropout(a["rate"])), "dropout"
    ),
    "AlphaDropout": LayerKind(_parse_rate, _const(lambda a: L.AlphaDropout(a["rate"])), "dropout"),
    "GaussianNoise": LayerKind(
        _parse_noise, _const(lambda a: L.GaussianNoise(a["stddev"])), "dropout"
    ),
    **{name: _random(name) for name in RANDOM_LAYERS},
    # merges
    "Add": LayerKind(_no_args, _const(lambda a: L.Merge("add")), "merge"),
    "Subtract": LayerKind(_no_args, _const(lambda a: L.Merge("subtract")), "merge"),
    "Multiply": LayerKind(_no_args, _const(lambda a: L.Merge("multiply")), "merge"),
    "Average": LayerKind(_no_args, _const(lambda a: L.Merge("average")), "merge"),
    "Maximum": LayerKind(_no_args, _const(lambda a: L.Merge("maximum")), "merge"),
    "Minimum": LayerKind(_no_args, _const(lambda a: L.Merge("minimum")), "merge"),
    "Concatenate": LayerKind(_parse_merge_axis, _const(lambda a: L.Concatenate()), "merge"),
}
MODELS = ("Functional", "Model", "Sequential")
# Keras 3's operations recorded in a functional graph (`keras.src.ops.numpy`), and Keras 2's
# TFOpLambda functions, with a constant or a second tensor: our Scale or Merge op names.
OPERATIONS = {
    "Add": "add",
    "Subtract": "subtract",
    "Multiply": "multiply",
    "TrueDivide": "divide",
    "Divide": "divide",
}
TF_FUNCTIONS = {
    "__operators__.add": "add",
    "math.add": "add",
    "math.subtract": "subtract",
    "math.multiply": "multiply",
    "math.truediv": "divide",
    "math.divide": "divide",
}


# ------------------------------------------------------------------------ reading a config
def is_model_config(raw) -> bool:
    """Whether `raw` is a Keras model config we read (a Functional or Sequential model)."""
    return (
        isinstance(raw, dict)
        and raw.get("class_name") in MODELS
        and isinstance(raw.get("config"), dict)
        and isinstance(raw["config"].get("layers"), list)
    )


def model_spec(raw: dict, keras_version: int | None = None) -> Spec:
    """The spec of a Keras model config (`model.to_json()`, a `.keras` archive's config.json, a
    full-model `.h5`'s `model_config`); ConfigError, naming the layer, for what we refuse."""
    if not is_model_config(raw):
        what = raw.get("class_name") if isinstance(raw, dict) else raw
        raise ConfigError(
            "not a Keras model config: expected a Functional or Sequential model "
            f"(class_name {reader.one_line(repr(what))[:60]})"
        )
    version = keras_version or _writer(raw)
    counter = [0]
    return _model(raw, version, 0, counter)


def _writer(raw: dict) -> int:
    """Which Keras wrote a config: Keras 3 writes dtype policies and call arguments as dicts,
    Keras 2 plain dtypes and inbound nodes as lists."""
    text_hints = []
    for entry in raw["config"]["layers"]:
        if not isinstance(entry, dict):
            continue
        nodes = entry.get("inbound_nodes")
        if isinstance(nodes, list) and nodes:
            return 3 if isinstance(nodes[0], dict) else 2
        config = entry.get("config")
        if isinstance(config, dict):
            if "batch_shape" in config or isinstance(config.get("dtype"), dict):
                return 3
            if "batch_input_shape" in config:
                text_hints.append(2)
    return 2 if text_hints else 3


def _model(raw: dict, version: int, depth: int, counter: list) -> Spec:
    config = raw["config"]
    name = config.get("name") or raw.get("name") or "model"
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise ConfigError(f"a model name over {MAX_NAME} characters or not text")
    if depth > reader.MAX_NESTING:
        raise ConfigError(f"model {name!r}: models nested more than {reader.MAX_NESTING} deep")
    entries = config["layers"]
    if len(entries) + counter[0] > reader.MAX_LAYERS:
        raise ConfigError(f"model {name!r}: over {reader.MAX_LAYERS} layers")
    counter[0] += len(entries)
    if raw["class_name"] == "Sequential":
        layers, input_name = _sequential_layers(entries, name, version, depth, counter)
        outputs = [layers[-1].name]
    else:
        layers = [_layer(e, version, depth, counter) for e in entries]
        input_name = _single_reference(config.get("input_layers"), f"model {name!r}: input_layers")
        outputs = _references(config.get("output_layers"), f"model {name!r}: output_layers")
    trainable = config.get("trainable", raw.get("trainable", True)) is not False
    return _checked(Spec(name, layers, input_name, outputs, version, trainable))


def _sequential_layers(entries: list, name: str, version: int, depth: int, counter: list):
    layers: list[Layer] = []
    for entry in entries:
        layer = _layer(entry, version, depth, counter, sequential=True)
        if layers:
            layer.inbound = [("tensor", layers[-1].name)]
        elif layer.class_name != "InputLayer":  # Keras 2 records the shape on the first layer
            shape = _batch_shape(entry.get("config") or {}, _where(entry)) or _build_shape(entry)
            if shape is None:
                raise ConfigError(
                    f"Sequential model {name!r} records no input shape (it was never built)"
                )
            layers.append(Layer("InputLayer", f"{name}_input", {"shape": shape}, []))
            layer.inbound = [("tensor", layers[-1].name)]
        layers.append(layer)
    if not layers or layers[0].class_name != "InputLayer" or len(layers) < 2:
        raise ConfigError(f"Sequential model {name!r} has no layers after its input")
    return layers, layers[0].name


def _build_shape(entry: dict):
    build = entry.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    return _image_shape(shape, _where(entry)) if shape is not None else None


def _layer(entry, version: int, depth: int, counter: list, sequential: bool = False) -> Layer:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ConfigError(
            f"a layer entry that is not a Keras layer config: {reader.one_line(entry)[:80]}"
        )
    class_name, name = entry["class_name"], _name_of(entry)
    where = _where(entry)
    if name == "?" or len(name) > MAX_NAME:
        raise ConfigError(f"{where}: a layer without a name, or one over {MAX_NAME} characters")
    config = entry.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: its config is not a JSON object")
    _refuse_foreign(entry, where)
    trainable = config.get("trainable", True) is not False
    inbound, training = ([], None) if sequential else _inbound(entry, version, where)
    if version == 2 and training is True:
        raise ConfigError(
            f"{where}: called with training=True, which Keras 2 keeps at inference (random "
            "dropout or batch statistics in predictions); not computed here"
        )
    inference = version == 2 and training is False
    if class_name in MODELS and isinstance(config.get("layers"), list):
        inner = _model(entry, version, depth + 1, counter)
        inner.trainable = trainable and inner.trainable
        return Layer(class_name, name, {"model": inner}, inbound, trainable, inference)
    if class_name == "InputLayer":
        shape = _batch_shape(config, where)
        if shape is None:
            raise ConfigError(f"{where}: no input shape")
        return Layer("InputLayer", name, {"shape": shape}, [])
    if class_name == "TFOpLambda" or (class_name in OPERATIONS and _is_operation(entry, inbound)):
        return _operation(entry, class_name, name, config, inbound, where)
    kind = LAYERS.get(class_name)
    if kind is None:
        raise ConfigError(f"{where}: a layer class torch-mobilenets does not compute; {SUPPORTED}")
    args = kind.parse(_Args(config, where))
    expected = 2 if kind.kind == "merge" else 1
    tensors = [i for i in inbound if i[0] == "tensor"]
    wrong = len(tensors) != len(inbound) or (
        len(tensors) < expected if kind.kind == "merge" else len(tensors) != 1
    )
    if wrong and not sequential:
        raise ConfigError(
            f"{where}: called on {len(tensors)} tensors and {len(inbound) - len(tensors)} "
            f"constants; expected {'two or more tensors' if expected == 2 else 'one tensor'}"
        )
    return Layer(class_name, name, args, inbound, trainable, inference)


def _refuse_foreign(entry: dict, where: str) -> None:
    """Lambda layers hold code, custom classes code of their own: neither is ever run."""
    class_name = entry["class_name"]
    if class_name == "Lambda":
        raise ConfigError(
            f"{where}: a Lambda layer holds Python code, which is never run from a file; "
            f"rewrite it with Keras layers ({SUPPORTED})"
        )
    module = entry.get("module")
    registered = entry.get("registered_name")
    if class_name in KERAS_CV_CLASSES and registered == KERAS_CV_CLASSES[class_name]:
        return  # a class this project builds itself, from the arguments the config records
    custom = (isinstance(module, str) and module.split(".")[0] not in KERAS_MODULES) or (
        isinstance(registered, str) and ">" in registered
    )
    if custom:
        raise ConfigError(
            f"{where}: a custom class ({registered or module}), whose code is not in the file and "
            f"is never imported; {SUPPORTED}"
        )


def _is_operation(entry: dict, inbound: list) -> bool:
    """Keras 3's `x + 3.0` is an operation `Add`, as its merge layer is a layer `Add`: the
    module tells them apart where the config records it, a constant operand where not."""
    module = entry.get("module")
    if isinstance(module, str) and module.startswith("keras.src.ops"):
        return True
    return entry["class_name"] not in LAYERS or any(kind == "constant" for kind, _ in inbound)


def _operation(entry: dict, class_name: str, name: str, config: dict, inbound: list, where: str):
    if class_name == "TFOpLambda":
        function = config.get("function")
        op = TF_FUNCTIONS.get(function) if isinstance(function, str) else None
        if op is None:
            raise ConfigError(
                f"{where}: TensorFlow function {reader.one_line(repr(function))[:60]} is not "
                f"one we compute (we do {sorted(TF_FUNCTIONS)}); {SUPPORTED}"
            )
    else:
        op = OPERATIONS[class_name]
    tensors = [i for i in inbound if i[0] == "tensor"]
    if len(inbound) != 2 or not tensors:
        raise ConfigError(
            f"{where}: {op} of {len(inbound)} arguments ({len(tensors)} tensors); expected a "
            "tensor and a number, or two tensors"
        )
    if len(tensors) == 2:
        return Layer("Merge", name, {"op": op}, inbound)
    constant_first = inbound[0][0] == "constant"
    constant = inbound[0 if constant_first else 1][1]
    return Layer(
        "Scale", name, {"op": op, "constant": constant, "reverse": constant_first}, tensors
    )


def _batch_shape(config: dict, where: str):
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if shape is None:
        return None
    if not isinstance(shape, list) or len(shape) < 1:
        raise ConfigError(f"{where}: an input shape that is not a list")
    return _image_shape(shape, where)


def _image_shape(shape, where: str) -> list:
    """Keras' (batch, height, width, channels) -> our [channels, height, width]."""
    if not isinstance(shape, list) or len(shape) != 4:
        raise ConfigError(
            f"{where}: input shape {reader.one_line(repr(shape))[:60]}; expected an image, "
            "(batch, height, width, channels)"
        )
    height, width, channels = shape[1:]
    for value in (height, width):
        if value is not None and (type(value) is not int or not 1 <= value <= MAX_SIZE):
            raise ConfigError(f"{where}: input size {value!r}; expected 1 to {MAX_SIZE} or None")
    if type(channels) is not int or not 1 <= channels <= MAX_UNITS:
        raise ConfigError(f"{where}: {channels!r} input channels; expected a static count")
    return [channels, height, width]


def _tensor_ref(value) -> str | None:
    """The layer a Keras 2 or Keras 3 tensor reference names, or None if it is none."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        value = history
    if (
        isinstance(value, list)
        and len(value) >= 3
        and isinstance(value[0], str)
        and type(value[1]) is int
        and type(value[2]) is int
    ):
        if value[2] != 0:
            raise ConfigError(
                f"a reference to output {value[2]} of layer {value[0]!r}: layers with several "
                "outputs are not supported"
            )
        return value[0]
    return None


def _argument(value, where: str) -> tuple:
    ref = _tensor_ref(value)
    if ref is not None:
        return ("tensor", ref)
    if type(value) in (int, float) and math.isfinite(value):
        return ("constant", float(value))
    raise ConfigError(
        f"{where}: argument {reader.one_line(repr(value))[:60]} is neither a tensor nor a number"
    )


def _inbound(entry: dict, version: int, where: str) -> tuple[list, bool | None]:
    """What a layer is called on, as ("tensor", layer name) and ("constant", number) pairs,
    and the `training` argument it is called with, if any."""
    nodes = entry.get("inbound_nodes", [])
    if not isinstance(nodes, list):
        raise ConfigError(f"{where}: inbound_nodes is not a list")
    if not nodes:
        return [], None
    if len(nodes) > 1:
        raise ConfigError(
            f"{where}: called {len(nodes)} times; a layer shared between calls is not supported"
        )
    node = nodes[0]
    args: list = []
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        for value in node.get("args") or []:
            if isinstance(value, list) and value and _tensor_ref(value) is None:
                args += [_argument(v, where) for v in value]  # a merge's list of tensors
            else:
                args.append(_argument(value, where))
        kwargs = node.get("kwargs") or {}
    else:  # Keras 2: [[layer, node, tensor, kwargs], ...], a TFOpLambda's entry unwrapped
        node_entries = [node] if node and isinstance(node[0], str) else node
        kwargs = {}
        for value in node_entries:
            if not isinstance(value, list):
                raise ConfigError(f"{where}: an inbound node that is not a list")
            args.append(_argument(value, where))
            if len(value) > 3 and isinstance(value[3], dict):
                kwargs.update(value[3])
    training = (kwargs or {}).get("training")
    for key, value in (kwargs or {}).items():
        if key in ("training", "mask", "name") or value is None:
            continue
        if key == "y":  # Keras 2's TFOpLambda: the second operand
            args.append(_argument(value, where))
            continue
        raise ConfigError(
            f"{where}: called with argument {key}={reader.one_line(repr(value))[:60]}"
        )
    return args, training if isinstance(training, bool) else None


def _references(value, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: missing")
    if _tensor_ref(value) is not None:  # Keras 3 writes a single one unwrapped
        return [_tensor_ref(value)]
    refs = [_tensor_ref(v) for v in value]
    if any(r is None for r in refs):
        raise ConfigError(f"{where}: not a list of layer references")
    return refs


def _single_reference(value, where: str) -> str:
    refs = _references(value, where)
    if len(refs) != 1:
        raise ConfigError(f"{where}: {len(refs)} inputs; a model here takes one image input")
    return refs[0]


def _checked(spec: Spec) -> Spec:
    """Names unique, every reference to a layer of this model, no cycles: the layers put in an
    order where each comes after what it reads."""
    by_name: dict[str, Layer] = {}
    for layer in spec.layers:
        if layer.name in by_name:
            raise ConfigError(f"model {spec.name!r}: two layers named {layer.name!r}")
        by_name[layer.name] = layer
    for ref in [spec.input, *spec.outputs]:
        if ref not in by_name:
            raise ConfigError(f"model {spec.name!r}: names layer {ref!r}, which it does not hold")
    if by_name[spec.input].class_name != "InputLayer":
        raise ConfigError(f"model {spec.name!r}: its input {spec.input!r} is no InputLayer")
    for layer in spec.layers:
        for kind, ref in layer.inbound:
            if kind == "tensor" and ref not in by_name:
                raise ConfigError(
                    f"{_where(layer)}: reads layer {ref!r}, which the model does not hold"
                )
        if layer.class_name == "InputLayer" and layer.name != spec.input:
            raise ConfigError(f"{_where(layer)}: a second input; a model here takes one")
    order: list[Layer] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done
    for layer in spec.layers:
        stack = [(layer, iter(layer.inbound))]
        if state.get(layer.name) == 2:
            continue
        state[layer.name] = 1
        while stack:
            current, pending = stack[-1]
            for kind, ref in pending:
                if kind != "tensor":
                    continue
                if state.get(ref) == 1:
                    raise ConfigError(
                        f"{_where(current)}: its inputs loop back to it (a cycle through {ref!r})"
                    )
                if state.get(ref) is None:
                    state[ref] = 1
                    stack.append((by_name[ref], iter(by_name[ref].inbound)))
                    break
            else:
                state[current.name] = 2
                order.append(current)
                stack.pop()
    # Only what the outputs depend on is computed, as Keras does.
    needed, todo = set(), list(spec.outputs)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += [ref for kind, ref in by_name[name].inbound if kind == "tensor"]
    if spec.input not in needed:
        raise ConfigError(f"model {spec.name!r}: its outputs do not depend on its input")
    spec.layers = [layer for layer in order if layer.name in needed]
    return spec


def spec_from_json(data) -> Spec:
    """A spec as `Spec.to_json` wrote it (into a checkpoint), checked again: a checkpoint is
    untrusted input too."""
    return _spec_from_json(data, 0, [0])


def _spec_from_json(data, depth: int, counter: list) -> Spec:
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ConfigError("a recorded model that is not a model spec")
    if depth > reader.MAX_NESTING:
        raise ConfigError(f"models nested more than {reader.MAX_NESTING} deep")
    counter[0] += len(data["layers"])
    if counter[0] > reader.MAX_LAYERS:
        raise ConfigError(f"over {reader.MAX_LAYERS} layers")
    version = data.get("keras_version")
    if version not in (2, 3):
        raise ConfigError("a recorded model without its Keras version")
    layers = []
    for entry in data["layers"]:
        if not isinstance(entry, dict):
            raise ConfigError("a recorded layer that is not an object")
        class_name, name, args = entry.get("class_name"), entry.get("name"), entry.get("args")
        inbound = entry.get("inbound")
        if not isinstance(name, str) or not isinstance(args, dict) or not isinstance(inbound, list):
            raise ConfigError(f"recorded layer {reader.one_line(repr(name))[:60]} is malformed")
        where = _where(name, str(class_name))
        refs = []
        for item in inbound:
            if not (
                isinstance(item, list) and len(item) == 2 and item[0] in ("tensor", "constant")
            ):
                raise ConfigError(f"{where}: a malformed input")
            refs.append(tuple(item) if item[0] == "tensor" else _argument(item[1], where))
        if class_name in MODELS:
            args = {"model": _spec_from_json(args.get("model"), depth + 1, counter)}
        elif class_name == "InputLayer":
            args = {
                "shape": _image_shape([None, *_channels_last_list(args.get("shape"), where)], where)
            }
        elif class_name == "Scale":
            op = args.get("op")
            if op not in L.Scale.OPS:
                raise ConfigError(f"{where}: unknown op {op!r}")
            constant = _argument(args.get("constant"), where)[1]
            args = {"op": op, "constant": constant, "reverse": args.get("reverse") is True}
        elif class_name == "Merge":
            if args.get("op") not in OPERATIONS.values():
                raise ConfigError(f"{where}: unknown op")
            args = {"op": args["op"]}
        elif class_name in LAYERS:
            args = LAYERS[class_name].parse(_Args(_keras_args(args), where))
        else:
            raise ConfigError(f"{where}: a layer class torch-mobilenets does not compute")
        layers.append(
            Layer(
                class_name,
                name,
                args,
                refs,
                entry.get("trainable") is not False,
                entry.get("inference") is True,
            )
        )
    outputs = data.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ConfigError("a recorded model without outputs")
    spec = Spec(
        str(data.get("name")),
        layers,
        str(data.get("input")),
        outputs,
        version,
        data.get("trainable") is not False,
    )
    return _checked(spec)


def _channels_last_list(shape, where: str) -> list:
    if not isinstance(shape, list) or len(shape) != 3:
        raise ConfigError(f"{where}: a malformed input shape")
    return [shape[1], shape[2], shape[0]]


def _keras_args(args: dict) -> dict:
    """Our recorded arguments read back through the same checks as Keras' (the names are
    Keras' own)."""
    return dict(args)


# --------------------------------------------------------------------------- building it
def build_model(spec: Spec, device=None) -> KerasModel:
    """Our model of a spec (random weights), optionally on the meta device. The top model's
    config records the spec (`family` "keras_model"), so a checkpoint rebuilds it."""
    with torch.device(device) if device else _nothing():
        model = _build(spec, top=True)
    return model


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _build(spec: Spec, top: bool) -> KerasModel:
    by_name = {layer.name: layer for layer in spec.layers}
    input_layer = by_name[spec.input]
    config: dict[str, Any] = {"family": SPEC_FAMILY}
    if top:
        config["spec"] = spec.to_json()
    model = KerasModel(spec.name, tuple(input_layer.args["shape"]), config)
    values: dict[str, KerasTensor] = {spec.input: model.input()}
    augmentation, frozen, inference = [], [], []
    for layer in spec.layers:
        if layer.class_name == "InputLayer":
            continue
        inputs = [values[ref] for kind, ref in layer.inbound if kind == "tensor"]
        shapes = [t.shape for t in inputs]
        where = _where(layer)
        try:
            module = _module(layer, shapes, spec.keras_version)
            values[layer.name] = model.add(layer.name, module, *inputs)
        except ConfigError:
            raise
        except (ValueError, TypeError, RuntimeError) as error:
            raise ConfigError(f"{where}: {reader.one_line(error)}") from None
        if layer.class_name in LAYERS and LAYERS[layer.class_name].kind == "random":
            augmentation.append(layer.name)
        if layer.class_name in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
            act = layer.args["activation"]
            if act != "linear":
                values[layer.name] = model.add(
                    f"{layer.name}/activation",
                    activation(act, spec.keras_version),
                    values[layer.name],
                )
        if not layer.trainable or not spec.trainable:
            frozen.append(layer.name)
        if layer.inference:
            inference.append(_key(values, layer.name, model))
    model.output_nodes = tuple(
        model.layer_names.index(_key(values, o, model)) + 1 for o in spec.outputs
    )
    model.feature_layer = _feature_layer(model, values, spec)
    model.augmentation_layers = tuple(augmentation)
    model.inference_layers = tuple(inference)
    model.freeze_layers(model.layer_names[values[name].node - 1] for name in frozen)
    return model


def _key(values: dict, name: str, model: KerasModel) -> str:
    return model.layer_names[values[name].node - 1]


def _module(layer: Layer, shapes: list, version: int) -> nn.Module:
    if layer.class_name in MODELS:
        inner = _build(layer.args["model"], top=False)
        if len(inner.output_nodes) > 1:
            raise ValueError("a nested model with several outputs is not supported")
        expected = inner.input_shape
        if any(e is not None and e != s for e, s in zip(expected, shapes[0])):
            raise ValueError(f"its input is {tuple(expected)}, it is called on {shapes[0]}")
        return inner
    if layer.class_name == "Scale":
        return L.Scale(layer.args["op"], layer.args["constant"], layer.args["reverse"])
    if layer.class_name == "Merge":
        return L.Merge(layer.args["op"])
    axis = layer.args.get("axis", -1)
    if axis != -1 and any(axis != len(shape) for shape in shapes):  # Keras counts the batch
        raise ValueError(f"axis {axis} is not the channel axis of its {shapes[0]} input")
    return LAYERS[layer.class_name].make(layer.args, shapes, version)


def _feature_layer(model: KerasModel, values: dict, spec: Spec) -> str:
    """The last layer of the body: the last one whose output is still a map, before the first
    that flattens or pools it."""
    feature = ""
    for tensor in values.values():
        if tensor.node == 0:
            continue
        if len(tensor.shape) != 3:
            break
        feature = model.layer_names[tensor.node - 1]
    return feature or model.layer_names[-1]


# --------------------------------------------------------------------- the file's weights
def weighted_leaves(model: KerasModel, path: tuple = ()) -> list:
    """(Keras path of names, module path, module) of every weighted layer, nested models'
    included, in the model's order."""
    found = []
    for name in model.layer_names:
        module = model._layer(name)
        keras_name = model.keras_names.get(name, name)
        if isinstance(module, KerasModel):
            found += [
                ((keras_name, *p), f"{name}.{m}", mod) for p, m, mod in weighted_leaves(module)
            ]
        elif isinstance(module, L.KERAS_WEIGHTED_LAYERS) and module.keras_shapes():
            found.append(((keras_name,), name, module))
    return found


def spec_state_dict(keras_file: KerasFile, model: KerasModel, spec: Spec) -> dict:
    """The model's state dict from the file, every array used once; WeightsFileError naming
    the file and the layer for what is missing, left over or misshapen."""
    if keras_file.ordered:
        arrays = legacy_arrays(keras_file, model)
    else:
        arrays = keras3_arrays(keras_file, model, spec)
    state = {}
    for keras_path, module_path, module in weighted_leaves(model):
        found = arrays.pop(keras_path, None)
        where = f"{keras_file.path}: layer {'/'.join(keras_path)!r} ({module.keras_class})"
        if found is None:
            raise WeightsFileError(
                f"{where}: the file holds no weights for it (expected shapes "
                f"{module.keras_shapes()})"
            )
        try:
            translated = module.from_keras(found)
        except ValueError as error:
            raise WeightsFileError(f"{where}: {error}") from None
        state.update({f"{module_path}.{k}": v for k, v in translated.items()})
    if arrays:
        extra = next(iter(arrays))
        raise WeightsFileError(
            f"{keras_file.path}: holds weights for {'/'.join(extra)!r}, which the model config "
            "has no weighted layer for"
        )
    return state


def legacy_arrays(keras_file: KerasFile, model: KerasModel) -> dict:
    """Keras path -> arrays in the layer's Keras order, from a legacy file: one group per
    top-level layer, a nested model's group holding its layers' arrays under their names."""
    leaves = weighted_leaves(model)
    by_top: dict[str, list] = {}
    for keras_path, _, module in leaves:
        by_top.setdefault(keras_path[0], []).append((keras_path, module))
    groups = {f.name: f for f in keras_file.layers}
    model_names = _model_names(model)
    out: dict[tuple, list] = {}
    for top, members in by_top.items():
        file_layer = groups.pop(top, None)
        if file_layer is None:
            continue  # reported as missing
        names = file_layer.weight_names or [f"{top}/{v}" for v in file_layer.variables]
        owners: dict[tuple, list] = {path: [] for path, _ in members}
        for weight_name, array in zip(names, file_layer.arrays):
            layer_part, _, variable = weight_name.rpartition("/")
            owner = _owner(layer_part, members, model_names)
            if owner is None:
                raise WeightsFileError(
                    f"{keras_file.path}: layer {top!r} holds weight {weight_name!r}, which no "
                    "layer of the model config owns"
                )
            owners[owner].append((variable, array))
        for path, module in members:
            out[path] = _in_keras_order(keras_file, path, module, owners[path])
    if groups:
        name = next(iter(groups))
        raise WeightsFileError(
            f"{keras_file.path}: holds weights for layer {name!r}, which the model config has "
            "no weighted layer for"
        )
    return {k: v for k, v in out.items() if v}


def _owner(layer_part: str, members: list, model_names: set) -> tuple | None:
    """Which layer a legacy weight name belongs to: Keras 2 writes `<layer>/<variable>`,
    Keras 3 the variable's path, the names of the models holding it first."""
    parts = layer_part.split("/")
    while len(parts) > 1 and parts[0] in model_names:
        parts = parts[1:]
    candidates = {layer_part, "/".join(parts)}
    for path, _ in members:
        if path[-1] in candidates:
            return path
    return None


def _model_names(model: KerasModel) -> set:
    names = {model.name}
    for module in model.modules():
        if isinstance(module, KerasModel):
            names.add(module.name)
    return names


# Keras 3 names a depthwise kernel `kernel`; Keras 2 `depthwise_kernel`.
_ALIASES = {"kernel": "depthwise_kernel"}


def _in_keras_order(keras_file, path: tuple, module, named: list) -> list:
    """A layer's arrays in its Keras variable order, by their names (Keras 2 lists a nested
    model's trainable variables before the others)."""
    if not named:
        return []
    wanted = module.keras_variables()
    by_name = {}
    for variable, array in named:
        key = variable if variable in wanted else _ALIASES.get(variable, variable)
        if key in by_name or key not in wanted:
            return [array for _, array in named]  # let the shapes speak
        by_name[key] = array
    if set(by_name) != set(wanted):
        return [array for _, array in named]
    return [by_name[v] for v in wanted]


def keras3_arrays(keras_file: KerasFile, model: KerasModel, spec: Spec) -> dict:
    """Keras path -> arrays, from a Keras 3 file, whose groups Keras 3 names after each layer's
    class and its index among the layers of that class in its model (`conv2d_3`), nested
    models' groups holding `layers/<group>` of their own."""
    groups = {f.group: f for f in keras_file.layers}
    out: dict[tuple, list] = {}
    for keras_path, group_path in _keras3_groups(spec):
        top, rest = group_path[0], group_path[1:]
        file_layer = groups.get(top)
        if file_layer is None:
            continue
        prefix = "".join(f"layers/{g}/" for g in rest)
        try:
            module = model.get_submodule(".".join(keras_path))
        except AttributeError:  # a layer folded into another (an operation), not a module
            module = None
        if isinstance(module, MobileNetV3Backbone):
            out.update(_backbone_arrays(keras_file, file_layer, prefix, keras_path, module))
            continue
        arrays = [
            a
            for v, a in zip(file_layer.variables, file_layer.arrays)
            if v.startswith(prefix) and v[len(prefix) :].isdigit()
        ]
        if arrays:
            out[keras_path] = arrays
    used = sum(len(a) for a in out.values())
    total = sum(len(f.arrays) for f in keras_file.layers)
    if used != total:
        raise WeightsFileError(
            f"{keras_file.path}: holds {total} weight arrays, the model config's layers take "
            f"{used}: the file is not this model's"
        )
    return out


def _backbone_arrays(
    keras_file: KerasFile, file_layer, prefix: str, keras_path: tuple, backbone: KerasModel
) -> dict:
    """A nested KerasCV backbone's arrays, its layers' groups (`layers/<group>/...` within the
    file's group) paired with ours as a KerasCV file of its own is: by class, in order."""
    known = {snake_case(cls.keras_class): cls.keras_class for cls in L.WEIGHTED_LAYERS}
    inner: dict[str, tuple[list, list]] = {}
    for variable, array in zip(file_layer.variables, file_layer.arrays):
        if not variable.startswith(prefix + "layers/"):
            continue
        group, _, rest = variable[len(prefix) + len("layers/") :].partition("/")
        names, arrays = inner.setdefault(group, ([], []))
        names.append(rest)
        arrays.append(array)
    found = []
    for group, (names, arrays) in inner.items():
        class_group, _, suffix = group.rpartition("_")
        if not suffix.isdigit():
            class_group, suffix = group, "0"
        classes = frozenset({known[class_group]}) if class_group in known else frozenset()
        found.append((class_group, int(suffix), reader.FileLayer(group, classes, arrays, names)))
    found.sort(key=lambda item: (item[0], item[1]))
    sub_file = KerasFile(keras_file.path, keras_file.layout, [f for *_, f in found], False)
    return {
        (*keras_path, backbone.keras_names.get(name, name)): keras_ordered_arrays(f, module)
        for f, name, module in match_layers(sub_file, backbone)
    }


def _keras3_groups(spec: Spec, path: tuple = ()) -> list:
    """(Keras path, group path) of each layer, as Keras 3's saving names them."""
    counts: dict[str, int] = {}
    found = []
    for layer in spec.layers:
        if layer.class_name in ("Scale", "Merge", "InputLayer"):
            continue
        class_name = "Functional" if layer.class_name == "Model" else layer.class_name
        group = snake_case(class_name)
        n = counts.get(group, 0)
        counts[group] = n + 1
        group = group if n == 0 else f"{group}_{n}"
        if layer.class_name in MODELS:
            found += [
                ((layer.name, *p), (group, *g)) for p, g in _keras3_groups(layer.args["model"])
            ]
        else:
            found.append(((layer.name,), (group,)))
    return found


def check_sizes(model: KerasModel, where: str) -> None:
    """Refuse a model whose tensors are over the reader's limits before it is made for real
    (it is built on the meta device first)."""
    total = 0
    for name, tensor in model.state_dict().items():
        nbytes = tensor.numel() * 4
        total += nbytes
        if nbytes > reader.MAX_TENSOR_BYTES or total > reader.MAX_FILE_BYTES:
            raise ConfigError(
                f"{where}: layer {name.rsplit('.', 1)[0]!r} needs {tuple(tensor.shape)} "
                f"({nbytes} bytes), over the size limits"
            )
