"""Reading Keras weight files: every layout a user meets, into one neutral form.

Layouts:
- legacy weights-only `.h5` (all official ImageNet files; Keras 2 and Keras 3 write it): root
  attribute `layer_names` (chunked into `layer_names0`, `layer_names1`, ... when large), one group
  per layer with a `weight_names` attribute naming its datasets (`conv1/kernel:0`, Keras 2's
  `depthwise_kernel:0`, TF 2.4-era names with slashes such as `Conv/BatchNorm/gamma:0`);
- legacy full-model `.h5`: the same under a `model_weights` group, plus `model_config` JSON;
- Keras 3 `.weights.h5`: `layers/<snake_case class>[_N]/vars/<i>`;
- `.keras`: a zip holding `config.json` and a Keras 3 `model.weights.h5`;
- a KerasCV preset folder: `config.json`, `metadata.json` and a Keras 3 `model.weights.h5`.

Legacy files list the weighted layers in the model's order, which is how Keras loads them (by
order, names ignored). Keras 3 files only give the order within each layer class (`conv2d`,
`conv2d_1`, ...), which is how Keras 3 loads those.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

CONV_OR_DEPTHWISE = frozenset({"Conv2D", "DepthwiseConv2D"})
_BATCH_NORM_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


class WeightsFileError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file,
    the layer and what was expected."""


@dataclass
class FileLayer:
    """One weighted layer of a file: its name there, the Keras classes it can be, its arrays in
    Keras' variable order."""

    name: str
    classes: frozenset
    arrays: list
    variables: list = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.name!r} ({'/'.join(sorted(self.classes))}, shapes " \
               f"{[tuple(a.shape) for a in self.arrays]})"


@dataclass
class KerasFile:
    path: Path
    layout: str
    layers: list
    # True when `layers` is in the model's global order; False when only the order within each
    # Keras class is known (Keras 3 files).
    ordered: bool
    model_config: Optional[dict] = None


def snake_case(class_name: str) -> str:
    """Keras 3's group name for a layer class: `DepthwiseConv2D` -> `depthwise_conv2d`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", "_", class_name)
    return words.lower()


def read_keras_file(path, known_classes) -> KerasFile:
    """Read any Keras weights layout. `known_classes` are the Keras class names our layers map
    (Keras 3 files name groups after them)."""
    path = Path(path)
    if path.is_dir():
        return _read_preset_folder(path, known_classes)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsFileError(f"{path}: the file is empty")
    if zipfile.is_zipfile(path):
        return _read_keras_archive(path, known_classes)
    if not h5py.is_hdf5(path):
        raise WeightsFileError(
            f"{path}: not a Keras weights file (neither HDF5 nor a .keras zip archive)")
    try:
        with h5py.File(path, "r") as f:
            return _read_hdf5(f, path, known_classes)
    except WeightsFileError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise WeightsFileError(f"{path}: cannot read the HDF5 file ({error})") from None


def _read_hdf5(f: h5py.File, path: Path, known_classes, model_config=None) -> KerasFile:
    if _has_list_attr(f, "layer_names"):
        return KerasFile(path, "legacy_h5", _read_legacy(f, path, known_classes), True)
    if "model_weights" in f and _has_list_attr(f["model_weights"], "layer_names"):
        config = _json_attr(f, "model_config")
        return KerasFile(path, "legacy_full_model_h5", _read_legacy(f["model_weights"], path, known_classes),
                         True, config)
    if "layers" in f:
        return KerasFile(path, "keras3_weights_h5", _read_keras3(f, path, known_classes), False,
                         model_config)
    raise WeightsFileError(
        f"{path}: an HDF5 file, but not in any Keras layout (no 'layer_names' attribute, "
        "'model_weights' group or 'layers' group)")


def _read_preset_folder(path: Path, known_classes) -> KerasFile:
    """A KerasCV preset folder: `config.json` naming its weights file (`model.weights.h5`)."""
    try:
        config = json.loads((path / "config.json").read_text())
        weights = config.get("weights") or "model.weights.h5"
    except (OSError, ValueError, AttributeError) as error:
        raise WeightsFileError(f"{path}: a folder, but not a KerasCV preset ({error})") from None
    keras_file = read_keras_file(path / weights, known_classes)
    keras_file.layout, keras_file.model_config = "keras_cv_preset", config
    return keras_file


def _read_keras_archive(path: Path, known_classes) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "model.weights.h5" not in names:
                raise WeightsFileError(
                    f"{path}: a zip archive without 'model.weights.h5': not a .keras file")
            config = json.loads(archive.read("config.json")) if "config.json" in names else None
            data = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as error:
        raise WeightsFileError(f"{path}: cannot read the .keras archive ({error})") from None
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            keras_file = _read_hdf5(f, path, known_classes, config)
    except OSError as error:
        raise WeightsFileError(f"{path}: model.weights.h5 inside is not HDF5 ({error})") from None
    keras_file.layout = "keras_archive"
    return keras_file


def _read_legacy(group: h5py.Group, path: Path, known_classes) -> list:
    layers = []
    for layer_name in _list_attr(group, "layer_names"):
        if layer_name not in group:
            raise WeightsFileError(
                f"{path}: layer {layer_name!r} is listed in 'layer_names' but has no group")
        layer_group = group[layer_name]
        weight_names = _list_attr(layer_group, "weight_names")
        if not weight_names:
            continue
        arrays = []
        for weight_name in weight_names:
            if weight_name not in layer_group:
                raise WeightsFileError(
                    f"{path}: layer {layer_name!r} names weight {weight_name!r}, which the file "
                    "does not hold")
            arrays.append(_read_array(layer_group[weight_name], path, layer_name))
        variables = [_relative_variable(w, layer_name) for w in weight_names]
        if any("/" in v for v in variables):  # a layer holding layers (KerasCV's SE)
            class_group = re.sub(r"_\d+$", "", layer_name)
            classes = frozenset(c for c in known_classes if snake_case(c) == class_group)
        else:
            classes = _classes_from_variables(variables, arrays)
        layers.append(FileLayer(layer_name, classes, arrays, variables))
    return layers


def _relative_variable(weight_name: str, layer_name: str) -> str:
    """`conv1/kernel:0` -> `kernel`; a nested layer's `se/conv2d/kernel` -> `conv2d/kernel`."""
    weight_name = weight_name.split(":")[0]
    if weight_name.startswith(layer_name + "/"):
        return weight_name[len(layer_name) + 1:]
    return weight_name.split("/")[-1]


