"""Hostile and broken weight files: every bad input is one clear error, never a crash, a link
followed, an oversized read, an unpickled byte or a half-written output.

Each case breaks a private copy of a real Keras-layout file (a seeded MobileNetV2 written as
Keras writes it), then checks the library (WeightsFileError, model untouched) and the command
line (exit code, one line on stderr, nothing left in the output folder). The command line runs
in-process, except for the interrupt, which is a real SIGINT to a real process.
"""

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import keras_model
from safetensors import safe_open
from safetensors.torch import save_file

import torch_mobilenets as tm
from torch_mobilenets import WeightsFileError, keras_io
from torch_mobilenets.cli import convert as convert_command
from torch_mobilenets.cli import main as cli_main
from torch_mobilenets.keras_io import atomic, checkpoints, reader


def main(argv):
    """`torch-mobilenets convert ...`, in this process."""
    return cli_main(["convert", *argv])


ROOT = Path(__file__).resolve().parent.parent
FAMILY = "mobilenet_v2"
KWARGS = dict(input_shape=(96, 96, 3), alpha=0.35)  # the model tests/test_converter.py uses
MODEL_ARGS = dict(alpha=0.35, input_shape=(3, 96, 96))
KERNEL = "Conv1/Conv1/kernel:0"  # the first layer's kernel in the official (Keras 2) layout
GAMMA = "bn_Conv1/bn_Conv1/gamma:0"


@pytest.fixture(scope="module")
def keras_v2():
    return keras_model(FAMILY, **KWARGS)


@pytest.fixture
def copy_of(keras_v2, weights_file, tmp_path):
    """A private copy of the model in `layout`, free to be broken (in tmp_path/in/)."""

    def copy(layout="keras2_h5"):
        source = weights_file(FAMILY, keras_v2, layout)
        target = tmp_path / "in" / source.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(source.read_bytes())
        return target

    return copy


@pytest.fixture
def out_dir(tmp_path):
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def run_main(capsys, *args):
    """The command line in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fresh_model():
    return tm.MobileNetV2(weights=None, **MODEL_ARGS)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def replace_dataset(path, name, make):
    """Put `make(group, leaf)`'s object where dataset `name` was."""
    with h5py.File(path, "r+") as f:
        group_name, leaf = name.rsplit("/", 1)
        group = f[group_name]
        del group[leaf]
        make(group, leaf)


def set_values(path, name, transform):
    with h5py.File(path, "r+") as f:
        data = f[name][()]
        f[name][...] = transform(data)


# ----------------------------------------------------------------------- the broken inputs
def _missing(path):
    path.unlink()


def _empty(path):
    path.write_bytes(b"")


def _junk(path):
    path.write_bytes(b"GIF89a, or anything else that is not a weights file" * 20)


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _no_layout(path):
    path.unlink()
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3, np.float32)


def _drop_layer(path):
    with h5py.File(path, "r+") as f:
        names = [n for n in f.attrs["layer_names"] if n != b"block_16_project_BN"]
        f.attrs["layer_names"] = np.array(names)


def _extra_layer(path):
    with h5py.File(path, "r+") as f:
        f.attrs["layer_names"] = np.array(list(f.attrs["layer_names"]) + [b"bn_Conv1"])


def _wrong_shape(path):
    replace_dataset(path, KERNEL, lambda g, n: g.create_dataset(n, data=np.ones((3, 3, 3, 8), "f")))


def _dtype(dtype):
    def mutate(path):
        with h5py.File(path, "r") as f:
            data = f[KERNEL][()]
        replace_dataset(path, KERNEL, lambda g, n: g.create_dataset(n, data=data.astype(dtype)))

    return mutate


def _compound(path):
    with h5py.File(path, "r") as f:
        data = f[GAMMA][()]
    record = np.zeros(data.shape, [("value", "<f4"), ("other", "<f4")])
    replace_dataset(path, GAMMA, lambda g, n: g.create_dataset(n, data=record))


