"""The converter's contract: strict, clear errors, metadata, atomic output, the command line."""

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from helpers import keras_model, run_convert, run_module, trained_like
from safetensors import safe_open
from safetensors.torch import save_file

import torch_mobilenets as tm
from torch_mobilenets import WeightsFileError, keras_io

FAMILY = "mobilenet_v2"
KWARGS = dict(input_shape=(96, 96, 3), alpha=0.35)


@pytest.fixture(scope="module")
def keras_v2():
    return keras_model(FAMILY, **KWARGS)


@pytest.fixture
def legacy_file(keras_v2, weights_file, tmp_path):
    """A private copy of the official-layout file, free to be broken by the test."""
    source = weights_file(FAMILY, keras_v2, "keras2_h5")
    copy = tmp_path / source.name
    copy.write_bytes(source.read_bytes())
    return copy


def run_cli(*args):
    """`python -m convert ARGS` (absolute paths), in this process: one test below runs it as
    a real process from the checkout's root."""
    return run_convert(*args)


def layer_names(f):
    return [n.decode() for n in f.attrs["layer_names"]]


def drop_layer(path, name):
    with h5py.File(path, "r+") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names(f) if n != name])


def test_cli_converts_and_records_metadata(legacy_file, tmp_path):
    out = tmp_path / "v2.safetensors"
    result = run_module("convert", legacy_file, out, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mobilenet_v2 (alpha=0.35, include_top=True, classes=1000)" in result.stdout
    with safe_open(out, "pt") as f:
        metadata = json.loads(f.metadata()["torch_mobilenets"])
        keys = set(f.keys())
    assert metadata == {
        "config": {"family": "mobilenet_v2", "alpha": 0.35, "include_top": True, "classes": 1000},
        "source_file": legacy_file.name,
        "source_sha256": hashlib.sha256(legacy_file.read_bytes()).hexdigest(),
        "source_layout": "legacy_h5",
        "converter_version": tm.__version__,
    }
    assert keys == set(tm.MobileNetV2(weights=None, alpha=0.35).state_dict())


def test_conversion_is_deterministic_and_matches_loading_the_keras_file(legacy_file, tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    keras_io.convert(legacy_file, first)
    keras_io.convert(legacy_file, second)
    assert first.read_bytes() == second.read_bytes()
    direct = tm.MobileNetV2(weights=legacy_file, alpha=0.35, input_shape=(3, 96, 96))
    state, _ = keras_io.read_safetensors(first)
    for key, value in direct.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_options_fix_what_the_file_cannot_say(legacy_file, tmp_path):
    out = tmp_path / "v2.safetensors"
    result = run_cli(legacy_file, out, "--family", "mobilenet_v2", "--alpha", "0.35")
    assert result.returncode == 0, result.stderr
    wrong = run_cli(legacy_file, tmp_path / "wrong.safetensors", "--alpha", "0.5")
    assert wrong.returncode == 3
    assert wrong.stderr.startswith("python -m convert: error: ") and "Traceback" not in wrong.stderr
    assert "alpha" in wrong.stderr and str(legacy_file) in wrong.stderr
    assert not (tmp_path / "wrong.safetensors").exists()


def test_existing_output_is_kept_without_force(legacy_file, tmp_path):
    out = tmp_path / "v2.safetensors"
    out.write_bytes(b"keep me")
    result = run_cli(legacy_file, out)
    assert result.returncode == 2 and "--force" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert run_cli(legacy_file, out, "--force").returncode == 0
    assert out.read_bytes() != b"keep me"


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "the file is empty"),
        (b"not a weights file at all", "neither HDF5 nor a .keras zip archive"),
    ],
)
def test_unreadable_input_is_one_clear_line(tmp_path, content, message):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(content)
    result = run_cli(bad, tmp_path / "out.safetensors")
    assert result.returncode == 3
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert str(bad) in result.stderr
    assert list(tmp_path.iterdir()) == [bad]  # no output, no temporary file


def test_missing_input_and_output_directory(legacy_file, tmp_path):
    result = run_cli(tmp_path / "absent.h5", tmp_path / "out.safetensors")
    assert result.returncode == 3 and "no such file" in result.stderr
    result = run_cli(legacy_file, tmp_path / "no" / "dir" / "out.safetensors")
    assert result.returncode == 3 and "does not exist" in result.stderr


def test_hdf5_without_a_keras_layout(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(WeightsFileError, match="not in any Keras layout"):
        keras_io.convert(path, tmp_path / "out.safetensors")


def test_a_missing_layer_is_named(legacy_file):
    drop_layer(legacy_file, "block_16_project_BN")
    model = tm.MobileNetV2(weights=None, alpha=0.35, input_shape=(3, 96, 96))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsFileError) as error:
        keras_io.load_weights(model, legacy_file)
    message = str(error.value)
    assert message.startswith(
        f"{legacy_file}: the file has no weights for layer "
        "'block_16_project_BN' (BatchNormalization, expected shapes "
        "[(112,), (112,), (112,), (112,)])"
    )
    for key, value in model.state_dict().items():  # untouched
        assert torch.equal(value, before[key]), key


def test_an_extra_layer_is_named(legacy_file):
    model = tm.MobileNetV2(weights=None, alpha=0.35, input_shape=(3, 96, 96), include_top=False)
    with pytest.raises(WeightsFileError, match=r"layer 'Logits' \(Dense.*no counterpart"):
        keras_io.load_weights(model, legacy_file)


