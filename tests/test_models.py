"""The PyTorch side alone: structure, names, shapes and Keras' argument rules."""

import pytest
import torch

import torch_mobilenets as tm
from torch_mobilenets.nn import layers


def keras_param_count(model):
    """Keras counts BatchNorm's moving statistics as (non-trainable) weights."""
    return sum(
        t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked")
    )


# Keras' model.count_params() at alpha 1, 224x224 (keras-mobilenet-notes.md).
@pytest.mark.parametrize(
    "builder,top,no_top",
    [
        (tm.MobileNet, 4_253_864, 3_228_864),
        (tm.MobileNetV2, 3_538_984, 2_257_984),
        (tm.MobileNetV3Small, 2_554_968, 939_120),
        (tm.MobileNetV3Large, 5_507_432, 2_996_352),
    ],
)
def test_parameter_counts_match_keras(builder, top, no_top):
    assert keras_param_count(builder(weights=None)) == top
    assert keras_param_count(builder(weights=None, include_top=False)) == no_top


def test_state_dict_keys_are_keras_layer_names():
    keys = set(tm.MobileNet(weights=None).state_dict())
    assert {
        "conv1.weight",
        "conv_dw_1_bn.running_mean",
        "conv_pw_13.weight",
        "conv_preds.bias",
    } <= keys
    keys = set(tm.MobileNetV2(weights=None).state_dict())
    assert {
        "Conv1.weight",
        "bn_Conv1.running_var",
        "block_1_expand_BN.weight",
        "expanded_conv_project.weight",
        "predictions.weight",
    } <= keys
    keys = set(tm.MobileNetV3Small(weights=None).state_dict())
    assert {
        "conv.weight",
        "expanded_conv_3_squeeze_excite_conv_1.bias",
        "conv_1_bn.weight",
        "conv_2.bias",
        "logits.weight",
    } <= keys


def test_every_keras_layer_is_a_named_child():
    model = tm.MobileNetV2(weights=None, include_top=False)
    names = model.layer_names
    assert names[:3] == ["Conv1", "bn_Conv1", "Conv1_relu"]
    assert "block_1_pad" in names and "block_2_add" in names and "block_1_add" not in names
    assert isinstance(model.get_submodule("block_12_add"), layers.Add)
    assert [n for n, _ in model.named_children()] == names


@pytest.mark.parametrize(
    "builder,channels",
    [
        (tm.MobileNet, 1024),
        (tm.MobileNetV2, 1280),
        (tm.MobileNetV3Small, 576),
        (tm.MobileNetV3Large, 960),
    ],
)
def test_output_shapes(builder, channels):
    x = torch.rand(2, 3, 97, 131) * 255
    with torch.no_grad():
        assert builder(weights=None, classes=7, input_shape=(3, 97, 131))(x).shape == (2, 7)
        features = builder(weights=None, include_top=False).eval()(x)
        assert features.shape[:2] == (2, channels) and features.dim() == 4
        for pooling in ("avg", "max"):
            pooled = builder(weights=None, include_top=False, pooling=pooling).eval()(x)
            assert pooled.shape == (2, channels)


def test_softmax_top_sums_to_one():
    model = tm.MobileNetV3Small(weights=None).eval()
    with torch.no_grad():
        probs = model(torch.rand(3, 3, 64, 64) * 255)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_static_input_shape_is_enforced_like_keras():
    model = tm.MobileNetV2(weights=None, input_shape=(3, 96, 96))
    with pytest.raises(ValueError, match=r"expected shape \(N, 3, 96, 96\), got \(1, 3, 97, 97\)"):
        model(torch.zeros(1, 3, 97, 97))


def test_v1_v2_top_defaults_to_static_224_and_v3_to_dynamic():
    assert tm.MobileNet(weights=None).input_shape == (3, 224, 224)
    assert tm.MobileNetV2(weights=None, include_top=False).input_shape == (3, None, None)
    assert tm.MobileNetV3Large(weights=None).input_shape == (3, None, None)