def _object_references(path):
    def make(group, leaf):
        references = group.create_dataset(leaf, (4,), dtype=h5py.ref_dtype)
        references[0] = group.file["Conv1"].ref

    replace_dataset(path, GAMMA, make)


def _nan(path):
    set_values(path, GAMMA, lambda d: np.where(np.arange(d.size) == 3, np.nan, d))


def _inf(path):
    set_values(path, GAMMA, lambda d: np.where(np.arange(d.size) == 3, -np.inf, d))


def _external_link(path):
    other = path.with_name("other.h5")
    with h5py.File(other, "w") as f:
        f["x"] = np.ones((3, 3, 3, 16), np.float32)
    replace_dataset(
        path, KERNEL, lambda g, n: g.__setitem__(n, h5py.ExternalLink(other.name, "/x"))
    )


def _soft_link(path):
    replace_dataset(
        path,
        KERNEL,
        lambda g, n: g.__setitem__(n, h5py.SoftLink("/block_1_project/block_1_project/kernel:0")),
    )


def _linked_layer_group(path):
    """A link on the way to the dataset (the layer's group), not the dataset itself."""
    with h5py.File(path, "r+") as f:
        f.move("Conv1", "Conv1_real")
        f["Conv1"] = h5py.SoftLink("/Conv1_real")


def _virtual(path):
    other = path.with_name("source.h5")
    with h5py.File(other, "w") as f:
        f["x"] = np.ones((3, 3, 3, 16), np.float32)

    def make(group, leaf):
        layout = h5py.VirtualLayout(shape=(3, 3, 3, 16), dtype="f4")
        layout[...] = h5py.VirtualSource(other.name, "x", shape=(3, 3, 3, 16))
        group.create_virtual_dataset(leaf, layout)

    replace_dataset(path, KERNEL, make)


def _external_storage(path):
    raw = path.with_name("raw.bin")
    raw.write_bytes(np.ones((3, 3, 3, 16), np.float32).tobytes())
    replace_dataset(
        path,
        KERNEL,
        lambda g, n: g.create_dataset(
            n, shape=(3, 3, 3, 16), dtype="f4", external=[(raw.name, 0, h5py.h5f.UNLIMITED)]
        ),
    )


def _compressed(path):
    with h5py.File(path, "r") as f:
        data = f[KERNEL][()]
    replace_dataset(path, KERNEL, lambda g, n: g.create_dataset(n, data=data, compression="gzip"))


def _names_as_references(path):
    with h5py.File(path, "r+") as f:
        f.attrs["layer_names"] = np.array([f["Conv1"].ref] * 3, dtype=h5py.ref_dtype)