def test_a_wrong_shape_names_the_layer_and_both_shapes(legacy_file):
    with h5py.File(legacy_file, "r+") as f:
        del f["block_3_depthwise/block_3_depthwise/depthwise_kernel:0"]
        f["block_3_depthwise/block_3_depthwise/depthwise_kernel:0"] = np.zeros((3, 3, 48, 2), "f")
    model = tm.MobileNetV2(weights=None, alpha=0.35, input_shape=(3, 96, 96))
    with pytest.raises(
        WeightsFileError,
        match=r"'block_3_depthwise'.*expected shapes "
        r"\[\(3, 3, 48, 1\)\], the file has \[\(3, 3, 48, 2\)\]",
    ):
        keras_io.load_weights(model, legacy_file)


def test_the_wrong_family_says_what_the_file_holds(legacy_file):
    model = tm.MobileNet(weights=None, alpha=0.25, input_shape=(3, 96, 96))
    with pytest.raises(WeightsFileError, match=r"The file holds mobilenet_v2 \(alpha=0.35"):
        keras_io.load_weights(model, legacy_file)


def test_safetensors_checks_family_and_shapes(legacy_file, tmp_path):
    out = tmp_path / "v2.safetensors"
    keras_io.convert(legacy_file, out)
    with pytest.raises(WeightsFileError, match="holds weights for mobilenet_v2.*not for model"):
        tm.MobileNet(weights=out)
    with pytest.raises(
        WeightsFileError, match=r"'Conv1'.*\(16, 3, 3, 3\).*expects \(32, 3, 3, 3\)"
    ):
        tm.MobileNetV2(weights=out, alpha=1.0)
    with pytest.raises(WeightsFileError, match=r"missing \['Conv1.weight'"):
        state, _ = keras_io.read_safetensors(out)
        del state["Conv1.weight"]
        save_file(state, tmp_path / "partial.safetensors")
        tm.MobileNetV2(weights=tmp_path / "partial.safetensors", alpha=0.35)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsFileError, match="not a readable safetensors file"):
        tm.MobileNetV2(weights=junk, alpha=0.35)


def test_weights_load_into_any_input_construction(legacy_file):
    """Weights do not depend on the input size: a file of a 96x96 model loads into a static
    model of another size and into one at the default 224x224 with a linear top, every weight
    the file's (as a model built at the file's own size holds them), and each computes."""
    reference = tm.MobileNetV2(weights=legacy_file, alpha=0.35, input_shape=(3, 96, 96))
    other_size = tm.MobileNetV2(weights=legacy_file, alpha=0.35, input_shape=(3, 131, 97))
    linear = tm.MobileNetV2(weights=legacy_file, alpha=0.35, classifier_activation=None)
    assert other_size.input_shape == (3, 131, 97) and linear.input_shape == (3, 224, 224)
    expected = reference.state_dict()
    for model in (other_size, linear):
        state = model.state_dict()
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(state[key], value), key
    # the file's weights, not the builder's initial ones
    fresh = tm.MobileNetV2(weights=None, alpha=0.35).state_dict()
    assert not torch.equal(fresh["Conv1.weight"], expected["Conv1.weight"])
    generator = torch.Generator().manual_seed(0)
    x, x224 = (
        torch.rand(2, 3, h, w, generator=generator) * 2 - 1 for h, w in [(131, 97), (224, 224)]
    )
    softmax = tm.MobileNetV2(weights=legacy_file, alpha=0.35)
    with torch.no_grad():
        probabilities = other_size.eval()(x)
        logits = linear.eval()(x224)
        expected_probabilities = softmax.eval()(x224)
    assert probabilities.shape == logits.shape == (2, 1000)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2))
    torch.testing.assert_close(logits.softmax(1), expected_probabilities, rtol=1e-5, atol=1e-6)
    assert (logits.max(1).values > 1).all()  # logits: the top is linear


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_save_as_float32_and_load_back_exactly(dtype, tmp_path):
    def build():
        return tm.MobileNetV3Small(weights=None, alpha=0.75)

    model = trained_like(build(), size=64).to(dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "half.safetensors"
    tm.save_checkpoint(model, path)
    with safe_open(path, "pt") as f:  # float32 on disk, as every checkpoint here
        names = f.keys()
        assert {f.get_slice(name).get_dtype() for name in names} == {"F32", "I64"}
    # Into a model of its own dtype: bit for bit, and so the same outputs.
    again = tm.load_weights(build().to(dtype), path)
    for key, value in state.items():
        assert again.state_dict()[key].dtype == value.dtype, key
        assert torch.equal(again.state_dict()[key], value), key
    x = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(dtype)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model.eval()(x))
    # Into a float32 model (a builder's weights=): the exact widening.
    wide = tm.MobileNetV3Small(weights=path, alpha=0.75)
    for key, value in state.items():
        expected = value.float() if value.is_floating_point() else value
        assert torch.equal(wide.state_dict()[key], expected), key
    # The way back to Keras writes float32 too.
    back = tmp_path / "half.h5"
    keras_io.safetensors_to_keras(path, back)
    assert keras_io.file_config(keras_io.read(back))["alpha"] == 0.75
