"""The converter's public functions, under their old path: `torch_mobilenets.conversion.convert`.
They live in `torch_mobilenets.keras_io`, where new code should import them from."""

from .keras_io import (
    METADATA_KEY,
    WeightsFileError,
    build,
    convert,
    describe_config,
    file_config,
    infer_config,
    load_weights,
    read,
    read_safetensors,
    sha256,
)

__all__ = [
    "METADATA_KEY",
    "WeightsFileError",
    "build",
    "convert",
    "describe_config",
    "file_config",
    "infer_config",
    "load_weights",
    "read",
    "read_safetensors",
    "sha256",
]
