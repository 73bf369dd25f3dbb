"""The way back to Keras: a legacy weights-only `.h5`, the layout of the official files, which
`keras.applications.<Family>(weights=path, ...)` (built with the same arguments) loads. Keras
reads such files by the order of the weighted layers, and ours are in Keras' order; each layer
gives back its own Keras variables (`to_keras`). A user's own model goes back into its original
file's format instead (`keras_like.save_keras_like`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..nn.graph import KerasModel
from . import config as model_config
from .atomic import atomic_write
from .checkpoints import load_model, read_safetensors
from .keras_like import WriteBackUsageError, save_keras_like
from .pairing import build, describe_config, weighted_layers
from .reader import WeightsFileError


def save_keras_h5(model: KerasModel, path) -> None:
    """A legacy weights-only Keras .h5 of the model's weights (Keras 2 variable names, as in the
    official files); written atomically."""

    def write(tmp: str) -> None:
        layers = weighted_layers(model)
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"3.15.1"
            for name, module in layers:
                group = f.create_group(name)
                names = [f"{name}/{v}:0" for v in module.keras_variables()]
                group.attrs["weight_names"] = np.array([n.encode() for n in names])
                for weight_name, array in zip(names, module.to_keras()):
                    group.create_dataset(weight_name, data=array)

    atomic_write(Path(path), write)


def safetensors_to_keras(src, dst, *, like=None, config=None) -> dict:
    """`torch-mobilenets convert --to keras`: a checkpoint (converted or saved here) to Keras;
    returns the checkpoint's config.

    Without `like`, an official architecture's legacy weights-only .h5 (`save_keras_h5`). With
    `like`, the Keras file the model came from (and `config`, its JSON, for a weights-only
    one): `dst` in that file's format (`save_keras_like`), which a user's own model needs: a
    checkpoint of one without `like` raises WriteBackUsageError."""
    state, recorded = read_safetensors(src)
    if not recorded:
        raise WeightsFileError(
            f"{src}: records no model config; save it with save_checkpoint or "
            "convert it with torch-mobilenets convert"
        )
    if like is not None:
        save_keras_like(load_model(src), dst, like=like, config=config)
        return recorded
    if config is not None:
        raise WriteBackUsageError("a model config (--config) goes with the file it fits (--like)")
    if recorded.get("family") == model_config.SPEC_FAMILY:
        raise WriteBackUsageError(
            f"{src}: holds a user's own {describe_config(recorded)}, which goes back to Keras "
            "in the format of the Keras file it came from: give that file as like= (--like "
            "ORIGINAL: the .keras, the full-model .h5, or the weights file with its JSON as "
            "--config model.json)"
        )
    model = build(recorded)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise WeightsFileError(
            f"{src}: does not fit its own config {recorded['family']}: {sorted(missing)[:5]}"
        )
    model.load_state_dict(state)
    save_keras_h5(model, dst)
    return recorded
