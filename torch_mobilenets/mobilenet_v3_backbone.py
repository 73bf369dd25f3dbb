"""KerasCV's `MobileNetV3Backbone` with its weights: from a file, or from a KerasCV preset (a
name, or a local preset folder). The architecture is in `models/mobilenet_v3_backbone.py`."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from .keras_io import load_weights as _load_weights
from .keras_io.presets import preset_arguments
from .models import mobilenet_v3_backbone as _builder
from .models.arguments import Weights
from .models.mobilenet_v3_backbone import PRESETS

PRESET_DIR_VARIABLE = "TORCH_MOBILENETS_KERAS_CV_PRESETS"


class MobileNetV3Backbone(_builder.MobileNetV3Backbone):
    __doc__ = (
        (_builder.MobileNetV3Backbone.__doc__ or "")
        + """
    `weights`: None (Keras' initialisation), or the path of a KerasCV weights file
    (`model.weights.h5`), a preset folder, any other Keras layout, or a converted
    `.safetensors`. `from_preset` builds from a KerasCV preset, with its weights.
    """
    )

    def __init__(self, *args, weights: Weights = None, **kwargs):
        if weights is not None and not os.path.exists(os.fspath(weights)):
            raise ValueError(f"weights={weights!r} is not an existing file")
        super().__init__(*args, **kwargs)
        if weights is not None:
            _load_weights(self, weights, assign=True)  # a fresh model: take the tensors as they are

    @classmethod
    def from_preset(
        cls, preset: str, load_weights: bool | None = None, **overrides
    ) -> MobileNetV3Backbone:
        """A backbone from a KerasCV preset name or a local preset folder.

        Names: "mobilenet_v3_small", "mobilenet_v3_large" (configurations only) and
        "mobilenet_v3_small_imagenet", "mobilenet_v3_large_imagenet" (with KerasCV's weights).
        KerasCV downloads preset weights from Kaggle; here they come from a local copy of the
        preset folder (`config.json`, `metadata.json`, `model.weights.h5`): pass its path as
        `preset`, or keep it at `$TORCH_MOBILENETS_KERAS_CV_PRESETS/<name>/`.
        `load_weights=None` loads them when the preset has weights. `overrides` replace
        configuration entries (`include_rescaling`, `input_shape`, ...).
        """
        folder = Path(preset)
        if folder.is_dir():
            config, has_weights = preset_arguments(folder)
        elif preset in PRESETS:
            config, has_weights = (
                dict(PRESETS[preset], include_rescaling=True),
                preset.endswith("_imagenet"),
            )
            folder = Path(os.environ.get(PRESET_DIR_VARIABLE, "keras_cv_presets")) / preset
        else:
            raise ValueError(
                f"Unknown preset {preset!r}: use one of {sorted(PRESETS)} or the "
                "path of a KerasCV preset folder"
            )
        if load_weights and not has_weights:
            raise ValueError(
                f"The preset {preset!r} does not include weights; remove `load_weights=True`."
            )
        weights = None
        if has_weights and load_weights is not False:
            weights = folder / "model.weights.h5"
            if not weights.is_file():
                raise ValueError(
                    f"The weights of preset {preset!r} are not available locally: expected "
                    f"{weights}. KerasCV downloads them from Kaggle "
                    f"(kaggle://keras/mobilenetv3/keras/{preset}); put that preset folder at "
                    f"${PRESET_DIR_VARIABLE}/{preset}/ or pass its path to from_preset(), or "
                    "pass load_weights=False for random weights."
                )
        config.update(overrides)
        return cls(**config, weights=weights)


def _signature() -> inspect.Signature:
    """The builder's arguments, then `weights`."""
    base = inspect.signature(_builder.MobileNetV3Backbone)
    weights = inspect.Parameter("weights", inspect.Parameter.KEYWORD_ONLY, default=None)
    return base.replace(parameters=[*base.parameters.values(), weights])


MobileNetV3Backbone.__signature__ = _signature()  # type: ignore[attr-defined]


def MobileNetV3SmallBackbone(
    include_rescaling=True, input_shape=(3, None, None), **kwargs
) -> MobileNetV3Backbone:
    """KerasCV's `MobileNetV3SmallBackbone`: the "mobilenet_v3_small" preset."""
    return MobileNetV3Backbone.from_preset(
        "mobilenet_v3_small", include_rescaling=include_rescaling, input_shape=input_shape, **kwargs
    )


def MobileNetV3LargeBackbone(
    include_rescaling=True, input_shape=(3, None, None), **kwargs
) -> MobileNetV3Backbone:
    """KerasCV's `MobileNetV3LargeBackbone`: the "mobilenet_v3_large" preset."""
    return MobileNetV3Backbone.from_preset(
        "mobilenet_v3_large", include_rescaling=include_rescaling, input_shape=input_shape, **kwargs
    )
