"""The model builders, written like Keras' `applications/mobilenet*.py` and KerasCV's backbone so
that the two read side by side. They build with Keras' initialisation and apply Keras' argument
rules; they load no weights (the public constructors in `torch_mobilenets` do)."""

from collections.abc import Callable

from ..nn.graph import KerasModel
from . import heads  # noqa: F401  (registers the tops `reset_classifier` adds)
from .mobilenet_v1 import MobileNet
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from .mobilenet_v3_backbone import MobileNetV3Backbone

# The builders by family name, as configs and checkpoints name them.
FAMILIES: dict[str, Callable[..., KerasModel]] = {
    "mobilenet": MobileNet,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3Small,
    "mobilenet_v3_large": MobileNetV3Large,
    "mobilenet_v3_backbone": MobileNetV3Backbone,
}

__all__ = [
    "FAMILIES",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Backbone",
    "MobileNetV3Large",
    "MobileNetV3Small",
]
