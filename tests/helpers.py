"""What the tests share: seeded Keras models, the parity check, weights like a trained model's.

Keras (on TensorFlow) is the reference: `keras_reference()` gives the Keras side
(convert/keras_reference.py). Tests that need it are marked `keras`, so `pytest -m "not keras"`
runs the rest. Where a package of the `test` extra is missing, a test that needs it fails
(`require`, `missing`), unless the extra is left out on purpose ($TORCH_MOBILENETS_TEST_WITHOUT).

torch and torch._dynamo must be imported before anything loads TensorFlow: with TensorFlow
loaded first, the first lazy import of torch._dynamo (an optimizer step, torch.compile)
segfaults.
"""

import contextlib
import functools
import importlib.util
import io
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch._dynamo

import torch_mobilenets as tm
from benchmarks.calibration import (  # noqa: F401 (the benchmarks calibrate with these too)
    CALIBRATION_BATCH,
    model_images,
    photo_like,
    takes_pixels,
    trained_like,
)
from torch_mobilenets.keras_io.parity import PARITY_TOLERANCE

HAVE_KERAS = all(importlib.util.find_spec(name) is not None for name in ("keras", "tensorflow"))
KERAS_REASON = (
    "needs Keras on TensorFlow, the reference: pip install "
    "'torch-mobilenets[keras]' (or run `make test`)"
)

# What the `test` extra (pyproject.toml) installs, by module, and the extra that brings it. A
# test that needs one of these and does not find it fails, naming the extra, unless that extra
# is left out on purpose: listed in $TORCH_MOBILENETS_TEST_WITHOUT (`make test-core` lists
# "keras keras-cv bench build"), where such tests skip, with the reason. Other modules (tf-keras,
# which the Makefile adds) skip where absent.
TEST_EXTRA = {
    "keras": "keras",
    "tensorflow": "keras",
    "keras_cv": "keras-cv",
    "torchvision": "bench",
    "timm": "bench",
    "onnx": "bench",
    "onnxruntime": "bench",
    "onnxscript": "bench",
    "openvino": "bench",
    "executorch": "bench",
    "hypothesis": "test",
    "build": "test",
}
WITHOUT_ENV = "TORCH_MOBILENETS_TEST_WITHOUT"


def left_out() -> set[str]:
    """The extras (or modules) $TORCH_MOBILENETS_TEST_WITHOUT names, split on spaces or commas."""
    return set(os.environ.get(WITHOUT_ENV, "").replace(",", " ").split())


def missing(module, reason=None):
    """For a test that needs `module`, which is not installed: fail, naming the extra that
    installs it, or skip where that extra is left out on purpose (see TEST_EXTRA) or the module
    is no part of the test extra. Works at module level too."""
    extra = TEST_EXTRA.get(module.split(".")[0])
    reason = reason or f"needs {module}"
    if extra is None:
        pytest.skip(reason, allow_module_level=True)
    if extra in left_out() or module in left_out():
        pytest.skip(f"{reason} ({WITHOUT_ENV} leaves out `{extra}`)", allow_module_level=True)
    pytest.fail(
        f"{reason}: {module} is missing, and the `test` extra installs it (extra `{extra}`): "
        f"pip install -e '.[test]', or run `make test`; {WITHOUT_ENV}={extra} skips such "
        "tests instead",
        pytrace=False,
    )


def require(module):
    """`import module`, or fail (or skip, where left out on purpose) as `missing` says."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(module)


# max |logit difference| / max(1, max |Keras logit|)
ROOT = Path(__file__).resolve().parent.parent


def run_module(module, *args, cwd=ROOT, timeout=600, **env):
    """`python -m MODULE ARGS` in a fresh process, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_convert(*args):
    """`python -m convert ARGS` in this process: the command line's `main` with its output
    captured and its exit status returned, as a fresh process would give them, without the
    seconds each process takes to import torch (tests/test_cli.py runs the real processes)."""
    from torch_mobilenets.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = main(["convert", *map(str, args)], prog="python -m")
        except SystemExit as exit:  # argparse's errors and --help
            returncode = exit.code if isinstance(exit.code, int) else 1
    return Ran(returncode, stdout.getvalue(), stderr.getvalue())


PREPROCESS = {
    "mobilenet": tm.mobilenet_v1.preprocess_input,
    "mobilenet_v2": tm.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": tm.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": tm.mobilenet_v3.preprocess_input,
}

# family -> (worst relative error, where), printed at the end of the run (conftest.py).
worst = defaultdict(lambda: (0.0, ""))


def keras_reference():
    """convert.keras_reference (seeded Keras models and files); where Keras is absent, a failure,
    or a skip where the `keras` extra is left out on purpose (`missing`; also at module level)."""
    if not HAVE_KERAS:
        missing("keras", KERAS_REASON)
    from convert import keras_reference

    return keras_reference


