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
from . import reader
from .atomic import atomic_write, check_output_directory
from .pairing import (
    build,
    describe_config,
    file_config,
    keras_state_dict,
    read,
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
    src, dst, *, allow_nonfinite: bool = False, skip_extra_layers: bool = False, **known
) -> dict:
    """Convert a Keras weights file to a safetensors checkpoint; returns its config.

    `known` fixes parts of the architecture (family, alpha, depth_multiplier, minimalistic,
    include_top, classes) where the file cannot tell them apart; the rest is inferred.
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
    config = file_config(keras_file, skip_extra_layers, **known)
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
