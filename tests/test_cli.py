"""The `torch-mobilenets` command line: help, `weights`, `parity` against real Keras, and the module
entry points (`python -m convert`, `python -m torch_mobilenets`). Conversion errors and
exit codes are tested in test_converter.py and test_hardening.py, prediction in
test_transforms_predict.py, the installed wheel in test_wheel.py."""

import json
import sys

import helpers
import numpy as np
import pytest
from helpers import ROOT, keras_model, run_module
from PIL import Image

import torch_mobilenets as tm
from torch_mobilenets.cli import main
from torch_mobilenets.models.mobilenet_v3_backbone import PRESETS
from torch_mobilenets.pretrained import registry

COMMANDS = ("convert", "predict", "weights", "parity")


def cli(*args, cwd=ROOT, **env):
    """`python -m torch_mobilenets ARGS` in a fresh process."""
    return run_module("torch_mobilenets", *args, cwd=cwd, **env)


def test_every_command_has_help_with_examples_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    top = capsys.readouterr().out
    assert exit_.value.code == 0 and all(command in top for command in COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert exit_.value.code == 0, command
        assert f"usage: torch-mobilenets {command}" in text
        assert "examples:\n  torch-mobilenets " + command in text and "exit codes: 0 " in text


def test_usage_errors_are_one_line_exit_2(capsys):
    for argv in (["nonsense"], ["weights", "--family", "resnet"], ["parity"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and ": error: " in err, argv


def test_weights_table_json_and_filters(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = registry.find_checkpoint("mobilenet_v3_small", 1.0, 224, include_top=False)
    cache = tmp_path / "hub" / "checkpoints" / "torch_mobilenets"
    cache.mkdir(parents=True)
    (cache / cached.converted_name).write_bytes(b"converted")

    assert main(["weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "name",
        "top-1",
        "%",
        "MACs",
        "(M)",
        "parameters",
        "checksum",
        "cached",
        "file",
    ]
    rows = [line for line in lines[1:] if line.startswith("mobilenet")]
    assert len(rows) == 88 and lines[-1].startswith("88 files; cache: ")
    v2 = next(r for r in rows if r.startswith("mobilenet_v2_1.0_224 "))
    assert "71.8" in v2 and "3,538,984" in v2 and "none, none" in v2

    assert main(["weights", "--family", "mobilenet_v3_small", "--no-include-top", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == [
        c.name for c in tm.list_weights("mobilenet_v3_small", include_top=False)
    ]
    assert len(records) == 3 and all(r["hash_algorithm"] == "md5" for r in records)
    assert [r["cached"] for r in records] == [r["name"] == cached.name for r in records]
    assert records[0]["url"] == cached.url and records[0]["parameters"] == cached.parameters


def test_module_entry_points_are_the_commands(tmp_path):
    converted = run_module("convert", "--help", timeout=120)
    assert converted.returncode == 0 and "usage: python -m convert" in converted.stdout
    predicted = run_module("torch_mobilenets", "predict", "--help", timeout=120)
    assert predicted.returncode == 0
    assert "usage: python -m torch_mobilenets predict" in predicted.stdout


def test_parity_without_keras_names_the_extra(tmp_path, monkeypatch, capsys):
    # Keras absent, wherever it is installed: `sys.modules["keras"] = None` makes find_spec say
    # so (and an import fail), as for a user without it.
    monkeypatch.setitem(sys.modules, "keras", None)
    assert main(["parity", str(tmp_path / "any.h5")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'torch-mobilenets[keras]'" in err


# ------------------------------------------------------------------------- parity, with Keras
@pytest.fixture
def parity(capsys):
    """`torch-mobilenets parity ARGS --json`, in this process (Keras is loaded already):
    (exit code, report, stderr)."""

    def run(*args):
        code = main(["parity", *map(str, args), "--json"])
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err

    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, size in enumerate([(300, 200), (131, 97)]):
        pixels = helpers.pixels(size[1], size[0], n=1, seed=i)[0].astype(np.uint8)
        path = folder / f"image{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.mark.keras
def test_parity_of_an_official_layout_file_on_images(weights_file, images, parity):
    path = weights_file(
        "mobilenet_v2",
        keras_model("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35),
        "keras2_h5",
    )
    code, report, stderr = parity(path, *images, "--size", "96")
    assert code == 0, stderr
    assert report["architecture"] == "mobilenet_v2 (alpha=0.35, include_top=True, classes=1000)"
    assert report["inputs"]["images"] == [str(p) for p in images]
    assert report["inputs"]["shape"] == [2, 96, 96, 3]
    # Our KerasPreprocessing preset is Keras' load_img + preprocess_input, bit for bit.
    assert report["inputs"]["ours_vs_keras_preprocessing"] == 0.0
    (logits,) = report["outputs"]
    assert logits["output"] == "logits" and logits["shape"] == [2, 1000]
    assert logits["relative_difference"] < 1e-4
    assert logits["top1_agreement"] == logits["top5_agreement"] == 1.0
    assert report["versions"]["keras"] == "3.15.1" and "tensorflow" in report["versions"]

    # The command itself, in a process of its own: the report as text, and --tol.
    strict = cli("parity", path, "--size", "96", "--tol", "1e-12")
    assert strict.returncode == 1 and "OUTSIDE the tolerance 1e-12" in strict.stdout
    assert "logits     (4, 1000)" in strict.stdout and "100%   100%" in strict.stdout


@pytest.mark.keras
def test_parity_of_a_dynamic_model_at_an_odd_size_and_a_keras_archive(weights_file, parity):
    model = keras_model("mobilenet_v3_small", include_top=False)
    archive = weights_file("mobilenet_v3_small", model, "keras_zip")
    code, report, stderr = parity(archive, "--size", "97", "131", "--seeded", "2")
    assert code == 0, stderr
    assert report["layout"] == "keras_archive" and report["inputs"]["shape"] == [2, 97, 131, 3]
    (features,) = report["outputs"]
    # Keras' dynamic model pads as if sizes were even: its "valid" stride-2 convolutions end
    # at 3x4 here (a static 97x131 model ends at 4x5).
    assert features["output"] == "features" and features["shape"] == [2, 3, 4, 576]
    assert features["relative_difference"] < 1e-4 and "top1_agreement" not in features


@pytest.mark.keras
def test_parity_of_a_full_model_with_softmax_compares_logits(weights_file, parity):
    model = keras_model("mobilenet", input_shape=(128, 128, 3), alpha=0.25)  # softmax top
    path = weights_file("mobilenet", model, "full_model_h5")
    code, report, stderr = parity(path, "--seeded", "3")
    assert code == 0, stderr
    assert report["inputs"]["shape"] == [3, 128, 128, 3]  # the saved model's static size
    (logits,) = report["outputs"]
    assert logits["output"] == "logits" and logits["relative_difference"] < 1e-4
    # Logits, not probabilities: max |difference| / relative difference is max(1, max |Keras
    # logit|), exactly 1 for probabilities (all in [0, 1]); these logits reach well beyond.
    assert logits["max_abs_difference"] > 0
    largest_logit = logits["max_abs_difference"] / logits["relative_difference"]
    print(f"largest |Keras logit| {largest_logit:.3g}")
    assert largest_logit > 2, f"the largest |logit| is {largest_logit:.3g}: probabilities?"


@pytest.mark.keras
def test_parity_of_a_keras_cv_backbone_reports_the_pyramid(weights_file, parity):
    stacks = {k: tuple(v) for k, v in PRESETS["mobilenet_v3_small"].items()}  # hashable
    backbone = keras_model("mobilenet_v3_backbone", **stacks, include_rescaling=True)
    path = weights_file("mobilenet_v3_backbone", backbone, "weights_h5")
    code, report, stderr = parity(path, "--size", "97", "--seeded", "2")
    assert code == 0, stderr
    assert [o["output"] for o in report["outputs"]] == ["features", "P1", "P2", "P3", "P4", "P5"]
    assert all(o["relative_difference"] < 1e-4 for o in report["outputs"])
    assert report["outputs"][1]["shape"][1:3] == [49, 49] and "keras-cv" in report["versions"]


@pytest.mark.keras
def test_parity_errors_are_one_line(tmp_path, images, parity):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a weights file")
    code, report, stderr = parity(junk)
    assert code == 3 and report is None and stderr.count("\n") == 1
    assert stderr.endswith("neither HDF5 nor a .keras zip archive)\n")
    code, _, stderr = parity(tmp_path / "absent.h5", images[0])
    assert code == 3 and stderr.count("\n") == 1 and "absent.h5: no such file" in stderr
