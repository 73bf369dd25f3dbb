"""What the tests share: seeded Keras models, the parity check, weights like a trained model's.

Keras (on TensorFlow) is the reference, and optional: `keras_reference()` gives the Keras side
(convert/keras_reference.py) or skips the test, with the reason, where Keras is not installed.
Tests that need it are marked `keras`, so `pytest -m "not keras"` runs the rest.

torch and torch._dynamo must be imported before anything loads TensorFlow: with TensorFlow
loaded first, the first lazy import of torch._dynamo (an optimizer step, torch.compile)
segfaults.
"""

import functools
import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

import torch_mobilenets as tm
from torch_mobilenets.keras_io.parity import PARITY_TOLERANCE

HAVE_KERAS = all(importlib.util.find_spec(name) is not None for name in ("keras", "tensorflow"))
KERAS_REASON = (
    "needs Keras on TensorFlow, the reference: pip install "
    "'torch-mobilenets[keras]' (or run `make test`)"
)

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


PREPROCESS = {
    "mobilenet": tm.mobilenet_v1.preprocess_input,
    "mobilenet_v2": tm.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": tm.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": tm.mobilenet_v3.preprocess_input,
}

# family -> (worst relative error, where), printed at the end of the run (conftest.py).
worst = defaultdict(lambda: (0.0, ""))


def keras_reference():
    """convert.keras_reference (seeded Keras models and files), or skip where Keras is absent
    (also at module level)."""
    if not HAVE_KERAS:
        pytest.skip(KERAS_REASON, allow_module_level=True)
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


def trained_like(model):
    """BatchNorm statistics far from identity, as in a trained model, so that a BatchNorm
    skipped, applied twice or folded wrongly shows; in eval mode."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
    return model.eval()


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


def assert_parity(family, keras_model_, torch_model, height, width, case="", seed=0, record=True):
    """Same images through both (each framework's own preprocess_input); checks the relative
    error against PARITY_TOLERANCE and top-1 agreement; returns the error. `record` adds it to
    the worst-error summary (not for comparisons that are meant to fail)."""
    x = pixels(height, width, seed=seed)
    scaled_input = torch_model.config.get("include_preprocessing") is False
    expected = keras_reference().keras_predict(
        keras_model_, keras_preprocess(family, x, scaled_input)
    )
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
