"""The registry of official checkpoints against Keras itself: file names, URLs, checksums and
which file Keras picks for a model (and when it warns)."""

import warnings
from pathlib import Path

import pytest
from weights_server import closed_port_url

import torch_mobilenets as tm
from torch_mobilenets.pretrained import registry
from torch_mobilenets.pretrained.download import DownloadError

WEIGHTS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "official-weights.md"


def test_every_official_file_once():
    entries = tm.list_weights()
    assert len(entries) == 88
    for family, count in [
        ("mobilenet", 16),
        ("mobilenet_v2", 22),
        ("mobilenet_v3_small", 3),
        ("mobilenet_v3_large", 3),
    ]:
        assert len(tm.list_weights(family, include_top=True)) == count
        assert len(tm.list_weights(family, include_top=False)) == count
    assert len({c.file_name for c in entries}) == len({c.name for c in entries}) == 88
    assert all(c.macs_m and c.params_m and c.top1 and c.figures_source for c in entries)


@pytest.mark.keras
def test_base_urls_are_keras_and_can_be_moved(monkeypatch):
    from keras.src.applications import mobilenet, mobilenet_v2, mobilenet_v3

    monkeypatch.delenv(registry.BASE_URL_ENV, raising=False)
    for module, subdir in [
        (mobilenet, "mobilenet"),
        (mobilenet_v2, "mobilenet_v2"),
        (mobilenet_v3, "mobilenet_v3"),
    ]:
        for c in tm.list_weights():
            if c.subdir == subdir:
                assert c.url == module.BASE_WEIGHT_PATH + c.file_name
    monkeypatch.setenv(registry.BASE_URL_ENV, "http://mirror.example/keras")
    c = registry.find_checkpoint("mobilenet", 0.25, 128, include_top=False)
    assert c.url == "http://mirror.example/keras/mobilenet/mobilenet_2_5_128_tf_no_top.h5"


@pytest.mark.keras
def test_v3_md5_are_the_ones_keras_pins():
    from keras.src.applications.mobilenet_v3 import WEIGHTS_HASHES

    v3 = [c for c in tm.list_weights() if c.family.startswith("mobilenet_v3")]
    assert {(c.hash_algorithm, c.hash_status) for c in v3} == {("md5", "pinned by Keras")}
    pinned = {h for pair in WEIGHTS_HASHES.values() for h in pair}
    assert {c.file_hash for c in v3} == pinned


def test_checksum_provenance():
    v1 = tm.list_weights("mobilenet")
    assert all(c.hash_algorithm == "sha256" and len(c.file_hash) == 64 for c in v1)
    assert [c.file_name for c in v1 if c.hash_status == "checked"] == [
        "mobilenet_2_5_224_tf_no_top.h5"
    ]
    assert {c.hash_status for c in v1} == {"checked", "likely"}
    v2 = tm.list_weights("mobilenet_v2")
    published = [c for c in v2 if c.hash_algorithm]
    assert [c.name for c in published] == ["mobilenet_v2_0.35_96"]
    assert published[0].file_hash.startswith("a94030b8")
    assert all(c.hash_status == "none" and c.file_hash is None for c in v2 if c not in published)


def test_figures_and_exact_parameter_counts():
    v2 = registry.find_checkpoint("mobilenet_v2", 1.0, 224, True)
    assert (v2.top1, v2.macs_m, v2.params_m) == (71.8, 300, 3.47)
    assert registry.find_checkpoint("mobilenet_v3_small", 1.0, 224, False).top1 == 68.1
    assert registry.find_checkpoint("mobilenet", 0.5, 128, True).top1 == 56.2  # TF-slim's
    assert registry.find_checkpoint("mobilenet", 0.5, 224, True).top1 == 63.7  # Keras'
    # Keras' count_params() at alpha 1 (keras-mobilenet-notes.md); rows do not matter.
    for family, top, no_top in [
        ("mobilenet", 4_253_864, 3_228_864),
        ("mobilenet_v2", 3_538_984, 2_257_984),
        ("mobilenet_v3_small", 2_554_968, 939_120),
        ("mobilenet_v3_large", 5_507_432, 2_996_352),
    ]:
        assert registry.find_checkpoint(family, 1.0, 224, True).parameters == top
        assert registry.find_checkpoint(family, 1.0, 224, False).parameters == no_top


def test_the_docs_show_the_registry():
    assert registry.weights_table() in WEIGHTS_PAGE.read_text()


