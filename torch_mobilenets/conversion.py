"""Keras weight files to PyTorch state dicts and safetensors checkpoints.

The converter knows no model by heart. It pairs the file's weighted layers with the model's
weighted modules (in order, per Keras class where the file only orders within a class, as Keras
itself does), and each module type translates its own Keras variables (`layers.*.from_keras`).
To convert a file without being told the architecture, it tries the builders (on the meta device,
so nothing is allocated) until one fits every tensor.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .functional import KerasModel
from .keras_files import FileLayer, KerasFile, WeightsFileError, read_keras_file
from .layers import WEIGHTED_LAYERS

METADATA_KEY = "torch_mobilenets"
# The config entries that decide the weights' shapes; the rest (input size, pooling, dropout,
# activation, preprocessing) can be chosen freely when loading.
ARCHITECTURE_KEYS = ("family", "alpha", "depth_multiplier", "minimalistic", "include_top",
                     "classes", "stackwise_expansion", "stackwise_filters",
                     "stackwise_kernel_size", "stackwise_stride", "stackwise_se_ratio",
                     "stackwise_activation")
# Widths tried when inferring alpha: the official ones first, then a fine grid.
ALPHA_CANDIDATES = [1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4] + [round(0.05 * i, 2) for i in range(2, 61)]


def _families():
    from . import FAMILIES  # the package imports the builders, which import this module lazily

    return FAMILIES


def weighted_layers(model: KerasModel) -> list:
    return [(name, m) for name, m in model.named_children() if isinstance(m, WEIGHTED_LAYERS)]


def _aligned(keras_file: KerasFile, targets: list) -> list:
    """(file layers, model layers) lists that correspond position by position: the whole
    sequence for legacy files, one pair of lists per Keras class for Keras 3 files."""
    if keras_file.ordered:
        return [(keras_file.layers, targets)]
    return [([f for f in keras_file.layers if keras_class in f.classes],
             [(n, m) for n, m in targets if m.keras_class == keras_class])
            for keras_class in sorted({m.keras_class for _, m in targets})]


def match_layers(keras_file: KerasFile, model: KerasModel) -> list:
    """Pair each weighted file layer with a weighted model layer, checking classes and shapes.
    Raises WeightsFileError naming the file, both layers and what differs."""
    groups = _aligned(keras_file, weighted_layers(model))
    unknown = [f for f in keras_file.layers if not f.classes]
    if unknown:
        raise WeightsFileError(
            f"{keras_file.path}: layer {unknown[0].describe()} is of a class no "
            f"{model.name!r} layer has")
    pairs = []
    for file_layers, model_layers in groups:
        for i in range(max(len(file_layers), len(model_layers))):
            fits = i < len(file_layers) and i < len(model_layers) and \
                _mismatch(file_layers[i], model_layers[i][1]) is None
            if fits:
                pairs.append((file_layers[i], *model_layers[i]))
                continue
            # Say which side has a layer the other lacks when skipping it realigns the two.
            if i >= len(file_layers) or (i + 1 < len(model_layers) and i < len(file_layers)
                                         and not _mismatch(file_layers[i], model_layers[i + 1][1])):
                name, module = model_layers[i]
                raise WeightsFileError(
                    f"{keras_file.path}: the file has no weights for layer {name!r} "
                    f"({module.keras_class}, expected shapes {module.keras_shapes()}): it holds "
                    f"{len(file_layers)} such layers, model {model.name!r} has "
                    f"{len(model_layers)}")
            if i >= len(model_layers) or (i + 1 < len(file_layers)
                                          and not _mismatch(file_layers[i + 1], model_layers[i][1])):
                raise WeightsFileError(
                    f"{keras_file.path}: layer {file_layers[i].describe()} has no counterpart in "
                    f"model {model.name!r}: the file holds {len(file_layers)} such layers, the "
                    f"model {len(model_layers)}")
            name, module = model_layers[i]
            raise WeightsFileError(
                f"{keras_file.path}: layer {file_layers[i].name!r} does not fit model layer "
                f"{name!r} ({module.keras_class}): {_mismatch(file_layers[i], module)}")
    return pairs


def _arrays(file_layer: FileLayer, module) -> list:
    """The file layer's arrays in the module's Keras order. Keras 3 files keep nested layers
    (KerasCV's squeeze-excite) under their attribute names in alphabetical order."""
    order = getattr(module, "keras_sublayers", None)
    owners = [v.split("/")[0] for v in file_layer.variables]
    if not order or set(owners) != set(order):
        return file_layer.arrays
    return [a for sub in order for a, owner in zip(file_layer.arrays, owners) if owner == sub]


def _mismatch(file_layer: FileLayer, module) -> Optional[str]:
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


def _guess(keras_file: KerasFile, model: KerasModel) -> str:
    """A hint for mismatch errors: what the file does hold, if we can tell."""
    try:
        config = infer_config(keras_file, _quiet=True)
    except WeightsFileError:
        return ""
    if _architecture(config) == _architecture(model.config):
        return ""
    return f". The file holds {describe_config(config)}"


def describe_config(config: dict) -> str:
    parts = [f"{k}={config[k]!r}" for k in ARCHITECTURE_KEYS[1:]
             if k in config and not isinstance(config[k], list)]
    if "stackwise_filters" in config:
        parts.append(f"{len(config['stackwise_filters'])} blocks")
    return f"{config['family']} ({', '.join(parts)})"


def _architecture(config: dict) -> dict:
    return {k: config[k] for k in ARCHITECTURE_KEYS if k in config}


def build(config: dict, device=None) -> KerasModel:
    """Build the model a config describes (random weights), optionally on the meta device."""
    config = dict(config)
    builder = _families()[config.pop("family")]
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in config.items() if k in accepted}
    kwargs["weights"] = None
    if kwargs.get("input_shape") is not None:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    with torch.device(device) if device else nullcontext():
        return builder(**kwargs)