def _classes_from_variables(variables: list, arrays: list) -> frozenset:
    """Legacy files do not store layer classes; the variables tell them apart. Keras 3 calls a
    depthwise kernel plain `kernel`, so a 4D `kernel` may be either convolution."""
    if variables and variables[0] == "depthwise_kernel":
        return frozenset({"DepthwiseConv2D"})
    if variables and variables[0] == "kernel":
        return CONV_OR_DEPTHWISE if arrays[0].ndim == 4 else frozenset({"Dense"})
    if set(variables) <= set(_BATCH_NORM_VARIABLES):
        return frozenset({"BatchNormalization"})
    return frozenset()


def _read_keras3(f: h5py.File, path: Path, known_classes) -> list:
    by_group = {snake_case(c): c for c in known_classes}
    found = []
    for group_name, group in f["layers"].items():
        variables, arrays = _keras3_variables(group, path, group_name)
        if not arrays:
            continue
        match = re.fullmatch(r"(.*?)(?:_(\d+))?", group_name)
        class_group, index = match.group(1), int(match.group(2) or 0)
        # Keras >= 3.6 also records the layer's own name.
        name = group["vars"].attrs.get("name", group_name) if "vars" in group else group_name
        name = name.decode() if isinstance(name, bytes) else str(name)
        classes = frozenset({by_group[class_group]}) if class_group in by_group else frozenset()
        found.append((class_group, index, FileLayer(name, classes, arrays, variables)))
    found.sort(key=lambda item: (item[0], item[1]))
    return [layer for _, _, layer in found]


def _keras3_variables(group, path: Path, layer_name: str, prefix: str = "") -> tuple:
    """A layer's own `vars/<i>`, then those of nested layers (`<attribute>/vars/<i>`, named
    `<attribute>/<i>`), such as KerasCV's SqueezeAndExcite2D."""
    names, arrays = [], []
    if not isinstance(group, h5py.Group):
        return names, arrays
    own = group.get("vars")
    for i in range(len(own) if isinstance(own, h5py.Group) else 0):
        names.append(f"{prefix}{i}")
        arrays.append(_read_array(own[str(i)], path, layer_name))
    for child in group:
        if child != "vars":
            child_names, child_arrays = _keras3_variables(group[child], path, layer_name,
                                                          f"{prefix}{child}/")
            names += child_names
            arrays += child_arrays
    return names, arrays


def _read_array(dataset, path: Path, layer_name: str) -> np.ndarray:
    if not isinstance(dataset, h5py.Dataset):
        raise WeightsFileError(f"{path}: layer {layer_name!r}: {dataset.name} is not a dataset")
    array = dataset[()]
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise WeightsFileError(
            f"{path}: layer {layer_name!r}: {dataset.name} holds {getattr(array, 'dtype', type(array))}"
            ", expected floating-point weights")
    return array.astype(np.float32, copy=False)


def _has_list_attr(group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _list_attr(group, name: str) -> list:
    """A list-of-strings attribute, joined back if Keras split it into `name0`, `name1`, ...
    (HDF5 caps an object header at 64 KB)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _json_attr(group, name: str) -> Optional[dict]:
    if name not in group.attrs:
        return None
    value = group.attrs[name]
    try:
        return json.loads(value.decode("utf8") if isinstance(value, bytes) else value)
    except (ValueError, TypeError):
        return None
