"""`reset_classifier` on models without a classifier: the family's top, fresh, on a no-top
base (built, or loaded from a `_no_top` file or a user's graph), `reset_classifier(0)` for the
pooled features, and examples/finetune.py starting from a no-top file or a user's model."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import user_models as um
from helpers import trained_like

import torch_mobilenets as tm
from torch_mobilenets.keras_io import save_keras_h5
from torch_mobilenets.nn.layers import BatchNorm2d

ROOT = Path(__file__).resolve().parents[1]

# (builder, Keras builder, kwargs, input size): small widths, quick.
CASES = {
    "mobilenet": (tm.MobileNet, "MobileNet", {"alpha": 0.25}, 128),
    "mobilenet_v2": (tm.MobileNetV2, "MobileNetV2", {"alpha": 0.35}, 96),
    "mobilenet_v3_small": (tm.MobileNetV3Small, "MobileNetV3Small", {"alpha": 0.75}, 96),
}
BN_MOMENTUM = {"mobilenet": 0.99, "mobilenet_v2": 0.999, "mobilenet_v3_small": 0.999}
# The layers of each family's top, as the builder names them with include_top=True.
HEADS = {
    "mobilenet": ["global_average_pooling2d", "dropout", "conv_preds", "reshape_2", "predictions"],
    "mobilenet_v2": ["global_average_pooling2d", "predictions"],
    "mobilenet_v3_small": [
        "global_average_pooling2d",
        "conv_2",
        "conv_2_activation",
        "dropout",
        "logits",
        "flatten",
        "predictions",
    ],
}


def calibrated(model, family):
    """A trained model's BatchNorm statistics, from the batch statistics of one pass over
    images (so that the features depend on the image); in eval mode."""
    trained_like(model)
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(images(family, 8, seed=1))
    for m in norms:
        m.momentum = 1.0 - BN_MOMENTUM[family]
    return model.eval()


def no_top(family, **kwargs):
    builder, _, options, _ = CASES[family]
    torch.manual_seed(0)
    return calibrated(builder(weights=None, include_top=False, **options, **kwargs), family)


def images(family, n=2, seed=0):
    size = CASES[family][3]
    x = torch.from_numpy(um.pixels(size, size, n, seed)).permute(0, 3, 1, 2).contiguous()
    return x if family.startswith("mobilenet_v3") else tm.mobilenet_v2.preprocess_input(x)


def head_layers(model):
    return model.layer_names[model.layer_names.index(model.feature_layer) + 1 :]


def weighted(model, names):
    return [model.get_submodule(n) for n in names if hasattr(model.get_submodule(n), "weight")]


@pytest.mark.parametrize("family", list(CASES))
def test_a_fresh_top_on_a_no_top_base(family, tmp_path):
    model = no_top(family)
    x = images(family)
    with torch.no_grad():
        features = model.forward_features(x)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.get_classifier() is None

    assert model.reset_classifier(5) is model
    # The builder's own top, under its names: the model is the builder's with the top.
    assert head_layers(model) == HEADS[family]
    builder, _, options, _ = CASES[family]
    official = builder(weights=None, classes=5, classifier_activation=None, **options)
    assert model.layer_names == official.layer_names
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in official.state_dict().items()
    }
    assert model.config["include_top"] and model.config["classes"] == 5
    assert model.config["classifier_activation"] is None

    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 5)
        assert (logits[0] - logits[1]).abs().max() >= 1e-2  # depends on the image
        # The base is untouched: its weights and what it computes.
        torch.testing.assert_close(model.forward_features(x), features, rtol=0, atol=0)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_state.items())
    # Logits, no softmax: they do not sum to one.
    assert not torch.allclose(logits.sum(1), torch.ones(2))

    # Keras' initialisation: Glorot-uniform kernels, zero biases.
    for layer in weighted(model, HEADS[family]):
        shape = layer.keras_shapes()[0]
        receptive = math.prod(shape[:-2])
        limit = math.sqrt(6 / (shape[-2] * receptive + shape[-1] * receptive))
        kernel = layer.weight.detach()
        assert kernel.abs().max() <= limit
        std = float(kernel.std())
        assert abs(std - limit / math.sqrt(3)) <= 0.06 * limit / math.sqrt(3), (std, limit)
        assert torch.count_nonzero(layer.bias) == 0

    # Gradients reach the head and, through it, the base.
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 3])).backward()
    for layer in weighted(model, HEADS[family]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    first = model.get_submodule(model.layer_names[0 if family != "mobilenet_v3_small" else 1])
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0

    # A checkpoint of it rebuilds it (V1 and V2 with the top: at Keras' 224x224 default).
    model.eval()
    tm.save_checkpoint(model, tmp_path / "fresh.safetensors")
    again = tm.load_model(tmp_path / "fresh.safetensors")
    size = 224 if family in ("mobilenet", "mobilenet_v2") else CASES[family][3]
    y = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again(y), model(y), rtol=0, atol=0)


@pytest.mark.keras
@pytest.mark.parametrize("family", list(CASES))
def test_the_fresh_top_is_the_keras_top(family):
    """Layer for layer as Keras builds include_top=True: its names (ours for the layers Keras
    leaves unnamed), the classes of the layers, the shapes of the weights."""
    import keras

    _, keras_builder, options, size = CASES[family]
    reference = getattr(keras.applications, keras_builder)(
        weights=None,
        include_top=True,
        classes=5,
        classifier_activation=None,
        input_shape=(size, size, 3),
        **options,
    )
    base = getattr(keras.applications, keras_builder)(
        weights=None, include_top=False, input_shape=(size, size, 3), **options
    )
    keras_head = reference.layers[len(base.layers) :]
    model = no_top(family).reset_classifier(5)
    ours = head_layers(model)
    assert len(ours) == len(keras_head)
    # Layers Keras leaves unnamed (auto names, numbered by Keras' session counters): our
    # stable names for them.
    unnamed = {
        "GlobalAveragePooling2D": ("global_average_pooling2d", "global_average_pooling2d"),
        "Activation": ("activation", "conv_2_activation"),
        "ReLU": ("re_lu", "conv_2_activation"),
        "Dropout": ("dropout", "dropout"),
        "Flatten": ("flatten", "flatten"),
    }
    for name, layer in zip(ours, keras_head):
        kind = type(layer).__name__
        auto, stable = unnamed.get(kind, ("-", None))
        if re.fullmatch(rf"{auto}(_\d+)?", layer.name):
            assert name == stable, (name, layer.name)
        else:
            assert name == layer.name
        if layer.weights:
            module = model.get_submodule(name)
            assert module.keras_class == kind
            assert module.keras_shapes() == [tuple(w.shape) for w in layer.weights]


@pytest.mark.parametrize("family", list(CASES))
def test_reset_classifier_0_gives_the_pooled_features(family):
    x = images(family)
    for model in (no_top(family), no_top(family, pooling="avg")):
        with torch.no_grad():
            pooled = model.forward_features(x).mean((2, 3))
        assert model.reset_classifier(0) is model
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), pooled, rtol=1e-6, atol=1e-6)
        assert model.config["pooling"] == "avg" and not model.config["include_top"]
        assert model.get_classifier() is None
    # With the top: its head goes, the pooled feature map stays (V3: before conv_2).
    builder, _, options, size = CASES[family]
    torch.manual_seed(0)
    model = calibrated(builder(weights=None, input_shape=(3, size, size), **options), family)
    with torch.no_grad():
        pooled = model.forward_features(x).mean((2, 3))
        if family != "mobilenet_v3_small":
            pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
            torch.testing.assert_close(pre_logits, pooled, rtol=1e-6, atol=1e-6)
        assert model.reset_classifier(0)(x).shape == pooled.shape
        torch.testing.assert_close(model(x), pooled, rtol=1e-6, atol=1e-6)
    # And back to a classifier.
    assert model.reset_classifier(4).eval()(x).shape == (2, 4)


def test_what_cannot_get_a_top():
    with pytest.raises(ValueError, match="pools by maximum"):
        no_top("mobilenet_v2", pooling="max").reset_classifier(3)
    backbone = tm.MobileNetV3Backbone.from_preset("mobilenet_v3_small")
    with pytest.raises(ValueError, match="no top is known for its family"):
        backbone.reset_classifier(3)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be an integer"):
            no_top("mobilenet").reset_classifier(bad)


# ------------------------------------------------------------------------------ users' graphs
def _pooled(layers, x):
    return layers.Dropout(0.1)(layers.GlobalAveragePooling2D()(x))


USER_CASES = [
    ("keras3", "mobilenet_v2", {"alpha": 0.35}, lambda layers, x: x, ["predictions"]),
    ("keras3", "mobilenet", {"alpha": 0.25}, _pooled, ["conv_preds", "predictions"]),
    pytest.param(
        "keras2",
        "mobilenet_v3_small",
        {"alpha": 0.75, "minimalistic": True},
        lambda layers, x: x,
        ["conv_2", "dropout", "logits", "predictions"],
        marks=pytest.mark.tf_keras,
    ),
]


@pytest.mark.keras
@pytest.mark.parametrize("writer,family,kwargs,head,names", USER_CASES)
def test_a_fresh_top_on_a_users_graph(writer, family, kwargs, head, names, tmp_path):
    """A base nested in a user's model that ends at the feature map or a pooled vector: the
    family's top, flat, in the model and in the Keras graph its checkpoint records."""
    keras_model = um.build(writer, "head", family, (96, 96, 3), base_kwargs=kwargs, head=head)
    path, _ = um.save(keras_model, writer, "h5", tmp_path / "model")
    model = tm.load_model(path)
    x = torch.from_numpy(um.pixels(96, 96)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        before = model(x)
        features = model.forward_features(x)
    pooled = before if before.dim() == 2 else before.mean((2, 3))
    assert model.reset_classifier(5) is model
    assert model.layer_names[-len(names) :] == names
    if family == "mobilenet":  # Keras' V1 dropout, after the user's own (Keras numbers its name)
        assert isinstance(model.get_submodule(model.layer_names[-3]), torch.nn.Dropout)
    assert type(model.get_classifier()).__name__ == "Dense"
    model.eval()
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(model.forward_features(x), features, rtol=0, atol=0)
        if family != "mobilenet_v3_small":  # V3: conv_2's features
            pre_logits = model.forward_head(features, pre_logits=True)
            torch.testing.assert_close(pre_logits, pooled, rtol=1e-6, atol=1e-6)
    assert logits.shape == (2, 5) and (logits[0] - logits[1]).abs().max() >= 1e-2
    # The checkpoint rebuilds the graph with its new top.
    tm.save_checkpoint(model, tmp_path / "fresh.safetensors")
    again = tm.load_model(tmp_path / "fresh.safetensors")
    assert again.layer_names == model.layer_names
    assert type(again.get_classifier()).__name__ == "Dense"
    with torch.no_grad():
        torch.testing.assert_close(again(x), logits, rtol=0, atol=0)
    # num_classes=0: the pooled feature map.
    model.reset_classifier(0)
    tm.save_checkpoint(model, tmp_path / "features.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(x), features.mean((2, 3)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            tm.load_model(tmp_path / "features.safetensors")(x), model(x), rtol=0, atol=0
        )


@pytest.mark.keras
def test_a_resized_classifier_is_recorded(tmp_path):
    keras_model = um.build(
        "keras3", "inlined", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35}
    )
    path, _ = um.save(keras_model, "keras3", "keras", tmp_path)
    model = tm.load_model(path).reset_classifier(7)
    tm.save_checkpoint(model, tmp_path / "seven.safetensors")
    again = tm.load_model(tmp_path / "seven.safetensors")
    x = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
        assert again(x).shape == (2, 7)


