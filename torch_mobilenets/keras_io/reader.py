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

Weight files come from the internet, so this module is the converter's attack surface. Every
failure is a `WeightsFileError` (a `ValueError`) whose message starts with the file's path; what
h5py, zipfile, json or numpy raise on a damaged file is turned into one in one place,
`_reading`. The rules, each checked before the data it guards is touched:

- Only HDF5 and JSON are parsed; nothing is ever unpickled, and no object, vlen or compound data
  is read.
- HDF5 links: only hard links are followed. Soft, external and user-defined links met on the way
  to a layer are refused without being followed: Keras writes none, an external link opens
  another file, and a soft link can alias or loop. Paths are walked one component at a time so
  that no intermediate link is traversed either. Hard-link loops are cut by a nesting limit.
- Datasets: virtual datasets and datasets with external raw storage (their data lives in other
  files) are refused, and so are filters (compression): Keras never writes them, a decompressing
  filter can expand without bound, and an unknown one makes HDF5 load a plugin library.
  Fletcher32 checksums and byte shuffling are accepted, as they cannot expand data.
- dtype: weights must be float32 (either byte order), as every Keras MobileNet stores them and as
  the PyTorch models compute. float16, float64, integers and anything else are refused, naming the
  layer, variable and dtype, rather than cast: a float64 file would lose precision silently, and
  a float16 one is not the checkpoint it claims to be. Scalars and empty arrays are refused too
  (no MobileNet weight is either).
- NaN and infinities are refused, naming the layer and variable, unless `allow_nonfinite=True`.
- Sizes (generous; the largest official tensor is 7 MB): a file of at most MAX_FILE_BYTES, each
  tensor (and each HDF5 chunk) at most MAX_TENSOR_BYTES, all tensors together at most
  MAX_FILE_BYTES, at most MAX_LAYERS layers and MAX_VARIABLES variables per layer, nesting at most
  MAX_NESTING deep, JSON at most MAX_JSON_BYTES. In a `.keras` zip the entries' sizes are checked
  before they are unpacked, and never more than the limit is unpacked whatever the header says;
  encrypted entries and compression other than stored/deflated are refused.
- A preset folder's config.json may only name a weights file inside the folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

CONV_OR_DEPTHWISE = frozenset({"Conv2D", "DepthwiseConv2D"})
_BATCH_NORM_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")

MAX_FILE_BYTES = 2 << 30  # a file, a `.keras` entry, and all tensors read from one file
MAX_TENSOR_BYTES = 256 << 20  # one tensor or one HDF5 chunk
MAX_JSON_BYTES = 64 << 20  # config.json, model_config
MAX_LAYERS = 4096  # names in layer_names, groups under layers/ (V3 Large has about 270)
MAX_VARIABLES = 64  # per layer (KerasCV's squeeze-excite has 4, nested layers included)
# A model nested in another is one layer of it, holding all its layers' variables (a
# MobileNetV2 base has 260).
MAX_MODEL_VARIABLES = 8 * MAX_LAYERS
MAX_NESTING = 8  # layers within layers in Keras 3 files
# Filters that cannot make data larger than it is stored: checksums and byte shuffling.
_HARMLESS_FILTERS = {h5py.h5z.FILTER_FLETCHER32, h5py.h5z.FILTER_SHUFFLE}
_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}
_ZIP_SIGNATURE = b"PK"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What h5py, zipfile, zlib, json and numpy raise on damaged input. RuntimeError is most of h5py's
# errors (and RecursionError from deeply nested JSON); ValueError covers UnicodeDecodeError and
# json.JSONDecodeError.
_READ_ERRORS = (
    OSError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    RuntimeError,
    OverflowError,
    MemoryError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
)


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
    # Legacy files: each array's name as written (`block_1_expand/kernel:0`), which for a
    # nested model says which of its layers the array belongs to. Keras 3 files: the group
    # (`functional`, `dense_1`), nested layers' arrays named `layers/<group>/<i>` within it.
    weight_names: list = field(default_factory=list)
    group: str = ""

    def describe(self) -> str:
        return (
            f"{self.name!r} ({'/'.join(sorted(self.classes))}, shapes "
            f"{[tuple(a.shape) for a in self.arrays]})"
        )


