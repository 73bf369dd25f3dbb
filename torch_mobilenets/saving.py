"""Writing models, under their old path: `torch_mobilenets.saving.save_checkpoint`. They live in
`torch_mobilenets.keras_io`, where new code should import them from."""

from .keras_io import safetensors_to_keras, save_checkpoint, save_keras_h5

__all__ = ["safetensors_to_keras", "save_checkpoint", "save_keras_h5"]