# ------------------------------------------------------------------------ examples/finetune.py
def finetune(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "examples/finetune.py", "--synthetic", "8", "--batch-size", "4"]
    command += ["--steps", "1", "--epochs", "2", "--classes", "3", "--output", str(tmp_path)]
    result = subprocess.run(
        command + [str(a) for a in args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [tm.load_model(tmp_path / f"epoch_{k}.safetensors") for k in (1, 2)]


@pytest.mark.parametrize(
    "family,freeze", [("mobilenet_v2", "block_15_add"), ("mobilenet_v3_small", "conv_1_bn")]
)
def test_finetune_from_a_no_top_file(family, freeze, tmp_path):
    """A `_no_top.h5` as Keras' transfer learning starts from (the official files' layout):
    the model gets its family's top, fresh, and trains it."""
    base = no_top(family)
    source = tmp_path / f"{family}_no_top.h5"
    save_keras_h5(base, source)
    first, last = finetune(tmp_path, "--weights", source, "--size", 96, "--freeze-up-to", freeze)
    assert head_layers(last) == HEADS[family]
    assert last.config["include_top"] and last.config["classes"] == 3
    classifier = "predictions" if family == "mobilenet_v2" else "logits"
    a, b = first.state_dict(), last.state_dict()
    assert not torch.equal(a[f"{classifier}.weight"], b[f"{classifier}.weight"])
    # The frozen base is the file's, BatchNorm statistics included.
    frozen = base.layer_names[: base.layer_names.index(freeze) + 1]
    source_state = base.state_dict()
    for key, value in source_state.items():
        if key.split(".")[0] in frozen and not key.endswith("num_batches_tracked"):
            assert torch.equal(b[key], value), key  # (Keras files keep no step count)
    with torch.no_grad():
        assert last.eval()(images(family)).shape == (2, 3)


@pytest.mark.keras
def test_finetune_from_a_users_model(tmp_path):
    """A user's .keras: the base nested and pooled, no classifier; it gets V2's top. And
    their model with a softmax head: the head resized, trained on its probabilities."""
    features = um.build(
        "keras3", "head", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35}, head=_pooled
    )
    path, _ = um.save(features, "keras3", "keras", tmp_path / "features")
    first, last = finetune(tmp_path / "a", "--weights", path)
    assert last.layer_names[-1] == "predictions" and last.get_classifier().out_features == 3
    weights = [m.state_dict()["predictions.weight"] for m in (first, last)]
    assert weights[0].shape == (3, 1280) and not torch.equal(*weights)

    softmax = um.build(
        "keras3", "sequential", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35}
    )
    path, _ = um.save(softmax, "keras3", "keras", tmp_path / "softmax")
    first, last = finetune(tmp_path / "b", "--weights", path, "--classes", 4)
    dense = last.get_classifier()
    assert dense.out_features == 4
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(last.eval()(x).sum(1).numpy(), 1, rtol=1e-6)  # softmax kept
