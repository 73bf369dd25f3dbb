"""Pairing a Keras file's layers with a model's, and inferring the architecture a file holds.

The converter knows no model by heart. It pairs the file's weighted layers with the model's
weighted modules (`matching`), and each module type translates its own Keras variables
(`nn.layers.*.from_keras`).
To convert a file without being told the architecture, it tries the builders (on the meta device,
so nothing is allocated) until one fits every tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from contextlib import nullcontext

import torch

from ..models import FAMILIES
from ..models.official import V3_MODELS, v3_file_name
from ..nn.graph import KerasModel
from ..nn.layers import WEIGHTED_LAYERS
from . import config as model_config
from .matching import aligned, keras_ordered_arrays, match_layers, mismatch, weighted_layers
from .reader import KerasFile, WeightsFileError, read_keras_file

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
# The most layers after a model's last one that `skip_extra_layers` skips: V3's top (conv_2 and
# logits) is the most any official file holds beyond a model.
MAX_EXTRA_LAYERS = 2
# Widths tried when inferring alpha: the official ones first, then a fine grid.
ALPHA_CANDIDATES = [1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4] + [
    round(0.05 * i, 2) for i in range(2, 61)
]


def read(path, allow_nonfinite: bool = False) -> KerasFile:
    """A Keras weights file in any layout; WeightsFileError if it is damaged, hostile or holds
    NaN/Inf (unless `allow_nonfinite`). See `reader` for what is refused."""
    classes = {cls.keras_class for cls in WEIGHTED_LAYERS}
    return read_keras_file(path, classes, allow_nonfinite)


def keras_state_dict(
    keras_file: KerasFile, model: KerasModel, skip_extra_layers: bool = False
) -> tuple[dict, list]:
    """The model's state dict, filled from the file, and the file's layers left out. Every
    tensor of both is used exactly once, except, with `skip_extra_layers`, those of the layers a
    legacy file holds after the model's last one (`extra_layers`). Without it such a file is
    refused, saying what the layers are."""
    skipped: list = []
    try:
        pairs = match_layers(keras_file, model)
    except WeightsFileError:
        skipped = extra_layers(keras_file, model)
        if not skipped:
            raise
        if not skip_extra_layers:
            message = extra_layers_message(keras_file, model.config, skipped)
            raise WeightsFileError(message) from None
        pairs = match_layers(_without_last(keras_file, len(skipped)), model)
    state = {}
    for file_layer, name, module in pairs:
        for key, tensor in module.from_keras(keras_ordered_arrays(file_layer, module)).items():
            state[f"{name}.{key}"] = tensor
    return state, skipped


def extra_layers(keras_file: KerasFile, model: KerasModel) -> list:
    """The layers a legacy file holds after those that pair with every one of `model`'s, when
    that is all that keeps the two apart (at most MAX_EXTRA_LAYERS); else []. Only legacy files
    order all their layers as the model does."""
    count = len(keras_file.layers) - len(weighted_layers(model))
    if not keras_file.ordered or not 0 < count <= MAX_EXTRA_LAYERS:
        return []
    try:
        match_layers(_without_last(keras_file, count), model)
    except WeightsFileError:
        return []
    return keras_file.layers[-count:]


def _without_last(keras_file: KerasFile, count: int) -> KerasFile:
    return dataclasses.replace(keras_file, layers=keras_file.layers[:-count])


def extra_layers_message(keras_file: KerasFile, config: dict, extra: list) -> str:
    """Why a file that holds `extra` layers after those of a `config` model is refused, and the
    way out: most likely the top's layers, in a pre-2021 V3 `_no_top.h5` above all."""
    layers = ", ".join(layer.describe() for layer in extra)
    opt_in = (
        "pass skip_extra_layers=True (load_weights, convert; --skip-extra-layers) to load it "
        f"without {'them' if len(extra) > 1 else 'it'}"
    )
    top = _top_layers(config, extra)
    if top == ["conv_2"] and config["family"].startswith("mobilenet_v3_"):
        model_type = config["family"].removeprefix("mobilenet_v3_")
        minimalistic, alpha = bool(config.get("minimalistic")), float(config["alpha"])
        replacement = "the `_no_top_v2.h5` file of the same model"
        if (model_type, minimalistic, alpha) in V3_MODELS:
            replacement = v3_file_name(model_type, minimalistic, alpha, include_top=False)
        return (
            f"{keras_file.path}: a MobileNetV3 no-top file as Keras published them before "
            f"October 2021 (`_no_top.h5`): after the layers of {describe_config(config)} it "
            f"holds the top's layer {layers}. Keras now applies that layer after the pooling, "
            "in the top, so models without the top lack it, and Keras republished these files "
            f"without it: use {replacement} (what weights='imagenet' loads), or {opt_in}"
        )
    start = (
        f"{keras_file.path}: layer{'s' if len(extra) > 1 else ''} {layers} "
        f"{'have' if len(extra) > 1 else 'has'} no counterpart in {describe_config(config)}: "
        f"the file holds {len(extra)} more weighted layer{'s' if len(extra) > 1 else ''} after "
        "those that fit"
    )
    if top:
        return (
            f"{start}, shaped as the top's {top} (a file with the top?); build the model with "
            f"include_top=True, or {opt_in}"
        )
    return f"{start}; {opt_in}"


