"""KerasCV's `MobileNetV3Backbone` (keras-cv 0.9): the applications' V3 body under KerasCV's names.

What differs from `keras.applications` (see `mobilenet_v3.py`, whose tables and block this
reuses): `Rescaling(1/255)` when `include_rescaling`, a hard-swish stem and `Conv_1` whatever the
blocks use, `_BatchNorm`/`_Add` layer names, squeeze-excite as one nested `SqueezeAndExcite2D`
layer, no top, and the pyramid outputs `P1`..`P5` that detection and segmentation heads read.

KerasCV's configuration is the `stackwise_*` lists, one entry per block; its presets are the
applications' tables in that form (`stackwise`). Loading weights, presets with weights included,
is the public class's job (`torch_mobilenets.MobileNetV3Backbone`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn.graph import KerasModel, KerasTensor
from ..nn.layers import (
    BatchNorm2d,
    Conv2d,
    HardSwish,
    Rescaling,
    SqueezeAndExcite2D,
    make_divisible,
)
from . import arguments
from .mobilenet_v3 import ACTIVATIONS, BN_MOMENTUM, LARGE, SMALL, Block, Naming, inverted_res_block


def _nested_squeeze_excite(
    model: KerasModel, x: KerasTensor, filters: int, se_ratio: float, prefix: str
) -> KerasTensor:
    return model.add(
        f"{prefix}SqueezeAndExcite2D",
        SqueezeAndExcite2D(filters, make_divisible(filters * se_ratio)),
        x,
    )


KERAS_CV = Naming("BatchNorm", "Add", _nested_squeeze_excite)
# KerasCV's argument names for the fields of a table row.
STACKWISE = {
    "stackwise_expansion": "expansion",
    "stackwise_filters": "filters",
    "stackwise_kernel_size": "kernel_size",
    "stackwise_stride": "stride",
    "stackwise_se_ratio": "se_ratio",
    "stackwise_activation": "activation",
}


def stackwise(blocks: Sequence[Block]) -> dict:
    """A table as KerasCV's configuration: one list per field."""
    return {key: [getattr(b, field) for b in blocks] for key, field in STACKWISE.items()}


# KerasCV's presets. The `_imagenet` ones carry weights KerasCV trained (not the applications'),
# which KerasCV downloads from Kaggle; the public class reads them from a local preset folder.
PRESETS = {
    "mobilenet_v3_small": stackwise(SMALL),
    "mobilenet_v3_large": stackwise(LARGE),
    "mobilenet_v3_small_imagenet": stackwise(SMALL),
    "mobilenet_v3_large_imagenet": stackwise(LARGE),
}


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
        name: the model's name.

    Calling the model returns the final feature map (N, C, H, W); `forward_pyramid(x)` returns
    the `P1`..`P5` maps KerasCV's `pyramid_level_inputs` names.
    """

    # What the converter tries when a file does not say which stack it holds; rescaling has no
    # weights, so any value fits.
    architecture_variants = (
        dict(stackwise(SMALL), include_rescaling=True),
        dict(stackwise(LARGE), include_rescaling=True),
    )

    def __init__(
        self,
        stackwise_expansion: Sequence[float],
        stackwise_filters: Sequence[int],
        stackwise_kernel_size: Sequence[int],
        stackwise_stride: Sequence[int],
        stackwise_se_ratio: Sequence[float | None],
        stackwise_activation: Sequence[str],
        include_rescaling: bool,
        input_shape=(3, None, None),
        alpha: float = 1.0,
        name: str = "mobile_net_v3_backbone",
    ):
        stacks = [
            stackwise_expansion,
            stackwise_filters,
            stackwise_kernel_size,
            stackwise_stride,
            stackwise_se_ratio,
            stackwise_activation,
        ]
        if len({len(s) for s in stacks}) != 1:
            raise ValueError(
                "the stackwise_* lists must all have one entry per block; got "
                f"lengths {[len(s) for s in stacks]}"
            )
        unknown = sorted(set(stackwise_activation) - set(ACTIVATIONS))
        if unknown:
            raise ValueError(
                f"unsupported stackwise_activation {unknown}; use {sorted(ACTIVATIONS)}"
            )
        input_shape = arguments.check_input_shape(tuple(input_shape), min_size=1)
        config = dict(
            family="mobilenet_v3_backbone",
            input_shape=input_shape,
            alpha=alpha,
            include_rescaling=include_rescaling,
            **{k: list(v) for k, v in zip(STACKWISE, stacks)},
        )
        super().__init__(name, input_shape, config)

        x = self.input()
        if include_rescaling:
            x = self.add("rescaling", Rescaling(1.0 / 255), x)
        x = self.add("Conv", Conv2d(input_shape[0], 16, 3, stride=2), x)
        x = self.add("Conv_BatchNorm", BatchNorm2d(16, BN_MOMENTUM), x)
        x = self.add("Conv_activation", HardSwish(), x)
        # A pyramid level is the map a stride-2 block starts from, and the last block's output.
        levels = []
        for block_id, block in enumerate(Block(*row) for row in zip(*stacks)):
            if block.stride != 1:
                levels.append(self.layer_names[-1])
            x = inverted_res_block(self, x, block, alpha, block_id, KERAS_CV)
        levels.append(self.layer_names[-1])
        self.pyramid_level_inputs = {f"P{i + 1}": name for i, name in enumerate(levels)}

        last_conv_ch = make_divisible(x.shape[0] * 6)
        x = self.add("Conv_1", Conv2d(x.shape[0], last_conv_ch, 1), x)
        x = self.add("Conv_1_BatchNorm", BatchNorm2d(last_conv_ch, BN_MOMENTUM), x)
        self.add("Conv_1_activation", HardSwish(), x)
        self.feature_layer = self.layer_names[-1]

    def forward_pyramid(self, x: torch.Tensor) -> dict:
        """{"P1": ..., "P5": ...}: the outputs of the layers `pyramid_level_inputs` names."""
        outputs = self.forward_layers(x, self.pyramid_level_inputs.values())
        return {level: outputs[name] for level, name in self.pyramid_level_inputs.items()}
