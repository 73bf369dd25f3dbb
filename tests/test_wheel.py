"""The package as a user installs it: the wheel built from the sources, installed into a fresh
venv, offline (the wheel with --no-deps, its dependencies this venv's own, the pinned torch pair
included, seen through a .pth file), `pip check`, then the `torch-mobilenets` command on files
this test makes, run from outside the checkout; `parity` first without Keras (the extra to
install, named in one line), then with the `keras` extra's packages added."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import helpers
import numpy as np
import pytest
from helpers import keras_model
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# The `keras` extra on Linux x86-64, as distributions this venv holds.
KERAS_EXTRA = {"keras": "3.15.1", "tensorflow-cpu": "2.21.0"}
# What the fresh venv does not see of this one until the test adds Keras: Keras, TensorFlow and
# what needs them (tf-keras, KerasCV, TensorFlow Datasets), and the checkout's own install.
LEFT_OUT = re.compile(r"(?i)(keras|tensorflow|tf[-_]keras|torch[-_]mobilenets)")
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
# What the package imports at run time, as distributions.
RUNTIME = {"torch", "numpy", "h5py", "safetensors", "pillow", "tqdm"}

pytestmark = pytest.mark.wheel


def run(*command, cwd, timeout=900, check=True):
    # No PYTHONPATH: nothing of the checkout may leak into the installed package's process.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check:
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the files a source distribution holds."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "torch_mobilenets",
        source / "torch_mobilenets",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path_factory.mktemp("dist")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--quiet",
        "-w",
        out,
        source,
        cwd=source,
    )
    (path,) = out.glob("torch_mobilenets-*.whl")
    return path


def top_level(distribution) -> set[str]:
    """The entries of site-packages that a distribution installed (its RECORD), scripts aside."""
    return {f.parts[0] for f in distribution.files or () if f.parts[0] != ".."}


def site_view(folder, names) -> Path:
    """A folder of links to these entries of this venv's site-packages."""
    folder.mkdir()
    for name in sorted(names):
        (folder / name).symlink_to(SITE_PACKAGES / name)
    return folder


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A fresh venv with the wheel installed (--no-deps, --no-index: no network) and, for its
    dependencies, this venv's packages: a .pth file puts a view of this site-packages on its
    path (links to every package but Keras', TensorFlow's and the checkout's own, editable,
    install: the test adds Keras later). Returns its bin folder and where to add Keras'."""
    root = tmp_path_factory.mktemp("venv")
    # Without pip: pip and setuptools come with the view, as this venv has them (the ones venv
    # bundles are older than torch asks for).
    run(sys.executable, "-m", "venv", "--without-pip", root, cwd=root)
    bin_ = root / "bin"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run(bin_ / "python", "-c", purelib, cwd=root).stdout.strip())
    everything = {p.name for p in SITE_PACKAGES.iterdir()}
    installed = list(metadata.distributions(path=[str(SITE_PACKAGES)]))
    names = {d: re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in installed}
    keras = set().union(*(top_level(d) for d in installed if names[d] in KERAS_EXTRA))
    left_out = set().union(*(top_level(d) for d in installed if LEFT_OUT.match(names[d])))
    left_out |= {n for n in everything if n.endswith(".pth") or n.startswith("__editable__")}
    view = site_view(root / "view", everything - left_out)
    (site / "outer_venv.pth").write_text(f"{view}\n")
    pip = [bin_ / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    run(*pip, wheel, cwd=root)
    return bin_, lambda: (site / "outer_keras.pth").write_text(
        f"{site_view(root / 'keras_view', keras)}\n"
    )


def test_the_wheel_ships_the_package_alone(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    top = {name.split("/")[0] for name in names}
    assert top == {"torch_mobilenets", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in (
        "torch_mobilenets/py.typed",
        "torch_mobilenets/data/imagenet_class_index.json",
        "torch_mobilenets/cli/parity.py",
        "torch_mobilenets/nn/graph.py",
    ):
        assert needed in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "torch-mobilenets = torch_mobilenets.cli:console" in entry_points
    requires = [
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    runtime = {r.split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert runtime == RUNTIME
    assert "License-Expression: Apache-2.0" in metadata


def test_installed_command_line(venv, tmp_path, weights_file):
    """convert, predict, weights and parity, installed, outside the checkout."""
    venv, add_keras = venv
    for name, version in KERAS_EXTRA.items():  # what the view adds, as the extra pins it
        assert metadata.version(name) == version
    run(venv / "python", "-m", "pip", "check", cwd=tmp_path)
    where = run(
        venv / "python",
        "-c",
        "import torch_mobilenets; print(torch_mobilenets.__file__)",
        cwd=tmp_path,
    ).stdout
    assert str(venv.parent) in where and str(ROOT) not in where
    # The checkout's `python -m convert` shim is not in the wheel.
    old = run(venv / "python", "-m", "convert", "--help", cwd=tmp_path, check=False)
    assert old.returncode != 0 and "No module named convert" in old.stderr

    command = venv / "torch-mobilenets"
    keras_file = weights_file(
        "mobilenet_v2",
        keras_model("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35),
        "keras2_h5",
    )
    converted = tmp_path / "v2.safetensors"
    result = run(command, "convert", keras_file, converted, cwd=tmp_path)
    assert "mobilenet_v2 (alpha=0.35, include_top=True, classes=1000)" in result.stdout
    assert converted.stat().st_size > 1_000_000

    image = tmp_path / "image.png"
    Image.fromarray(helpers.pixels(120, 100, n=1)[0].astype(np.uint8)).save(image)
    result = run(
        command,
        "predict",
        image,
        "--model",
        "mobilenet_v2",
        "--weights",
        converted,
        "--size",
        "96",
        cwd=tmp_path,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) == 6 and lines[1].lstrip().startswith("1. n")

    listed = json.loads(run(command, "weights", "--json", cwd=tmp_path).stdout)
    assert len(listed) == 88

    without = run(command, "parity", keras_file, cwd=tmp_path, check=False)
    assert without.returncode == 4 and without.stderr.count("\n") == 1
    assert "pip install 'torch-mobilenets[keras]'" in without.stderr

    add_keras()  # as `pip install 'torch-mobilenets[keras]'` would, offline
    run(venv / "python", "-m", "pip", "check", cwd=tmp_path)
    result = run(command, "parity", keras_file, image, "--size", "96", "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert report["within_tolerance"] and report["outputs"][0]["top1_agreement"] == 1.0
    assert report["inputs"]["ours_vs_keras_preprocessing"] == 0.0