# (name, layout, mutation, what the one line says, architecture given to the converter)
BAD_INPUTS = [
    ("missing", "keras2_h5", _missing, "no such file", {}),
    ("empty", "keras2_h5", _empty, "the file is empty", {}),
    ("junk", "keras2_h5", _junk, "neither HDF5 nor a .keras zip archive", {}),
    ("truncated h5", "keras2_h5", _truncated, "unreadable or damaged file", {}),
    ("truncated .keras", "keras_zip", _truncated, "unreadable or damaged file", {}),
    ("truncated Keras 3", "weights_h5", _truncated, "unreadable or damaged file", {}),
    ("HDF5, no Keras layout", "keras2_h5", _no_layout, "not in any Keras layout", {}),
    ("a layer missing", "keras2_h5", _drop_layer, "fits the file's", {"family": "mobilenet_v2"}),
    (
        "an extra layer",
        "keras2_h5",
        _extra_layer,
        "layer 'bn_Conv1' (BatchNormalization, shapes [(16,), (16,), (16,), (16,)]) has no "
        "counterpart in mobilenet_v2 (alpha=0.35, include_top=True, classes=1000): the file "
        "holds 1 more weighted layer after those that fit; pass skip_extra_layers=True",
        {},
    ),
    ("a wrong shape", "keras2_h5", _wrong_shape, "fits the file's", {"alpha": 0.35}),
    (
        "the wrong family",
        "keras2_h5",
        lambda path: None,
        "{'family': 'mobilenet'} fits",
        {"family": "mobilenet"},
    ),
    (
        "float64",
        "keras2_h5",
        _dtype(np.float64),
        "'Conv1/kernel:0': '/Conv1/Conv1/kernel:0' holds float64; weights must be float32",
        {},
    ),
    ("float16", "keras2_h5", _dtype(np.float16), "holds float16; weights must be float32", {}),
    ("int32", "keras2_h5", _dtype(np.int32), "holds int32; weights must be float32", {}),
    ("compound", "keras2_h5", _compound, "weights must be float32", {}),
    ("object references", "keras2_h5", _object_references, "weights must be float32", {}),
    (
        "NaN",
        "keras2_h5",
        _nan,
        "layer 'bn_Conv1', variable 'gamma' holds 1 NaN and 0 infinite "
        "values; pass allow_nonfinite=True",
        {},
    ),
    ("Inf", "keras2_h5", _inf, "holds 0 NaN and 1 infinite values", {}),
    (
        "external link",
        "keras2_h5",
        _external_link,
        "'/Conv1/Conv1/kernel:0' is an external link; links are refused, not followed",
        {},
    ),
    ("soft link", "keras2_h5", _soft_link, "is a soft link; links are refused", {}),
    ("linked layer group", "keras2_h5", _linked_layer_group, "'/Conv1' is a soft link", {}),
    ("virtual dataset", "keras2_h5", _virtual, "is a virtual dataset", {}),
    ("external storage", "keras2_h5", _external_storage, "keeps its data in external files", {}),
    ("compressed", "keras2_h5", _compressed, "HDF5 filter 1 (deflate)", {}),
    ("names as references", "keras2_h5", _names_as_references, "is not a list of names", {}),
]


@pytest.mark.parametrize(
    "name,layout,mutate,message,known", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_3_and_no_output(
    name, layout, mutate, message, known, copy_of, out_dir, capsys
):
    src = copy_of(layout)
    mutate(src)
    dst = out_dir / "out.safetensors"
    options = [arg for key, value in known.items() for arg in (f"--{key}", value)]
    code, stdout, stderr = run_main(capsys, src, dst, *options)
    assert code == 3, stderr
    assert stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"torch-mobilenets convert: error: {src}: ") and message in stderr, (
        stderr
    )
    assert list(out_dir.iterdir()) == []  # no output, no temporary file
    # The library raises the very message, and leaves a model it fails to load untouched.
    with pytest.raises(WeightsFileError) as error:
        keras_io.convert(src, dst, **known)
    assert stderr == f"torch-mobilenets convert: error: {error.value}\n"
    if known.get("family") == "mobilenet":  # the file fits the V2 model: try the model asked for
        model = tm.MobileNet(weights=None, alpha=0.25, input_shape=(3, 96, 96))
    else:
        model = fresh_model()
    before = snapshot(model)
    with pytest.raises(WeightsFileError):
        keras_io.load_weights(model, src)
    assert_untouched(model, before)


def test_debug_shows_the_exception(copy_of, out_dir):
    src = copy_of()
    _nan(src)
    with pytest.raises(WeightsFileError, match="NaN"):
        main([str(src), str(out_dir / "out.safetensors"), "--debug"])
    assert list(out_dir.iterdir()) == []


def test_nonfinite_weights_convert_only_when_allowed(copy_of, out_dir, capsys):
    src = copy_of()
    _nan(src)
    dst = out_dir / "out.safetensors"
    code, stdout, stderr = run_main(capsys, src, dst, "--allow-nonfinite")
    assert code == 0, stderr
    state, _ = keras_io.read_safetensors(dst, allow_nonfinite=True)
    assert torch.isnan(state["bn_Conv1.weight"]).sum() == 1
    with pytest.raises(WeightsFileError, match=r"bn_Conv1.weight holds 1 NaN"):
        keras_io.read_safetensors(dst)
    model = fresh_model()
    before = snapshot(model)
    with pytest.raises(WeightsFileError, match="allow_nonfinite"):
        keras_io.load_weights(model, dst)
    assert_untouched(model, before)
    keras_io.load_weights(model, src, allow_nonfinite=True)
    assert torch.isnan(model.state_dict()["bn_Conv1.weight"]).sum() == 1
    with pytest.raises(WeightsFileError, match="NaN"):  # the builders stay strict
        tm.MobileNetV2(weights=src, **MODEL_ARGS)