def test_unknown_configuration_names_what_exists():
    with pytest.raises(ValueError, match=r"\(1.4, 224\)"):
        registry.find_checkpoint("mobilenet_v2", 1.4, 96, True)


class KerasAsked(Exception):
    """Raised in place of Keras' download, carrying what Keras asked for."""


# Keras-side arguments (channels last) -> which file Keras requests, and whether it warns.
KERAS_CHOICES = [
    ("mobilenet", dict(alpha=0.5, input_shape=(128, 128, 3))),
    ("mobilenet", dict(alpha=0.25, include_top=False)),
    ("mobilenet", dict(alpha=1.0, include_top=False, input_shape=(100, 100, 3))),
    ("mobilenet", dict(alpha=0.75, include_top=False, input_shape=(160, 160, 3))),
    ("mobilenet_v2", dict(alpha=1.4)),
    ("mobilenet_v2", dict(alpha=0.35, include_top=False, input_shape=(96, 96, 3))),
    ("mobilenet_v2", dict(alpha=0.5, include_top=False, input_shape=(96, 128, 3))),
    ("mobilenet_v3_small", dict(minimalistic=True, include_top=False)),
    ("mobilenet_v3_large", dict(alpha=0.75, input_shape=(224, 224, 3))),
    ("mobilenet_v3_large", dict(include_top=False, input_shape=(192, 192, 3))),
]


def keras_request(family, kwargs, monkeypatch):
    """(URL, file hash, warnings) of Keras building this model with weights="imagenet"; its
    download is replaced by an exception, so nothing is fetched."""
    from keras.src.utils import file_utils

    from convert import keras_reference as kr

    def asked(fname, origin, file_hash=None, **_):
        raise KerasAsked(origin, file_hash)

    monkeypatch.setattr(file_utils, "get_file", asked)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KerasAsked) as request:
        warnings.simplefilter("always")
        kr.keras_builder(family)(weights="imagenet", **kwargs)
    shape_warnings = [str(w.message) for w in caught if "input_shape" in str(w.message)]
    return (*request.value.args, shape_warnings)


def channels_first(kwargs):
    kwargs = dict(kwargs)
    if "input_shape" in kwargs:
        height, width, channels = kwargs["input_shape"]
        kwargs["input_shape"] = (channels, height, width)
    return kwargs


@pytest.mark.parametrize("family,kwargs", KERAS_CHOICES)
@pytest.mark.keras
def test_imagenet_requests_the_file_keras_requests(family, kwargs, monkeypatch, tmp_path):
    monkeypatch.delenv(registry.BASE_URL_ENV, raising=False)
    keras_url, keras_hash, keras_warnings = keras_request(family, kwargs, monkeypatch)

    # Ours, on a dead local URL: the error names the file it wanted.
    base = closed_port_url()
    monkeypatch.setenv(registry.BASE_URL_ENV, base)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DownloadError) as error:
        warnings.simplefilter("always")
        tm.FAMILIES[family](weights="imagenet", **channels_first(kwargs))
    ours = [str(w.message) for w in caught if "input_shape" in str(w.message)]
    official = keras_url.replace(registry.BASE_URL, base)
    assert f"official weights {official}:" in str(error.value)
    assert ours == keras_warnings
    if keras_hash:
        entry = next(c for c in tm.list_weights() if c.url == official)
        assert entry.file_hash == keras_hash


@pytest.mark.keras
def test_v2_widest_models_exist_at_224_only(monkeypatch):
    # Keras asks for a file that is not there (a 404 at run time); we say so before any download.
    keras_url, _, _ = keras_request(
        "mobilenet_v2", dict(alpha=1.3, input_shape=(128, 128, 3)), monkeypatch
    )
    assert keras_url.endswith("_1.3_128.h5")
    assert not [c for c in tm.list_weights() if c.url.endswith("_1.3_128.h5")]
    with pytest.raises(ValueError, match="1.3 and 1.4 exist at 224x224 only"):
        tm.MobileNetV2(weights="imagenet", alpha=1.3, input_shape=(3, 128, 128))


def test_keras_warning_points_at_the_caller():
    with pytest.warns(UserWarning, match="Weights for input shape") as caught:
        registry.imagenet_checkpoint(
            dict(
                family="mobilenet_v3_small",
                alpha=1.0,
                include_top=True,
                input_shape=(3, None, None),
            )
        )
    assert caught[0].filename == __file__