def infer_config(keras_file: KerasFile, _quiet: bool = False, **known) -> dict:
    """The builder arguments under which the file's weights fit exactly: family, alpha,
    include_top, classes, and depth_multiplier / minimalistic where the family has them.
    `known` fixes any of these instead of searching."""
    for family in [known["family"]] if "family" in known else list(_families()):
        builder = _families()[family]
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
        "pass the architecture explicitly (family, alpha, depth multiplier, top, classes)")


def _choices(known: dict, key: str, default):
    return [known[key]] if key in known else list(default)


def _variants(builder, params, known: dict) -> list:
    """A builder's discrete architecture choices; widths, classes and depth multipliers are
    read or searched afterwards. Builders without a top list theirs (`architecture_variants`)."""
    if hasattr(builder, "architecture_variants"):
        return [dict(v) for v in builder.architecture_variants]
    variants = [{"include_top": top} for top in _choices(known, "include_top", (True, False))]
    if "minimalistic" in params:
        variants = [dict(v, minimalistic=m) for v in variants
                    for m in _choices(known, "minimalistic", (False, True))]
    return variants


def _search_widths(keras_file: KerasFile, base: dict, params, known: dict) -> Optional[dict]:
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
        first_depthwise = next(n for n, m in weighted_layers(model)
                               if m.keras_class == "DepthwiseConv2D")
        probe["depth_multiplier"] = known.get("depth_multiplier",
                                              pairs[first_depthwise].arrays[0].shape[-1])
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
        for file_layers, model_layers in _aligned(keras_file, targets))


def _pair_positions(keras_file: KerasFile, model: KerasModel) -> dict:
    """Model layer name -> file layer, by position only (no shape check)."""
    return {name: f for file_layers, model_layers in _aligned(keras_file, weighted_layers(model))
            for f, (name, _) in zip(file_layers, model_layers)}


def read(path) -> KerasFile:
    classes = {cls.keras_class for cls in WEIGHTED_LAYERS}
    return read_keras_file(path, classes)


def file_config(keras_file: KerasFile, **known) -> dict:
    """The architecture of a Keras file, plus what its saved model config says of the input."""
    config = infer_config(keras_file, **known)
    input_shape = _config_input_shape(keras_file.model_config)
    if input_shape is not None:
        config["input_shape"] = input_shape
    return config


