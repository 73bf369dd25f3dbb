"""MobileNetV3 `_no_top.h5` files as Keras published them before October 2021: they also hold the
top's Conv_2, which today's model without the top lacks. Such a file is recognised and refused
with the reason and the `_no_top_v2.h5` replacement, and, when asked (`skip_extra_layers`,
`--skip-extra-layers`), loaded without Conv_2, naming it.

The files are built as tf.keras 2.4 wrote them (`keras_reference.write_keras24_v3_no_top`): a
seeded Keras model with the top, without the layers the old no-top model lacked, in tf.keras
2.4's order and under its names.
"""

import json
from pathlib import Path

import h5py
import pytest
import torch
from helpers import assert_parity, keras_model, keras_reference, run_convert
from safetensors import safe_open

import torch_mobilenets as tm
from torch_mobilenets import WeightsFileError, keras_io
from torch_mobilenets.pretrained import registry

kr = keras_reference()  # skips this module, with the reason, without Keras

pytestmark = pytest.mark.keras

CASES = {
    "small": ("mobilenet_v3_small", dict(alpha=1.0, minimalistic=False)),
    "large minimalistic": ("mobilenet_v3_large", dict(alpha=1.0, minimalistic=True)),
}
SIZE = 128


class OldFile:
    def __init__(self, family, kwargs, directory: Path):
        self.family, self.kwargs = family, kwargs
        self.with_top = keras_model(family, **kwargs)
        self.path = directory / f"{family}_no_top.h5"
        kr.write_keras24_v3_no_top(self.with_top, self.path, family)
        # Today's Keras model without the top, holding the same weights.
        self.no_top = kr.keras_builder(family)(weights=None, include_top=False, **kwargs)
        self.no_top.set_weights(self.with_top.get_weights()[: len(self.no_top.weights)])
        self.replacement = registry.find_checkpoint(
            family, kwargs["alpha"], 224, include_top=False, minimalistic=kwargs["minimalistic"]
        ).file_name

    def model(self):
        return tm.FAMILIES[self.family](weights=None, include_top=False, **self.kwargs)


@pytest.fixture(scope="module")
def old_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("old")
    return {case: OldFile(*CASES[case], directory) for case in CASES}


@pytest.fixture(params=CASES)
def old(request, old_files):
    return old_files[request.param]


def weighted_names(path: Path) -> tuple:
    """Every layer name in the file, and those of the layers with weights."""
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        return names, [n for n in names if len(f[n].attrs["weight_names"])]


def test_the_file_is_as_keras_2_4_wrote_it(old):
    names, weighted = weighted_names(old.path)
    top_weighted = [
        kr.keras2_layer_name(old.family, layer.name)
        for layer in old.with_top.layers
        if layer.weights
    ]
    assert weighted == top_weighted[:-1]
    assert weighted[-3:] == ["Conv_1", "Conv_1/BatchNorm", "Conv_2"]
    assert names[:4] == ["input_1", "rescaling", "Conv", "Conv/BatchNorm"]
    # Conv_2 and its activation end the model: no pooling, dropout, logits or predictions.
    if old.kwargs["minimalistic"]:
        assert names[-2:] == ["Conv_2", "re_lu_" + names[-1].rsplit("_", 1)[-1]]
    else:
        assert names[-5] == "Conv_2" and names[-4].startswith("tf.__operators__.add_")
    assert not any(n.startswith(("Logits", "dropout", "global_average")) for n in names)
    # Today's Keras refuses it too: one layer more than its model without the top.
    with pytest.raises(ValueError, match="layer"):
        kr.keras_builder(old.family)(weights=None, include_top=False, **old.kwargs).load_weights(
            old.path
        )


def assert_refused(message: str, old: OldFile):
    assert message.startswith(f"{old.path}: a MobileNetV3 no-top file as Keras published them ")
    assert "before October 2021 (`_no_top.h5`)" in message
    assert "the top's layer 'Conv_2' (Conv2D" in message
    assert f"use {old.replacement} (what weights='imagenet' loads)" in message
    assert "skip_extra_layers=True" in message and "--skip-extra-layers" in message


def test_refused_saying_why_and_naming_the_replacement(old, tmp_path):
    with pytest.raises(WeightsFileError) as error:
        tm.FAMILIES[old.family](weights=old.path, include_top=False, **old.kwargs)
    assert_refused(str(error.value), old)
    with pytest.raises(WeightsFileError) as error:
        keras_io.convert(old.path, tmp_path / "out.safetensors")
    assert_refused(str(error.value), old)
    assert list(tmp_path.iterdir()) == []


def test_loaded_without_conv_2_when_asked(old, tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 1 layer after the last one .*'Conv_2'") as w:
        model = tm.load_weights(old.model(), old.path, skip_extra_layers=True)
    assert w[0].filename == __file__
    assert_parity(old.family, old.no_top, model, SIZE, SIZE, case=f"{old.family} old no-top")

    out = tmp_path / "out.safetensors"
    with pytest.warns(UserWarning, match="'Conv_2'"):
        config = keras_io.convert(old.path, out, skip_extra_layers=True)
    assert config["include_top"] is False and config["minimalistic"] == old.kwargs["minimalistic"]
    converted = tm.FAMILIES[old.family](weights=out, include_top=False, **old.kwargs)
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    with safe_open(out, "pt") as f:
        assert json.loads(f.metadata()[keras_io.METADATA_KEY])["skipped_layers"] == ["Conv_2"]


def run_cli(*args):
    return run_convert(*args)


def test_the_command_line_refuses_or_skips_as_asked(old_files, tmp_path):
    old = old_files["small"]
    out = tmp_path / "out.safetensors"
    refused = run_cli(old.path, out)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1
    assert_refused(refused.stderr.removeprefix("python -m convert: error: ").strip(), old)
    assert list(tmp_path.iterdir()) == []

    skipped = run_cli(old.path, out, "--skip-extra-layers")
    assert skipped.returncode == 0, skipped.stderr
    assert (
        skipped.stderr.startswith("python -m convert: warning: ") and "'Conv_2'" in skipped.stderr
    )
    assert skipped.stderr.count("\n") == 1
    with pytest.warns(UserWarning, match="'Conv_2'"):
        keras_io.convert(old.path, tmp_path / "in_python.safetensors", skip_extra_layers=True)
    assert out.read_bytes() == (tmp_path / "in_python.safetensors").read_bytes()
    assert run_cli("--all-official", tmp_path, "--skip-extra-layers").returncode == 2
