"""torch.hub entry points: Keras' MobileNet, MobileNetV2, MobileNetV3Small and MobileNetV3Large,
and KerasCV's MobileNetV3 backbones.

    model = torch.hub.load("<owner>/torch-mobilenets", "mobilenet_v2", weights="imagenet")

Every entry point takes the Keras builder's arguments (channels-first `input_shape`), plus
`progress` for the download bar. `torch.hub.help(repo, name)` shows the full argument list.
"""

import inspect as _inspect

import torch_mobilenets as _tm
from torch_mobilenets.models import FAMILIES as _BUILDERS
from torch_mobilenets.pretrained.download import progress_bars as _progress_bars
from torch_mobilenets.pretrained.loading import build_with_weights as _build_with_weights

# Module names, as torch.hub checks them (pillow is imported as PIL).
dependencies = ["torch", "numpy", "h5py", "safetensors", "PIL", "tqdm"]

_HUB_NOTE = """{builder} through torch.hub.

    torch.hub.load(repo, "{entry}", weights="imagenet", **keras_arguments)

`weights`: None (random initialization), "imagenet" (the official Keras ImageNet file for this
configuration, chosen by Keras' rules, downloaded once, checksum-verified, converted and cached
under torch.hub.get_dir()), the path to a Keras weights file (.h5, .weights.h5, .keras), or a
converted .safetensors. `progress`: show the download progress bar (default True).
The other arguments are `torch_mobilenets.{builder}`'s, documented below.

"""


def _entry_point(family, entry):
    builder = _BUILDERS[family].builder

    def load(weights="imagenet", progress=True, **kwargs):
        with _progress_bars(progress):
            # Keras' warnings point at the caller of this entry point.
            return _build_with_weights(builder, (), dict(kwargs, weights=weights), stacklevel=2)

    load.__name__ = load.__qualname__ = entry
    load.__doc__ = _HUB_NOTE.format(builder=builder.__name__, entry=entry) + _inspect.cleandoc(
        builder.__doc__ or ""
    )
    return load


_BACKBONE_NOTE = """KerasCV's {builder} through torch.hub.

    torch.hub.load(repo, "{entry}", weights=None, include_rescaling=True, **overrides)

`weights`: None (random initialization), "imagenet" (KerasCV's "{preset}_imagenet" preset
weights, read from a local copy of the preset folder: KerasCV itself fetches them from Kaggle,
see `MobileNetV3Backbone.from_preset`), or the path to a weights file (any Keras layout, or a
converted .safetensors). The other arguments override the "{preset}" preset's configuration.

"""


def _backbone_entry_point(builder, preset, entry):
    def load(weights=None, **overrides):
        if weights == "imagenet":
            return _tm.MobileNetV3Backbone.from_preset(f"{preset}_imagenet", **overrides)
        return (
            builder(**overrides)
            if weights is None
            else _tm.load_weights(builder(**overrides), weights)
        )

    load.__name__ = load.__qualname__ = entry
    load.__doc__ = _BACKBONE_NOTE.format(
        builder=builder.__name__, entry=entry, preset=preset
    ) + _inspect.cleandoc(_tm.MobileNetV3Backbone.__doc__ or "")
    return load


mobilenet = _entry_point("mobilenet", "mobilenet")
mobilenet_v2 = _entry_point("mobilenet_v2", "mobilenet_v2")
mobilenet_v3_small = _entry_point("mobilenet_v3_small", "mobilenet_v3_small")
mobilenet_v3_large = _entry_point("mobilenet_v3_large", "mobilenet_v3_large")
mobilenet_v3_small_backbone = _backbone_entry_point(
    _tm.MobileNetV3SmallBackbone, "mobilenet_v3_small", "mobilenet_v3_small_backbone"
)
mobilenet_v3_large_backbone = _backbone_entry_point(
    _tm.MobileNetV3LargeBackbone, "mobilenet_v3_large", "mobilenet_v3_large_backbone"
)
