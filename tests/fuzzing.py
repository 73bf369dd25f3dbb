"""The fuzzing machinery the fuzz tests (test_fuzz.py) and the soak (test_soak.py) share: real
Keras files of a seeded MobileNetV2 in every layout (`originals`), the mutations hypothesis draws
(flipped bytes, truncation, groups rebuilt in another order, changed attributes and datasets),
and the check of every outcome: a correct conversion or one clean WeightsFileError (naming the
file, on one line, leaving no output behind), never another exception, a crash (a segfault ends
the run) or a hang (a watchdog ends it).

"Correctly" means: the checkpoint loads, all-or-nothing and with every check, into the model its
metadata names; and where a mutation cannot change what the file says (a new physical order,
another string encoding, big-endian floats) it holds exactly the original's weights.

Each `CASES` entry takes (originals, workdir, hypothesis `data`), draws one mutation, converts it
and checks the outcome.
"""

import bisect
import faulthandler
import io
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch
from helpers import keras_model, keras_reference
from hypothesis import event
from hypothesis import strategies as st

from torch_mobilenets import WeightsFileError, keras_io

FAMILY = "mobilenet_v2"
KWARGS = dict(input_shape=(96, 96, 3), alpha=0.35)  # shared with the other converter tests
HDF5_LAYOUTS = ("keras2_h5", "keras3_h5", "full_model_h5", "weights_h5")
LEGACY_LAYOUTS = ("keras2_h5", "keras3_h5", "full_model_h5")  # layer_names + weight_names
LAYOUTS = HDF5_LAYOUTS + ("keras_zip",)  # keras_reference.LAYOUTS: every layout
# Seconds one example may take before the watchdog ends the whole run with a traceback (a hang
# in HDF5's C code cannot be interrupted any other way).
WATCHDOG_S = 120


def make_originals(weights_file, workdir: Path) -> dict:
    """layout -> `Original`, for a seeded MobileNetV2 (needs Keras: `weights_file` skips)."""
    keras_reference()
    model = keras_model(FAMILY, **KWARGS)
    return {
        layout: Original(layout, weights_file(FAMILY, model, layout), workdir) for layout in LAYOUTS
    }


class Original:
    """One layout's bytes, what converting it gives, and where its raw tensor data lies."""

    def __init__(self, layout, path: Path, workdir: Path):
        self.layout, self.suffix = layout, path.suffix  # .h5 or .keras
        self.data = path.read_bytes()
        self.state = convert_outcome(self.data, self.suffix, workdir, record=False)
        assert self.state is not None, f"the unmutated {layout} file must convert"
        self.metadata = _complement(_raw_ranges(self.data), len(self.data))
        self.metadata_size = sum(end - start for start, end in self.metadata)
        self.starts = np.cumsum([0] + [end - start for start, end in self.metadata]).tolist()
        # Where to flip bytes: mostly in the structure (headers, B-trees, zip records), where
        # damage is most varied. Built once: hypothesis caches every strategy it is given, and
        # a new one per example would grow that cache in a long run (the soak).
        anywhere = st.integers(0, len(self.data) - 1)
        in_metadata = st.integers(0, self.metadata_size - 1).map(self.metadata_offset)
        self.flip_offsets = st.one_of(in_metadata, in_metadata, anywhere)

    def metadata_offset(self, i: int) -> int:
        """The i-th byte that is not tensor data (HDF5 headers, B-trees, heaps, zip records)."""
        k = bisect.bisect_right(self.starts, i) - 1
        return self.metadata[k][0] + i - self.starts[k]


def _raw_ranges(data: bytes) -> list:
    """(start, end) of each contiguous dataset's raw data; in a .keras, inside its weights."""
    base = 0
    if data.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("model.weights.h5")
            header = data[info.header_offset : info.header_offset + 30]
            base = (
                info.header_offset
                + 30
                + int.from_bytes(header[26:28], "little")
                + int.from_bytes(header[28:30], "little")
            )
            data = archive.read(info)
    ranges = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
            start = base + obj.id.get_offset()
            ranges.append((start, start + obj.id.get_storage_size()))

    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(visit)
    return sorted(ranges)


def _complement(ranges: list, size: int) -> list:
    gaps, position = [], 0
    for start, end in ranges:
        if start > position:
            gaps.append((position, start))
        position = max(position, end)
    return gaps + ([(position, size)] if position < size else [])


