"""Pairing a Keras file's layers with a model's, and inferring the architecture a file holds.

The converter knows no model by heart. It pairs the file's weighted layers with the model's
weighted modules (in order, per Keras class where the file only orders within a class, as Keras
itself does), and each module type translates its own Keras variables (`nn.layers.*.from_keras`).
To convert a file without being told the architecture, it tries the builders (on the meta device,
so nothing is allocated) until one fits every tensor.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch

from ..models import FAMILIES
from ..nn.graph import KerasModel
from ..nn.layers import WEIGHTED_LAYERS
from .reader import FileLayer, KerasFile, WeightsFileError, read_keras_file

# The config entries that decide the weights' shapes; the rest (input size, pooling, dropout,
# activation, preprocessing) can be chosen freely when loading.
ARCHITECTURE_KEYS = (
    "family",
    "alpha",
    "depth_multiplier",
    "minimalistic",
    "include_top",
    "classes",
    "stackwise_expansion",
    "stackwise_filters",
    "stackwise_kernel_size",
    "stackwise_stride",
    "stackwise_se_ratio",
    "stackwise_activation",
)
# Widths tried when inferring alpha: the official ones first, then a fine grid.
ALPHA_CANDIDATES = [1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4] + [
    round(0.05 * i, 2) for i in range(2, 61)
]


def read(path, allow_nonfinite: bool = False) -> KerasFile:
    """A Keras weights file in any layout; WeightsFileError if it is damaged, hostile or holds
    NaN/Inf (unless `allow_nonfinite`). See `reader` for what is refused."""
    classes = {cls.keras_class for cls in WEIGHTED_LAYERS}
    return read_keras_file(path, classes, allow_nonfinite)


def weighted_layers(model: KerasModel) -> list:
    return [(name, m) for name, m in model.named_children() if isinstance(m, WEIGHTED_LAYERS)]


def _aligned(keras_file: KerasFile, targets: list) -> list:
    """(file layers, model layers) lists that correspond position by position: the whole
    sequence for legacy files, one pair of lists per Keras class for Keras 3 files."""
    if keras_file.ordered:
        return [(keras_file.layers, targets)]
    return [
        (
            [f for f in keras_file.layers if keras_class in f.classes],
            [(n, m) for n, m in targets if m.keras_class == keras_class],
        )
        for keras_class in sorted({m.keras_class for _, m in targets})
    ]


def match_layers(keras_file: KerasFile, model: KerasModel) -> list:
    """Pair each weighted file layer with a weighted model layer, checking classes and shapes.
    Raises WeightsFileError naming the file, both layers and what differs."""
    groups = _aligned(keras_file, weighted_layers(model))
    unknown = [f for f in keras_file.layers if not f.classes]
    if unknown:
        raise WeightsFileError(
            f"{keras_file.path}: layer {unknown[0].describe()} is of a class no "
            f"{model.name!r} layer has"
        )
    pairs = []
    for file_layers, model_layers in groups:
        for i in range(max(len(file_layers), len(model_layers))):
            fits = (
                i < len(file_layers)
                and i < len(model_layers)
                and _mismatch(file_layers[i], model_layers[i][1]) is None
            )
            if fits:
                pairs.append((file_layers[i], *model_layers[i]))
                continue
            # Say which side has a layer the other lacks when skipping it realigns the two.
            if i >= len(file_layers) or (
                i + 1 < len(model_layers)
                and i < len(file_layers)
                and not _mismatch(file_layers[i], model_layers[i + 1][1])
            ):
                name, module = model_layers[i]
                raise WeightsFileError(
                    f"{keras_file.path}: the file has no weights for layer {name!r} "
                    f"({module.keras_class}, expected shapes {module.keras_shapes()}): it holds "
                    f"{len(file_layers)} such layers, model {model.name!r} has "
                    f"{len(model_layers)}"
                )
            if i >= len(model_layers) or (
                i + 1 < len(file_layers) and not _mismatch(file_layers[i + 1], model_layers[i][1])
            ):
                raise WeightsFileError(
                    f"{keras_file.path}: layer {file_layers[i].describe()} has no counterpart in "
                    f"model {model.name!r}: the file holds {len(file_layers)} such layers, the "
                    f"model {len(model_layers)}"
                )
            name, module = model_layers[i]
            raise WeightsFileError(
                f"{keras_file.path}: layer {file_layers[i].name!r} does not fit model layer "
                f"{name!r} ({module.keras_class}): {_mismatch(file_layers[i], module)}"
            )
    return pairs


def _arrays(file_layer: FileLayer, module) -> list:
    """The file layer's arrays in the module's Keras order. Keras 3 files keep nested layers
    (KerasCV's squeeze-excite) under their attribute names in alphabetical order."""
    order = getattr(module, "keras_sublayers", None)
    owners = [v.split("/")[0] for v in file_layer.variables]
    if not order or set(owners) != set(order):
        return file_layer.arrays
    return [a for sub in order for a, owner in zip(file_layer.arrays, owners) if owner == sub]


def _mismatch(file_layer: FileLayer, module) -> str | None:
    if module.keras_class not in file_layer.classes:
        return f"the file's layer is a {'/'.join(sorted(file_layer.classes)) or 'unknown class'}"
    expected = module.keras_shapes()
    got = [tuple(a.shape) for a in _arrays(file_layer, module)]
    if expected != got:
        return f"expected shapes {expected}, the file has {got}"
    return None


def keras_state_dict(keras_file: KerasFile, model: KerasModel) -> dict:
    """The model's state dict, filled from the file; every tensor of both is used exactly once."""
    state = {}
    for file_layer, name, module in match_layers(keras_file, model):
        for key, tensor in module.from_keras(_arrays(file_layer, module)).items():
            state[f"{name}.{key}"] = tensor
    return state


def what_the_file_holds(keras_file: KerasFile, model: KerasModel) -> str:
    """A hint for mismatch errors: what the file does hold, if we can tell."""
    try:
        config = infer_config(keras_file, _quiet=True)
    except WeightsFileError:
        return ""
    if _architecture(config) == _architecture(model.config):
        return ""
    return f". The file holds {describe_config(config)}"


def describe_config(config: dict) -> str:
    parts = [
        f"{k}={config[k]!r}"
        for k in ARCHITECTURE_KEYS[1:]
        if k in config and not isinstance(config[k], list)
    ]
    if "stackwise_filters" in config:
        parts.append(f"{len(config['stackwise_filters'])} blocks")
    return f"{config['family']} ({', '.join(parts)})"


def _architecture(config: dict) -> dict:
    return {k: config[k] for k in ARCHITECTURE_KEYS if k in config}


def build(config: dict, device=None) -> KerasModel:
    """Build the model a config describes (random weights), optionally on the meta device."""
    config = dict(config)
    builder = FAMILIES[config.pop("family")]
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in config.items() if k in accepted}
    if kwargs.get("input_shape") is not None:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    with torch.device(device) if device else nullcontext():
        return builder(**kwargs)


