"""The way back: Keras -> PyTorch -> fine-tune (new classes) -> Keras, logits preserved."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_parity, keras_reference, torch_kwargs

import torch_mobilenets as tm
from torch_mobilenets import keras_io
from torch_mobilenets.keras_io.pairing import weighted_layers

kr = keras_reference()  # skips this module, with the reason, without Keras

pytestmark = pytest.mark.keras


@pytest.mark.parametrize(
    "family,kwargs",
    [
        ("mobilenet", dict(input_shape=(96, 96, 3), alpha=0.25, depth_multiplier=2)),
        ("mobilenet_v2", dict(input_shape=(96, 96, 3), alpha=0.35)),
        ("mobilenet_v3_small", dict(alpha=0.75)),
        ("mobilenet_v3_large", dict(minimalistic=True, alpha=1.0)),
    ],
)
def test_round_trip_through_fine_tuning(family, kwargs, tmp_path):
    original = kr.build_keras(family, classifier_activation=None, **kwargs)
    official = kr.write_keras_file(original, tmp_path, "keras2_h5", family=family)
    converted = tmp_path / "imagenet.safetensors"
    keras_io.convert(official, converted)

    model = tm.FAMILIES[family](
        weights=converted, classifier_activation=None, **torch_kwargs(kwargs)
    )
    model.reset_classifier(7)
    model.freeze(up_to=model.feature_layers()[-2])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = torch.rand(4, 3, 96, 96) * 255
    if family in ("mobilenet", "mobilenet_v2"):
        x = tm.mobilenet_v2.preprocess_input(x)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    checkpoint = tmp_path / "fine_tuned.safetensors"
    keras_io.save_checkpoint(model.eval(), checkpoint)

    back = tmp_path / "fine_tuned.h5"
    result = subprocess.run(
        [sys.executable, "-m", "convert", "--to", "keras", str(checkpoint), str(back)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    keras_model = kr.keras_builder(family)(
        weights=str(back), classes=7, classifier_activation=None, **kwargs
    )
    height, width = kwargs.get("input_shape", (96, 96, 3))[:2]
    assert_parity(family, keras_model, model, height, width, case=f"{family} round trip")
    # Reloading the checkpoint gives the same model, and the .h5 converts back to it too.
    again = tm.FAMILIES[family](
        weights=checkpoint, classes=7, classifier_activation=None, **torch_kwargs(kwargs)
    )
    assert_parity(family, keras_model, again, height, width, case=f"{family} reloaded")
    assert keras_io.file_config(keras_io.read(back))["classes"] == 7


def test_keras_arrays_invert_from_keras():
    model = tm.MobileNet(weights=None, include_top=False, depth_multiplier=3, alpha=0.25)
    for name, module in weighted_layers(model):
        for key, value in module.from_keras(module.to_keras()).items():
            assert torch.equal(value, getattr(module, key)), f"{name}.{key}"


def test_keras_writer_rejects_checkpoints_without_config(tmp_path):
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, bare)
    with pytest.raises(ValueError, match="records no model config"):
        keras_io.safetensors_to_keras(bare, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
