"""The way back for a user's own Keras model: our weights written into the user's original file.

A model `load_model` built from a user's Keras file (a `.keras` archive, a full-model `.h5`, or
a weights file with its JSON), fine-tuned here, goes back to Keras as a copy of that file, the
*template*: everything in it is kept (the archive's `config.json` and `metadata.json`, a full
model's `model_config`, the layer groups, attributes and dataset layout), and every weight
dataset is overwritten with our values. The datasets are found by the very pairing that loaded
the file (`config.spec_state_dict`), run the other way: each file array paired with one of our
layers is rewritten with that layer's `to_keras()` arrays, which come in the same Keras order.

Only a model whose graph is the template's is written: its recorded spec must equal the
template's (layer by layer, arguments and inputs), and every weight shape must agree;
otherwise a `GraphMismatchError` names the file and the layer. The written file is read back
through the reader and the pairing, and must give our weights exactly, before it replaces
`dst` (atomically: on any error nothing is left at `dst`).
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import torch

from ..nn.graph import KerasModel
from . import config as model_config
from . import reader
from .atomic import atomic_write, check_output_directory
from .checkpoints import file_spec, official_config
from .pairing import ARCHITECTURE_KEYS, describe_config, read, weighted_layers
from .reader import KerasFile, WeightsFileError, nonfinite

# The Keras layouts a user's model is saved in, and what Keras needs of the name to open each.
_SUFFIXES = {
    "keras_archive": (".keras",),  # keras.models.load_model
    "legacy_full_model_h5": (".h5", ".hdf5"),  # keras.models.load_model
    "legacy_h5": (".h5", ".hdf5"),  # model.load_weights (Keras 2: by the suffix)
    "keras3_weights_h5": (".weights.h5",),  # Keras 3's model.load_weights
}
_LAYOUT_NAMES = {
    "keras_archive": "a .keras archive",
    "legacy_full_model_h5": "a full-model .h5",
    "legacy_h5": "a legacy weights-only .h5",
    "keras3_weights_h5": "a Keras 3 .weights.h5",
}
_WEIGHTS_ENTRY = "model.weights.h5"  # the weights inside a .keras archive
MAX_ARCHIVE_ENTRIES = 1024  # a .keras archive holds 3, and its assets


class GraphMismatchError(WeightsFileError):
    """The model's graph is not the graph of the file it is to be written like: the message
    names the file, the layer and what differs."""


class WriteBackUsageError(ValueError):
    """A way back that cannot be done as asked (a user's graph without its original file, an
    output name Keras would not open): the command line reports it as a usage error."""


def save_keras_like(
    model: KerasModel, dst, *, like, config=None, allow_nonfinite: bool = False
) -> str:
    """Write `model`'s weights to `dst` in the format and layout of `like`, the Keras file the
    model came from; returns the layout written (`keras_archive`, `legacy_full_model_h5`,
    `legacy_h5` or `keras3_weights_h5`).

    - `like` a `.keras` archive: `dst` (`.keras`) is the same archive (its config.json,
      metadata.json and every other entry as they are) with our weights in its
      model.weights.h5, which `keras.models.load_model` opens;
    - a full-model `.h5` (Keras 2 or 3): the same file, structure and attributes (the model
      config) kept, our values in every weight dataset;
    - a weights-only file, with the model's JSON as `config` (`model.to_json()`: a string, a
      dict or a path): weights in the same layout, which `model.load_weights` of the model
      rebuilt from that JSON accepts.

    `model` is a user's model (`load_model` of such a file, or of a checkpoint converted from it
    or saved by `save_checkpoint`), or an official architecture when `like` holds exactly that
    architecture (a `keras.applications` model saved whole). Its graph must be `like`'s:
    otherwise a GraphMismatchError names the file and the first layer that differs. Anything
    else in the file (a compiled model's optimizer state) is kept as it is. Weights holding NaN
    or Inf are refused unless `allow_nonfinite`. `dst` is written atomically: on any error
    nothing is left at it (an existing `dst` is replaced only by a complete new file).
    """
    like, dst = Path(like), Path(dst)
    check_output_directory(dst)
    template = read(like, allow_nonfinite=True)  # its values are all replaced
    if template.layout not in _SUFFIXES:
        raise WeightsFileError(
            f"{like}: a {template.layout.replace('_', ' ')}: a user's model is written back "
            f"like {', '.join(_LAYOUT_NAMES.values())}"
        )
    _check_name(dst, template)
    spec = file_spec(template, config)
    if spec is None:
        raise WeightsFileError(
            f"{like}: a weights-only file records no model config: pass the model's JSON "
            "(`model.to_json()`) as config= (--config model.json); an official architecture "
            "can also be written without a template (save_keras_h5, convert --to keras)"
        )
    sources = _sources(model, template, spec)
    template_model = model_config.build_model(spec, "meta")
    model_config.spec_state_dict(template, template_model, spec)  # the file fits its config
    plan = _plan(template, template_model, spec, sources, allow_nonfinite)

    def write(tmp: str) -> None:
        if template.layout == "keras_archive":
            _write_archive(like, Path(tmp), template, plan)
        else:
            reader.check_input_file(like)
            shutil.copyfile(like, tmp)
            with h5py.File(tmp, "r+") as f:
                _write_datasets(f, like, template, plan)
        _check_written(Path(tmp), dst, template_model, spec, sources)

    atomic_write(dst, write)
    return template.layout


# --------------------------------------------------------------------------- the checks
def _check_name(dst: Path, template: KerasFile) -> None:
    suffixes = _SUFFIXES[template.layout]
    if not any(dst.name.endswith(s) and dst.name != s for s in suffixes):
        raise WriteBackUsageError(
            f"{dst}: {template.path} is {_LAYOUT_NAMES[template.layout]}, and Keras opens one "
            f"only under a name ending in {' or '.join(suffixes)}"
        )


def _sources(model: KerasModel, template: KerasFile, spec: model_config.Spec) -> dict:
    """Keras path of each weighted layer -> our module that gives its values, once the model is
    known to be the template's graph."""
    config = model.config
    if config.get("family") == model_config.SPEC_FAMILY:
        ours = _plain(config.get("spec"))
        difference = _graph_difference(ours, _plain(spec.to_json()), ())
        if difference:
            raise GraphMismatchError(
                f"{template.path}: {difference}: the model's graph is not this file's, so "
                "its weights cannot be written like it"
            )
        return {path: module for path, _, module in model_config.weighted_leaves(model)}
    official = official_config(template, spec)
    if official is None or any(official.get(k) != config.get(k) for k in ARCHITECTURE_KEYS):
        holds = describe_config(official) if official else f"a user's own graph ({spec.name!r})"
        raise GraphMismatchError(
            f"{template.path}: holds {holds}, the model is {describe_config(config)}: its "
            "weights cannot be written like it"
        )
    return {(name,): module for name, module in weighted_layers(model)}


def _plain(value):
    """JSON's own types (lists, not tuples), as a checkpoint records a spec."""
    return json.loads(json.dumps(value))


def _graph_difference(ours: dict, theirs: dict, path: tuple) -> str | None:
    """Where the model's spec (`ours`) and the file's differ, as 'layer ...: ...', or None.
    Names, classes, arguments, inputs and outputs count; `trainable` does not (the file's is
    kept), nor the top model's name."""
    where_model = f"model {'/'.join(path)!r}" if path else "the model"
    mine = {layer["name"]: layer for layer in ours["layers"]}
    for layer in theirs["layers"]:
        where = f"layer {'/'.join((*path, layer['name']))!r} ({layer['class_name']})"
        other = mine.pop(layer["name"], None)
        if other is None:
            return f"{where}: in the file, not in the model"
        if other["class_name"] != layer["class_name"]:
            return f"{where}: a {other['class_name']} in the model"
        if other["inbound"] != layer["inbound"]:
            return f"{where}: reads {other['inbound']} in the model, {layer['inbound']} in the file"
        if other.get("inference") != layer.get("inference"):
            return f"{where}: called with training=False in one of the two only"
        args, other_args = dict(layer["args"]), dict(other["args"])
        inner, other_inner = args.pop("model", None), other_args.pop("model", None)
        for key in sorted(set(args) | set(other_args)):
            if args.get(key) != other_args.get(key):
                return (
                    f"{where}: {key}={reader.one_line(other_args.get(key))[:80]} in the model, "
                    f"{reader.one_line(args.get(key))[:80]} in the file"
                )
        if inner is not None:
            found = _graph_difference(other_inner or {}, inner, (*path, layer["name"]))
            if found:
                return found
    if mine:
        name, layer = next(iter(mine.items()))
        return (
            f"layer {'/'.join((*path, name))!r} ({layer['class_name']}): in the model, not in "
            "the file"
        )
    for key in ("input", "outputs"):
        if ours.get(key) != theirs.get(key):
            return (
                f"{where_model}: its {key} {ours.get(key)} in the model, {theirs.get(key)} in "
                "the file"
            )
    if ours.get("keras_version") != theirs.get("keras_version"):  # the same graph otherwise
        return (
            f"{where_model}: its config comes from Keras {ours.get('keras_version')}, the "
            f"file's from Keras {theirs.get('keras_version')} (which compute some layers "
            "differently)"
        )
    return None


def _plan(
    template: KerasFile,
    template_model: KerasModel,
    spec: model_config.Spec,
    sources: dict,
    allow_nonfinite: bool,
) -> list:
    """(file layer, index of its array, our array) for every array of the template, checked:
    the same weighted layers, the same shapes, finite values."""
    paired = _paired_arrays(template, template_model, spec)
    missing = [path for path in paired if path not in sources]
    extra = [path for path, m in sources.items() if path not in paired and m.keras_shapes()]
    if missing or extra:
        path, side = (missing[0], "file") if missing else (extra[0], "model")
        raise GraphMismatchError(
            f"{template.path}: layer {'/'.join(path)!r}: weighted in the {side} only: the "
            "model's graph is not this file's"
        )
    where_is = {
        id(array): (layer, i) for layer in template.layers for i, array in enumerate(layer.arrays)
    }
    plan, seen = [], set()
    for path, arrays in paired.items():
        module = sources[path]
        values = module.to_keras()
        where = f"{template.path}: layer {'/'.join(path)!r} ({module.keras_class})"
        got, expected = [v.shape for v in values], [a.shape for a in arrays]
        if got != expected:
            raise GraphMismatchError(
                f"{where}: the model's weights have shapes {[tuple(s) for s in got]}, the "
                f"file's {[tuple(s) for s in expected]}: the model's graph is not this file's"
            )
        for name, value, array in zip(module.keras_variables(), values, arrays):
            found = None if allow_nonfinite else nonfinite(value)
            if found:
                raise WeightsFileError(
                    f"{where}: {name} holds {found}; pass allow_nonfinite=True to write it anyway"
                )
            location = where_is.get(id(array))
            if location is None or id(array) in seen:  # the pairing gives the file's own arrays
                raise WeightsFileError(f"{where}: {name} is not one array of the file")
            seen.add(id(array))
            plan.append((*location, value))
    if len(seen) != len(where_is):
        raise WeightsFileError(f"{template.path}: holds arrays the model config pairs with none")
    return plan


def _paired_arrays(keras_file: KerasFile, template_model: KerasModel, spec) -> dict:
    """Keras path -> the file's arrays for that layer, in Keras order: how `spec_state_dict`
    pairs them (already checked to be complete by it)."""
    if keras_file.ordered:
        return model_config.legacy_arrays(keras_file, template_model)
    return model_config.keras3_arrays(keras_file, template_model, spec)


# ---------------------------------------------------------------------------- the writes
def _write_datasets(f: h5py.File, like: Path, template: KerasFile, plan: list) -> None:
    """Our arrays into the datasets they replace, found as the reader found them (no link
    followed)."""
    walker = reader.HDF5Reader(like, ())
    legacy_root = f if template.layout == "legacy_h5" else walker.child(f, "model_weights")
    names: dict[str, list] = {}
    for layer, index, value in plan:
        if template.ordered:
            group = walker.child(legacy_root, layer.name)
            if layer.name not in names:
                names[layer.name] = walker.list_attr(
                    group, "weight_names", reader.MAX_MODEL_VARIABLES
                )
            dataset = walker.child(group, names[layer.name][index])
        else:
            folder, _, number = layer.variables[index].rpartition("/")
            inner = f"{folder}/" if folder else ""
            dataset = walker.child(f, f"layers/{layer.group}/{inner}vars/{number}")
        if not isinstance(dataset, h5py.Dataset) or dataset.shape != value.shape:
            raise WeightsFileError(
                f"{like}: layer {layer.name!r}: its weight {index} is not where it was read"
            )
        dataset[...] = value


def _write_archive(like: Path, tmp: Path, template: KerasFile, plan: list) -> None:
    """The archive again, entry by entry as it was (names, order, dates, compression), its
    model.weights.h5 with our values."""
    reader.check_input_file(like)
    entries = []
    with reader.reading(like), zipfile.ZipFile(like) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ARCHIVE_ENTRIES:
            raise WeightsFileError(
                f"{like}: {len(infos)} archive entries, over the limit of {MAX_ARCHIVE_ENTRIES}"
            )
        if len({info.filename for info in infos}) != len(infos):
            raise WeightsFileError(f"{like}: an archive holding two entries of one name")
        total = 0
        for info in infos:
            data = reader.zip_entry(archive, like, info.filename, reader.MAX_FILE_BYTES)
            total += len(data or b"")
            if data is None or total > reader.MAX_FILE_BYTES:
                raise WeightsFileError(
                    f"{like}: the archive's entries unpack to over {reader.MAX_FILE_BYTES} bytes"
                    if data is not None
                    else f"{like}: archive entry {info.filename!r} cannot be read"
                )
            entries.append((info, data))
    with zipfile.ZipFile(tmp, "w") as out:
        for info, data in entries:
            if info.filename == _WEIGHTS_ENTRY:
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as f:
                    _write_datasets(f, like, template, plan)
                data = buffer.getvalue()
            out.writestr(info, data)


def _check_written(tmp: Path, dst: Path, template_model: KerasModel, spec, sources: dict) -> None:
    """The written file, read back as any Keras file is and paired as the template was, holds
    our weights exactly."""
    written = read(tmp, allow_nonfinite=True)
    model_config.spec_state_dict(written, template_model, spec)  # complete, every array used
    for path, arrays in _paired_arrays(written, template_model, spec).items():
        module = sources.get(path)
        if module is None:
            raise WeightsFileError(f"{dst}: layer {'/'.join(path)!r} does not read back as written")
        state = module.state_dict()
        for key, tensor in module.from_keras(arrays).items():
            if key.endswith("num_batches_tracked"):  # no Keras variable
                continue
            ours = state[key].detach().to("cpu", torch.float32)
            if not torch.equal(tensor.to(torch.float32), ours):
                raise WeightsFileError(
                    f"{dst}: layer {'/'.join(path)!r}: {key} does not read back as written"
                )
