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
import torch.nn.functional as F

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


# Two different inputs must give outputs at least this far apart (relative, as the parity
# measure) for a comparison at PARITY_TOLERANCE to be able to fail.
SENSITIVITY = 1e-2
CALIBRATION_BATCH = 4


def relative_error(got, expected) -> float:
    """max |got - expected| / max(1, max |expected|): the parity measure, on tensors or arrays."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    return (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def photo_like(n, height, width, seed=0, scaled=False, channels=3):
    """Seeded NCHW float32 images, smooth as photos are: noise at an eighth of the size,
    upsampled bilinearly, plus a little pixel noise. Pixels in [0, 255], or in [-1, 1] with
    `scaled` (V1 and V2's `preprocess_input`)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, max(2, height // 8), max(2, width // 8), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.randn(n, channels, height, width, generator=generator)
    x = (smooth * 255 + noise * 8).clamp_(0, 255).round_()
    return x / 127.5 - 1 if scaled else x


def takes_pixels(model) -> bool:
    """Whether `model` takes [0, 255] pixels (V3 and KerasCV's backbone rescale inside) rather
    than V1 and V2's [-1, 1]."""
    config = getattr(model, "config", {})
    return bool(config.get("include_preprocessing") or config.get("include_rescaling"))


def model_images(model, n, height, width, seed=0):
    """photo_like images in the range `model` expects, with its number of channels."""
    channels = model.input_shape[0]
    return photo_like(n, height, width, seed, scaled=not takes_pixels(model), channels=channels)


def trained_like(model, size=None, seed=0):
    """Weights like a trained model's, so that a layer skipped, applied twice, padded or folded
    wrongly shows: BatchNorm gamma ~ U(0.5, 1.5) and beta ~ N(0, 0.1), conv and dense biases
    ~ N(0, 0.1), and BatchNorm moving statistics taken from the batch statistics of one pass
    over photo-like images (so every BatchNorm normalises what it gets, and the output depends
    on the input, as a trained model's does). Calibrated at `size` (an int or (height, width))
    where given, else at the model's static size or 224x224. Seeded; in eval mode.

    A module without an input shape (a bare layer) gets random moving statistics instead."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.normal_(0, 0.1, generator=generator)
    input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        with torch.no_grad():
            for module in norms:
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
        return model.eval()
    if size is None:
        size = tuple(input_shape[1:]) if input_shape[1] else (224, 224)
    height, width = (size, size) if isinstance(size, int) else size
    first = next(model.parameters())
    x = model_images(model, CALIBRATION_BATCH, height, width, seed=seed)
    x = x.to(first.device, first.dtype)
    # Momentum 1 in PyTorch's terms: the moving statistics become this batch's. The layers
    # frozen (Keras' trainable=False) would run in inference mode, so are thawed for the pass;
    # everything else (Dropout) stays in inference mode.
    kept = [
        (m, m.momentum, getattr(m, "trainable", None), m.num_batches_tracked.clone()) for m in norms
    ]
    model.eval()
    for module in norms:
        module.momentum = 1.0
        if getattr(module, "trainable", None) is not None:
            module.trainable = True
        module.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for module, momentum, trainable, tracked in kept:
            module.momentum = momentum
            if trainable is not None:
                module.trainable = trainable
            module.num_batches_tracked.copy_(tracked)
    return model.eval()


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
