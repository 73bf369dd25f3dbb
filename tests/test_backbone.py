"""KerasCV's MobileNetV3Backbone against keras-cv 0.9 itself: final map and P1..P5."""

import json

import numpy as np
import pytest
import torch
from helpers import (
    PARITY_TOLERANCE,
    keras_model,
    keras_reference,
    pixels,
    torch_kwargs,
    trained_like,
    worst,
)

import torch_mobilenets as tm
from torch_mobilenets import keras_io
from torch_mobilenets.keras_io.pairing import weighted_layers
from torch_mobilenets.models.mobilenet_v3_backbone import PRESETS

kr = keras_reference()  # skips this module, with the reason, without Keras
import keras  # noqa: E402

pytestmark = pytest.mark.keras

SMALL, LARGE = PRESETS["mobilenet_v3_small"], PRESETS["mobilenet_v3_large"]
FAMILY = "mobilenet_v3_backbone"


def frozen(config):
    """lru_cache needs hashable arguments."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def keras_backbone(**kwargs):
    return keras_model(FAMILY, **frozen(kwargs))


def keras_pyramid(backbone, x):
    outputs = {
        level: backbone.get_layer(name).output
        for level, name in backbone.pyramid_level_inputs.items()
    }
    outputs["final"] = backbone.output
    values = keras.Model(backbone.input, outputs)(x, training=False)
    return {k: np.asarray(v) for k, v in values.items()}


def assert_backbone_parity(keras, ours, height, width, case):
    x = pixels(height, width)
    if not ours.config["include_rescaling"]:
        x = x / 127.5 - 1.0  # any input scale works; keep activations moderate
    expected = keras_pyramid(keras, x)
    with torch.no_grad():
        ours = ours.eval()
        tensor = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        got = {k: v.numpy() for k, v in ours.forward_pyramid(tensor).items()}
        got["final"] = ours(tensor).numpy()
    assert set(got) == set(expected) == {"P1", "P2", "P3", "P4", "P5", "final"}
    for level, value in got.items():
        value = value.transpose(0, 2, 3, 1)
        assert value.shape == expected[level].shape, f"{case} {level}"
        error = float(
            np.abs(value - expected[level]).max() / max(1.0, np.abs(expected[level]).max())
        )
        if error > worst[FAMILY][0]:
            worst[FAMILY] = (error, f"{case} {level} at {height}x{width}")
        assert error <= PARITY_TOLERANCE, f"{case} {level}: relative error {error:.3g}"


CASES = [
    ("small", dict(SMALL, include_rescaling=True), [(96, 96), (97, 131)]),
    (
        "small-alpha0.75-static-odd",
        dict(SMALL, include_rescaling=False, alpha=0.75, input_shape=(97, 131, 3)),
        None,
    ),
    ("large", dict(LARGE, include_rescaling=False), [(97, 97), (128, 96)]),
    (
        "large-alpha1.25-static",
        dict(LARGE, include_rescaling=True, alpha=1.25, input_shape=(129, 129, 3)),
        None,
    ),
]


@pytest.mark.parametrize("case,kwargs,sizes", CASES, ids=[c[0] for c in CASES])
def test_backbone_parity_with_keras_cv(case, kwargs, sizes, weights_file):
    keras = keras_backbone(**kwargs)
    path = weights_file(FAMILY, keras)  # KerasCV's own format: a Keras 3 .weights.h5
    ours = tm.MobileNetV3Backbone(weights=path, **torch_kwargs(kwargs))
    for height, width in sizes or [kwargs["input_shape"][:2]]:
        assert_backbone_parity(keras, ours, height, width, case)


def test_names_and_pyramid_follow_keras_cv():
    keras = keras_backbone(**dict(SMALL, include_rescaling=True))
    ours = tm.MobileNetV3Backbone(**SMALL, include_rescaling=True)
    keras_names = {layer.name for layer in keras.layers if layer.weights}
    ours_names = {name for name, _ in weighted_layers(ours)}
    se = {n for n in keras_names if n.startswith("squeeze_and_excite2d")}
    assert keras_names - se <= ours_names  # auto-named SE layers aside, KerasCV's names
    assert "expanded_conv_3_SqueezeAndExcite2D.squeeze_conv.weight" in ours.state_dict()
    assert "expanded_conv_1_expand_BatchNorm.running_var" in ours.state_dict()
    # KerasCV's P1 is its auto-named stem activation ("multiply"); the others are named layers.
    expected = dict(keras.pyramid_level_inputs, P1="Conv_activation")
    assert ours.pyramid_level_inputs == expected
    large = tm.MobileNetV3Backbone(**LARGE, include_rescaling=True)
    assert large.pyramid_level_inputs == {
        "P1": "expanded_conv_Add",
        "P2": "expanded_conv_2_Add",
        "P3": "expanded_conv_5_Add",
        "P4": "expanded_conv_11_Add",
        "P5": "expanded_conv_14_Add",
    }


@pytest.mark.parametrize("layout", ["weights_h5", "keras3_h5", "keras_zip"])
@pytest.mark.parametrize("stack,alpha", [("small", 1.0), ("large", 0.75)])
def test_converter_reads_keras_cv_files(stack, alpha, layout, weights_file, tmp_path):
    kwargs = dict(PRESETS[f"mobilenet_v3_{stack}"], include_rescaling=True, alpha=alpha)
    keras = keras_backbone(**kwargs)
    path = weights_file(FAMILY, keras, layout)
    out = tmp_path / "backbone.safetensors"
    config = keras_io.convert(path, out)
    assert config["family"] == FAMILY and config["alpha"] == alpha
    assert config["stackwise_filters"] == list(kwargs["stackwise_filters"])
    ours = tm.MobileNetV3Backbone(weights=out, **torch_kwargs(kwargs))
    assert_backbone_parity(keras, ours, 97, 97, f"{stack} from {layout}")


def test_the_legacy_h5_we_write_reads_back_and_keras_cv_loads_it(tmp_path):
    kwargs = dict(SMALL, include_rescaling=False, alpha=0.75)
    ours = trained_like(tm.MobileNetV3Backbone(**kwargs), size=96)
    checkpoint, back = tmp_path / "backbone.safetensors", tmp_path / "backbone.h5"
    tm.save_checkpoint(ours, checkpoint)
    config = keras_io.safetensors_to_keras(checkpoint, back)
    # Our own reader: the same architecture inferred, the same tensors, bit for bit.
    inferred = keras_io.convert(back, tmp_path / "again.safetensors")
    for key in ("family", "alpha", "stackwise_filters", "stackwise_se_ratio"):
        assert inferred[key] == config[key], key
    again = tm.MobileNetV3Backbone(weights=back, **torch_kwargs(kwargs))
    for key, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    # KerasCV's own backbone loads it, and computes what ours does.
    keras = keras_reference().keras_builder("mobilenet_v3_backbone")(**kwargs)
    keras.load_weights(back)
    assert_backbone_parity(keras, ours, 96, 96, "the legacy .h5 we write")


@pytest.fixture(scope="module")
def preset_folder(tmp_path_factory):
    """A real KerasCV preset folder, written by keras_cv's own preset writer."""
    from keras_cv.src.utils.preset_utils import save_to_preset

    keras = keras_backbone(**dict(LARGE, include_rescaling=True))
    folder = tmp_path_factory.mktemp("presets") / "mobilenet_v3_large_imagenet"
    save_to_preset(keras, str(folder))
    return keras, folder


