"""A faster inference copy of a model: `optimize_for_inference(model)`.

Eager `forward` already folds Keras' stride-2 ZeroPadding2D into the convolutions and runs
activations in place (see `functional._plan`). For inference only, this also folds every
BatchNormalization into the convolution before it, stores weights channels-last, and optionally
compiles. The copy computes the same function to float32 round-off; the model given is untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .functional import KerasModel
from .layers import BatchNorm2d, Conv2d


class FoldedAway(nn.Identity):
    """Where a BatchNormalization was before it was folded into the convolution feeding it."""

    def output_shape(self, shape):
        return shape


def fold_batch_norms(model: KerasModel) -> KerasModel:
    """Fold each BatchNorm2d into the Conv2d it reads from, when nothing else reads the conv,
    in place. Only valid for inference (BatchNorm in training uses batch statistics)."""
    readers: dict[int, int] = {}
    for _, inputs in model._graph:
        for i in inputs:
            readers[i] = readers.get(i, 0) + 1
    for node, (name, inputs) in enumerate(model._graph, start=1):
        bn = model.get_submodule(name)
        if not isinstance(bn, BatchNorm2d) or len(inputs) != 1 or readers[inputs[0]] != 1:
            continue
        conv = model.get_submodule(model._graph[inputs[0] - 1][0]) if inputs[0] else None
        if not isinstance(conv, Conv2d):
            continue
        with torch.no_grad():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift)
        setattr(model, name, FoldedAway())
    model._plan = None
    return model


def optimize_for_inference(model: KerasModel, channels_last: bool = True,
                           compile: bool = False) -> nn.Module:
    """A copy of `model` for inference: BatchNorm folded, in eval mode, without gradients.

    `channels_last` stores the convolution weights channels-last (call it on channels-last input
    for the full benefit: `x.to(memory_format=torch.channels_last)`); `compile` wraps the result
    in `torch.compile` (dynamic sizes allowed), which pays a compilation on first call.
    """
    fast = fold_batch_norms(copy.deepcopy(model).eval())
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(fast, dynamic=True)
    return fast