def pixels(height, width, n=3, seed=0):
    """Seeded NHWC float32 images with integer pixel values in [0, 255], smooth enough to look
    like images rather than noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, height // 8 + 2, width // 8 + 2, 3))
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]
    noise = rng.normal(0, 20, (n, height, width, 3))
    return np.clip(np.round(smooth + noise), 0, 255).astype(np.float32)


# Two different inputs must give outputs at least this far apart (relative, as the parity
# measure) for a comparison at PARITY_TOLERANCE to be able to fail.
SENSITIVITY = 1e-2


def relative_error(got, expected) -> float:
    """max |got - expected| / max(1, max |expected|): the parity measure, on tensors or arrays."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    return (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def output_distance(first, second=None) -> float:
    """How far apart the outputs for different inputs are, relative as the parity measure:
    `first` and `second` outputs (or tuples of them) for two inputs, or one batch of outputs
    for different inputs (each row against the first; the smallest)."""
    if isinstance(first, (tuple, list)):
        pairs = zip(first, second) if second is not None else ((f, None) for f in first)
        return min(output_distance(f, s) for f, s in pairs)
    first = torch.as_tensor(first)
    if second is not None:
        return relative_error(second, first)
    if first.shape[0] < 2:
        raise ValueError("one batch of outputs needs two rows or more, for two inputs")
    return min(relative_error(row, first[0]) for row in first[1:])


def assert_sensitive(first, second=None, case=""):
    """That a comparison at PARITY_TOLERANCE can fail: the outputs for two different inputs are
    at least SENSITIVITY apart (see `output_distance`). `first` may be a model, `second` then
    a batch of two inputs or more, which it runs on. Returns the distance."""
    if isinstance(first, torch.nn.Module):
        with torch.no_grad():
            first, second = first(second), None
    distance = output_distance(first, second)
    assert distance >= SENSITIVITY, (
        f"{case}: outputs for different inputs only {distance:.2g} apart: a comparison at "
        f"{PARITY_TOLERANCE} cannot fail"
    )
    return distance


def keras_preprocess(family, x, scaled_input=False):
    keras_reference()
    import keras

    module = {
        "mobilenet": keras.applications.mobilenet,
        "mobilenet_v2": keras.applications.mobilenet_v2,
    }.get(family)
    if module is None and scaled_input:
        module = keras.applications.mobilenet_v2
    return module.preprocess_input(x.copy()) if module else x


def torch_kwargs(keras_kwargs):
    """The same builder arguments, with the input shape channels first."""
    kwargs = dict(keras_kwargs)
    if kwargs.get("input_shape") is not None:
        height, width, channels = kwargs["input_shape"]
        kwargs["input_shape"] = (channels, height, width)
    return kwargs


def keras_model(family, seed=0, **kwargs):
    """A seeded Keras model, built once per session for each configuration."""
    keras_reference()  # skips where Keras is absent
    return _keras_model(family, seed, **kwargs)


@functools.cache
def _keras_model(family, seed, **kwargs):
    return keras_reference().build_keras(family, seed=seed, **kwargs)


# Keras' outputs by (model, its weights, inputs): many tests compare several of our models
# (layouts of one file, say) with one Keras model on the same images. Each entry keeps its model
# alive, so its id is never another model's; a digest of the weights notices set_weights.
_KERAS_OUTPUTS: dict[tuple, tuple] = {}


def _keras_outputs(family, keras_model_, x, inputs_key):
    digest = tuple(float(np.sum(w, dtype=np.float64)) for w in keras_model_.get_weights())
    key = (id(keras_model_), digest, family, *inputs_key)
    if key not in _KERAS_OUTPUTS:
        scaled_input = inputs_key[-1]
        outputs = keras_reference().keras_predict(
            keras_model_, keras_preprocess(family, x, scaled_input)
        )
        _KERAS_OUTPUTS[key] = (keras_model_, outputs)
    return _KERAS_OUTPUTS[key][1]


def assert_parity(family, keras_model_, torch_model, height, width, case="", seed=0, record=True):
    """Same images through both (each framework's own preprocess_input); checks the relative
    error against PARITY_TOLERANCE and top-1 agreement; returns the error. `record` adds it to
    the worst-error summary (not for comparisons that are meant to fail)."""
    x = pixels(height, width, seed=seed)
    scaled_input = torch_model.config.get("include_preprocessing") is False
    expected = _keras_outputs(family, keras_model_, x, (height, width, seed, scaled_input))
    preprocess = PREPROCESS["mobilenet_v2" if scaled_input else family]
    torch_input = preprocess(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    with torch.no_grad():
        got = torch_model.eval()(torch_input).numpy()
    if got.ndim == 4:
        got = got.transpose(0, 2, 3, 1)
    assert got.shape == expected.shape, f"{case}: shape {got.shape} != Keras {expected.shape}"
    error = float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))
    if record and error > worst[family][0]:
        worst[family] = (error, f"{case} at {height}x{width}")
    assert error <= PARITY_TOLERANCE, f"{case} at {height}x{width}: relative error {error:.3g}"
    if got.ndim == 2 and got.shape[1] > 1:
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1), err_msg=f"{case} top-1")
    return error