def infer_config(keras_file: KerasFile, _quiet: bool = False, **known) -> dict:
    """The builder arguments under which the file's weights fit exactly: family, alpha,
    include_top, classes, and depth_multiplier / minimalistic where the family has them.
    `known` fixes any of these instead of searching."""
    for family in [known["family"]] if "family" in known else list(FAMILIES):
        builder = FAMILIES[family]
        params = inspect.signature(builder).parameters
        for variant in _variants(builder, params, known):
            config = _search_widths(keras_file, {"family": family, **variant}, params, known)
            if config:
                return config
    if _quiet:
        raise WeightsFileError("")
    given = f" with {known}" if known else ""
    raise WeightsFileError(
        f"{keras_file.path}: no MobileNet configuration{given} fits the file's "
        f"{len(keras_file.layers)} weighted layers; if it is a MobileNet with an unusual width, "
        "pass the architecture explicitly (family, alpha, depth multiplier, top, classes)"
    )


def _choices(known: dict, key: str, default):
    return [known[key]] if key in known else list(default)


def _variants(builder, params, known: dict) -> list:
    """A builder's discrete architecture choices; widths, classes and depth multipliers are
    read or searched afterwards. Builders without a top list theirs (`architecture_variants`)."""
    if hasattr(builder, "architecture_variants"):
        return [dict(v) for v in builder.architecture_variants]
    variants = [{"include_top": top} for top in _choices(known, "include_top", (True, False))]
    if "minimalistic" in params:
        variants = [
            dict(v, minimalistic=m)
            for v in variants
            for m in _choices(known, "minimalistic", (False, True))
        ]
    return variants