def test_big_endian_float32_is_float32(copy_of, out_dir):
    src = copy_of()
    with h5py.File(src, "r") as f:
        expected = f[KERNEL][()]
    replace_dataset(src, KERNEL, lambda g, n: g.create_dataset(n, data=expected.astype(">f4")))
    keras_io.convert(src, out_dir / "out.safetensors")
    state, _ = keras_io.read_safetensors(out_dir / "out.safetensors")
    np.testing.assert_array_equal(state["Conv1.weight"].permute(2, 3, 1, 0).numpy(), expected)


# ------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    "arguments,message",
    [
        (["{src}"], "the following arguments are required: dst"),
        (["{src}", "{out}/x.safetensors", "--bogus"], "unrecognized arguments: --bogus"),
        (["{src}", "{out}/x.safetensors", "--alpha", "wide"], "invalid float value: 'wide'"),
        (["{src}", "{out}/x.pt"], "DST must end in .safetensors"),
        (["{src}", "{out}/dir.safetensors"], "is a folder"),
        (
            ["{src}", "{out}/x.safetensors", "--only", "x"],
            "--only and --parity go with --all-official",
        ),
        (["--all-official", "{out}", "--allow-nonfinite"], "takes no --allow-nonfinite"),
    ],
)
def test_usage_errors_exit_2_on_one_line(arguments, message, copy_of, out_dir, capsys):
    src = copy_of()
    (out_dir / "dir.safetensors").mkdir()
    code, stdout, stderr = run_main(capsys, *[a.format(src=src, out=out_dir) for a in arguments])
    assert code == 2 and stdout == "", stderr
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert [p.name for p in out_dir.iterdir()] == ["dir.safetensors"]


def test_existing_output_is_kept_unless_forced(copy_of, out_dir, capsys):
    src, dst = copy_of(), out_dir / "out.safetensors"
    dst.write_bytes(b"keep me")
    code, _, stderr = run_main(capsys, src, dst)
    assert code == 2 and "--force" in stderr and dst.read_bytes() == b"keep me"
    _nan(src)  # a failed forced conversion keeps the old file too
    code, _, stderr = run_main(capsys, src, dst, "--force")
    assert code == 3 and dst.read_bytes() == b"keep me"
    assert [p.name for p in out_dir.iterdir()] == ["out.safetensors"]


def test_missing_output_directory_is_found_before_reading(copy_of, tmp_path, capsys):
    dst = tmp_path / "no" / "such" / "out.safetensors"
    code, _, stderr = run_main(capsys, tmp_path / "absent.h5", dst)
    assert code == 3 and stderr.count("\n") == 1
    assert f"the output directory {dst.parent} does not exist" in stderr
    with pytest.raises(WeightsFileError, match="does not exist"):
        keras_io.convert(copy_of(), dst)