def _config_input_shape(model_config: Optional[dict]) -> Optional[list]:
    """The static NCHW input shape a saved Keras model config records, if any."""
    try:
        layers = model_config["config"]["layers"]
        spec = layers[0]["config"]
        shape = spec.get("batch_shape") or spec.get("batch_input_shape")
        height, width, channels = shape[1:]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if height is None or width is None:
        return None
    return [channels, height, width]


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(src, dst, **known) -> dict:
    """Convert a Keras weights file to a safetensors checkpoint; returns its config.

    `known` fixes parts of the architecture (family, alpha, depth_multiplier, minimalistic,
    include_top, classes) where the file cannot tell them apart; the rest is inferred.
    The output is written atomically: on any error no file is left at `dst`.
    """
    from . import __version__

    src, dst = Path(src), Path(dst)
    keras_file = read(src)
    config = file_config(keras_file, **known)
    state = keras_state_dict(keras_file, build(config, "meta"))
    # One metadata entry: safetensors writes its metadata map in no fixed order, and a
    # conversion should give the same bytes every time.
    metadata = {METADATA_KEY: json.dumps({
        "config": config,
        "source_file": src.name,
        "source_sha256": sha256(keras_file.path),  # a preset folder: its weights file
        "source_layout": keras_file.layout,
        "converter_version": __version__,
    }, sort_keys=True)}
    _atomic_write(dst, lambda tmp: save_file(state, tmp, metadata))
    return config


def _atomic_write(dst: Path, write) -> None:
    if not dst.parent.is_dir():
        raise WeightsFileError(f"{dst}: the output directory {dst.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise


def read_safetensors(path) -> tuple:
    """(state dict, config or None) of a checkpoint; converted ones record their config."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFileError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        config = json.loads(metadata[METADATA_KEY])["config"] if METADATA_KEY in metadata else None
    except (ValueError, KeyError, TypeError):
        raise WeightsFileError(f"{path}: unreadable '{METADATA_KEY}' metadata") from None
    return state, config


def load_weights(model: KerasModel, path, assign: bool = False) -> KerasModel:
    """Load a Keras weights file (any layout) or a converted `.safetensors` into `model`.

    All-or-nothing: the file must fill every parameter and buffer with tensors of the right
    shapes and leave none of its own unused; otherwise a WeightsFileError is raised and the model
    is left untouched. `assign` (for a model on the CPU that nothing else refers to yet, as in
    the builders) makes the loaded tensors the model's own instead of copying them once more.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, config = read_safetensors(path)
        if config and config.get("family") != model.config["family"]:
            raise WeightsFileError(
                f"{path}: holds weights for {describe_config(config)}, not for model "
                f"{model.name!r} ({describe_config(model.config)})")
        _check_state(path, state, model, config)
    else:
        keras_file = read(path)
        try:
            state = keras_state_dict(keras_file, model)
        except WeightsFileError as error:
            raise WeightsFileError(f"{error}{_guess(keras_file, model)}") from None
    on_cpu = all(t.device.type in ("cpu", "meta") for t in model.state_dict().values())
    model.load_state_dict(state, assign=assign and on_cpu)
    return model


def _check_state(path: Path, state: dict, model: KerasModel, config: Optional[dict]) -> None:
    expected = model.state_dict()
    hint = f" The file holds {describe_config(config)}." if config else ""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsFileError(
            f"{path}: does not fit model {model.name!r} ({describe_config(model.config)}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}).{hint}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            layer = key.rsplit(".", 1)[0]
            raise WeightsFileError(
                f"{path}: layer {layer!r}: {key} has shape {tuple(tensor.shape)}, model "
                f"{model.name!r} expects {tuple(expected[key].shape)}.{hint}")
        if tensor.dtype != expected[key].dtype:
            raise WeightsFileError(
                f"{path}: layer {key.rsplit('.', 1)[0]!r}: {key} is {tensor.dtype}, model "
                f"expects {expected[key].dtype}")
