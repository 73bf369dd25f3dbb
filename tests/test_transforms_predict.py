"""Preprocessing presets against Keras' own image pipeline, and the predict command end to end
against Keras' predictions on the same file."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import keras_model
from PIL import Image

import torch_mobilenets as tm
from torch_mobilenets.pretrained import registry
from torch_mobilenets.pretrained.imagenet import decode_predictions
from torch_mobilenets.pretrained.transforms import KerasPreprocessing

ROOT = Path(__file__).resolve().parent.parent
FAMILY = "mobilenet_v2"
KWARGS = dict(input_shape=(96, 96, 3), alpha=0.35)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 150x110 RGB PNG with structure at several scales (so resizing matters)."""
    rng = np.random.default_rng(3)
    coarse = rng.uniform(0, 255, (12, 16, 3))
    pixels = np.repeat(np.repeat(coarse, 10, axis=0), 10, axis=1)[:110, :150]
    pixels = np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("images") / "picture.png"
    Image.fromarray(pixels).save(path)
    return path


def keras_input(path, size, family):
    """What Keras' documented pipeline feeds the model, NHWC."""
    import keras

    x = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))[None]
    if family in ("mobilenet", "mobilenet_v2"):
        x = keras.applications.mobilenet_v2.preprocess_input(x)
    return x


@pytest.mark.parametrize(
    "family,size", [("mobilenet", 128), ("mobilenet_v2", 96), ("mobilenet_v3_small", 224)]
)
@pytest.mark.keras
def test_preset_is_keras_preprocessing_bit_for_bit(image_file, family, size):
    preset = registry.find_checkpoint(family, 1.0, size, True).transforms()
    expected = torch.from_numpy(keras_input(image_file, size, family)).permute(0, 3, 1, 2)[0]
    # From a path, a PIL image (any mode), a uint8 tensor, a batch of them.
    image = Image.open(image_file)
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    for got in (
        preset(image_file),
        preset(image),
        preset(image.convert("RGBA")),
        preset(as_tensor),
        preset(torch.stack([as_tensor, as_tensor]))[1],
    ):
        assert got.dtype == torch.float32 and got.shape == (3, size, size)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_preset_for_model_follows_its_input():
    assert KerasPreprocessing.for_model(tm.MobileNetV2(weights=None)).size == (224, 224)
    preset = KerasPreprocessing.for_model(tm.MobileNet(weights=None, input_shape=(3, 160, 128)))
    assert preset.size == (160, 128) and preset.scale
    v3 = KerasPreprocessing.for_model(tm.MobileNetV3Large(weights=None, include_top=False))
    assert v3.size == (224, 224) and not v3.scale  # the model rescales
    raw = tm.MobileNetV3Small(weights=None, include_preprocessing=False)
    assert KerasPreprocessing.for_model(raw).scale
    with pytest.raises(ValueError, match="uint8 tensor"):
        v3(torch.zeros(3, 8, 8))


def test_predict_command_matches_keras(image_file, weights_file):
    import keras

    reference = keras_model(FAMILY, **KWARGS)  # softmax top, as the command's model
    path = weights_file(FAMILY, reference, "keras2_h5")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch_mobilenets",
            "predict",
            str(image_file),
            "--model",
            FAMILY,
            "--weights",
            str(path),
            "--size",
            "96",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(image_file) and len(lines) == 6

    probs = keras.ops.convert_to_numpy(reference(keras_input(image_file, 96, FAMILY)))
    expected = decode_predictions(probs, top=5)[0]
    for rank, (line, (wnid, name, score)) in enumerate(zip(lines[1:], expected), start=1):
        got_rank, got_wnid, got_name, got_score = line.split()
        assert (got_rank, got_wnid, got_name) == (f"{rank}.", wnid, name)
        assert abs(float(got_score) - score) < 1e-4


def test_predict_command_errors_in_one_line(tmp_path, image_file):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch_mobilenets",
            "predict",
            str(not_an_image),
            "--weights",
            str(tmp_path / "absent.h5"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert result.stderr.startswith("python -m torch_mobilenets predict: error: ")
    assert "Traceback" not in result.stderr
