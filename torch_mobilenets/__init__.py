"""torch-mobilenets: the Keras MobileNet family in PyTorch, layer for layer, with a converter for
Keras weight files, so PyTorch logits match Keras to float32 round-off."""

from . import mobilenet_v1, mobilenet_v2, mobilenet_v3
from .functional import KerasModel
from .inference import optimize_for_inference
from .mobilenet_v1 import MobileNet
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from .mobilenet_v3_backbone import (MobileNetV3Backbone, MobileNetV3LargeBackbone,
                                    MobileNetV3SmallBackbone)
from .transforms import KerasPreprocessing
from .weights import Checkpoint, list_weights

__version__ = "0.1.0"

# The builders by family name, as the converter and checkpoints name them.
FAMILIES = {
    "mobilenet": MobileNet,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3Small,
    "mobilenet_v3_large": MobileNetV3Large,
    "mobilenet_v3_backbone": MobileNetV3Backbone,
}

__all__ = ["FAMILIES", "Checkpoint", "KerasModel", "KerasPreprocessing", "MobileNet",
           "MobileNetV2", "MobileNetV3Backbone", "MobileNetV3Large", "MobileNetV3LargeBackbone",
           "MobileNetV3Small", "MobileNetV3SmallBackbone", "list_weights", "mobilenet_v1",
           "mobilenet_v2", "mobilenet_v3", "optimize_for_inference"]
