"""MobileNetV2, as `keras.applications.mobilenet_v2` offers it: the model with its weights,
`preprocess_input` and `decode_predictions`. The architecture is in `models/mobilenet_v2.py`."""

from .models import mobilenet_v2 as _builder
from .models.preprocessing import scale_to_unit_range as preprocess_input
from .pretrained.imagenet import decode_predictions
from .pretrained.loading import with_weights

MobileNetV2 = with_weights(_builder.MobileNetV2)

__all__ = ["MobileNetV2", "decode_predictions", "preprocess_input"]
