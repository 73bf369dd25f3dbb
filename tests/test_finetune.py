"""Fine-tuning: the API, freezing as Keras freezes, and SGD steps that match Keras' own."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_parity, keras_reference, torch_kwargs

import torch_mobilenets as tm

kr = keras_reference()  # skips this module, with the reason, without Keras
import keras  # noqa: E402

pytestmark = pytest.mark.keras

# Both sides train in float64 (the same float32 starting weights): in float32, one activation
# sitting on a ReLU6's edge (|x| ~ 1e-6, flipped by round-off) changes the gradients below it
# by about 1%, which would hide semantic mistakes. In float64 right semantics agree to ~1e-10;
# updating the moving variance with PyTorch's unbiased variance, a wrong momentum, or dropping
# the gradient through the batch statistics are all off by 1e-4 or (much) more.
# Keras keeps the learning rate in a float32 variable whatever the model's dtype: a rate exact in
# float32 makes both sides step by the same amount.
STEPS, LEARNING_RATE, BATCH = 3, 2.0**-10, 8
TOLERANCE = 1e-8  # measured: 3e-13 (V1, V2), 3e-10 (V3 Small)


def keras_float64(family, float32_model, kwargs):
    """The same Keras model computing in float64, holding the float32 model's weights."""
    keras.config.set_floatx("float64")  # the Input layer's dtype
    keras.config.set_dtype_policy("float64")  # the layers'
    try:
        model = kr.keras_builder(family)(weights=None, **kwargs)
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    model.set_weights([w.astype(np.float64) for w in float32_model.get_weights()])
    return model


def keras_train(model, x, y):
    # A loss computes in floatx (float32) unless told otherwise, which would put float32
    # round-off into every gradient.
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
    )
    for _ in range(STEPS):
        model.train_on_batch(x, y)


def torch_train(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def keras_float64_weights(by_layer, model):
    """`model.get_weights()` order, from per-layer arrays."""
    return [w for layer in model.layers if layer.weights for w in by_layer[layer.name]]


@pytest.mark.parametrize(
    "family,kwargs",
    [
        ("mobilenet", dict(input_shape=(96, 96, 3), alpha=0.25, dropout=0.0, classes=5)),
        ("mobilenet_v2", dict(input_shape=(96, 112, 3), alpha=0.35, classes=5)),
        ("mobilenet_v3_small", dict(alpha=0.75, dropout_rate=0.0, classes=5)),
    ],
)
def test_sgd_steps_match_keras_train_on_batch(family, kwargs, tmp_path):
    """Weights, moving statistics and eval logits after three SGD steps on one batch. The
    moving-variance update (biased, Keras momentum) and BatchNorm's batch statistics show here:
    PyTorch's unbiased update would move the variances by n/(n-1) too much."""
    kwargs = dict(kwargs, classifier_activation=None)
    keras_float32 = kr.build_keras(family, **kwargs)
    before = kr.write_keras_file(keras_float32, tmp_path / "before", "weights_h5")
    ours = tm.FAMILIES[family](weights=before, **torch_kwargs(kwargs)).double()
    if family.startswith("mobilenet_v3"):
        # Keras' Rescaling casts its Python-float scale through a float32 tensor, even in float64.
        ours.get_submodule("rescaling").scale = float(np.float32(1 / 127.5))
    initial = {k: v.clone() for k, v in ours.state_dict().items()}
    keras_model = keras_float64(family, keras_float32, kwargs)

    rng = np.random.default_rng(0)
    height, width = kwargs.get("input_shape", (96, 96, 3))[:2]
    x = rng.uniform(-1, 1, (BATCH, height, width, 3))
    if family.startswith("mobilenet_v3"):
        x = (x + 1) * 127.5
    y = rng.integers(0, 5, BATCH)
    keras_train(keras_model, x, y)
    torch_train(ours, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y))

    expected = {
        layer.name: [np.asarray(w) for w in layer.get_weights()]
        for layer in keras_model.layers
        if layer.weights
    }
    worst, where = 0.0, ""
    for name, arrays in expected.items():
        module = ours.get_submodule(name)
        for key, value in module.from_keras(arrays).items():
            if key == "num_batches_tracked":
                continue
            got = getattr(module, key).detach()
            error = ((got - value).abs().max() / max(1.0, value.abs().max())).item()
            if error > worst:
                worst, where = error, f"{name}.{key}"
    moved = max(
        (ours.state_dict()[k] - initial[k]).abs().max().item()
        for k in initial
        if k.endswith(("running_var", ".weight"))
    )
    assert moved > 1e-3, "training must have moved the weights for the comparison to mean anything"
    assert worst <= TOLERANCE, f"{where}: relative difference {worst:.2e} after {STEPS} steps"
    keras_model = keras_float32
    keras_model.set_weights(
        [w.astype(np.float32) for w in keras_float64_weights(expected, keras_float32)]
    )
    ours = ours.float()
    ours.eval()
    assert_parity(family, keras_model, ours, height, width, case=f"{family} after SGD")


def test_freezing_keeps_batchnorm_in_inference_mode_like_keras():
    model = tm.MobileNetV2(weights=None, input_shape=(3, 96, 96), classes=3)
    model.freeze(up_to="block_12_add")
    frozen_bn, live_bn = (
        model.get_submodule("block_12_project_BN"),
        model.get_submodule("Conv_1_bn"),
    )
    before = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    model.train()(torch.rand(2, 3, 96, 96) * 2 - 1).sum().backward()
    assert torch.equal(frozen_bn.running_mean, before[0])  # inference mode: no update
    assert not torch.equal(live_bn.running_mean, before[1])
    assert model.get_submodule("block_12_expand").weight.grad is None
    assert model.get_submodule("block_13_expand").weight.grad is not None
    assert not any(p.requires_grad for p in model.get_submodule("Conv1").parameters())
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters()) and frozen_bn.trainable


@pytest.mark.parametrize(
    "builder,classifier",
    [
        (tm.MobileNet, "conv_preds"),
        (tm.MobileNetV2, "predictions"),
        (tm.MobileNetV3Large, "logits"),
    ],
)
def test_head_features_and_classifier(builder, classifier):
    model = builder(weights=None, classifier_activation=None).eval()
    x = torch.rand(2, 3, 224, 224)
    assert model.get_classifier() is model.get_submodule(classifier)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == (7, 7)
        torch.testing.assert_close(model.forward_head(features), model(x))
        pre_logits = model.forward_head(features, pre_logits=True)
        classifier_in = (
            model.get_classifier().in_features
            if builder is tm.MobileNetV2
            else model.get_classifier().in_channels
        )
        assert pre_logits.shape == (2, classifier_in)
        maps = model.forward_layers(x, model.feature_layers())
        assert [m.shape[-1] for m in maps.values()] == [112, 56, 28, 14, 7]
    model.reset_classifier(7)
    fresh = model.get_classifier()
    assert model(x).shape == (2, 7) and model.config["classes"] == 7
    limit = math.sqrt(6 / (classifier_in + 7))  # Keras' Glorot uniform
    assert fresh.weight.abs().max() <= limit and fresh.weight.abs().max() > limit / 2
    assert torch.count_nonzero(fresh.bias) == 0
    # a base without the top gets the official top's shape, fresh (tests/test_fresh_head.py)
    no_top = builder(weights=None, include_top=False).reset_classifier(3)
    assert no_top.eval()(x).shape == (2, 3) and no_top.get_classifier().weight.shape[0] == 3