def test_from_preset_folder(preset_folder):
    keras, folder = preset_folder
    assert json.loads((folder / "config.json").read_text())["weights"] == "model.weights.h5"
    ours = tm.MobileNetV3Backbone.from_preset(str(folder))
    assert_backbone_parity(keras, ours, 97, 97, "preset folder")


def test_converter_reads_a_preset_folder(preset_folder, tmp_path):
    keras, folder = preset_folder
    out = tmp_path / "preset.safetensors"
    config = keras_io.convert(folder, out)
    assert config["family"] == FAMILY and config["stackwise_filters"] == LARGE["stackwise_filters"]
    ours = tm.MobileNetV3Backbone(weights=out, **LARGE, include_rescaling=True)
    assert_backbone_parity(keras, ours, 64, 80, "converted preset folder")


def test_from_preset_name_reads_the_local_preset_directory(preset_folder, monkeypatch):
    keras, folder = preset_folder
    monkeypatch.setenv("TORCH_MOBILENETS_KERAS_CV_PRESETS", str(folder.parent))
    ours = tm.MobileNetV3Backbone.from_preset("mobilenet_v3_large_imagenet")
    assert_backbone_parity(keras, ours, 96, 96, "preset name")


def test_from_preset_errors_and_aliases(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_MOBILENETS_KERAS_CV_PRESETS", str(tmp_path))
    with pytest.raises(
        ValueError,
        match=r"weights of preset 'mobilenet_v3_small_imagenet' are "
        r"not available locally.*kaggle://",
    ):
        tm.MobileNetV3Backbone.from_preset("mobilenet_v3_small_imagenet")
    with pytest.raises(ValueError, match="does not include weights"):
        tm.MobileNetV3Backbone.from_preset("mobilenet_v3_small", load_weights=True)
    with pytest.raises(ValueError, match="Unknown preset"):
        tm.MobileNetV3Backbone.from_preset("mobilenet_v4")
    random = tm.MobileNetV3Backbone.from_preset("mobilenet_v3_small_imagenet", load_weights=False)
    assert random.config["stackwise_filters"] == SMALL["stackwise_filters"]
    small = tm.MobileNetV3SmallBackbone(include_rescaling=False)
    assert small.config["include_rescaling"] is False and small.name == "mobile_net_v3_backbone"
    with torch.no_grad():
        assert tm.MobileNetV3LargeBackbone().eval()(torch.rand(1, 3, 64, 64)).shape == (
            1,
            960,
            2,
            2,
        )
