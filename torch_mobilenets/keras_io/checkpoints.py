"""Safetensors checkpoints in and out: converting a Keras file, saving a model, and loading
either into a model.

A checkpoint written here records the model's config under one metadata key, so that loading can
check what it fits and the way back to Keras can rebuild the model. Every write is atomic
(`atomic.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._version import __version__
from ..models import FAMILIES
from ..nn.graph import KerasModel
from . import config as model_config
from . import reader
from .atomic import atomic_write, check_output_directory
from .pairing import (
    build,
    describe_config,
    file_config,
    keras_state_dict,
    read,
    weighted_layers,
    what_the_file_holds,
)
from .reader import WeightsFileError, check_input_file, nonfinite, one_line, reading

METADATA_KEY = "torch_mobilenets"


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(
    src,
    dst,
    *,
    allow_nonfinite: bool = False,
    skip_extra_layers: bool = False,
    model_config_json=None,
    **known,
) -> dict:
    """Convert a Keras weights file to a safetensors checkpoint; returns its config.

    A file that carries its model config (a `.keras` archive, a full-model `.h5`), or whose
    config is given as `model_config_json` (`model.to_json()`), is converted as that model:
    the checkpoint records its graph (`load_model` rebuilds it), unless it is exactly an
    official architecture, which is recorded as the builder's arguments, as for weights-only
    files. For those, `known` fixes parts of the architecture (family, alpha,
    depth_multiplier, minimalistic, include_top, classes) where the file cannot tell them
    apart; the rest is inferred.
    A file that cannot be read or fits no model raises WeightsFileError (NaN or Inf too, unless
    `allow_nonfinite`), and so does a legacy file holding layers after those of the model it
    fits (a pre-2021 V3 `_no_top.h5`), unless `skip_extra_layers`: then they are left out, with
    a warning naming them, and the checkpoint records their names. The output is written
    atomically: on any error, an interrupt included, nothing is left at `dst` (an existing `dst`
    is replaced only by a complete new file).
    """
    src, dst = Path(src), Path(dst)
    check_output_directory(dst)  # before the work, not after it
    keras_file = read(src, allow_nonfinite)
    spec = file_spec(keras_file, model_config_json)
    skipped: list = []
    official = official_config(keras_file, spec) if spec is not None else None
    if spec is not None and official is None:  # the user's own graph
        config: dict = {"family": model_config.SPEC_FAMILY, "spec": spec.to_json()}
        state = spec_model_state(keras_file, spec)[1]
    else:
        config = official or file_config(keras_file, skip_extra_layers, **known)
        state, skipped = keras_state_dict(keras_file, build(config, "meta"), skip_extra_layers)
    recorded = {
        "config": config,
        "source_file": src.name,
        "source_sha256": sha256(keras_file.path),  # a preset folder: its weights file
        "source_layout": keras_file.layout,
        "converter_version": __version__,
    }
    if skipped:
        recorded["skipped_layers"] = [layer.name for layer in skipped]
        _warn_skipped(keras_file, config, skipped)
    # One metadata entry: safetensors writes its metadata map in no fixed order, and a
    # conversion should give the same bytes every time.
    metadata = {METADATA_KEY: json.dumps(recorded, sort_keys=True)}
    atomic_write(dst, lambda tmp: save_file(state, tmp, metadata))
    return config


def file_spec(keras_file, raw=None) -> model_config.Spec | None:
    """The spec of the model config a file carries (a `.keras` archive, a full-model `.h5`),
    or of `raw` (`model.to_json()`: a JSON string, a dict or a path to a JSON file); None for
    a weights-only file, or a KerasCV preset, whose config is no Keras model."""
    if raw is None:
        raw = keras_file.model_config
        if not model_config.is_model_config(raw):
            return None
    elif isinstance(raw, str | Path) and not str(raw).lstrip().startswith("{"):
        path = Path(raw)
        with reading(path):
            reader.check_input_file(path, reader.MAX_JSON_BYTES)
            raw = json.loads(path.read_bytes())
    elif isinstance(raw, str):
        with reading(keras_file.path, what="the model config given is not JSON"):
            raw = json.loads(raw)
    try:
        spec = model_config.model_spec(raw)
        model_config.check_sizes(model_config.build_model(spec, "meta"), "the model config")
    except WeightsFileError as error:
        raise type(error)(f"{keras_file.path}: {error}") from None
    return spec


def spec_model_state(keras_file, spec: model_config.Spec) -> tuple[KerasModel, dict]:
    """The model a spec describes, on the meta device, and its state from the file."""
    model = model_config.build_model(spec, "meta")
    return model, model_config.spec_state_dict(keras_file, model, spec)


def official_config(keras_file, spec: model_config.Spec) -> dict | None:
    """The builder arguments of the official architecture the file's config is exactly, if it
    is one (a `keras.applications` model saved whole): the same weighted layers under the same
    names, as many dropout layers, nothing frozen, and the same outputs for two inputs with
    the file's weights. Anything else, a user's head on an inlined base above all, is built from
    its config."""
    spec_model, spec_state = spec_model_state(keras_file, spec)
    leaves = model_config.weighted_leaves(spec_model)
    if any(len(path) > 1 for path, _, _ in leaves) or not _all_trainable(spec):
        return None
    try:
        inferred = file_config(keras_file)
        state, skipped = keras_state_dict(keras_file, build(inferred, "meta"))
    except (WeightsFileError, ValueError, TypeError):
        return None
    for config in _builder_options(inferred):
        official = build(config, "meta")
        if skipped or [n for n, _ in weighted_layers(official)] != [p[0] for p, _, _ in leaves]:
            return None
        if _dropouts(official) == _dropouts(spec_model) and _same_function(
            official, dict(state), spec_model, spec_state
        ):
            return config
    return None


def _builder_options(config: dict) -> list:
    """The inferred architecture with each choice of the builder arguments that weights do
    not show: the top's activation, the pooling without it, V3's preprocessing."""
    options: list[dict] = [{}]
    if config.get("include_top", True):
        options += [{"classifier_activation": None}]
    else:
        options += [{"pooling": "avg"}, {"pooling": "max"}]
    if config["family"].startswith("mobilenet_v3"):
        options += [dict(o, include_preprocessing=False) for o in options]
    return [{**config, **option} for option in options]


def _all_trainable(spec: model_config.Spec) -> bool:
    return spec.trainable and all(layer.trainable for layer in spec.layers)


def _dropouts(model: KerasModel) -> int:
    return sum(isinstance(m, torch.nn.Dropout) for m in model.modules())


def _same_function(a: KerasModel, a_state: dict, b: KerasModel, b_state: dict) -> bool:
    a.load_state_dict(a_state, assign=True)
    b.load_state_dict(b_state, assign=True)
    _, height, width = a.input_shape
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, height or 64, width or 64, generator=generator) * 2 - 1
    with torch.no_grad():
        got_a, got_b = a.eval()(x), b.eval()(x)
    if not isinstance(got_a, torch.Tensor) or not isinstance(got_b, torch.Tensor):
        return False
    if got_a.shape != got_b.shape:
        return False
    scale = max(1.0, float(got_a.abs().max()))
    return float((got_a - got_b).abs().max()) <= 1e-5 * scale


def load_model(
    path, *, config=None, allow_nonfinite: bool = False, skip_extra_layers: bool = False
) -> KerasModel:
    """Any Keras model built around a MobileNet, as a `KerasModel` in eval mode.

    `path` is a `.keras` archive, a full-model `.h5` (Keras 2 or 3), a weights file with the
    model's JSON given as `config` (`model.to_json()`: a string, a dict or a path), a
    weights-only file of an official architecture (inferred as `convert` infers it), or a
    checkpoint this project wrote (`convert`, `save_checkpoint`). In eval mode the model
    computes what `keras_model(x, training=False)` does, on NCHW input; several outputs come as
    a tuple in Keras' order. What Keras froze (`trainable=False`) is frozen. A config we
    cannot compute exactly (a `Lambda`, a custom class, a layer we do not have) is refused
    with a WeightsFileError naming the layer; nothing from the file is ever run.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, recorded = read_safetensors(path, allow_nonfinite)
        if recorded is None:
            raise WeightsFileError(
                f"{path}: a safetensors file without this project's config: build the model "
                "with its constructor and load_weights(model, path) instead"
            )
        with reading(path, what="the recorded model cannot be built"):
            model = build(recorded)
        _check_state(path, state, model, recorded)
        model.load_state_dict(state)
        return model.eval()
    keras_file = read(path, allow_nonfinite)
    spec = file_spec(keras_file, config)
    if spec is None:
        recorded = file_config(keras_file, skip_extra_layers)
        model = build(recorded)
        state, skipped = keras_state_dict(keras_file, model, skip_extra_layers)
        if skipped:
            _warn_skipped(keras_file, recorded, skipped)
    else:
        model = model_config.build_model(spec)
        state = model_config.spec_state_dict(keras_file, model, spec)
    _check_state(path, state, model, None)
    model.load_state_dict(state)
    return model.eval()