def _top_layers(config: dict, extra: list) -> list:
    """The names of the top's first layers, if `extra` are shaped as they are in the same model
    with its top; else []."""
    if config.get("include_top") is not False:
        return []
    # The last layer's last array is a bias: for a classifier, one per class.
    classes = extra[-1].arrays[-1].shape[-1]
    body = dict(config, input_shape=None)
    try:
        without = weighted_layers(build(body, "meta"))
        with_top = weighted_layers(build(dict(body, include_top=True, classes=classes), "meta"))
    except (ValueError, TypeError):
        return []
    top = with_top[len(without) :][: len(extra)]
    if len(top) == len(extra) and all(mismatch(f, m) is None for f, (_, m) in zip(extra, top)):
        return [name for name, _ in top]
    return []


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
    if config.get("family") == model_config.SPEC_FAMILY:
        spec = config.get("spec") or {}
        return f"Keras model {spec.get('name')!r} ({len(spec.get('layers', ()))} layers)"
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
    """Build the model a config describes (random weights), optionally on the meta device:
    a builder's arguments, or a user's model as `config.model_spec` reads it."""
    if config.get("family") == model_config.SPEC_FAMILY:
        spec = model_config.spec_from_json(config.get("spec"))
        model_config.check_sizes(model_config.build_model(spec, "meta"), f"model {spec.name!r}")
        return model_config.build_model(spec, device)
    config = dict(config)
    builder = FAMILIES[config.pop("family")].builder
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in config.items() if k in accepted}
    if kwargs.get("input_shape") is not None:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    with torch.device(device) if device else nullcontext():
        return builder(**kwargs)


def infer_config(
    keras_file: KerasFile, _quiet: bool = False, skip_extra_layers: bool = False, **known
) -> dict:
    """The builder arguments under which the file's weights fit exactly: family, alpha,
    include_top, classes, and depth_multiplier / minimalistic where the family has them.
    `known` fixes any of these instead of searching. A legacy file that fits only without its
    last layers (`extra_layers`) is refused, saying what they are, unless `skip_extra_layers`:
    then the config is the one the rest fits."""
    config = _search(keras_file, known)
    if config:
        return config
    for count in range(1, MAX_EXTRA_LAYERS + 1) if keras_file.ordered else ():
        config = _search(_without_last(keras_file, count), known)
        if config and skip_extra_layers:
            return config
        if config and not _quiet:
            raise WeightsFileError(
                extra_layers_message(keras_file, config, keras_file.layers[-count:])
            )
        if config:
            break
    if _quiet:
        raise WeightsFileError("")
    given = f" with {known}" if known else ""
    raise WeightsFileError(
        f"{keras_file.path}: no MobileNet configuration{given} fits the file's "
        f"{len(keras_file.layers)} weighted layers; if it is a MobileNet with an unusual width, "
        "pass the architecture explicitly (family, alpha, depth multiplier, top, classes)"
    )


def _search(keras_file: KerasFile, known: dict) -> dict | None:
    for family in [known["family"]] if "family" in known else list(FAMILIES):
        builder = FAMILIES[family].builder
        params = inspect.signature(builder).parameters
        for variant in _variants(builder, params, known):
            config = _search_widths(keras_file, {"family": family, **variant}, params, known)
            if config:
                return config
    return None


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
    model = _probe(_frozen(probe))
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


def _frozen(config: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))


@functools.lru_cache(maxsize=64)
def _probe(config: tuple) -> KerasModel:
    """The model a search starts from, on the meta device, built once: a search reads it, and
    refusing a file goes through every family's."""
    return build({k: list(v) if isinstance(v, tuple) else v for k, v in config}, "meta")


def _counts_fit(keras_file: KerasFile, model: KerasModel) -> bool:
    targets = weighted_layers(model)
    return len(targets) == len(keras_file.layers) and all(
        len(file_layers) == len(model_layers)
        and all(m.keras_class in f.classes for f, (_, m) in zip(file_layers, model_layers))
        for file_layers, model_layers in aligned(keras_file, targets)
    )


def _pair_positions(keras_file: KerasFile, model: KerasModel) -> dict:
    """Model layer name -> file layer, by position only (no shape check)."""
    return {
        name: f
        for file_layers, model_layers in aligned(keras_file, weighted_layers(model))
        for f, (name, _) in zip(file_layers, model_layers)
    }


def file_config(keras_file: KerasFile, skip_extra_layers: bool = False, **known) -> dict:
    """The architecture of a Keras file, plus what its saved model config says of the input.
    `skip_extra_layers`: as in `infer_config`."""
    config = infer_config(keras_file, skip_extra_layers=skip_extra_layers, **known)
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
