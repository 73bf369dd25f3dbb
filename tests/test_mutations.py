"""The comparisons against eager can fail: each kind of check that tests/test_export.py and
tests/test_inference.py make (torch.export, ONNX through ONNX Runtime, optimize_for_inference,
torch.compile), run on a model that is wrong as a bug would make it, fails by far.

The model has `trained_like` weights (whose outputs depend on the input); each mutant is built
from it with one thing wrong: a ZeroPadding2D shifted, TensorFlow's "same" padding made
symmetric (PyTorch's `padding=kernel // 2`), a BatchNorm skipped, an activation dropped. The
candidate is made from the mutant and run with it, eager runs the model itself, and their
relative error must exceed PARITY_TOLERANCE a hundredfold; unmutated, the same check passes.

torch.compile runs with backend="aot_eager": Dynamo's capture and AOTAutograd's trace, without
Inductor's code generation (a minute a model on two cores; the Inductor paths are compared on
the real models in test_export.py and test_inference.py). MobileNetV3Small, alpha 0.75, at
96x96: even, so that TF "same" pads a stride-2 convolution (0, 1), which symmetric padding
gets wrong.
"""

import contextlib
import copy

import pytest
import torch
from helpers import (
    PARITY_TOLERANCE,
    assert_sensitive,
    model_images,
    relative_error,
    require,
    trained_like,
)

import torch_mobilenets as tm
from benchmarks import deploy
from torch_mobilenets.nn import layers

SIZE = 96
FAR = 100 * PARITY_TOLERANCE


def symmetric_same(size, kernel, stride):
    return kernel // 2, kernel // 2


# mutation -> (layer, its replacement) in the graph, or a patch of the layers' code
MUTATIONS = {
    "none": None,
    "shifted-zero-padding": (
        "expanded_conv_1_depthwise_pad",  # ((0, 1), (0, 1)) before a stride-2 depthwise conv
        lambda: layers.ZeroPadding2D(((1, 0), (1, 0))),
    ),
    "symmetric-same-padding": (layers, "tf_same_padding", symmetric_same),  # the stem conv
    "skipped-batchnorm": (
        "expanded_conv_3_expand_bn",
        lambda: layers.Identity("BatchNormalization"),
    ),
    "dropped-activation": (
        "expanded_conv_3_expand_activation",  # a hard-swish
        lambda: layers.Identity("Activation"),
    ),
}


@contextlib.contextmanager
def mutated(model, mutation, monkeypatch):
    """The model with `mutation` (a copy, or the model itself while the patch is in place)."""
    change = MUTATIONS[mutation]
    if change is None:
        yield model
    elif len(change) == 3:
        with monkeypatch.context() as patch:
            patch.setattr(*change)
            yield model
    else:
        name, layer = change
        mutant = copy.deepcopy(model)
        mutant.replace(name, layer())
        yield mutant


def compiled(model, x, tmp_path):
    torch._dynamo.reset()  # a fresh cache: each mutant is compiled, none hits the limit
    return torch.compile(model, backend="aot_eager")(x)


def onnx_runtime(model, x, tmp_path):
    """The TorchScript-based ONNX exporter into ONNX Runtime, as benchmarks/deploy.py does."""
    path = deploy.export_onnx(model, x, False, tmp_path / "model.onnx", dynamo=False)
    return deploy.onnxruntime_runner(path, 2)(x)


CHECKS = {
    "eager": lambda model, x, tmp_path: model(x),
    "torch-export": lambda model, x, tmp_path: torch.export.export(model, (x,)).module()(x),
    "onnx-torchscript-onnxruntime": onnx_runtime,
    "optimize-for-inference": lambda model, x, tmp_path: tm.optimize_for_inference(model)(x),
    "compile-aot-eager": compiled,
}


@pytest.fixture(scope="module")
def reference():
    with torch.random.fork_rng():  # the same kernels every run
        torch.manual_seed(0)
        model = tm.MobileNetV3Small(weights=None, alpha=0.75, classifier_activation=None)
    model = trained_like(model, size=SIZE)
    x = model_images(model, 2, SIZE, SIZE, seed=1)
    with torch.no_grad():
        expected = model(x)
    assert_sensitive(expected)
    return model, x, expected


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("check", CHECKS)
def test_a_wrong_model_fails_every_check(
    reference, check, mutation, monkeypatch, tmp_path, record_property
):
    model, x, expected = reference
    if check == "onnx-torchscript-onnxruntime":
        require("onnxruntime")  # of the test extra: a failure if missing
    with mutated(model, mutation, monkeypatch) as mutant, torch.no_grad():
        got = CHECKS[check](mutant, x, tmp_path)
    assert got.shape == expected.shape
    error = relative_error(got, expected)
    record_property("relative error", f"{error:.2g}")  # --junitxml
    print(f"{check} {mutation}: relative error {error:.2g}")  # -s or -rP
    if mutation == "none":
        assert error <= PARITY_TOLERANCE, f"{check}: relative error {error:.2g}"
    else:
        assert error > FAR, f"{check} did not see {mutation}: relative error {error:.2g}"