def _warn_skipped(keras_file, config: dict, skipped: list) -> None:
    """Warns, from the caller of the public function (two frames up), of the layers left out."""
    warnings.warn(
        f"{keras_file.path}: skipped {len(skipped)} layer{'s' if len(skipped) > 1 else ''} "
        f"after the last one of {describe_config(config)}, as asked (skip_extra_layers): "
        + ", ".join(layer.describe() for layer in skipped),
        UserWarning,
        stacklevel=3,
    )


def save_checkpoint(model: KerasModel, path) -> None:
    """The model's state dict as safetensors, with its config; written atomically.

    Weights are written as float32 whatever the model's dtype, as every checkpoint here holds
    them: float16 and bfloat16 widen to float32 exactly, so a half-precision model saved and
    loaded back into a model of its dtype is the same bit for bit (`load_weights` casts to the
    model's dtype)."""
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {
        METADATA_KEY: json.dumps(
            {"config": _jsonable(model.config), "converter_version": __version__}, sort_keys=True
        )
    }
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata))


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


# The dtypes a checkpoint of these models holds: float32 weights, int64 BatchNorm step counts.
_SAFETENSORS_DTYPES = {"F32": 4, "I64": 8}
# The config entries whose types code reading a checkpoint's config relies on.
_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "alpha": (int, float),
    "depth_multiplier": int,
    "classes": int,
    "include_top": bool,
    "minimalistic": bool,
}