def _search_widths(keras_file: KerasFile, base: dict, params, known: dict) -> dict | None:
    # At alpha 1 a wrong family or top fails on layer counts or classes already; only then is it
    # worth reading the classes and multiplier off the file and scanning the widths.
    probe = dict(base, alpha=known.get("alpha", 1.0))
    model = build(probe, "meta")
    if not _counts_fit(keras_file, model):
        return None
    pairs = _pair_positions(keras_file, model)
    if base.get("include_top"):
        # The last weighted layer is the classifier: its kernel's last axis is the class count.
        last = pairs[weighted_layers(model)[-1][0]]
        probe["classes"] = known.get("classes", last.arrays[0].shape[-1])
    if "depth_multiplier" in params:
        first_depthwise = next(
            n for n, m in weighted_layers(model) if m.keras_class == "DepthwiseConv2D"
        )
        probe["depth_multiplier"] = known.get(
            "depth_multiplier", pairs[first_depthwise].arrays[0].shape[-1]
        )
    for alpha in [known["alpha"]] if "alpha" in known else ALPHA_CANDIDATES:
        config = dict(probe, alpha=alpha)
        try:
            match_layers(keras_file, build(config, "meta"))
        except (WeightsFileError, ValueError):
            continue
        return config
    return None


def _counts_fit(keras_file: KerasFile, model: KerasModel) -> bool:
    targets = weighted_layers(model)
    return len(targets) == len(keras_file.layers) and all(
        len(file_layers) == len(model_layers)
        and all(m.keras_class in f.classes for f, (_, m) in zip(file_layers, model_layers))
        for file_layers, model_layers in _aligned(keras_file, targets)
    )


def _pair_positions(keras_file: KerasFile, model: KerasModel) -> dict:
    """Model layer name -> file layer, by position only (no shape check)."""
    return {
        name: f
        for file_layers, model_layers in _aligned(keras_file, weighted_layers(model))
        for f, (name, _) in zip(file_layers, model_layers)
    }


def file_config(keras_file: KerasFile, **known) -> dict:
    """The architecture of a Keras file, plus what its saved model config says of the input."""
    config = infer_config(keras_file, **known)
    input_shape = _config_input_shape(keras_file.model_config)
    if input_shape is not None:
        config["input_shape"] = input_shape
        try:  # the shape comes from the file: a bad one is the file's fault, and says so
            build(config, "meta")
        except ValueError as error:
            raise WeightsFileError(
                f"{keras_file.path}: the model config saved in the file gives input shape "
                f"{input_shape}, which {config['family']} refuses: {error}"
            ) from error
    return config


def _config_input_shape(model_config: dict | None) -> list | None:
    """The static NCHW input shape a saved Keras model config records, if any."""
    if model_config is None:
        return None
    try:
        layers = model_config["config"]["layers"]
        spec = layers[0]["config"]
        shape = spec.get("batch_shape") or spec.get("batch_input_shape")
        height, width, channels = shape[1:]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    # The config comes from the file: only plain positive sizes are taken (booleans are ints).
    if not all(type(d) is int and 0 < d <= 1 << 16 for d in (height, width, channels)):
        return None
    return [channels, height, width]