# -------------------------------------------------------------------------------- outcomes
def convert_outcome(data: bytes, suffix: str, workdir: Path, allow_nonfinite=False, record=True):
    """Convert `data` in a fresh folder: the checkpoint's state dict, or None after a clean
    error. Anything else fails the test. `record`: count the outcome in hypothesis' statistics
    (only inside a test)."""
    note = event if record else (lambda _: None)
    case = Path(tempfile.mkdtemp(dir=workdir))
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    try:
        src, dst = case / f"weights{suffix}", case / "out.safetensors"
        src.write_bytes(data)
        try:
            config = keras_io.convert(src, dst, allow_nonfinite=allow_nonfinite)
        except WeightsFileError as error:
            message = str(error)
            assert message.startswith(f"{src}: ") and "\n" not in message, message
            assert [p.name for p in case.iterdir()] == [src.name]  # no output, no temporary
            note(f"refused: {_kind(message[len(str(src)) + 2 :])}")
            return None
        assert sorted(p.name for p in case.iterdir()) == sorted([src.name, dst.name])
        state, recorded = keras_io.read_safetensors(dst, allow_nonfinite=allow_nonfinite)
        assert recorded == config
        keras_io.load_weights(keras_io.build(config), dst, allow_nonfinite=allow_nonfinite)
        note("converted")
        return state
    finally:
        faulthandler.cancel_dump_traceback_later()
        shutil.rmtree(case)


def _kind(message: str) -> str:
    """What kind of refusal, for hypothesis' statistics (`--hypothesis-show-statistics`)."""
    words = re.sub(r"'[^']*'|\[[^]]*\]|[0-9]+", "", message.split("(")[0]).split()
    return " ".join(words[:5])


def assert_same_state(got, expected):
    assert got is not None, "the file no longer converts"
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


# ------------------------------------------------------------------------------ byte level
def flipped_bytes(originals, workdir, data):
    original = originals[data.draw(st.sampled_from(LAYOUTS), label="layout")]
    flips = data.draw(
        st.lists(st.tuples(original.flip_offsets, st.integers(1, 255)), min_size=1, max_size=6),
        label="flips",
    )
    mutated = bytearray(original.data)
    for offset, mask in flips:
        mutated[offset] ^= mask
    convert_outcome(bytes(mutated), original.suffix, workdir)


def truncated(originals, workdir, data):
    original = originals[data.draw(st.sampled_from(LAYOUTS), label="layout")]
    size = len(original.data)
    cut = data.draw(
        st.one_of(
            st.integers(0, 4096), st.integers(size - 4096, size - 1), st.integers(0, size - 1)
        ),
        label="cut",
    )
    assert convert_outcome(original.data[:cut], original.suffix, workdir) is None


# ---------------------------------------------------------------------------- file rebuilt
def _copy_attrs(source, target, recode=False):
    for name in source.attrs:
        value = source.attrs[name]
        if recode and isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size:
            # The other string encoding: fixed-length bytes <-> variable-length str.
            strings = [_text(v) for v in value]
            if value.dtype.kind == "S":
                target.attrs.create(name, strings, dtype=h5py.string_dtype())
            else:
                target.attrs[name] = np.array([s.encode() for s in strings])
        else:
            target.attrs[name] = value


def _copy_shuffled(source, target, rng, recode=False, big_endian=False):
    """Copy every member of `source` into `target` in a random order, recursively."""
    _copy_attrs(source, target, recode)
    names = list(source)
    rng.shuffle(names)
    for name in names:
        member = source[name]
        if isinstance(member, h5py.Group):
            _copy_shuffled(member, target.create_group(name), rng, recode, big_endian)
        else:
            values = member[()]
            if big_endian and values.dtype == np.float32:
                values = values.astype(">f4")
            _copy_attrs(member, target.create_dataset(name, data=values))


def _mutate(original, change) -> bytes:
    """`change(hdf5_bytes) -> bytes` applied to the file, or to the weights inside a .keras
    (whose entries are then written in another order)."""
    if original.layout != "keras_zip":
        return change(original.data)
    with zipfile.ZipFile(io.BytesIO(original.data)) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    entries["model.weights.h5"] = change(entries["model.weights.h5"])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(entries, reverse=True):
            archive.writestr(name, entries[name])
    return out.getvalue()