def test_keras_default_names():
    assert (
        tm.MobileNet(weights=None, alpha=0.5, input_shape=(3, 128, 128)).name
        == "mobilenet_0.50_128"
    )
    assert tm.MobileNetV2(weights=None).name == "mobilenetv2_1.00_224"
    assert tm.MobileNetV3Small(weights=None).name == "MobileNetV3Small"


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: tm.MobileNetV2(weights="imagenet", classes=10), "`classes` should be 1000"),
        (
            lambda: tm.MobileNet(weights=None, input_shape=(3, 31, 64), include_top=False),
            "at least 32x32",
        ),
        (lambda: tm.MobileNetV3Small(weights=None, input_shape=(3, 64, 16)), "at least 32x32"),
        (
            lambda: tm.MobileNetV2(weights=None, include_top=False, input_shape=(160, 160, 3)),
            r"channels first: did you mean \(3, 160, 160\)\?",
        ),
        (lambda: tm.MobileNetV2(weights=None, input_shape=(3, None, None)), "static `input_shape`"),
        (lambda: tm.MobileNet(weights="imagenet", alpha=0.3), "alpha can be one of"),
        (
            lambda: tm.MobileNet(weights="imagenet", depth_multiplier=2),
            "depth multiplier must be 1",
        ),
        (lambda: tm.MobileNetV2(weights="imagenet", alpha=0.6), "alpha must be one of"),
        (lambda: tm.MobileNetV3Large(weights="imagenet", alpha=0.5), "alpha can be one of"),
        (
            lambda: tm.MobileNetV3Small(weights="imagenet", classifier_activation="sigmoid"),
            "Only `None` and `softmax`",
        ),
        (
            lambda: tm.MobileNetV2(weights="imagenet", input_shape=(3, 128, 160)),
            r"`input_shape` should be \(3, 224, 224\)",
        ),
        (lambda: tm.MobileNetV2(weights="no/such/file.h5"), "not an existing file"),
        (
            lambda: tm.MobileNet(weights=None, input_tensor=torch.zeros(1, 3, 224, 224)),
            "no PyTorch meaning",
        ),
        (lambda: tm.MobileNetV3Small(weights=None, include_top=False, pooling="mean"), "`pooling`"),
        (lambda: tm.MobileNet(weights=None, depth_multiplier=1.5), "positive integer"),
        (
            lambda: tm.MobileNetV3Small(weights=None, classifier_activation="swishy"),
            "Unknown classifier_activation",
        ),
    ],
)
def test_keras_argument_checks(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_imagenet_weights_offline_error_names_the_url(tmp_path, monkeypatch):
    # The download itself is tested over HTTP in test_download.py; here only its failure mode.
    from weights_server import closed_port_url

    from torch_mobilenets.pretrained.download import DownloadError

    base = closed_port_url()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_MOBILENETS_WEIGHTS_URL", base)
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    with pytest.raises(DownloadError, match=f"{base}mobilenet_v2/{file_name}.*weights='"):
        tm.MobileNetV2(weights="imagenet")


def test_callable_classifier_activation():
    model = tm.MobileNetV3Small(weights=None, classifier_activation=torch.sigmoid).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64) * 255)
    assert out.min() > 0 and out.max() < 1


def test_preprocess_input():
    pixels = torch.tensor([[0, 127, 255]], dtype=torch.uint8)
    torch.testing.assert_close(
        tm.mobilenet_v1.preprocess_input(pixels), torch.tensor([[-1.0, 127 / 127.5 - 1, 1.0]])
    )
    torch.testing.assert_close(
        tm.mobilenet_v2.preprocess_input(pixels.float()),
        torch.tensor([[-1.0, 127 / 127.5 - 1, 1.0]]),
    )
    x = torch.rand(2, 3)
    assert tm.mobilenet_v3.preprocess_input(x) is x


def test_tf_same_padding_and_correct_pad():
    assert layers.tf_same_padding(224, 3, 2) == (0, 1)
    assert layers.tf_same_padding(225, 3, 2) == (1, 1)
    assert layers.tf_same_padding(7, 1, 1) == (0, 0)
    assert layers.correct_pad((8, 224, 225), 3) == ((0, 1), (1, 1))
    assert layers.correct_pad((8, None, None), 5) == ((1, 2), (1, 2))


def test_make_divisible():
    assert [layers.make_divisible(v) for v in (11.2, 16, 12, 1280 * 1.4, 35, 9)] == [
        16,
        16,
        16,
        1792,
        32,
        16,
    ]


def test_keras_batchnorm_training_uses_biased_variance_and_keras_momentum():
    bn = layers.BatchNorm2d(3, momentum=0.9).train()
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    y = bn(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var)
    expected = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-3)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert bn.eps == 1e-3


def test_dynamic_model_freshly_built_on_meta_device_has_no_storage():
    with torch.device("meta"):
        model = tm.MobileNetV3Large(weights=None)
    assert all(p.is_meta for p in model.parameters())


def test_training_step_runs_through_inplace_activations():
    model = tm.MobileNetV3Small(weights=None, classes=4, classifier_activation=None).train()
    loss = model(torch.rand(2, 3, 64, 64) * 255).logsumexp(1).mean()
    loss.backward()
    assert model.get_submodule("conv").weight.grad.abs().sum() > 0