@dataclass
class KerasFile:
    path: Path
    layout: str
    layers: list
    # True when `layers` is in the model's global order; False when only the order within each
    # Keras class is known (Keras 3 files).
    ordered: bool
    model_config: dict | None = None


def snake_case(class_name: str) -> str:
    """Keras 3's group name for a layer class: `DepthwiseConv2D` -> `depthwise_conv2d`."""
    # A word starts at a capital followed by a small letter, or after a small letter
    # (`PReLU` -> `p_re_lu`, as Keras 3 names it).
    words = re.sub(r"(?<=.)(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", "_", class_name)
    return words.lower()


# ------------------------------------------------------------------------ errors, checks
def one_line(text) -> str:
    """`text` on one line: messages quote file contents and library errors, which may not be."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def reading(path, extra_errors: tuple = (), what: str = "unreadable or damaged file"):
    """The one place where whatever a damaged file makes a reader raise becomes a
    WeightsFileError naming the file (the original stays as its cause, for tracebacks)."""
    try:
        yield
    except WeightsFileError:
        raise
    except _READ_ERRORS + tuple(extra_errors) as error:
        detail = one_line(error) or "no detail"
        raise WeightsFileError(f"{path}: {what} ({type(error).__name__}: {detail})") from error


def check_input_file(path: Path, limit: int | None = None) -> int:
    """An existing, regular, non-empty file of at most `limit` bytes (MAX_FILE_BYTES); returns
    its size. Anything else (a FIFO, a device) could block or never end."""
    limit = MAX_FILE_BYTES if limit is None else limit
    if not path.exists():
        raise WeightsFileError(f"{path}: no such file")
    if not path.is_file():
        raise WeightsFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise WeightsFileError(f"{path}: the file is empty")
    if size > limit:
        raise WeightsFileError(f"{path}: the file is {size} bytes, over the limit of {limit}")
    return size


def nonfinite(values: np.ndarray) -> str | None:
    """'2 NaN and 1 infinite values' if `values` holds any, else None."""
    finite = np.isfinite(values)
    if finite.all():
        return None
    nan = int(np.count_nonzero(np.isnan(values)))
    return f"{nan} NaN and {finite.size - int(np.count_nonzero(finite)) - nan} infinite values"


def check_finite(keras_file: KerasFile) -> None:
    for layer in keras_file.layers:
        for variable, array in zip(layer.variables, layer.arrays):
            found = nonfinite(array)
            if found:
                raise WeightsFileError(
                    f"{keras_file.path}: layer {layer.name!r}, variable {variable!r} holds "
                    f"{found}; pass allow_nonfinite=True (--allow-nonfinite) to accept it"
                )


# ---------------------------------------------------------------------------------- entry
def read_keras_file(path, known_classes, allow_nonfinite: bool = False) -> KerasFile:
    """Read any Keras weights layout. `known_classes` are the Keras class names our layers map
    (Keras 3 files name groups after them)."""
    path = Path(path)
    with reading(path):
        keras_file = _read_path(path, known_classes)
    if not allow_nonfinite:
        check_finite(keras_file)
    return keras_file


def _read_path(path: Path, known_classes) -> KerasFile:
    if path.is_dir():
        return _read_preset_folder(path, known_classes)
    return _read_file(path, known_classes)


def _read_file(path: Path, known_classes) -> KerasFile:
    check_input_file(path)
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_SIGNATURE))
    if head.startswith(_ZIP_SIGNATURE):
        return _read_keras_archive(path, known_classes)
    if not h5py.is_hdf5(path):
        raise WeightsFileError(
            f"{path}: not a Keras weights file (neither HDF5 nor a .keras zip archive)"
        )
    with h5py.File(path, "r") as f:
        return HDF5Reader(path, known_classes).read(f)


def _read_preset_folder(path: Path, known_classes) -> KerasFile:
    """A KerasCV preset folder: `config.json` naming its weights file (`model.weights.h5`)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise WeightsFileError(f"{path}: a folder, but not a KerasCV preset (no config.json)")
    check_input_file(config_file, MAX_JSON_BYTES)
    config = json.loads(config_file.read_bytes())
    if not isinstance(config, dict):
        raise WeightsFileError(f"{config_file}: not a JSON object: not a KerasCV preset config")
    weights = config.get("weights") or "model.weights.h5"
    # A name from the file, so it may not reach outside the folder ("../", an absolute path).
    if not isinstance(weights, str) or Path(weights).name != weights or weights in (".", ".."):
        raise WeightsFileError(
            f"{config_file}: names the weights file {weights!r}; only a file inside the preset "
            "folder is read"
        )
    keras_file = _read_file(path / weights, known_classes)  # a file: no folder within a folder
    keras_file.layout, keras_file.model_config = "keras_cv_preset", config
    return keras_file