def _rebuilt(data: bytes, rng, recode: bool, big_endian: bool) -> bytes:
    """The same HDF5 content written anew by `_copy_shuffled`."""
    out = io.BytesIO()
    with h5py.File(io.BytesIO(data), "r") as source, h5py.File(out, "w") as target:
        _copy_shuffled(source, target, rng, recode, big_endian)
    return out.getvalue()


def _edited(data: bytes, edit) -> bytes:
    """The HDF5 file after `edit(file)` changed it in place."""
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as f:
        edit(f)
    return buffer.getvalue()


def reordered_recoded(originals, workdir, data):
    """Groups created in another order (so laid out elsewhere), strings in the other encoding,
    floats big-endian: the same file to Keras, so the same checkpoint."""
    original = originals[data.draw(st.sampled_from(LAYOUTS), label="layout")]
    rng = data.draw(st.randoms(use_true_random=False), label="order")
    recode = data.draw(st.booleans(), label="recode")
    big_endian = data.draw(st.booleans(), label="big-endian")
    mutated = _mutate(original, lambda hdf5: _rebuilt(hdf5, rng, recode, big_endian))
    assert_same_state(convert_outcome(mutated, original.suffix, workdir), original.state)


# ------------------------------------------------------------------ attributes and datasets
# Text h5py can store: no lone surrogates, no NUL.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=16)
GARBAGE = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.floats(),
    TEXT,
    st.lists(TEXT, max_size=5).map(lambda v: np.array([s.encode() for s in v])),
    st.just(np.zeros((2, 3))),
    st.just(np.array([], dtype="f8")),
    st.just(np.array([b"\xff\xfe"])),
)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _list_edit(names: list, data) -> list:
    """A plausible damage to a list of names: drop, duplicate, swap, rename, cut, reverse."""
    op = data.draw(
        st.sampled_from(["drop", "duplicate", "swap", "rename", "cut", "reverse"]),
        label="list edit",
    )
    names = list(names)
    i = data.draw(st.integers(0, len(names) - 1), label="index")
    j = data.draw(st.integers(0, len(names) - 1), label="other index")
    if op == "drop":
        del names[i]
    elif op == "duplicate":
        names.insert(j, names[i])
    elif op == "swap":
        names[i], names[j] = names[j], names[i]
    elif op == "rename":
        names[i] = data.draw(
            st.sampled_from([names[j], names[i] + "_x", "", "/", "."]) | TEXT, label="new name"
        )
    elif op == "cut":
        names = names[:i]
    else:
        names.reverse()
    return names


def _edit_legacy_attrs(f: h5py.File, data):
    root = f["model_weights"] if "model_weights" in f else f
    layer_names = [_text(n) for n in root.attrs["layer_names"]]
    weighted = [n for n in layer_names if len(root[n].attrs["weight_names"])]
    target, attr = data.draw(
        st.sampled_from([(root, "layer_names")] + [(root[n], "weight_names") for n in weighted]),
        label="attribute",
    )
    if data.draw(st.booleans(), label="garbage"):
        target.attrs[attr] = data.draw(GARBAGE, label="value")
        return
    names = [_text(n) for n in target.attrs[attr]]
    edited = _list_edit(names, data)
    target.attrs[attr] = np.array([n.encode() for n in edited])


def _edit_keras3(f: h5py.File, data):
    layers = f["layers"]
    group = layers[data.draw(st.sampled_from(sorted(layers)), label="layer group")]
    op = data.draw(
        st.sampled_from(["rename group", "drop var", "name attr", "vars to dataset", "add var"]),
        label="edit",
    )
    if op == "rename group":
        new = data.draw(
            st.sampled_from(["dense", "conv2d_999", "batch_normalization_x", "zz"]),
            label="new name",
        )
        if new not in layers:
            layers.move(group.name.rsplit("/", 1)[1], new)
    elif op == "drop var" and "vars" in group and len(group["vars"]):
        del group["vars"][data.draw(st.sampled_from(sorted(group["vars"])), label="var")]
    elif op == "name attr" and "vars" in group:
        group["vars"].attrs["name"] = data.draw(GARBAGE, label="value")
    elif op == "vars to dataset" and "vars" in group:
        del group["vars"]
        group["vars"] = np.zeros(3, np.float32)
    elif op == "add var" and "vars" in group:
        group["vars"][str(len(group["vars"]))] = np.ones(7, np.float32)


