"""Keras files in and out: reading every Keras weights layout (`reader`), pairing a file's layers
with a model's and inferring its architecture (`pairing`), safetensors checkpoints, conversion
and loading (`checkpoints`), the legacy Keras `.h5` writer (`writer`), and a user's model written
back into the format of its original Keras file (`keras_like`)."""

from .checkpoints import (
    METADATA_KEY,
    convert,
    load_model,
    load_weights,
    read_safetensors,
    save_checkpoint,
    sha256,
)
from .keras_like import GraphMismatchError, WriteBackUsageError, save_keras_like
from .pairing import build, describe_config, file_config, infer_config, read
from .reader import WeightsFileError
from .writer import safetensors_to_keras, save_keras_h5

__all__ = [
    "METADATA_KEY",
    "GraphMismatchError",
    "WeightsFileError",
    "WriteBackUsageError",
    "build",
    "convert",
    "describe_config",
    "file_config",
    "infer_config",
    "load_model",
    "load_weights",
    "read",
    "read_safetensors",
    "safetensors_to_keras",
    "save_checkpoint",
    "save_keras_h5",
    "save_keras_like",
    "sha256",
]
