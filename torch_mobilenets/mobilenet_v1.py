"""MobileNet (V1), as `keras.applications.mobilenet` offers it: the model with its weights,
`preprocess_input` and `decode_predictions`. The architecture is in `models/mobilenet_v1.py`."""

from .models import mobilenet_v1 as _builder
from .models.preprocessing import scale_to_unit_range as preprocess_input
from .pretrained.imagenet import decode_predictions
from .pretrained.loading import with_weights

MobileNet = with_weights(_builder.MobileNet)

__all__ = ["MobileNet", "decode_predictions", "preprocess_input"]
