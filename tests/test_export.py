"""Deployment: every path of benchmarks/deploy.py (ONNX through both exporters into ONNX Runtime
and OpenVINO, AOTInductor, TorchScript trace and freeze, ExecuTorch with XNNPACK) for every
model, at 224x224 static, at an odd static size and at the dynamic default, against eager;
then torch.compile, channels-last, and half precision on CUDA.

The whole matrix takes about an hour on two cores (`make test-export`); the default suite runs a
slice of it: every path at every size class (224x224, 225x225, dynamic) for MobileNetV3Small,
the dynamo ONNX exporter into both runtimes for MobileNetV3Large at 224x224, and the
TorchScript-based ONNX exporter into both runtimes for every model at the dynamic default."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_sensitive, model_images, require, trained_like

import torch_mobilenets as tm
from benchmarks import deploy
from torch_mobilenets.keras_io.parity import PARITY_TOLERANCE
from torch_mobilenets.nn.layers import Conv2d

TOLERANCE = PARITY_TOLERANCE  # relative, as the parity tests: max |diff| / max(1, max |eager|)
# None: the dynamic default, exported with free batch and spatial sizes, checked at several.
STATIC, ODD, DYNAMIC = 224, 225, None
CHECKED_SIZES = {
    STATIC: [(1, 224, 224)],
    ODD: [(1, 225, 225)],
    DYNAMIC: [(1, 224, 224), (2, 225, 225), (3, 161, 225)],
}
# The default suite's slice: every path at every size class on the cheapest model; the ONNX
# exporters for the model whose ONNX export ONNX Runtime once refused; and for every model the
# exporter that could not size a grown kernel, at the dynamic default.
CHEAPEST = "mobilenet_v3_small"
CHEAP_PATHS = {"onnx-torchscript-onnxruntime", "onnx-torchscript-openvino"}
DYNAMO_PATHS = {"onnx-dynamo-onnxruntime", "onnx-dynamo-openvino"}


def in_default_suite(model, size, path):
    if model == CHEAPEST:
        return True
    if model == "mobilenet_v3_large" and size == STATIC:
        return path in DYNAMO_PATHS
    return path in CHEAP_PATHS and size is DYNAMIC


# Measured wrong, reported as an expected failure with its errors each run (and a pass once
# the runtime computes them right); the other sizes of the case are still held to TOLERANCE.
KNOWN_WRONG = {
    ("executorch-xnnpack", DYNAMIC): (
        "ExecuTorch with XNNPACK, exported with free sizes, is wrong at odd sizes (TF 'same' "
        "stride-2 padding depends on the size's parity; even sizes agree): export it static "
        "for an odd size (docs/deploying.md)"
    ),
}

MATRIX = [
    pytest.param(
        model,
        size,
        path,
        id=f"{model}-{'dynamic' if size is None else size}-{path}",
        marks=() if in_default_suite(model, size, path) else pytest.mark.export,
    )
    for model in deploy.MODELS
    for size in (STATIC, ODD, DYNAMIC)
    for path in deploy.PATHS
]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """One folder per (model, size, path), and a shared one per (model, size) for the ONNX
    files, so that each is exported once for both runtimes."""
    folders = {}

    def folder(*key):
        if key not in folders:
            folders[key] = tmp_path_factory.mktemp("-".join(map(str, key)))
        return folders[key]

    return folder


@pytest.mark.parametrize("model_name,size,path_name", MATRIX)
def test_deployment_path_computes_what_eager_computes(
    model_name, size, path_name, workdir, record_property
):
    path = deploy.PATHS[path_name]
    for module in path.requires:
        require(module)  # the test extra installs every runtime: a failure if missing
    model = deploy.build(model_name, size)
    example = deploy.images(model, 1 if size else 2, size or 224, size or 224)
    onnx = path_name.startswith("onnx")
    folder = workdir(model_name, size) if onnx else workdir(model_name, size, path_name)
    runner = path.build(model, example, size is None, folder, 2)
    outputs, wrong = [], []
    for n, height, width in CHECKED_SIZES[size]:
        x = model_images(model, n, height, width, seed=1)  # photo-like, as trained_like's
        with torch.no_grad():
            expected = model(x)
        outputs.append(expected)
        got = runner(x)
        assert got.shape == expected.shape
        error = deploy.relative_error(got, expected)
        record_property(f"relative error at {n}x{height}x{width}", f"{error:.2g}")  # --junitxml
        print(f"{model_name} {size} {path_name} {(n, height, width)}: relative error {error:.2g}")
        if (path_name, size) in KNOWN_WRONG and (height % 2 or width % 2):
            if error > TOLERANCE:
                wrong.append(f"{(n, height, width)}: relative error {error:.2g}")
            continue
        assert error <= TOLERANCE, (
            f"{path_name} at {(n, height, width)}: relative error {error:.2g}"
        )
    # The comparison can fail: other images give other outputs (a batch of two, or a second
    # image through eager at the static size).
    batch = next((y for y in outputs if y.shape[0] > 1), None)
    if batch is None:
        with torch.no_grad():
            other = model(model_images(model, *CHECKED_SIZES[size][0]))
        assert_sensitive(outputs[0], other, case=path_name)
    else:
        assert_sensitive(batch, case=path_name)
    if wrong:
        pytest.xfail(f"{KNOWN_WRONG[path_name, size]}: {'; '.join(wrong)}")


PAD_OPS = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)


def test_a_captured_graph_pads_activations_and_never_a_weight():
    """Eager folds Keras' asymmetric padding into a grown kernel (no padded copy of an
    activation); exported, a grown kernel is a Pad of a weight, which the TorchScript ONNX
    exporter cannot size and ONNX Runtime's constant folding loses. So a captured graph pads the
    activation and convolves with the model's own kernel."""
    model = trained_like(tm.MobileNetV3Large(weights=None, minimalistic=True, alpha=0.75))
    program = torch.export.export(
        model, (torch.rand(2, 3, 96, 96),), dynamic_shapes=deploy.dynamic_shapes()
    )
    parameters = set(program.graph_signature.inputs_to_parameters)
    pads = [n for n in program.graph.nodes if n.target in PAD_OPS]
    assert pads and all(node.args[0].name not in parameters for node in pads)
    convs = [n for n in program.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == sum(1 for layer in model.modules() if isinstance(layer, Conv2d))
    assert all(node.args[1].name in parameters for node in convs)
    # The stride-2 layers: Keras' ZeroPadding2D (static) and TF "same" (from the size).
    assert len(pads) == sum(
        1 for layer in model.modules() if isinstance(layer, Conv2d) and layer.stride == (2, 2)
    )


def test_the_deploy_benchmark_writes_its_table(tmp_path):
    """benchmarks/deploy.py end to end on a cheap path, in its own process (it pins the
    process to its cores); the speed comes from its real runs."""
    out = tmp_path / "deploy.md"
    paths = ["onnx-torchscript-onnxruntime"]
    argv = ["--models", "mobilenet_v3_small", "--paths", *paths, "--calls", "4", "--warmup", "1"]
    script = Path(deploy.__file__)
    subprocess.run(
        [sys.executable, str(script), *argv, "--out", str(out)],
        cwd=script.parents[1],
        check=True,
        capture_output=True,
        timeout=600,
    )
    text = out.read_text()
    assert "torch 2." in text and "onnxruntime " in text and "load average" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| path | mobilenet_v3_small |"
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        f"| {deploy.TITLES[name]}" for name in ["eager", *paths]
    ]
    for row in rows[1:]:
        cell = row.split(" | ")[1].rstrip(" |")
        ms, ratio = re.fullmatch(r"([\d.]+) \(([\d.]+)\)", cell).groups()
        assert float(ms) > 0 and float(ratio) > 0
    worst = re.search(r"worst relative error against eager ([\d.e+-]+)\.", text)[1]
    assert float(worst) <= TOLERANCE
    model = deploy.build("mobilenet_v3_small", 224)  # what it compared: a comparison can fail
    assert_sensitive(model, deploy.images(model, 2, 224, 224))


