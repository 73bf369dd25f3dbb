"""torch-mobilenets: the Keras MobileNet family in PyTorch, layer for layer, with a converter for
Keras weight files, so PyTorch logits match Keras to float32 round-off.

The package's layers, each importing only those before it:
`nn` (layers, graph, inference folds) -> `models` (builders) -> `keras_io` (Keras files,
safetensors) -> `pretrained` (official weights, presets) -> this module and the public model
modules -> `cli` (the command line).
"""

from . import keras_io, mobilenet_v1, mobilenet_v2, mobilenet_v3
from ._version import __version__
from .keras_io import WeightsFileError, load_model, load_weights, save_checkpoint
from .mobilenet_v1 import MobileNet
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from .mobilenet_v3_backbone import (
    MobileNetV3Backbone,
    MobileNetV3LargeBackbone,
    MobileNetV3SmallBackbone,
)
from .models import FAMILIES as _FAMILIES
from .nn import KerasModel, keep_freed_memory, optimize_for_inference
from .pretrained.loading import with_weights as _with_weights
from .pretrained.registry import Checkpoint, list_weights
from .pretrained.transforms import KerasPreprocessing

# The public constructors under `models.FAMILIES`' names, as configs and checkpoints name them:
# `FAMILIES["mobilenet_v2"] is MobileNetV2`. KerasCV's backbone is a class of its own, for its
# presets.
FAMILIES = {
    name: MobileNetV3Backbone if family.keras_cv else _with_weights(family.builder)
    for name, family in _FAMILIES.items()
}

# What the docs document, and nothing else.
__all__ = [
    "FAMILIES",
    "Checkpoint",
    "KerasModel",
    "KerasPreprocessing",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Backbone",
    "MobileNetV3Large",
    "MobileNetV3LargeBackbone",
    "MobileNetV3Small",
    "MobileNetV3SmallBackbone",
    "WeightsFileError",
    "__version__",
    "keep_freed_memory",
    "keras_io",
    "list_weights",
    "load_model",
    "load_weights",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3",
    "optimize_for_inference",
    "save_checkpoint",
]
