"""KerasCV's `MobileNetV3Backbone` (keras-cv 0.9): the applications' V3 body under KerasCV's names.

What differs from `keras.applications` (see `mobilenet_v3.py`, whose blocks this reuses):
`Rescaling(1/255)` when `include_rescaling`, a hard-swish stem and `Conv_1` whatever the blocks
use, `_BatchNorm`/`_Add` layer names, squeeze-excite as one nested `SqueezeAndExcite2D` layer,
no top, and the pyramid outputs `P1`..`P5` that detection and segmentation heads read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import arguments
from .functional import KerasModel
from .layers import (BatchNorm2d, Conv2d, HardSwish, ReLU, Rescaling, SqueezeAndExcite2D,
                     make_divisible)
from .mobilenet_v3 import BN_MOMENTUM, Naming, _inverted_res_block


def _nested_squeeze_excite(model, x, filters, se_ratio, prefix):
    return model.add(f"{prefix}SqueezeAndExcite2D",
                     SqueezeAndExcite2D(filters, make_divisible(filters * se_ratio)), x)


KERAS_CV = Naming("BatchNorm", "Add", _nested_squeeze_excite)
ACTIVATIONS = {"relu": ReLU, "hard_swish": HardSwish}

_SMALL = dict(
    stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
    stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
    stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
    stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
    stackwise_se_ratio=[0.25, None, None] + [0.25] * 8,
    stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8,
)
_LARGE = dict(
    stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
    stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
    stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
    stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
    stackwise_se_ratio=[None] * 3 + [0.25] * 3 + [None] * 4 + [0.25] * 5,
    stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9,
)
# KerasCV's presets. The `_imagenet` ones carry weights KerasCV trained (not the applications'),
# which KerasCV downloads from Kaggle; we read them from a local copy of the preset folder.
PRESETS = {
    "mobilenet_v3_small": _SMALL,
    "mobilenet_v3_large": _LARGE,
    "mobilenet_v3_small_imagenet": _SMALL,
    "mobilenet_v3_large_imagenet": _LARGE,
}
PRESET_DIR_VARIABLE = "TORCH_MOBILENETS_KERAS_CV_PRESETS"


class MobileNetV3Backbone(KerasModel):
    """Instantiates KerasCV's MobileNetV3 backbone, computing what keras-cv 0.9 computes.

    Args:
        stackwise_expansion, stackwise_filters, stackwise_kernel_size, stackwise_stride,
        stackwise_se_ratio, stackwise_activation: one entry per inverted-residual block
            (activations "relu" or "hard_swish"; se ratio None for no squeeze-excite).
        include_rescaling: start with `Rescaling(1/255)`, so inputs are pixels in [0, 255];
            without it the model takes inputs as they are.
        input_shape: channels first; `(3, None, None)` (dynamic) by default. As in Keras, the
            stride-2 paddings come from the static size, or assume even sizes when dynamic.
        alpha: width multiplier of the blocks.
        weights: None, or a KerasCV weights file (`model.weights.h5`), a preset folder's weights,
            any other Keras layout, or a converted `.safetensors`.
        name: the model's name.

    Calling the model returns the final feature map (N, C, H, W); `forward_pyramid(x)` returns
    the `P1`..`P5` maps KerasCV's `pyramid_level_inputs` names.
    """

    # What the converter tries when a file does not say which stack it holds; rescaling has no
    # weights, so any value fits.
    architecture_variants = [dict(_SMALL, include_rescaling=True),
                             dict(_LARGE, include_rescaling=True)]

    def __init__(self, stackwise_expansion: Sequence[float], stackwise_filters: Sequence[int],
                 stackwise_kernel_size: Sequence[int], stackwise_stride: Sequence[int],
                 stackwise_se_ratio: Sequence[Optional[float]], stackwise_activation: Sequence[str],
                 include_rescaling: bool, input_shape=(3, None, None), alpha: float = 1.0,
                 weights=None, name: str = "mobile_net_v3_backbone"):
        stacks = [stackwise_expansion, stackwise_filters, stackwise_kernel_size, stackwise_stride,
                  stackwise_se_ratio, stackwise_activation]
        if len({len(s) for s in stacks}) != 1:
            raise ValueError("the stackwise_* lists must all have one entry per block; got "
                             f"lengths {[len(s) for s in stacks]}")
        unknown = sorted(set(stackwise_activation) - set(ACTIVATIONS))
        if unknown:
            raise ValueError(f"unsupported stackwise_activation {unknown}; use {sorted(ACTIVATIONS)}")
        if weights is not None and not os.path.exists(os.fspath(weights)):
            raise ValueError(f"weights={weights!r} is not an existing file")
        input_shape = arguments.check_input_shape(tuple(input_shape), min_size=1)
        config = dict(family="mobilenet_v3_backbone", input_shape=input_shape, alpha=alpha,
                      include_rescaling=include_rescaling,
                      **{k: list(v) for k, v in zip(_SMALL, stacks)})
        super().__init__(name, input_shape, config)

        x = self.input()
        if include_rescaling:
            x = self.add("rescaling", Rescaling(1.0 / 255), x)
        x = self.add("Conv", Conv2d(input_shape[0], 16, 3, stride=2), x)
        x = self.add("Conv_BatchNorm", BatchNorm2d(16, BN_MOMENTUM), x)
        x = self.add("Conv_activation", HardSwish(), x)
        # A pyramid level is the map a stride-2 block starts from, and the last block's output.
        levels = []
        for block_id, (expansion, filters, kernel, stride, se_ratio, activation) in enumerate(
                zip(*stacks)):
            if stride != 1:
                levels.append(self.layer_names[-1])
            x = _inverted_res_block(self, x, expansion, make_divisible(filters * alpha), kernel,
                                    stride, se_ratio, ACTIVATIONS[activation], block_id, KERAS_CV)
        levels.append(self.layer_names[-1])
        self.pyramid_level_inputs = {f"P{i + 1}": name for i, name in enumerate(levels)}

        last_conv_ch = make_divisible(x.shape[0] * 6)
        x = self.add("Conv_1", Conv2d(x.shape[0], last_conv_ch, 1), x)
        x = self.add("Conv_1_BatchNorm", BatchNorm2d(last_conv_ch, BN_MOMENTUM), x)
        self.add("Conv_1_activation", HardSwish(), x)
        self.feature_layer = self.layer_names[-1]
        if weights is not None:
            from .conversion import load_weights  # the converter imports the builders

            load_weights(self, weights, assign=True)

    def forward_pyramid(self, x: torch.Tensor) -> dict:
        """{"P1": ..., "P5": ...}: the outputs of the layers `pyramid_level_inputs` names."""
        outputs = self.forward_layers(x, self.pyramid_level_inputs.values())
        return {level: outputs[name] for level, name in self.pyramid_level_inputs.items()}

    @classmethod
    def from_preset(cls, preset: str, load_weights: Optional[bool] = None,
                    **overrides) -> "MobileNetV3Backbone":
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
            config, has_weights = _read_preset_folder(folder)
        elif preset in PRESETS:
            config, has_weights = dict(PRESETS[preset], include_rescaling=True), \
                preset.endswith("_imagenet")
            folder = Path(os.environ.get(PRESET_DIR_VARIABLE, "keras_cv_presets")) / preset
        else:
            raise ValueError(f"Unknown preset {preset!r}: use one of {sorted(PRESETS)} or the "
                             "path of a KerasCV preset folder")
        if load_weights and not has_weights:
            raise ValueError(f"The preset {preset!r} does not include weights; remove "
                             "`load_weights=True`.")
        weights = None
        if has_weights and load_weights is not False:
            weights = folder / "model.weights.h5"
            if not weights.is_file():
                raise ValueError(
                    f"The weights of preset {preset!r} are not available locally: expected "
                    f"{weights}. KerasCV downloads them from Kaggle "
                    f"(kaggle://keras/mobilenetv3/keras/{preset}); put that preset folder at "
                    f"${PRESET_DIR_VARIABLE}/{preset}/ or pass its path to from_preset(), or "
                    "pass load_weights=False for random weights.")
        config.update(overrides)
        return cls(**config, weights=weights)


def _read_preset_folder(folder: Path) -> tuple:
    """(constructor arguments, whether weights are included) from a KerasCV preset's
    config.json."""
    try:
        saved = json.loads((folder / "config.json").read_text())
        config = saved["config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder}: not a KerasCV preset folder ({error})") from None
    if "MobileNetV3Backbone" not in str(saved.get("registered_name", saved.get("class_name"))):
        raise ValueError(f"{folder}: holds a {saved.get('class_name')}, not a MobileNetV3Backbone")
    arguments_ = {k: config[k] for k in (*_SMALL, "include_rescaling", "alpha") if k in config}
    if config.get("input_shape"):
        height, width, channels = config["input_shape"]
        arguments_["input_shape"] = (channels, height, width)
    return arguments_, saved.get("weights") is not None


def MobileNetV3SmallBackbone(include_rescaling=True, input_shape=(3, None, None), **kwargs):
    """KerasCV's `MobileNetV3SmallBackbone`: the "mobilenet_v3_small" preset."""
    return MobileNetV3Backbone.from_preset("mobilenet_v3_small", include_rescaling=include_rescaling,
                                           input_shape=input_shape, **kwargs)


def MobileNetV3LargeBackbone(include_rescaling=True, input_shape=(3, None, None), **kwargs):
    """KerasCV's `MobileNetV3LargeBackbone`: the "mobilenet_v3_large" preset."""
    return MobileNetV3Backbone.from_preset("mobilenet_v3_large", include_rescaling=include_rescaling,
                                           input_shape=input_shape, **kwargs)