def read_safetensors(path, allow_nonfinite: bool = False) -> tuple:
    """(state dict, config or None) of a checkpoint; converted ones record their config.

    Raises WeightsFileError for junk, a truncated file, a header claiming more than the file
    holds, tensors other than float32/int64 or over the size limits, unreadable metadata, and
    NaN/Inf unless `allow_nonfinite`. Sizes and dtypes are checked before any tensor is read."""
    path = Path(path)
    with reading(path, (SafetensorError,), "not a readable safetensors file"):
        check_input_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
            _check_safetensors_entries(path, f, keys)
            state = {key: f.get_tensor(key) for key in keys}
        config = _metadata_config(path, metadata)
    if not allow_nonfinite:
        for key, tensor in state.items():
            found = nonfinite(tensor.numpy()) if tensor.is_floating_point() else None
            if found:
                raise WeightsFileError(
                    f"{path}: layer {key.rsplit('.', 1)[0]!r}: {key} holds {found}; pass "
                    "allow_nonfinite=True to load it anyway"
                )
    return state, config


def _check_safetensors_entries(path: Path, f, keys: list) -> None:
    # Limits read at call time, from the reader, so there is one place to change them.
    max_tensors = reader.MAX_LAYERS * 8
    if len(keys) > max_tensors:
        raise WeightsFileError(f"{path}: {len(keys)} tensors, over the limit of {max_tensors}")
    total = 0
    for key in keys:
        entry = f.get_slice(key)
        dtype, shape = entry.get_dtype(), entry.get_shape()
        if dtype not in _SAFETENSORS_DTYPES:
            raise WeightsFileError(
                f"{path}: layer {key.rsplit('.', 1)[0]!r}: {key!r} is {dtype}; "
                "weights must be float32 (F32)"
            )
        nbytes = _SAFETENSORS_DTYPES[dtype] * math.prod(shape)
        total += nbytes
        if nbytes > reader.MAX_TENSOR_BYTES or total > reader.MAX_FILE_BYTES:
            raise WeightsFileError(f"{path}: {key!r} has shape {shape}, over the size limits")


