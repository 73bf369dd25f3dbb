"""The model builders, written like Keras' `applications/mobilenet*.py` and KerasCV's backbone so
that the two read side by side. They build with Keras' initialisation and apply Keras' argument
rules; they load no weights (the public constructors in `torch_mobilenets` do)."""

from collections.abc import Callable
from dataclasses import dataclass

from ..nn.graph import KerasModel
from . import heads  # noqa: F401  (registers the tops `reset_classifier` adds)
from .mobilenet_v1 import MobileNet
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from .mobilenet_v3_backbone import MobileNetV3Backbone


@dataclass(frozen=True)
class Family:
    """A family, under the name configs and checkpoints give it: our builder and Keras' own."""

    builder: Callable[..., KerasModel]
    # Keras' builder: in `keras.applications`, or KerasCV's `keras_cv.models` where `keras_cv`.
    keras_class: str
    # The `keras.applications` module of the family's `preprocess_input` and
    # `decode_predictions`; None for KerasCV's backbone, which has neither.
    keras_module: str | None
    keras_cv: bool = False


# The one registry of families: every table by family name (the public constructors, the
# command line's choices, the Keras side of parity and the tests) is made from it.
FAMILIES: dict[str, Family] = {
    "mobilenet": Family(MobileNet, "MobileNet", "mobilenet"),
    "mobilenet_v2": Family(MobileNetV2, "MobileNetV2", "mobilenet_v2"),
    "mobilenet_v3_small": Family(MobileNetV3Small, "MobileNetV3Small", "mobilenet_v3"),
    "mobilenet_v3_large": Family(MobileNetV3Large, "MobileNetV3Large", "mobilenet_v3"),
    "mobilenet_v3_backbone": Family(
        MobileNetV3Backbone, "MobileNetV3Backbone", None, keras_cv=True
    ),
}

__all__ = [
    "FAMILIES",
    "Family",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Backbone",
    "MobileNetV3Large",
    "MobileNetV3Small",
]