FAMILIES = [
    ("mobilenet", dict(include_top=False, pooling="avg", alpha=0.5)),
    ("mobilenet_v2", dict(include_top=False, alpha=0.5)),
    ("mobilenet_v3_small", dict(classifier_activation=None)),
    ("mobilenet_v3_large", dict(classifier_activation=None, minimalistic=True)),
]
SIZES = [(97, 130), (96, 96)]  # odd, even


def model_and_input(family, kwargs):
    model = trained_like(tm.FAMILIES[family](weights=None, **kwargs), size=SIZES[0])
    return model, lambda h, w, n=2: model_images(model, n, h, w, seed=1)


def close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize(
    "family,kwargs",
    [
        pytest.param(*case, marks=() if case[0] == CHEAPEST else pytest.mark.full)
        for case in FAMILIES
    ],
    ids=[f for f, _ in FAMILIES],
)
def test_torch_compile_dynamic_and_channels_last(family, kwargs):
    """Compilation takes a minute or more per family on two cores: the cheapest in `make test`,
    the others in `make test-full` (layouts alone are checked by test_execution)."""
    model, images = model_and_input(family, kwargs)
    compiled = torch.compile(model, dynamic=True)
    with torch.no_grad():
        for size in SIZES:
            x = images(*size)
            expected = model(x)
            close(compiled(x), expected)
        assert_sensitive(expected, case=family)
        x = images(97, 130).contiguous(memory_format=torch.channels_last)
        close(model(x), model(x.contiguous()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family,kwargs", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_half_precision_on_cuda(family, kwargs, dtype):
    torch.manual_seed(0)  # the builder's initial weights, which trained_like keeps
    model, images = model_and_input(family, kwargs)
    x = images(97, 130)
    with torch.no_grad():
        expected = model(x)
        assert_sensitive(expected, case=family)
        fast = model.cuda().to(dtype=dtype, memory_format=torch.channels_last)
        got = fast(x.cuda().to(dtype=dtype, memory_format=torch.channels_last)).float().cpu()
    relative = ((got - expected).abs().max() / expected.abs().max()).item()
    tolerance = HALF_TOLERANCE[dtype][family]
    assert torch.isfinite(got).all() and relative < tolerance, f"relative error {relative:.3g}"


# max |half - float32| / max |float32| allowed on CUDA: twice the worst of two CPU runs of these
# very models and inputs in float16 and bfloat16 (eager, channels-last; 2026-12-07, the CUDA
# test's old 5e-3 and 2e-2 predate the input-sensitive weights of trained_like, and no GPU was
# at hand to measure): float16 V1 0.052-0.060, V2 0.11-0.13, V3 Small 0.0057-0.0082, V3 Large
# 0.021-0.032; bfloat16 V1 0.32-0.37, V2 0.64-0.68, V3 Small 0.056-0.070, V3 Large 0.13-0.16.
# bfloat16 rounds every layer's output to 8 significant bits: on V1 and V2 (a feature map, for V2)
# its bound is as wide as the outputs' spread between images, so there it checks only that the
# model runs and stays finite; test_inference.py checks bfloat16 against float32 on the CPU, on
# V3, where the bound is a sixth of that spread.
HALF_TOLERANCE = {
    torch.float16: {
        "mobilenet": 0.12,
        "mobilenet_v2": 0.27,
        "mobilenet_v3_small": 0.02,
        "mobilenet_v3_large": 0.065,
    },
    torch.bfloat16: {
        "mobilenet": 0.75,
        "mobilenet_v2": 1.4,
        "mobilenet_v3_small": 0.14,
        "mobilenet_v3_large": 0.32,
    },
}
