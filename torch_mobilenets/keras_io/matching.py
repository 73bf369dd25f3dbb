"""Matching a Keras file's weighted layers with a model's weighted modules: in order, per Keras
class where the file only orders within a class (Keras 3 files), as Keras itself does. Used for
official architectures (`pairing`) and for a KerasCV backbone nested in a user's model
(`config`)."""

from __future__ import annotations

from ..nn.graph import KerasModel
from ..nn.layers import WEIGHTED_LAYERS
from .reader import FileLayer, KerasFile, WeightsFileError


def weighted_layers(model: KerasModel) -> list:
    return [(name, m) for name, m in model.named_children() if isinstance(m, WEIGHTED_LAYERS)]


def aligned(keras_file: KerasFile, targets: list) -> list:
    """(file layers, model layers) lists that correspond position by position: the whole
    sequence for legacy files, one pair of lists per Keras class for Keras 3 files."""
    if keras_file.ordered:
        return [(keras_file.layers, targets)]
    return [
        (
            [f for f in keras_file.layers if keras_class in f.classes],
            [(n, m) for n, m in targets if m.keras_class == keras_class],
        )
        for keras_class in sorted({m.keras_class for _, m in targets})
    ]


def match_layers(keras_file: KerasFile, model: KerasModel) -> list:
    """Pair each weighted file layer with a weighted model layer, checking classes and shapes.
    Raises WeightsFileError naming the file, both layers and what differs."""
    groups = aligned(keras_file, weighted_layers(model))
    unknown = [f for f in keras_file.layers if not f.classes]
    if unknown:
        raise WeightsFileError(
            f"{keras_file.path}: layer {unknown[0].describe()} is of a class no "
            f"{model.name!r} layer has"
        )
    pairs = []
    for file_layers, model_layers in groups:
        for i in range(max(len(file_layers), len(model_layers))):
            fits = (
                i < len(file_layers)
                and i < len(model_layers)
                and mismatch(file_layers[i], model_layers[i][1]) is None
            )
            if fits:
                pairs.append((file_layers[i], *model_layers[i]))
                continue
            # Say which side has a layer the other lacks when skipping it realigns the two.
            if i >= len(file_layers) or (
                i + 1 < len(model_layers)
                and i < len(file_layers)
                and not mismatch(file_layers[i], model_layers[i + 1][1])
            ):
                name, module = model_layers[i]
                raise WeightsFileError(
                    f"{keras_file.path}: the file has no weights for layer {name!r} "
                    f"({module.keras_class}, expected shapes {module.keras_shapes()}): it holds "
                    f"{len(file_layers)} such layers, model {model.name!r} has "
                    f"{len(model_layers)}"
                )
            if i >= len(model_layers) or (
                i + 1 < len(file_layers) and not mismatch(file_layers[i + 1], model_layers[i][1])
            ):
                raise WeightsFileError(
                    f"{keras_file.path}: layer {file_layers[i].describe()} has no counterpart in "
                    f"model {model.name!r}: the file holds {len(file_layers)} such layers, the "
                    f"model {len(model_layers)}"
                )
            name, module = model_layers[i]
            raise WeightsFileError(
                f"{keras_file.path}: layer {file_layers[i].name!r} does not fit model layer "
                f"{name!r} ({module.keras_class}): {mismatch(file_layers[i], module)}"
            )
    return pairs


def keras_ordered_arrays(file_layer: FileLayer, module) -> list:
    """The file layer's arrays in the module's Keras order. Keras 3 files keep nested layers
    (KerasCV's squeeze-excite) under their attribute names in alphabetical order."""
    order = getattr(module, "keras_sublayers", None)
    owners = [v.split("/")[0] for v in file_layer.variables]
    if not order or set(owners) != set(order):
        return file_layer.arrays
    return [a for sub in order for a, owner in zip(file_layer.arrays, owners) if owner == sub]


def mismatch(file_layer: FileLayer, module) -> str | None:
    if module.keras_class not in file_layer.classes:
        return f"the file's layer is a {'/'.join(sorted(file_layer.classes)) or 'unknown class'}"
    expected = module.keras_shapes()
    got = [tuple(a.shape) for a in keras_ordered_arrays(file_layer, module)]
    if expected != got:
        return f"expected shapes {expected}, the file has {got}"
    return None
