"""The way back to Keras: a legacy weights-only `.h5`, the layout of the official files, which
`keras.applications.<Family>(weights=path, ...)` (built with the same arguments) loads. Keras
reads such files by the order of the weighted layers, and ours are in Keras' order; each layer
gives back its own Keras variables (`to_keras`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..nn.graph import KerasModel
from .atomic import atomic_write
from .checkpoints import read_safetensors
from .pairing import build, weighted_layers
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


def safetensors_to_keras(src, dst) -> dict:
    """`torch-mobilenets convert --to keras`: a checkpoint (converted or saved here) to a Keras
    .h5."""
    state, config = read_safetensors(src)
    if not config:
        raise WeightsFileError(
            f"{src}: records no model config; save it with save_checkpoint or "
            "convert it with torch-mobilenets convert"
        )
    model = build(config)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise WeightsFileError(
            f"{src}: does not fit its own config {config['family']}: {sorted(missing)[:5]}"
        )
    model.load_state_dict(state)
    save_keras_h5(model, dst)
    return config
