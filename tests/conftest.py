"""Shared parity machinery: seeded Keras models, the same weights through files, and the check.

torch and torch._dynamo must be imported before anything loads TensorFlow: with TensorFlow
loaded first, the first lazy import of torch._dynamo (an optimizer step, torch.compile)
segfaults.
"""

import torch  # noqa: F401
import torch._dynamo  # noqa: F401

import functools
from collections import defaultdict

import numpy as np
import pytest

import torch_mobilenets as tm
from convert import keras_reference as kr

# max |logit difference| / max(1, max |Keras logit|)
PARITY_TOLERANCE = 1e-4

PREPROCESS = {
    "mobilenet": tm.mobilenet_v1.preprocess_input,
    "mobilenet_v2": tm.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": tm.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": tm.mobilenet_v3.preprocess_input,
}

_worst = defaultdict(lambda: (0.0, ""))


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
    import keras

    module = {"mobilenet": keras.applications.mobilenet,
              "mobilenet_v2": keras.applications.mobilenet_v2}.get(family)
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


@functools.lru_cache(maxsize=None)
def keras_model(family, seed=0, **kwargs):
    """A seeded Keras model, built once per session for each configuration."""
    return kr.build_keras(family, seed=seed, **kwargs)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Write a Keras model's weights once per (model, layout); returns the path."""
    root = tmp_path_factory.mktemp("keras_files")
    cache = {}

    def write(family, model, layout="weights_h5", **options):
        key = (id(model), layout, tuple(sorted(options.items())))
        if key not in cache:
            directory = root / f"{len(cache)}"
            cache[key] = kr.write_keras_file(model, directory, layout, family=family, **options)
        return cache[key]

    return write


def assert_parity(family, keras_model_, torch_model, height, width, case="", seed=0,
                  record=True):
    """Same images through both (each framework's own preprocess_input); checks the relative
    error against PARITY_TOLERANCE and top-1 agreement; returns the error. `record` adds it to
    the worst-error summary (not for comparisons that are meant to fail)."""
    x = pixels(height, width, seed=seed)
    scaled_input = torch_model.config.get("include_preprocessing") is False
    expected = kr.keras_predict(keras_model_, keras_preprocess(family, x, scaled_input))
    preprocess = PREPROCESS["mobilenet_v2" if scaled_input else family]
    torch_input = preprocess(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    with torch.no_grad():
        got = torch_model.eval()(torch_input).numpy()
    if got.ndim == 4:
        got = got.transpose(0, 2, 3, 1)
    assert got.shape == expected.shape, f"{case}: shape {got.shape} != Keras {expected.shape}"
    error = float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))
    if record and error > _worst[family][0]:
        _worst[family] = (error, f"{case} at {height}x{width}")
    assert error <= PARITY_TOLERANCE, f"{case} at {height}x{width}: relative error {error:.3g}"
    if got.ndim == 2 and got.shape[1] > 1:
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1), err_msg=f"{case} top-1")
    return error


def pytest_terminal_summary(terminalreporter):
    if not _worst:
        return
    import keras
    import tensorflow as tf

    terminalreporter.section("parity against Keras (worst relative logit error per family)")
    terminalreporter.write_line(f"keras {keras.__version__}, tensorflow {tf.__version__}, "
                                f"torch {torch.__version__}")
    for family, (error, case) in sorted(_worst.items()):
        terminalreporter.write_line(f"{family:20s} {error:.2e}  ({case})")
