"""Deployment paths for every family: torch.export, TorchScript (trace), ONNX through
onnxruntime, torch.compile, channels-last; static and dynamic spatial sizes."""

import pytest
import torch
from helpers import trained_like
from torch.export import Dim

import torch_mobilenets as tm

FAMILIES = [
    ("mobilenet", dict(include_top=False, pooling="avg", alpha=0.5)),
    ("mobilenet_v2", dict(include_top=False, alpha=0.5)),
    ("mobilenet_v3_small", dict(classifier_activation=None)),
    ("mobilenet_v3_large", dict(classifier_activation=None, minimalistic=True)),
]
# Dynamic sizes from 64: at 32 the last map is 1x1, where broadcasting rules would change.
DYNAMIC = {"x": {0: Dim("n", max=64), 2: Dim("h", min=64, max=512), 3: Dim("w", min=64, max=512)}}
SIZES = [(97, 130), (96, 96), (161, 225)]  # odd, even, non-square


def model_and_input(family, kwargs, static=None):
    if static:
        kwargs = dict(kwargs, input_shape=(3, *static))
    model = trained_like(tm.FAMILIES[family](weights=None, **kwargs))
    return model, lambda h, w, n=2: torch.rand(n, 3, h, w) * 255


def close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("family,kwargs", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_torch_export_with_dynamic_sizes(family, kwargs):
    model, images = model_and_input(family, kwargs)
    program = torch.export.export(model, (images(97, 130),), dynamic_shapes=DYNAMIC)
    with torch.no_grad():
        for size in SIZES:
            x = images(*size, n=3)
            close(program.module()(x), model(x))


@pytest.mark.parametrize("family,kwargs", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_torchscript_trace_of_a_static_model(family, kwargs):
    model, images = model_and_input(family, kwargs, static=(97, 130))
    x = images(97, 130)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        y = images(97, 130)
        close(traced(y), model(y))


@pytest.mark.parametrize("family,kwargs", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_onnx_through_onnxruntime(family, kwargs, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model, images = model_and_input(family, kwargs)
    path = tmp_path / f"{family}.onnx"
    torch.onnx.export(model, (images(97, 130),), str(path), dynamo=True, dynamic_shapes=DYNAMIC)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for size in SIZES:
            x = images(*size, n=3)
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            close(torch.from_numpy(got), model(x))


@pytest.mark.parametrize(
    "family,kwargs",
    [
        pytest.param(*case, marks=() if case[0] == "mobilenet_v3_small" else pytest.mark.full)
        for case in FAMILIES
    ],
    ids=[f for f, _ in FAMILIES],
)
def test_torch_compile_dynamic_and_channels_last(family, kwargs):
    """Compilation takes tens of seconds per family on two cores: one family by default, all
    in `make test-full`."""
    model, images = model_and_input(family, kwargs)
    compiled = torch.compile(model, dynamic=True)
    with torch.no_grad():
        for size in SIZES[:2]:
            x = images(*size)
            close(compiled(x), model(x))
        x = images(97, 130).contiguous(memory_format=torch.channels_last)
        close(model(x), model(x.contiguous()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family,kwargs", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_half_precision_on_cuda(family, kwargs, dtype):
    model, images = model_and_input(family, kwargs)
    x = images(97, 130)
    with torch.no_grad():
        expected = model(x)
        fast = model.cuda().to(dtype=dtype, memory_format=torch.channels_last)
        got = fast(x.cuda().to(dtype=dtype, memory_format=torch.channels_last)).float().cpu()
    relative = (got - expected).abs().max() / expected.abs().max()
    assert relative < (2e-2 if dtype is torch.bfloat16 else 5e-3)