def _read_keras_archive(path: Path, known_classes) -> KerasFile:
    with zipfile.ZipFile(path) as archive:
        data = zip_entry(archive, path, "model.weights.h5", MAX_FILE_BYTES)
        if data is None:
            raise WeightsFileError(
                f"{path}: a zip archive without 'model.weights.h5': not a .keras file"
            )
        config_data = zip_entry(archive, path, "config.json", MAX_JSON_BYTES)
    config = None
    if config_data is not None:
        config = json.loads(config_data)
        if not isinstance(config, dict):
            raise WeightsFileError(f"{path}: config.json in the archive is not a JSON object")
    if not data.startswith(_HDF5_SIGNATURE):
        raise WeightsFileError(f"{path}: model.weights.h5 inside is not HDF5")
    with h5py.File(io.BytesIO(data), "r") as f:
        keras_file = HDF5Reader(path, known_classes).read(f, config)
    keras_file.layout = "keras_archive"
    return keras_file


def zip_entry(archive: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes | None:
    """The unpacked entry, or None if absent; checked before unpacking (zip bombs)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.flag_bits & 0x1:
        raise WeightsFileError(f"{path}: {name!r} in the archive is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise WeightsFileError(
            f"{path}: {name!r} in the archive uses zip compression method {info.compress_type}; "
            "only stored and deflated entries are read"
        )
    if info.file_size > limit:
        raise WeightsFileError(
            f"{path}: {name!r} in the archive unpacks to {info.file_size} bytes, over the limit "
            f"of {limit}"
        )
    with archive.open(info) as entry:
        data = entry.read(limit + 1)  # the header may lie about the size: never take more
    if len(data) > limit:
        raise WeightsFileError(
            f"{path}: {name!r} in the archive unpacks to more than {limit} bytes"
        )
    return data


# ------------------------------------------------------------------------------------ HDF5
class HDF5Reader:
    """Reads one open HDF5 file, never following a link or reading a size it has not checked."""

    def __init__(self, path: Path, known_classes):
        self.path = path
        self.known_classes = known_classes
        self.bytes_read = 0

    def error(self, message: str) -> WeightsFileError:
        return WeightsFileError(f"{self.path}: {message}")

    def read(self, f: h5py.File, model_config=None) -> KerasFile:
        if _has_list_attr(f, "layer_names"):
            return KerasFile(self.path, "legacy_h5", self.legacy(f), True)
        model_weights = self.child(f, "model_weights")
        if isinstance(model_weights, h5py.Group) and _has_list_attr(model_weights, "layer_names"):
            return KerasFile(
                self.path,
                "legacy_full_model_h5",
                self.legacy(model_weights),
                True,
                self.json_attr(f, "model_config"),
            )
        layers = self.child(f, "layers")
        if isinstance(layers, h5py.Group):
            return KerasFile(
                self.path, "keras3_weights_h5", self.keras3(layers), False, model_config
            )
        raise self.error(
            "an HDF5 file, but not in any Keras layout (no 'layer_names' attribute, "
            "'model_weights' group or 'layers' group)"
        )

    # -------------------------------------------------------------- links, attributes, arrays
    def child(self, group, name: str):
        """`group[name]` (`name` may hold slashes), or None if absent. Each step is checked to be
        a hard link before it is taken, so no soft or external link is ever followed."""
        node = group
        for part in name.split("/"):
            if not part:  # "a//b" and a trailing slash, as HDF5 reads them
                continue
            if not isinstance(node, h5py.Group):
                return None
            key = part.encode("utf8")
            # Low-level calls: `in` and `.get` resolve the link to see where it leads.
            if not node.id.links.exists(key):
                return None
            kind = node.id.links.get_info(key).type
            if kind != h5py.h5l.TYPE_HARD:
                link = f"{node.name.rstrip('/')}/{part}"
                raise self.error(
                    f"{link!r} is {_LINK_KINDS.get(kind, 'a user-defined link')}; "
                    "links are refused, not followed"
                )
            node = node[part]
        return node

    def strings(self, obj, attr: str, limit: int) -> list:
        """A list-of-names attribute, its size and type checked before it is read."""
        attr_id = obj.attrs.get_id(attr)
        count = math.prod(attr_id.shape or ())
        if count > limit:
            raise self.error(
                f"attribute {attr!r} of {obj.name!r} lists {count} names, over the limit of {limit}"
            )
        if count == 0:  # Keras 2 writes an empty float64 array for layers without weights
            return []
        dtype = attr_id.dtype
        if len(attr_id.shape) != 1 or h5py.check_string_dtype(dtype) is None:
            raise self.error(
                f"attribute {attr!r} of {obj.name!r} is not a list of names "
                f"(shape {attr_id.shape}, {dtype})"
            )
        if dtype.itemsize * count > MAX_JSON_BYTES:  # fixed-length strings
            raise self.error(f"attribute {attr!r} of {obj.name!r} is over {MAX_JSON_BYTES} bytes")
        return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in obj.attrs[attr]]

    def list_attr(self, obj, name: str, limit: int) -> list:
        """A list of names, joined back if Keras split it into `name0`, `name1`, ... (HDF5 caps
        an object header at 64 KB); [] if absent."""
        if name in obj.attrs:
            return self.strings(obj, name, limit)
        values: list[str] = []
        chunk = 0
        while f"{name}{chunk}" in obj.attrs:
            values += self.strings(obj, f"{name}{chunk}", limit - len(values))
            chunk += 1
            if chunk > limit:
                raise self.error(
                    f"attribute {name!r} of {obj.name!r} is split into more than {limit} parts"
                )
        return values

    def scalar_string(self, obj, attr: str) -> str | None:
        if attr not in obj.attrs:
            return None
        attr_id = obj.attrs.get_id(attr)
        dtype = attr_id.dtype
        if (
            attr_id.shape != ()
            or h5py.check_string_dtype(dtype) is None
            or dtype.itemsize > MAX_JSON_BYTES
        ):
            return None
        value = obj.attrs[attr]
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    def json_attr(self, obj, attr: str) -> dict | None:
        """Optional JSON (a full model's `model_config`): None when absent or not an object."""
        text = self.scalar_string(obj, attr)
        if text is None or len(text) > MAX_JSON_BYTES:
            return None
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    def array(self, dataset, layer: str, variable: str) -> np.ndarray:
        where = f"layer {layer!r}, variable {variable!r}"
        if not isinstance(dataset, h5py.Dataset):
            raise self.error(f"{where}: {dataset.name!r} is not a dataset")
        if dataset.is_virtual:
            raise self.error(
                f"{where}: {dataset.name!r} is a virtual dataset (its data lives in "
                "other files); refused, not followed"
            )
        if dataset.external:
            raise self.error(
                f"{where}: {dataset.name!r} keeps its data in external files; refused, not followed"
            )
        plist = dataset.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, filter_name = plist.get_filter(i)
            if code not in _HARMLESS_FILTERS:
                raise self.error(
                    f"{where}: {dataset.name!r} is stored through HDF5 filter {code} "
                    f"({filter_name.decode(errors='replace')}); compressed or filtered weights "
                    "are refused (Keras writes none)"
                )
        dtype = dataset.dtype
        if dtype.kind != "f" or dtype.itemsize != 4:
            raise self.error(f"{where}: {dataset.name!r} holds {dtype}; weights must be float32")
        shape = dataset.shape
        if shape is None or len(shape) == 0 or math.prod(shape) == 0:
            raise self.error(
                f"{where}: {dataset.name!r} has shape {shape}; weights are non-empty arrays"
            )
        nbytes = math.prod(shape) * 4
        chunk_bytes = math.prod(dataset.chunks) * 4 if dataset.chunks else 0
        if max(nbytes, chunk_bytes) > MAX_TENSOR_BYTES:
            raise self.error(
                f"{where}: {dataset.name!r} has shape {shape} ({nbytes} bytes, "
                f"chunks {dataset.chunks}), over the limit of {MAX_TENSOR_BYTES} "
                "bytes"
            )
        self.bytes_read += nbytes
        if self.bytes_read > MAX_FILE_BYTES:
            raise self.error(f"the tensors read add up to over {MAX_FILE_BYTES} bytes")
        array = np.empty(shape, np.float32)  # native float32, whatever the file's byte order
        dataset.read_direct(array)
        return array

    # ------------------------------------------------------------------------------- layouts
    def legacy(self, group: h5py.Group) -> list:
        layers = []
        for layer_name in self.list_attr(group, "layer_names", MAX_LAYERS):
            layer_group = self.child(group, layer_name)
            if not isinstance(layer_group, h5py.Group):
                raise self.error(
                    f"layer {layer_name!r} is listed in 'layer_names' but has no group"
                )
            weight_names = self.list_attr(layer_group, "weight_names", MAX_MODEL_VARIABLES)
            if not weight_names:
                continue
            arrays = []
            for weight_name in weight_names:
                dataset = self.child(layer_group, weight_name)
                if dataset is None:
                    raise self.error(
                        f"layer {layer_name!r} names weight {weight_name!r}, which "
                        "the file does not hold"
                    )
                arrays.append(self.array(dataset, layer_name, weight_name))
            variables = [_relative_variable(w, layer_name) for w in weight_names]
            if any("/" in v for v in variables):  # a layer holding layers (KerasCV's SE)
                classes = frozenset(c for c in self.known_classes if _names_class(layer_name, c))
            else:
                classes = _classes_from_variables(variables, arrays)
            raw = [w.removesuffix(":0") for w in weight_names]
            layers.append(FileLayer(layer_name, classes, arrays, variables, raw))
        return layers

    def keras3(self, layers_group: h5py.Group) -> list:
        by_group = {snake_case(c): c for c in self.known_classes}
        if len(layers_group) > MAX_LAYERS:
            raise self.error(
                f"'layers' holds {len(layers_group)} groups, over the limit of {MAX_LAYERS}"
            )
        found = []
        for group_name in list(layers_group):  # names only: listing follows no link
            group = self.child(layers_group, group_name)
            variables, arrays = self.keras3_variables(group, group_name)
            if not arrays:
                continue
            class_group, _, suffix = group_name.rpartition("_")
            if not suffix.isdigit():  # `conv2d`, then `conv2d_1`, `conv2d_2`, ...
                class_group, suffix = group_name, "0"
            index = int(suffix)
            # Keras >= 3.6 also records the layer's own name.
            vars_group = self.child(group, "vars")
            name = group_name
            if isinstance(vars_group, h5py.Group):
                name = self.scalar_string(vars_group, "name") or group_name
            classes = frozenset({by_group[class_group]}) if class_group in by_group else frozenset()
            layer = FileLayer(name, classes, arrays, variables, group=group_name)
            found.append((class_group, index, layer))
        found.sort(key=lambda item: (item[0], item[1]))
        return [layer for _, _, layer in found]

    def keras3_variables(self, group, layer_name: str, prefix: str = "", depth: int = 0) -> tuple:
        """A layer's own `vars/<i>`, then those of nested layers (`<attribute>/vars/<i>`, named
        `<attribute>/<i>`), such as KerasCV's SqueezeAndExcite2D."""
        names: list[str] = []
        arrays: list[np.ndarray] = []
        if not isinstance(group, h5py.Group):
            return names, arrays
        if depth > MAX_NESTING:  # also what ends a hard link from a group to its parent
            raise self.error(f"layer {layer_name!r}: layers nested more than {MAX_NESTING} deep")
        if len(group) > MAX_LAYERS:
            raise self.error(f"layer {layer_name!r}: {group.name!r} holds {len(group)} members")
        own = self.child(group, "vars")
        if isinstance(own, h5py.Group):
            if len(own) > MAX_VARIABLES:
                raise self.error(
                    f"layer {layer_name!r}: {len(own)} variables, over the limit of {MAX_VARIABLES}"
                )
            for i in range(len(own)):
                dataset = self.child(own, str(i))
                if dataset is None:
                    raise self.error(f"layer {layer_name!r}: {own.name}/{i} is missing")
                names.append(f"{prefix}{i}")
                arrays.append(self.array(dataset, layer_name, f"{prefix}{i}"))
        for child in list(group):
            if child != "vars":
                child_names, child_arrays = self.keras3_variables(
                    self.child(group, child), layer_name, f"{prefix}{child}/", depth + 1
                )
                names += child_names
                arrays += child_arrays
                if len(arrays) > MAX_MODEL_VARIABLES:
                    raise self.error(f"layer {layer_name!r}: over {MAX_MODEL_VARIABLES} variables")
        return names, arrays


def _relative_variable(weight_name: str, layer_name: str) -> str:
    """`conv1/kernel:0` -> `kernel`; a nested layer's `se/conv2d/kernel` -> `conv2d/kernel`."""
    weight_name = weight_name.split(":")[0]
    if weight_name.startswith(layer_name + "/"):
        return weight_name[len(layer_name) + 1 :]
    return weight_name.split("/")[-1]


def _names_class(layer_name: str, keras_class: str) -> bool:
    """Whether a legacy file's name for a layer holding layers says its class, the one thing
    that does: Keras names such a layer after its class (`squeeze_and_excite2d_3`, as KerasCV
    leaves it unnamed), and this package's writer `<block>_<class>`
    (`expanded_conv_3_SqueezeAndExcite2D`)."""
    return re.sub(r"_\d+$", "", layer_name) == snake_case(keras_class) or layer_name.endswith(
        f"_{keras_class}"
    )


def _classes_from_variables(variables: list, arrays: list) -> frozenset:
    """Legacy files do not store layer classes; the variables tell them apart. Keras 3 calls a
    depthwise kernel plain `kernel`, so a 4D `kernel` may be either convolution; a kernel of
    another rank is no layer we know."""
    if variables and variables[0] == "depthwise_kernel":
        return frozenset({"DepthwiseConv2D"})
    if variables and variables[0] == "kernel":
        return {4: CONV_OR_DEPTHWISE, 2: frozenset({"Dense"})}.get(arrays[0].ndim, frozenset())
    if set(variables) <= set(_BATCH_NORM_VARIABLES):
        return frozenset({"BatchNormalization"})
    return frozenset()


def _has_list_attr(group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs
