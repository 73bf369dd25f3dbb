"""Every Keras file layout and every official checkpoint configuration, through the converter.

Each case writes a seeded Keras model to disk as Keras does, converts it with no hint about the
architecture, checks what the converter inferred, and compares the converted model with Keras.
"""

import itertools

import pytest
from helpers import assert_parity, keras_model, keras_reference, torch_kwargs

import torch_mobilenets as tm
from torch_mobilenets import keras_io

kr = keras_reference()  # skips this module, with the reason, without Keras

pytestmark = pytest.mark.keras

LAYOUT_CASES = [
    (
        "mobilenet",
        dict(input_shape=(128, 128, 3), alpha=0.25, depth_multiplier=2, classifier_activation=None),
    ),
    (
        "mobilenet_v2",
        dict(input_shape=(97, 131, 3), alpha=0.35, classes=12, classifier_activation=None),
    ),
    ("mobilenet_v3_small", dict(alpha=0.75, classifier_activation=None)),
    ("mobilenet_v3_large", dict(minimalistic=True, include_top=False)),
]
LAYOUTS = [(layout, False) for layout in kr.LAYOUTS] + [("keras2_h5", True)]


def expected_config(family, kwargs):
    config = {
        "family": family,
        "alpha": kwargs.get("alpha", 1.0),
        "include_top": kwargs.get("include_top", True),
    }
    if config["include_top"]:
        config["classes"] = kwargs.get("classes", 1000)
    if family == "mobilenet":
        config["depth_multiplier"] = kwargs.get("depth_multiplier", 1)
    if family.startswith("mobilenet_v3"):
        config["minimalistic"] = kwargs.get("minimalistic", False)
    return config


def convert_and_check(family, kwargs, path, tmp_path, size):
    """Convert with no hints; the inferred architecture, both ways of loading, and parity."""
    keras = keras_model(family, **kwargs)
    out = tmp_path / "converted.safetensors"
    config = keras_io.convert(path, out)
    # Saved models also record the builder arguments their weights cannot show.
    options = ("input_shape", "classifier_activation", "pooling", "include_preprocessing")
    architecture = {k: v for k, v in config.items() if k not in options}
    assert architecture == expected_config(family, kwargs)
    if path.name.endswith((".keras", ".full.h5")):
        for option in options[1:]:
            if option in kwargs:
                assert config.get(option) == kwargs[option], option
    for weights in (out, path):
        ours = tm.FAMILIES[family](weights=weights, **torch_kwargs(kwargs))
        assert_parity(family, keras, ours, *size, case=f"{family} from {path.name}")
    return config


@pytest.mark.parametrize("layout,chunked", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("family,kwargs", LAYOUT_CASES, ids=[c[0] for c in LAYOUT_CASES])
def test_every_layout_converts_to_the_same_model(
    family, kwargs, layout, chunked, weights_file, tmp_path
):
    keras = keras_model(family, **kwargs)
    path = weights_file(family, keras, layout, chunk_layer_names=chunked)
    size = kwargs.get("input_shape", (97, 130))[:2]
    config = convert_and_check(family, kwargs, path, tmp_path, size)
    # Saved models record their input; weights-only files cannot.
    if layout in ("full_model_h5", "keras_zip") and "input_shape" in kwargs:
        assert config["input_shape"] == list(torch_kwargs(kwargs)["input_shape"])
    else:
        assert "input_shape" not in config


def test_written_files_are_real_keras_files(weights_file):
    """Keras itself reads the official layout back (names with slashes, depthwise_kernel:0)."""
    family, kwargs = LAYOUT_CASES[2]
    keras = keras_model(family, **kwargs)
    for chunked in (False, True):
        path = weights_file(family, keras, "keras2_h5", chunk_layer_names=chunked)
        kr.check_keras_loads(family, path, keras, **kwargs)


# The official Keras ImageNet checkpoints: (family, alpha, rows, minimalistic).
OFFICIAL = (
    [
        ("mobilenet", a, r, False)
        for a, r in itertools.product((0.25, 0.5, 0.75, 1.0), (128, 160, 192, 224))
    ]
    + [
        ("mobilenet_v2", a, r, False)
        for a, r in itertools.product((0.35, 0.5, 0.75, 1.0), (96, 128, 160, 192, 224))
    ]
    + [("mobilenet_v2", 1.3, 224, False), ("mobilenet_v2", 1.4, 224, False)]
    + [
        (f"mobilenet_v3_{t}", a, 224, m)
        for t in ("small", "large")
        for a, m in ((0.75, False), (1.0, False), (1.0, True))
    ]
)
# The default suite runs a spread of them (every family, both tops, smallest and widest);
# `make test-full` runs all 88.
DEFAULT_OFFICIAL = {
    ("mobilenet", 0.25, 128, False, True),
    ("mobilenet", 1.0, 224, False, False),
    ("mobilenet", 0.75, 160, False, True),
    ("mobilenet_v2", 0.35, 96, False, True),
    ("mobilenet_v2", 1.4, 224, False, True),
    ("mobilenet_v2", 1.3, 224, False, False),
    ("mobilenet_v2", 0.5, 192, False, False),
    ("mobilenet_v3_small", 1.0, 224, False, True),
    ("mobilenet_v3_small", 0.75, 224, False, False),
    ("mobilenet_v3_small", 1.0, 224, True, True),
    ("mobilenet_v3_large", 1.0, 224, False, True),
    ("mobilenet_v3_large", 0.75, 224, False, True),
    ("mobilenet_v3_large", 1.0, 224, True, False),
}


def _official_params():
    for case in OFFICIAL:
        for top in (True, False):
            marks = () if case + (top,) in DEFAULT_OFFICIAL else (pytest.mark.full,)
            family, alpha, rows, minimalistic = case
            name = (
                f"{family}-{alpha}-{rows}{'-minimalistic' if minimalistic else ''}"
                f"{'' if top else '-no_top'}"
            )
            yield pytest.param(family, alpha, rows, minimalistic, top, marks=marks, id=name)


@pytest.mark.parametrize("family,alpha,rows,minimalistic,top", list(_official_params()))
def test_official_checkpoint_configuration(family, alpha, rows, minimalistic, top, tmp_path):
    kwargs = dict(alpha=alpha, include_top=top, classifier_activation=None)
    if family.startswith("mobilenet_v3"):
        kwargs["minimalistic"] = minimalistic  # V3 files are for dynamic 224 models
        size = (rows, rows)
    else:
        kwargs["input_shape"] = (rows, rows, 3)
        size = (rows, rows)
    keras = kr.build_keras(family, seed=1, **kwargs)
    path = kr.write_keras_file(keras, tmp_path, "keras2_h5", family=family)
    out = tmp_path / "converted.safetensors"
    config = keras_io.convert(path, out)
    kwargs.pop("classifier_activation")
    assert config == expected_config(family, kwargs)
    ours = tm.FAMILIES[family](weights=out, classifier_activation=None, **torch_kwargs(kwargs))
    assert_parity(family, keras, ours, *size, case=f"official {family} {alpha} {rows} top={top}")
