"""torch.hub entry points, offline: from the checkout (source="local") and, for `list`/`help`
(which take GitHub repositories only), from a hub cache holding this checkout."""

from pathlib import Path

import pytest
import torch
from helpers import keras_model
from weights_server import WeightsServer

import hubconf  # the repository root is on sys.path (pytest's pythonpath)
import torch_mobilenets as tm
from torch_mobilenets.pretrained import registry

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = [
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_large_backbone",
    "mobilenet_v3_small",
    "mobilenet_v3_small_backbone",
]


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub"


def test_load_from_the_checkout_forwards_keras_arguments(hub_home):
    model = torch.hub.load(
        str(ROOT),
        "mobilenet_v2",
        source="local",
        weights=None,
        alpha=0.35,
        input_shape=(3, 96, 96),
        classifier_activation=None,
    )
    assert isinstance(model, tm.KerasModel)
    assert model.config["alpha"] == 0.35 and model.input_shape == (3, 96, 96)
    small = torch.hub.load(
        str(ROOT),
        "mobilenet_v3_small",
        source="local",
        weights=None,
        minimalistic=True,
        include_top=False,
        pooling="avg",
    )
    assert small.config["minimalistic"] and small(torch.rand(1, 3, 64, 64) * 255).shape == (1, 576)
    with pytest.raises(TypeError):
        torch.hub.load(str(ROOT), "mobilenet", source="local", weights=None, no_such_arg=1)


def test_load_a_keras_file(weights_file):
    path = weights_file(
        "mobilenet_v2",
        keras_model("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35),
        "keras2_h5",
    )
    model = torch.hub.load(
        str(ROOT),
        "mobilenet_v2",
        source="local",
        weights=str(path),
        alpha=0.35,
        input_shape=(3, 96, 96),
    )
    direct = tm.MobileNetV2(weights=str(path), alpha=0.35, input_shape=(3, 96, 96))
    for key, value in direct.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_backbone_entry_points(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    backbone = torch.hub.load(str(ROOT), "mobilenet_v3_small_backbone", source="local")
    assert isinstance(backbone, tm.MobileNetV3Backbone) and backbone.config["include_rescaling"]
    save_file(backbone.state_dict(), tmp_path / "backbone.safetensors")
    again = torch.hub.load(
        str(ROOT),
        "mobilenet_v3_small_backbone",
        source="local",
        weights=str(tmp_path / "backbone.safetensors"),
        include_rescaling=False,
    )
    for key, value in backbone.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    large = hubconf.mobilenet_v3_large_backbone(input_shape=(3, 96, 96))
    assert large.config["stackwise_filters"][-1] == 160
    # KerasCV's ImageNet preset weights come from Kaggle: here only from a local preset folder.
    monkeypatch.setenv("TORCH_MOBILENETS_KERAS_CV_PRESETS", str(tmp_path / "presets"))
    with pytest.raises(ValueError, match="not available locally"):
        hubconf.mobilenet_v3_large_backbone(weights="imagenet")


def test_list_and_help_from_the_hub_cache(hub_home):
    # torch.hub.list/help read GitHub repositories; "owner/name:ref" with a cached copy of the
    # repository under the hub directory needs no network.
    hub_home.mkdir(parents=True)
    (hub_home / "keras-port_torch-mobilenets_main").symlink_to(ROOT, target_is_directory=True)
    repo = "keras-port/torch-mobilenets:main"
    assert sorted(torch.hub.list(repo, trust_repo=True, verbose=False)) == ENTRY_POINTS
    doc = torch.hub.help(repo, "mobilenet_v2", trust_repo=True)
    assert 'weights="imagenet"' in doc and "progress" in doc
    assert "Instantiates the MobileNetV2 architecture" in doc and "alpha:" in doc
    assert "forward_pyramid" in torch.hub.help(repo, "mobilenet_v3_small_backbone", trust_repo=True)
    model = torch.hub.load(
        repo, "mobilenet", trust_repo=True, verbose=False, weights=None, alpha=0.25
    )
    assert model.config["alpha"] == 0.25


def test_imagenet_through_the_hub_with_progress_switch(hub_home, monkeypatch, weights_file, capsys):
    path = weights_file(
        "mobilenet_v2",
        keras_model("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35),
        "keras2_h5",
    )
    entry = registry.find_checkpoint("mobilenet_v2", 0.35, 160, True)
    with WeightsServer() as server:
        server.serve(entry.subdir, entry.file_name, path.read_bytes())
        monkeypatch.setenv(registry.BASE_URL_ENV, server.base_url)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with pytest.warns(UserWarning, match="NOT verified"):
            hubconf.mobilenet_v2(
                weights="imagenet", progress=False, alpha=0.35, input_shape=(3, 160, 160)
            )
        assert "Downloading" not in capsys.readouterr().err
        (hub_home / "checkpoints" / "torch_mobilenets" / entry.converted_name).unlink()
        (hub_home / "checkpoints" / "torch_mobilenets" / entry.file_name).unlink()
        model = torch.hub.load(
            str(ROOT),
            "mobilenet_v2",
            source="local",
            weights="imagenet",
            progress=True,
            alpha=0.35,
            input_shape=(3, 160, 160),
        )
        assert f'Downloading: "{entry.url}"' in capsys.readouterr().err
        assert server.requests[f"/{entry.subdir}/{entry.file_name}"] == 2
    assert model.input_shape == (3, 160, 160)
    # The weights are the served file's: every value as loading that file directly gives, and
    # not the builder's initial ones.
    direct = tm.MobileNetV2(weights=path, alpha=0.35, input_shape=(3, 160, 160))
    state = model.state_dict()
    assert state.keys() == direct.state_dict().keys()
    for key, value in direct.state_dict().items():
        assert torch.equal(state[key], value), key
    fresh = tm.MobileNetV2(weights=None, alpha=0.35, input_shape=(3, 160, 160)).state_dict()
    assert not torch.equal(state["Conv1.weight"], fresh["Conv1.weight"])
