"""MobileNetV3Small and MobileNetV3Large, as `keras.applications.mobilenet_v3` offers them: the
models with their weights, `preprocess_input` (a pass-through: the models rescale their input)
and `decode_predictions`. The architecture is in `models/mobilenet_v3.py`."""

from .models import mobilenet_v3 as _builder
from .models.preprocessing import pass_through as preprocess_input
from .pretrained.imagenet import decode_predictions
from .pretrained.loading import with_weights

MobileNetV3Small = with_weights(_builder.MobileNetV3Small)
MobileNetV3Large = with_weights(_builder.MobileNetV3Large)

__all__ = ["MobileNetV3Large", "MobileNetV3Small", "decode_predictions", "preprocess_input"]