def test_write_failures_and_bugs_are_one_line_too(copy_of, out_dir, capsys, monkeypatch):
    src, dst = copy_of(), out_dir / "out.safetensors"

    def disk_full(state, path, metadata):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    code, _, stderr = run_main(capsys, src, dst)
    assert code == 3 and stderr.count("\n") == 1 and "No space left on device" in stderr
    assert list(out_dir.iterdir()) == []

    def bug(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(convert_command, "convert", bug)
    code, _, stderr = run_main(capsys, src, dst)
    assert code == 1 and stderr.count("\n") == 1 and "rerun with --debug" in stderr
    with pytest.raises(IndexError):
        main([str(src), str(dst), "--debug"])


# ------------------------------------------------------------------------------ safe writes
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError, ValueError])
def test_atomic_write_leaves_the_old_file_or_nothing(tmp_path, interruption):
    dst = tmp_path / "out.safetensors"

    def half_then_fail(tmp):
        Path(tmp).write_bytes(b"half")
        raise interruption()

    with pytest.raises(interruption):
        atomic.atomic_write(dst, half_then_fail)
    assert list(tmp_path.iterdir()) == []
    dst.write_bytes(b"old")
    with pytest.raises(interruption):
        atomic.atomic_write(dst, half_then_fail)
    assert list(tmp_path.iterdir()) == [dst] and dst.read_bytes() == b"old"
    atomic.atomic_write(dst, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert list(tmp_path.iterdir()) == [dst] and dst.read_bytes() == b"new"


# The real command line, its output written slowly: SIGINT arrives while the temporary file
# exists and before it is renamed.
SLOW_WRITE = """
import sys, time
from torch_mobilenets.cli import main
from torch_mobilenets.keras_io import checkpoints

save_file = checkpoints.save_file

def slow_save_file(state, path, metadata):
    save_file(state, path, metadata)
    print("written", path, flush=True)
    time.sleep(120)

checkpoints.save_file = slow_save_file
sys.exit(main(["convert", *sys.argv[1:]]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_mid_conversion_leaves_no_file(copy_of, out_dir):
    src, dst = copy_of(), out_dir / "out.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITE, str(src), str(dst)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    watchdog = threading.Timer(120, process.kill)  # a hang fails the test instead of blocking
    watchdog.start()
    try:
        line = process.stdout.readline()
        assert line.startswith("written "), process.communicate()[1]
        assert Path(line.split(" ", 1)[1].strip()).exists()  # mid-write: the temporary file
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 130
    assert stderr.count("\n") == 1 and "interrupted; nothing was written" in stderr, stderr
    assert list(out_dir.iterdir()) == []


# ------------------------------------------------------------------------------ .safetensors
def _converted(copy_of, out_dir):
    path = out_dir / "good.safetensors"
    keras_io.convert(copy_of(), path)
    return path


def _with_header(path, header: dict, data: bytes = b""):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


SAFETENSORS_CASES = {
    "junk": lambda p, good: p.write_bytes(os.urandom(256)),
    "header claims 2**60 bytes": lambda p, good: p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}"),
    "truncated": lambda p, good: p.write_bytes(good.read_bytes()[:-1000]),
    "offsets past the end": lambda p, good: _with_header(
        p, {"x": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}, b"\0" * 64
    ),
    "huge shape": lambda p, good: _with_header(
        p, {"x": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}
    ),
}


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_broken_safetensors(case, copy_of, out_dir):
    path = out_dir / "bad.safetensors"
    SAFETENSORS_CASES[case](path, _converted(copy_of, out_dir))
    model = fresh_model()
    before = snapshot(model)
    with pytest.raises(WeightsFileError, match=f"^{path}: not a readable safetensors file"):
        keras_io.load_weights(model, path)
    assert_untouched(model, before)


def _retyped(state, dtype):
    state = dict(state)
    state["Conv1.weight"] = state["Conv1.weight"].to(dtype)
    return state


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s, m: (_retyped(s, torch.float64), m), r"'Conv1.weight' is F64; weights must be"),
        (lambda s, m: (_retyped(s, torch.int32), m), r"'Conv1.weight' is I32"),
        (lambda s, m: (_retyped(s, torch.bfloat16), m), r"'Conv1.weight' is BF16"),
        (
            lambda s, m: ({**s, "bn_Conv1.bias": s["bn_Conv1.bias"] * np.inf}, m),
            r"bn_Conv1.bias holds",
        ),
        (lambda s, m: (s, {"torch_mobilenets": "{not json"}), r"not a readable safetensors file"),
        (lambda s, m: (s, {"torch_mobilenets": '{"config": [1, 2]}'}), r"config is not a model"),
        (
            lambda s, m: (s, {"torch_mobilenets": '{"config": {"family": "resnet"}}'}),
            r"not a model",
        ),
        (
            lambda s, m: (
                s,
                {"torch_mobilenets": '{"config": {"family": "mobilenet_v2", "alpha": true}}'},
            ),
            r"not a model",
        ),
        (lambda s, m: (s, {"torch_mobilenets": "[" * 100000 + "]" * 100000}), r"RecursionError"),
    ],
    ids=[
        "float64",
        "int32",
        "bfloat16",
        "inf",
        "metadata not JSON",
        "config not a dict",
        "unknown family",
        "alpha not a number",
        "deeply nested JSON",
    ],
)
def test_mismatched_safetensors(change, message, copy_of, out_dir):
    good = _converted(copy_of, out_dir)
    state, _ = keras_io.read_safetensors(good)
    with safe_open(good, "pt") as f:
        metadata = f.metadata()
    state, metadata = change(state, metadata)
    path = out_dir / "bad.safetensors"
    save_file(state, path, metadata)
    model = fresh_model()
    before = snapshot(model)
    with pytest.raises(WeightsFileError, match=message) as error:
        keras_io.load_weights(model, path)
    assert str(error.value).startswith(f"{path}: ")
    assert_untouched(model, before)


# ------------------------------------------------------------------------------ sizes, limits
def test_a_tensor_over_the_limit_is_refused_before_it_is_read(copy_of, monkeypatch):
    src = copy_of()
    monkeypatch.setattr(reader, "MAX_TENSOR_BYTES", 1000)
    monkeypatch.setattr(h5py.Dataset, "read_direct", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(WeightsFileError, match=r"'Conv1/kernel:0'.*over the limit of 1000 bytes"):
        keras_io.read(src)


def test_a_file_over_the_limit_is_refused(copy_of, monkeypatch):
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", 1 << 20)
    for layout in ("keras2_h5", "keras_zip"):
        with pytest.raises(WeightsFileError, match="bytes, over the limit of 1048576"):
            keras_io.read(copy_of(layout))


def test_too_many_layer_names(copy_of, monkeypatch):
    monkeypatch.setattr(reader, "MAX_LAYERS", 50)
    with pytest.raises(WeightsFileError, match="'layer_names' of '/' lists 15[0-9] names, over"):
        keras_io.read(copy_of())


def test_chunks_over_the_limit(copy_of):
    src = copy_of()
    replace_dataset(
        src,
        GAMMA,
        lambda g, n: g.create_dataset(
            n, shape=(16,), maxshape=(None,), chunks=(1 << 27,), dtype="f4"
        ),
    )
    with pytest.raises(WeightsFileError, match=r"chunks \(134217728,\)\), over the limit"):
        keras_io.read(src)


def test_a_hard_link_loop_in_a_keras3_file(copy_of):
    src = copy_of("weights_h5")
    with h5py.File(src, "r+") as f:
        f["layers/conv2d/loop"] = f["layers/conv2d"]
    with pytest.raises(WeightsFileError, match="'conv2d': layers nested more than 8 deep"):
        keras_io.read(src)


def _zip_with(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_zip_bombs_and_odd_entries(copy_of, tmp_path, monkeypatch):
    good = copy_of("keras_zip")
    with zipfile.ZipFile(good) as archive:
        weights, config = archive.read("model.weights.h5"), archive.read("config.json")
    path = tmp_path / "odd.keras"

    _zip_with(path, {"model.weights.h5": b"\0" * (64 << 20)}, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", 32 << 20)
    with pytest.raises(WeightsFileError, match="unpacks to 67108864 bytes, over the limit"):
        keras_io.read(path)
    # The same bomb with its sizes forged small: never more than the limit is unpacked.
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        data[at + offset : at + offset + 4] = struct.pack("<I", 1000)
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match="unreadable or damaged file"):
        keras_io.read(path)
    monkeypatch.undo()

    _zip_with(path, {"config.json": config, "model.weights.h5": weights}, zipfile.ZIP_BZIP2)
    with pytest.raises(WeightsFileError, match="compression method 12; only stored and deflated"):
        keras_io.read(path)
    _zip_with(path, {"config.json": config, "model.weights.h5": weights})
    data = bytearray(path.read_bytes())  # mark every entry encrypted
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            data[at + offset] |= 1
            start = at + 4
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match="'model.weights.h5' in the archive is encrypted"):
        keras_io.read(path)
    for entries, message in [
        ({"config.json": config}, "without 'model.weights.h5'"),
        ({"model.weights.h5": b"not HDF5"}, "model.weights.h5 inside is not HDF5"),
        ({"config.json": b'{"a": "\xff"}', "model.weights.h5": weights}, "UnicodeDecodeError"),
        ({"config.json": b"[1]", "model.weights.h5": weights}, "config.json in the archive is not"),
    ]:
        _zip_with(path, entries)
        with pytest.raises(WeightsFileError, match=message):
            keras_io.read(path)


def _rezip(path, edit_config):
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(entries["config.json"])
    edit_config(config["config"]["layers"][0]["config"])
    entries["config.json"] = json.dumps(config).encode()
    _zip_with(path, entries)


def test_the_saved_input_shape_is_checked(copy_of, out_dir):
    src = copy_of("keras_zip")
    # The model is built from its config: a config that is not one is refused, naming the layer.
    _rezip(src, lambda spec: spec.update(batch_shape=[None, "96", True, 3]))
    with pytest.raises(WeightsFileError, match=r"layer 'input_layer.*input size '96'"):
        keras_io.convert(src, out_dir / "a.safetensors")
    _rezip(src, lambda spec: spec.update(batch_shape=[None, 2, 2, 3]))
    with pytest.raises(
        WeightsFileError, match=r"layer 'block_1_depthwise' \(DepthwiseConv2D\): .*too small"
    ):
        keras_io.convert(src, out_dir / "b.safetensors")
    assert not list(out_dir.iterdir())


def test_a_preset_names_only_files_inside_it(copy_of, tmp_path):
    folder = tmp_path / "preset"
    folder.mkdir()
    outside = copy_of("weights_h5")
    for weights in ("../in/" + outside.name, str(outside), "..", 7):
        (folder / "config.json").write_text(json.dumps({"weights": weights}))
        with pytest.raises(WeightsFileError, match="only a file inside the preset folder"):
            keras_io.read(folder)
    (folder / "config.json").write_text("[]")
    with pytest.raises(WeightsFileError, match="not a JSON object"):
        keras_io.read(folder)
    (folder / "inner").mkdir()  # a folder in a folder (or a link back to it): not followed
    (folder / "config.json").write_text(json.dumps({"weights": "inner"}))
    with pytest.raises(WeightsFileError, match="inner: not a regular file"):
        keras_io.read(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_special_files_are_not_read(tmp_path):
    fifo = tmp_path / "weights.h5"
    os.mkfifo(fifo)  # reading it would block for ever
    with pytest.raises(WeightsFileError, match="not a regular file"):
        keras_io.read(fifo)


def test_nothing_is_unpickled(copy_of, out_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    for layout in ("keras2_h5", "full_model_h5", "weights_h5", "keras_zip"):
        src = copy_of(layout)  # copied before pickling is off: the fixture may build files
        monkeypatch.setattr(pickle, "loads", refuse)
        monkeypatch.setattr(pickle, "load", refuse)
        monkeypatch.setattr(pickle, "Unpickler", refuse)
        monkeypatch.setattr(np, "load", refuse)
        monkeypatch.setattr(torch, "load", refuse)
        keras_io.convert(src, out_dir / f"{layout}.safetensors")
        keras_io.load_weights(fresh_model(), out_dir / f"{layout}.safetensors")
        monkeypatch.undo()


def test_reader_errors_of_any_kind_become_weights_file_errors(copy_of):
    """Damage deep inside the HDF5 metadata: h5py's RuntimeError, named and wrapped."""
    src = copy_of()
    data = bytearray(src.read_bytes())
    at = data.index(b"TREE")  # a B-tree node's signature
    data[at : at + 4] = b"XXXX"
    src.write_bytes(bytes(data))
    with pytest.raises(
        WeightsFileError,
        match=f"^{src}: unreadable or damaged file "
        r"\(RuntimeError: .*signature",
    ) as error:
        keras_io.read(src)
    assert isinstance(error.value.__cause__, RuntimeError)  # kept for --debug
