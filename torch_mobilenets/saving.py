"""Writing models: safetensors checkpoints, and the way back to Keras.

`save_checkpoint` writes a model's state with its config, so `weights=` can check what it fits.
`save_keras_h5` writes a legacy weights-only Keras `.h5`, the layout of the official files,
which `keras.applications.<Family>(weights=path, ...)` (built with the same arguments) loads:
Keras reads such files by the order of the weighted layers, and ours are in Keras' order.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from .conversion import METADATA_KEY, _atomic_write, read_safetensors
from .functional import KerasModel
from .keras_files import WeightsFileError
from .layers import WEIGHTED_LAYERS


def save_checkpoint(model: KerasModel, path) -> None:
    """The model's state dict as safetensors, with its config; written atomically."""
    from safetensors.torch import save_file

    from . import __version__

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps({"config": _jsonable(model.config),
                                          "converter_version": __version__}, sort_keys=True)}
    _atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata))


def keras_arrays(module) -> list:
    """A weighted layer's state as Keras variables, in Keras' order and layout (the inverse of
    `from_keras`)."""
    if hasattr(module, "keras_sublayers"):  # a layer holding layers: its parts, in order
        return [a for name in module.keras_sublayers for a in keras_arrays(getattr(module, name))]
    if module.keras_class == "BatchNormalization":
        tensors = [module.weight, module.bias, module.running_mean, module.running_var]
        return [t.detach().cpu().numpy().astype(np.float32) for t in tensors]
    weight = module.weight.detach().cpu().numpy().astype(np.float32)
    if module.keras_class == "Dense":
        kernel = weight.T
    elif module.keras_class == "DepthwiseConv2D":
        channels, multiplier = module.in_channels, module.out_channels // module.in_channels
        kh, kw = module.kernel_size
        kernel = weight[:, 0].transpose(1, 2, 0).reshape(kh, kw, channels, multiplier)
    else:
        kernel = weight.transpose(2, 3, 1, 0)
    arrays = [np.ascontiguousarray(kernel)]
    if module.bias is not None:
        arrays.append(module.bias.detach().cpu().numpy().astype(np.float32))
    return arrays


def save_keras_h5(model: KerasModel, path) -> None:
    """A legacy weights-only Keras .h5 of the model's weights (Keras 2 variable names, as in the
    official files); written atomically."""
    def write(tmp):
        layers = [(name, m) for name, m in model.named_children() if isinstance(m, WEIGHTED_LAYERS)]
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"3.15.1"
            for name, module in layers:
                group = f.create_group(name)
                variables = module.keras_variables()
                names = [f"{name}/{v}:0" for v in variables]
                group.attrs["weight_names"] = np.array([n.encode() for n in names])
                for weight_name, array in zip(names, keras_arrays(module)):
                    group.create_dataset(weight_name, data=array)

    _atomic_write(Path(path), write)


def safetensors_to_keras(src, dst) -> dict:
    """`python -m convert --to keras`: a checkpoint (converted or saved here) to a Keras .h5."""
    from .conversion import build

    state, config = read_safetensors(src)
    if not config:
        raise WeightsFileError(f"{src}: records no model config; save it with save_checkpoint or "
                               "convert it with python -m convert")
    model = build(config)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise WeightsFileError(f"{src}: does not fit its own config {config['family']}: "
                               f"{sorted(missing)[:5]}")
    model.load_state_dict(state)
    save_keras_h5(model, dst)
    return config


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
