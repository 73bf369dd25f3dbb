"""optimize_for_inference: the same function, faster, and the model given untouched."""

import pytest
import torch

import torch_mobilenets as tm
from conftest import PARITY_TOLERANCE
from torch_mobilenets.inference import FoldedAway


def trained_like(model):
    """BatchNorm statistics far from identity, as in a trained model."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
    return model.eval()


@pytest.mark.parametrize("builder,kwargs", [
    (tm.MobileNet, dict(input_shape=(3, 97, 131), classifier_activation=None)),
    (tm.MobileNetV2, dict(include_top=False, pooling="avg")),
    (tm.MobileNetV3Small, dict(classifier_activation=None)),
    (tm.MobileNetV3Large, dict(minimalistic=True, classifier_activation=None)),
])
def test_optimized_copy_computes_the_same_function(builder, kwargs):
    model = trained_like(builder(weights=None, **kwargs))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = tm.optimize_for_inference(model)
    assert sum(isinstance(m, FoldedAway) for m in fast.modules()) > 10
    size = model.input_shape[1:] if model.input_shape[1] else (97, 131)
    x = torch.rand(2, 3, *size) * 255
    if builder in (tm.MobileNet, tm.MobileNetV2):
        x = x / 127.5 - 1
    with torch.no_grad():
        expected = model(x)
        for got in (fast(x), fast(x.contiguous(memory_format=torch.channels_last))):
            error = (got - expected).abs().max() / max(1.0, expected.abs().max())
            assert error <= PARITY_TOLERANCE
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training is False and all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters())