def _metadata_config(path: Path, metadata: dict) -> dict | None:
    """The config a converted checkpoint records, checked: other code takes it at its word."""
    if METADATA_KEY not in metadata:
        return None
    recorded = json.loads(metadata[METADATA_KEY])
    config = recorded.get("config") if isinstance(recorded, dict) else None
    if not _valid_config(config):
        raise WeightsFileError(
            f"{path}: unreadable '{METADATA_KEY}' metadata: its config is "
            f"not a model configuration ({one_line(config)[:200]})"
        )
    return config


def _valid_config(config) -> bool:
    if isinstance(config, dict) and config.get("family") == model_config.SPEC_FAMILY:
        return isinstance(config.get("spec"), dict)  # checked when it is built
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("family"), str)
        or config["family"] not in FAMILIES
    ):
        return False
    # A bool is an int to Python, but is no width or class count.
    return all(
        isinstance(config[k], kinds) and (kinds is bool or not isinstance(config[k], bool))
        for k, kinds in _CONFIG_TYPES.items()
        if k in config
    )


def load_weights(
    model: KerasModel,
    path,
    assign: bool = False,
    allow_nonfinite: bool = False,
    skip_extra_layers: bool = False,
) -> KerasModel:
    """Load a Keras weights file (any layout) or a converted `.safetensors` into `model`.

    All-or-nothing: the file must fill every parameter and buffer with tensors of the right
    shapes and leave none of its own unused; otherwise a WeightsFileError is raised and the model
    is left untouched (the whole state is built and checked before anything is copied). NaN and
    Inf are refused unless `allow_nonfinite`. A legacy file that holds layers after the model's
    last one (a pre-2021 V3 `_no_top.h5`) is refused, saying what they are, unless
    `skip_extra_layers`: then they are left out, with a warning naming them. The files hold
    float32 weights; they are cast to
    the model's dtype (float16, bfloat16, ...), which is the caller's choice. `assign` (for a
    model on the CPU that nothing else refers to yet, as in the builders) makes the loaded
    tensors the model's own instead of copying them once more, where the dtypes agree.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, config = read_safetensors(path, allow_nonfinite)
        if config and config.get("family") != model.config["family"]:
            raise WeightsFileError(
                f"{path}: holds weights for {describe_config(config)}, not for model "
                f"{model.name!r} ({describe_config(model.config)})"
            )
        _check_state(path, state, model, config)
    else:
        keras_file = read(path, allow_nonfinite)
        try:
            state, skipped = keras_state_dict(keras_file, model, skip_extra_layers)
        except WeightsFileError as error:
            raise WeightsFileError(f"{error}{what_the_file_holds(keras_file, model)}") from None
        if skipped:
            _warn_skipped(keras_file, model.config, skipped)
        # Already matched layer by layer; checked again so that load_state_dict cannot fail
        # half way (it copies what fits before it complains).
        _check_state(path, state, model, None)
    own = model.state_dict()
    # Assigned tensors would keep the file's dtype and device: only where both are the model's.
    assign = assign and all(
        t.device.type in ("cpu", "meta") and t.dtype == state[k].dtype for k, t in own.items()
    )
    model.load_state_dict(state, assign=assign)
    return model


def _check_state(path: Path, state: dict, model: KerasModel, config: dict | None) -> None:
    expected = model.state_dict()
    hint = f" The file holds {describe_config(config)}." if config else ""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsFileError(
            f"{path}: does not fit model {model.name!r} ({describe_config(model.config)}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}).{hint}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            layer = key.rsplit(".", 1)[0]
            raise WeightsFileError(
                f"{path}: layer {layer!r}: {key} has shape {tuple(tensor.shape)}, model "
                f"{model.name!r} expects {tuple(expected[key].shape)}.{hint}"
            )
        # Weights are cast to the model's float dtype; a count is no weight, nor the reverse.
        if tensor.is_floating_point() != expected[key].is_floating_point():
            raise WeightsFileError(
                f"{path}: layer {key.rsplit('.', 1)[0]!r}: {key} is {tensor.dtype}, model "
                f"expects {expected[key].dtype}"
            )
