"""Keras' rules for its official ImageNet weights, in one place: which (alpha, size) files exist,
what a builder accepts with `weights="imagenet"`, and which file Keras loads into a model.

The builders apply the argument checks; the registry of files (`pretrained.registry`) lists the
files from the same tables and picks one with `imagenet_choice`.
"""

from __future__ import annotations

from typing import NamedTuple

V1_ALPHAS = (1.0, 0.75, 0.5, 0.25)
V1_SIZES = (128, 160, 192, 224)
V2_ALPHAS = (1.0, 0.75, 0.5, 0.35, 1.3, 1.4)
V2_SIZES = (96, 128, 160, 192, 224)
# V2 widths with files at 224x224 only.
V2_ONLY_224 = (1.3, 1.4)
# (model type, minimalistic, alpha) of the six V3 checkpoints; all at 224x224.
V3_MODELS = (
    ("large", False, 1.0),
    ("large", False, 0.75),
    ("large", True, 1.0),
    ("small", False, 1.0),
    ("small", False, 0.75),
    ("small", True, 1.0),
)
V3_SIZE = 224
# The size Keras falls back to when a model's size has no file.
DEFAULT_SIZE = 224

OFFICIAL_SIZES = {"mobilenet": V1_SIZES, "mobilenet_v2": V2_SIZES}


def v3_model_key(model_type: str, minimalistic: bool, alpha: float) -> str:
    """`small_minimalistic_224_1.0_float`: Keras' name for a V3 checkpoint, in its file names
    and its table of checksums."""
    return f"{model_type}{'_minimalistic' if minimalistic else ''}_{V3_SIZE}_{float(alpha)}_float"


def v3_file_name(model_type: str, minimalistic: bool, alpha: float, include_top: bool) -> str:
    """The V3 file Keras loads: `weights_mobilenet_v3_<key>.h5`, without the top
    `..._no_top_v2.h5`. Until October 2021 Keras applied the top's conv_2 before the pooling,
    in the model without the top too, and its no-top files (`..._no_top.h5`) held conv_2."""
    ending = ".h5" if include_top else "_no_top_v2.h5"
    return f"weights_mobilenet_v3_{v3_model_key(model_type, minimalistic, alpha)}{ending}"


def check_alpha(
    family: str, alpha: float, minimalistic: bool = False, depth_multiplier: int = 1
) -> None:
    """Keras' checks of a builder called with `weights="imagenet"`, with Keras' messages."""
    if family == "mobilenet":
        if depth_multiplier != 1:
            raise ValueError(
                "If imagenet weights are being loaded, depth multiplier must be 1.  "
                f"Received depth_multiplier={depth_multiplier}"
            )
        if alpha not in V1_ALPHAS:
            raise ValueError(
                "If imagenet weights are being loaded, alpha can be one of `0.25`, "
                f"`0.50`, `0.75` or `1.0` only.  Received alpha={alpha}"
            )
    elif family == "mobilenet_v2":
        if alpha not in V2_ALPHAS:
            raise ValueError(
                "If imagenet weights are being loaded, alpha must be one of `0.35`, "
                "`0.50`, `0.75`, `1.0`, `1.3` or `1.4` only; "
                f"Received `alpha={alpha}`"
            )
    elif (alpha, minimalistic) not in {(a, m) for _, m, a in V3_MODELS}:
        raise ValueError(
            "If imagenet weights are being loaded, alpha can be one of `0.75`, "
            "`1.0` for non minimalistic or `1.0` for minimalistic only."
        )


def default_size(family: str, input_shape: tuple | None) -> int:
    """The size Keras checks a V1/V2 top against: the given square size if official weights
    exist for it, else 224."""
    if input_shape is not None and len(input_shape) == 3:
        rows, cols = input_shape[1], input_shape[2]
        if rows == cols and rows in OFFICIAL_SIZES[family]:
            return rows
    return DEFAULT_SIZE


def weights_rows(family: str, input_shape: tuple) -> int:
    """The size of the V1/V2 file `weights="imagenet"` loads: the model's static square size if
    there is a file for it, else 224. Keras also names the model after it."""
    _, rows, cols = input_shape
    return rows if rows == cols and rows in OFFICIAL_SIZES[family] else DEFAULT_SIZE


class Choice(NamedTuple):
    """The official file Keras loads into a model: its configuration, and Keras' warning when
    the model is not built for that file's size."""

    family: str
    alpha: float
    rows: int
    include_top: bool
    minimalistic: bool
    warning: str | None


def imagenet_choice(config: dict) -> Choice:
    """Keras' choice of file for a model built with `config` (a `KerasModel.config`).

    V1 and V2 pick the file of the model's static square size when one exists, else the 224
    file with Keras' warning; V3 always loads the 224 file and warns, as Keras does, unless the
    model is built for 224x224. The builders have already applied Keras' argument checks.
    """
    family, alpha = config["family"], float(config["alpha"])
    input_shape = config.get("input_shape") or (3, None, None)
    _, rows, cols = input_shape
    minimalistic = bool(config.get("minimalistic", False))
    warning = None
    if family.startswith("mobilenet_v3"):
        if rows != cols or rows != V3_SIZE:
            warning = (
                "`input_shape` is undefined or non-square, or `rows` is not 224. Weights "
                "for input shape (224, 224) will be loaded as the default."
            )
        return Choice(family, alpha, V3_SIZE, config["include_top"], minimalistic, warning)
    weights_size = weights_rows(family, input_shape)
    if weights_size != rows or rows != cols:
        warning = (
            f"`input_shape` is undefined or non-square, or `rows` is not in "
            f"{list(OFFICIAL_SIZES[family])}. Weights for input shape (224, 224) will be "
            "loaded as the default."
        )
    if family == "mobilenet_v2" and alpha in V2_ONLY_224 and weights_size != DEFAULT_SIZE:
        # Keras asks for `..._{alpha}_{rows}.h5` here, a file that does not exist (HTTP 404).
        raise ValueError(
            f"There are no official MobileNetV2 ImageNet weights for alpha={alpha} at "
            f"{weights_size}x{weights_size}: alpha 1.3 and 1.4 exist at 224x224 only (Keras "
            "requests a file that does not exist here). Build the model at 224x224, or without "
            "the top and input_shape=None, or pass that file as `weights=` yourself."
        )
    return Choice(family, alpha, weights_size, config["include_top"], False, warning)