def changed_attributes(originals, workdir, data):
    layout = data.draw(
        st.sampled_from(["keras2_h5", "keras3_h5", "full_model_h5", "weights_h5", "keras_zip"]),
        label="layout",
    )
    original = originals[layout]
    edit = _edit_legacy_attrs if layout in LEGACY_LAYOUTS else _edit_keras3
    mutated = _mutate(original, lambda hdf5: _edited(hdf5, lambda f: edit(f, data)))
    convert_outcome(mutated, original.suffix, workdir)


def _dataset_paths(f: h5py.File) -> list:
    paths = []
    f.visititems(lambda name, obj: paths.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(p for p in paths if "/" in p)  # weights, not top-level bookkeeping


DATASET_EDITS = [
    "float16",
    "float64",
    "int32",
    "uint8",
    "bytes",
    "compound",
    "scalar",
    "empty",
    "extra axis",
    "drop axis",
    "NaN",
    "Inf",
    "huge",
    "group",
    "soft link",
    "external link",
    "chunked",
    "fletcher32",
]
# Edits after which the file must still convert, to the original weights where nothing changed.
HARMLESS = {"fletcher32": True, "chunked": True, "huge": False}


def _edit_dataset(target: h5py.File, path: str, edit: str):
    values = target[path][()]
    group_name, leaf = path.rsplit("/", 1)
    group = target[group_name]
    del group[leaf]
    if edit in ("float16", "float64", "int32", "uint8"):
        group[leaf] = values.astype(edit)
    elif edit == "bytes":
        group[leaf] = np.array([b"abc"] * values.size)
    elif edit == "compound":
        group[leaf] = np.zeros(values.shape, [("a", "<f4"), ("b", "<i4")])
    elif edit == "scalar":
        group[leaf] = np.float32(values.flat[0])
    elif edit == "empty":
        group.create_dataset(leaf, shape=(0,) + values.shape[1:], dtype="f4")
    elif edit == "extra axis":
        group[leaf] = values[..., None]
    elif edit == "drop axis":
        group[leaf] = values.reshape(-1) if values.ndim > 1 else values[:0]
    elif edit in ("NaN", "Inf", "huge"):
        changed = values.copy()
        changed.flat[0] = {"NaN": np.nan, "Inf": np.inf, "huge": np.finfo(np.float32).max}[edit]
        group[leaf] = changed
    elif edit == "group":
        group.create_group(leaf)
    elif edit == "soft link":
        group[leaf] = h5py.SoftLink("/" + path + "_elsewhere")
        target["/" + path + "_elsewhere"] = values
    elif edit == "external link":
        group[leaf] = h5py.ExternalLink("/etc/hostname", "/x")
    elif edit == "chunked":
        group.create_dataset(leaf, data=values, chunks=True)
    elif edit == "fletcher32":
        group.create_dataset(leaf, data=values, fletcher32=True, chunks=True)


def changed_datasets(originals, workdir, data):
    layout = data.draw(st.sampled_from(HDF5_LAYOUTS + ("keras_zip",)), label="layout")
    original = originals[layout]
    edit = data.draw(st.sampled_from(DATASET_EDITS), label="edit")
    chosen = {}

    def change(f):
        chosen["path"] = data.draw(st.sampled_from(_dataset_paths(f)), label="dataset")
        _edit_dataset(f, chosen["path"], edit)

    mutated = _mutate(original, lambda hdf5: _edited(hdf5, change))
    state = convert_outcome(mutated, original.suffix, workdir)
    if edit in HARMLESS:
        assert state is not None, f"{edit} {chosen['path']}"
        if HARMLESS[edit]:
            assert_same_state(state, original.state)
    elif edit in ("NaN", "Inf"):
        assert state is None
        assert convert_outcome(mutated, original.suffix, workdir, allow_nonfinite=True) is not None
    else:
        assert state is None, f"{edit} {chosen['path']} was accepted"


CASES = {
    "flipped bytes": flipped_bytes,
    "truncated": truncated,
    "reordered and recoded": reordered_recoded,
    "changed attributes": changed_attributes,
    "changed datasets": changed_datasets,
}
