"""The layer vocabulary shared by every model: PyTorch modules that compute what the Keras layers
of the same name compute, in NCHW.

Each layer also knows two things the Keras functional API knows about its layers:
- `output_shape(*input_shapes)`: the static shape it produces, `(C, H, W)` with `None` for a
  dynamic size. Keras computes some paddings from these static shapes at build time
  (`correct_pad`), so the model builders need them too.
- for layers with weights, `keras_class`, `keras_variables()`, `keras_shapes()`, and both
  directions of the translation: `from_keras(arrays)` turns the Keras variables, in Keras' order
  and layout, into this module's state, and `to_keras()` gives them back. The converter and the
  Keras writer are driven by these alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Shape = tuple  # (C, H, W) or (C,); H and W may be None (a dynamic input size)

# Keras' default BatchNormalization epsilon; PyTorch's is 1e-5, which costs ~1e-2 in the logits.
KERAS_BN_EPSILON = 1e-3


def make_divisible(value: float, divisor: int = 8) -> int:
    """Keras' `_make_divisible` (V2) and `_depth` (V3): round to a multiple of `divisor`, never
    dropping more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding for one axis: computed from the actual input size, the odd
    pixel goes after (bottom/right), unlike PyTorch's symmetric padding. Integer arithmetic
    only, so it also works on symbolic sizes (torch.export with dynamic shapes)."""
    # (ceil(size / stride) - 1) * stride + kernel - size, without a float division
    total = (-size) % stride + kernel - stride
    if kernel < stride:  # never for the MobileNets; keeps the common case free of a max()
        total = max(total, 0)
    return total // 2, total - total // 2


def correct_pad(shape: Shape, kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras' `imagenet_utils.correct_pad`: the ZeroPadding2D before a stride-2 "valid" conv,
    fixed when the model is built, from the static size. A dynamic (None) height means "assume
    even", whatever size later arrives; that is how Keras builds its default models."""
    _, height, width = shape
    if height is None:
        adjust = (1, 1)
    elif width is None:
        raise ValueError(
            f"input_shape {shape} has a static height but a dynamic width; Keras cannot build "
            "this padding either. Give both sizes or neither."
        )
    else:
        adjust = (1 - height % 2, 1 - width % 2)
    half = kernel // 2
    return (half - adjust[0], half), (half - adjust[1], half)


def capturing_graph() -> bool:
    """Whether this call is being recorded into a graph (torch.jit.trace, torch.compile,
    torch.export and the ONNX exporters built on them) rather than run eagerly."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def compiling_for_speed() -> bool:
    """Whether this call is being captured by torch.compile for training here, rather than
    exported (torch.export, the ONNX exporters), traced for another runtime or compiled for
    inference: only then does the graph hold what eager mode does for speed (folded padding,
    channels-last, `CompiledConv2d`). Exporters do not accept those equally well; a compiled
    inference graph keeps the plain layers, since with symbolic sizes (`dynamic=True`, which
    Dynamo gives code no way to tell apart) Inductor's C++ code generation spent over 10
    minutes simplifying the expressions they make (V3 Small), against 90 s without."""
    return (
        torch.is_grad_enabled()
        and torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    )


def _conv2d_backward(
    grad, x, weight, stride, padding, dilation, groups, input_needed, weight_needed
):
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        None,
        stride,
        padding,
        dilation,
        False,
        [0, 0],
        groups,
        [input_needed, weight_needed, False],
    )
    return _in_layout_of(grad_x, x, input_needed), _in_layout_of(grad_weight, weight, weight_needed)


def _in_layout_of(value: torch.Tensor | None, like: torch.Tensor, needed: bool) -> torch.Tensor:
    if not needed or value is None:
        return like.new_empty(0)
    if value.stride() != like.stride():  # the op's declared strides are `like`'s
        return torch.empty_like(like).copy_(value)
    return value


def _conv2d_backward_shapes(
    grad, x, weight, stride, padding, dilation, groups, input_needed, weight_needed
):
    return (
        torch.empty_like(x) if input_needed else x.new_empty(0),
        torch.empty_like(weight) if weight_needed else weight.new_empty(0),
    )


def _define_conv2d_backward() -> torch.library.Library | None:
    """`torch.ops.torch_mobilenets.conv2d_backward`: the gradients of a convolution's input and
    kernel (an empty tensor for one not needed), computed from tensors in the layouts eager
    mode gives them. Inductor's own lowering of the backward hands oneDNN gradients in
    whatever layout its kernels chose, which oneDNN reorders on every call (1.2x the step of
    MobileNetV3 Small); an opaque op with exact strides gets `grad` channels-last like `x`.
    Defined through a Library rather than `torch.library.custom_op`, whose Python wrapper took
    0.16 ms a call in a profiled step (this: 0.02 ms over the aten op)."""
    if hasattr(torch.ops.torch_mobilenets, "conv2d_backward"):
        return None  # a second import of this module (a reload): already defined
    library = torch.library.Library("torch_mobilenets", "FRAGMENT")
    library.define(
        "conv2d_backward(Tensor grad, Tensor x, Tensor weight, SymInt[] stride, "
        "SymInt[] padding, SymInt[] dilation, SymInt groups, bool input_needed, "
        "bool weight_needed) -> (Tensor, Tensor)",
        tags=(torch.Tag.needs_exact_strides,),
    )
    library.impl("conv2d_backward", _conv2d_backward, "CompositeExplicitAutograd")
    torch.library.register_fake(
        "torch_mobilenets::conv2d_backward", _conv2d_backward_shapes, lib=library
    )
    return library


_LIBRARY = _define_conv2d_backward()


class CompiledConv2d(torch.autograd.Function):
    """`F.conv2d` whose backward is `conv2d_backward`: what Conv2d runs under torch.compile
    with gradients (see `compiling_for_speed`). Its backward is not differentiable again."""

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, *ctx.convolution = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight = torch.ops.torch_mobilenets.conv2d_backward(
            grad, x, weight, *ctx.convolution, needs_x, needs_weight
        )
        return (
            grad_x if needs_x else None,
            grad_weight if needs_weight else None,
            grad.sum((0, 2, 3)) if needs_bias else None,
            None,
            None,
            None,
            None,
        )


def _spatial(size: int | None, fn: Callable[[int], int]) -> int | None:
    return None if size is None else fn(size)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class KerasWeighted(Protocol):
    """What a layer with weights offers the converter and the Keras writer."""

    keras_class: str

    def keras_variables(self) -> list[str]: ...

    def keras_shapes(self) -> list[tuple]: ...

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]: ...

    def to_keras(self) -> list[np.ndarray]: ...


def _check_keras_shapes(layer: KerasWeighted, arrays: Sequence[np.ndarray]) -> None:
    """Raise a ValueError naming every Keras variable whose shape differs from what this layer
    holds; the converter adds the file and layer names."""
    expected = layer.keras_shapes()
    got = [tuple(a.shape) for a in arrays]
    if len(got) != len(expected):
        raise ValueError(
            f"{layer.keras_class} expects {len(expected)} tensors {expected}, the file has "
            f"{len(got)} {got}"
        )
    for name, want, have in zip(layer.keras_variables(), expected, got):
        if want != have:
            raise ValueError(f"{name}: expected shape {want}, the file has {have}")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy of a parameter or buffer, whatever its device and dtype."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def glorot_uniform_(weight: torch.Tensor, keras_kernel_shape: tuple) -> None:
    """Keras' default kernel initializer, with Keras' fans (from its own kernel layout)."""
    receptive = math.prod(keras_kernel_shape[:-2])
    fan_in, fan_out = keras_kernel_shape[-2] * receptive, keras_kernel_shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-limit, limit)


class _KerasInitialized:
    """Layers start as Keras starts them: Glorot-uniform kernels, zero biases."""

    weight: torch.Tensor
    keras_shapes: Callable[[], list[tuple]]

    def reset_parameters(self) -> None:
        glorot_uniform_(self.weight, self.keras_shapes()[0])
        bias = getattr(self, "bias", None)
        if bias is not None:
            nn.init.zeros_(bias)


class Conv2d(_KerasInitialized, nn.Conv2d):
    """Keras `Conv2D`, with Keras' "same" (TF, computed per input size) or "valid" padding."""

    keras_class = "Conv2D"

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding="same",
        bias=False,
        groups=1,
        dilation=1,
    ):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.keras_padding = padding
        kernel, strides, dilations = _pair(kernel_size), _pair(stride), _pair(dilation)
        reach = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))  # dilated kernel
        static_pad: tuple = (0, 0)
        # With stride 1 and an odd kernel, TF "same" is symmetric: let the conv pad for free.
        if padding == "same" and strides == (1, 1) and all(r % 2 == 1 for r in reach):
            static_pad = (reach[0] // 2, reach[1] // 2)
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride=strides,
            padding=static_pad,
            bias=bias,
            groups=groups,
            dilation=dilations,
        )
        self.reach = reach
        self._dynamic_same = (
            padding == "same" and static_pad == (0, 0) and (strides != (1, 1) or reach != (1, 1))
        )

    def forward(self, x: torch.Tensor, pad=None) -> torch.Tensor:
        """`pad`, ((top, bottom), (left, right)), is a preceding ZeroPadding2D folded in (see
        `forward_padded`)."""
        if pad is None:
            if not self._dynamic_same:
                return self.convolution(x, self.weight, self.padding, self.dilation)
            pad = self.same_padding(x)
        # Eager and under torch.compile: the padding folded into a grown kernel, no padded copy
        # of `x` (Inductor would make one). A graph being exported gets Keras' own two ops
        # instead (see `forward_explicitly_padded`), and so does one compiled for inference
        # (see `compiling_for_speed`).
        if not capturing_graph() or compiling_for_speed():
            return self.forward_padded(x, pad)
        return self.forward_explicitly_padded(x, pad)

    def forward_explicitly_padded(self, x: torch.Tensor, pad) -> torch.Tensor:
        """This conv after ZeroPadding2D(pad) as Keras computes it: a Pad of `x`, then the conv
        with the model's own kernel. Captured graphs get this, because there a grown kernel is
        a Pad of a weight, which exporters and runtimes mishandle (the TorchScript ONNX
        exporter cannot size the kernel; ONNX Runtime's constant folding breaks the graph on
        the large ones that the dynamo exporter leaves unfolded), while Pad then Conv is a
        pair that the dynamo exporter and OpenVINO merge into one convolution. Symmetric
        pads go into the conv, but only when they are plain ints: symbolic sizes (a dynamic
        torch.export) and traced ones (torch.jit.trace records them as tensors) are never
        compared, so the graph computes the pads from each input's size, whatever its
        parity."""
        (top, bottom), (left, right) = pad
        plain = all(type(p) is int for p in (top, bottom, left, right))
        if plain and top == bottom and left == right:
            return self.convolution(x, self.weight, (top, left), self.dilation)
        x = F.pad(x, (left, right, top, bottom))
        return self.convolution(x, self.weight, (0, 0), self.dilation)

    def convolution(self, x: torch.Tensor, weight: torch.Tensor, padding, dilation):
        if compiling_for_speed():
            return CompiledConv2d.apply(
                x, weight, self.bias, self.stride, tuple(padding), tuple(dilation), self.groups
            )
        return F.conv2d(x, weight, self.bias, self.stride, padding, dilation, self.groups)

    def same_padding(self, x: torch.Tensor) -> tuple:
        """TensorFlow's "same" padding for `x`, as ((top, bottom), (left, right))."""
        (kh, kw), (sh, sw) = self.reach, self.stride
        return tf_same_padding(x.shape[-2], kh, sh), tf_same_padding(x.shape[-1], kw, sw)

    def forward_padded(self, x: torch.Tensor, pad) -> torch.Tensor:
        """This conv after ZeroPadding2D(pad), without making the padded copy of `x`."""
        if self.reach != self.kernel_size:  # a dilated kernel cannot grow by plain zero rows
            return self.forward_explicitly_padded(x, pad)
        weight, padding = self.padded_kernel(pad)
        return self.convolution(x, weight, padding, (1, 1))

    def padded_kernel(self, pad) -> tuple[torch.Tensor, tuple[int, int]]:
        """(kernel, symmetric padding) computing this conv after ZeroPadding2D(pad): padding
        (t, b) around a kernel equals symmetric padding max(t, b) around the kernel grown by
        |b - t| zero rows on the side that has less padding. Exact, and for the (0, 1) pads of
        Keras' stride-2 layers about as fast as the plain conv."""
        (top, bottom), (left, right) = pad
        if top == bottom and left == right:
            return self.weight, (top, left)
        weight = F.pad(
            self.weight,
            (
                max(right - left, 0),
                max(left - right, 0),
                max(bottom - top, 0),
                max(top - bottom, 0),
            ),
        )
        return weight, (max(top, bottom), max(left, right))

    def output_shape(self, shape: Shape) -> Shape:
        _, height, width = shape
        (kh, kw), (sh, sw) = self.reach, self.stride
        if self.keras_padding == "same":
            return (
                self.out_channels,
                _spatial(height, lambda n: math.ceil(n / sh)),
                _spatial(width, lambda n: math.ceil(n / sw)),
            )
        return (
            self.out_channels,
            _spatial(height, lambda n: (n - kh) // sh + 1),
            _spatial(width, lambda n: (n - kw) // sw + 1),
        )

    def with_outputs(self, channels: int) -> Conv2d:
        """A fresh layer like this one with another number of output channels."""
        return Conv2d(
            self.in_channels,
            channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.keras_padding,
            bias=self.bias is not None,
            dilation=self.dilation,
        )

    def keras_variables(self) -> list[str]:
        return ["kernel"] + (["bias"] if self.bias is not None else [])

    def keras_shapes(self) -> list[tuple]:
        out, inp, kh, kw = self.weight.shape
        return [(kh, kw, inp, out)] + ([(out,)] if self.bias is not None else [])

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        # Keras kernels are (kh, kw, in, out); PyTorch wants (out, in, kh, kw).
        state = {"weight": _tensor(arrays[0].transpose(3, 2, 0, 1))}
        if self.bias is not None:
            state["bias"] = _tensor(arrays[1])
        return state

    def to_keras(self) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(_numpy(self.weight).transpose(2, 3, 1, 0))]
        return arrays + ([_numpy(self.bias)] if self.bias is not None else [])


class DepthwiseConv2d(Conv2d):
    """Keras `DepthwiseConv2D`: one group per input channel, `depth_multiplier` outputs each."""

    keras_class = "DepthwiseConv2D"

    def __init__(
        self,
        channels,
        kernel_size,
        stride=1,
        padding="same",
        depth_multiplier=1,
        bias=False,
        dilation=1,
    ):
        super().__init__(
            channels,
            channels * depth_multiplier,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=bias,
            groups=channels,
            dilation=dilation,
        )

    def keras_variables(self) -> list[str]:
        return ["depthwise_kernel"] + (["bias"] if self.bias is not None else [])

    def keras_shapes(self) -> list[tuple]:
        kh, kw = self.kernel_size
        multiplier = self.out_channels // self.in_channels
        shapes = [(kh, kw, self.in_channels, multiplier)]
        return shapes + ([(self.out_channels,)] if self.bias is not None else [])

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        kh, kw, channels, multiplier = arrays[0].shape
        # Keras output channel c*multiplier + j is input channel c's j-th filter, which is
        # exactly PyTorch's grouped-conv order once (C, m) are flattened together.
        kernel = arrays[0].reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)[:, None]
        state = {"weight": _tensor(kernel)}
        if self.bias is not None:
            state["bias"] = _tensor(arrays[1])
        return state

    def to_keras(self) -> list[np.ndarray]:
        kh, kw, channels, multiplier = self.keras_shapes()[0]
        kernel = _numpy(self.weight)[:, 0].transpose(1, 2, 0).reshape(kh, kw, channels, multiplier)
        arrays = [np.ascontiguousarray(kernel)]
        return arrays + ([_numpy(self.bias)] if self.bias is not None else [])


class BatchNorm2d(nn.BatchNorm2d):
    """Keras `BatchNormalization` over channels: epsilon 1e-3, Keras momentum `m` (PyTorch's
    momentum is `1 - m`), and in training the moving variance is updated with the biased batch
    variance, as Keras does (PyTorch would use the unbiased one)."""

    keras_class = "BatchNormalization"
    # Always tracked here (track_running_stats), so never None as nn.BatchNorm2d allows.
    running_mean: torch.Tensor
    running_var: torch.Tensor
    momentum: float
    # Our names for Keras' gamma, beta, moving_mean, moving_variance.
    _KERAS_ORDER = ("weight", "bias", "running_mean", "running_var")

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.99,
        epsilon: float = KERAS_BN_EPSILON,
        center: bool = True,
        scale: bool = True,
    ):
        super().__init__(num_features, eps=epsilon, momentum=1.0 - momentum)
        # Keras' `center=False` / `scale=False`: no beta / gamma, as PyTorch allows either alone.
        if not scale:
            self.register_parameter("weight", None)
        if not center:
            self.register_parameter("bias", None)
        # Keras' `trainable`: a frozen BatchNormalization runs in inference mode even in
        # training (see KerasModel.freeze).
        self.trainable = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.trainable):
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        # One fused kernel and its backward, normalising with the biased batch variance as Keras
        # does. PyTorch's own update of the moving variance would take the unbiased one, so the
        # statistics are updated here, with the biased variance recovered from 1 / sqrt(var + eps).
        out, mean, invstd = torch.native_batch_norm(
            x, self.weight, self.bias, None, None, True, 0.0, self.eps
        )
        with torch.no_grad():
            var = invstd.pow(-2).sub_(self.eps)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        return out

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """The same result written into `x`, on the CPU in inference: the same kernel as
        `forward`, so bit for bit the same numbers, without a fresh tensor."""
        if (self.training and self.trainable) or x.device.type != "cpu":
            return self.forward(x)
        unused = x.new_empty(0)  # where the batch statistics would go in training
        return torch.native_batch_norm(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            False,
            0.0,
            self.eps,
            out=(x, unused, unused),
        )[0]

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def _kept(self) -> list[tuple[str, str]]:
        """(Keras name, our name) of the variables this layer has."""
        pairs = zip(["gamma", "beta", "moving_mean", "moving_variance"], self._KERAS_ORDER)
        return [(k, ours) for k, ours in pairs if getattr(self, ours) is not None]

    def keras_variables(self) -> list[str]:
        return [k for k, _ in self._kept()]

    def keras_shapes(self) -> list[tuple]:
        return [(self.num_features,)] * len(self._kept())

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        state = {ours: _tensor(a) for (_, ours), a in zip(self._kept(), arrays)}
        state["num_batches_tracked"] = torch.tensor(0)  # Keras keeps no step count
        return state

    def to_keras(self) -> list[np.ndarray]:
        return [_numpy(getattr(self, ours)) for _, ours in self._kept()]


class Dense(_KerasInitialized, nn.Linear):
    """Keras `Dense` on a flat input, with its optional `activation` built in (V2's top)."""

    keras_class = "Dense"

    def __init__(
        self, in_features: int, units: int, activation: nn.Module | None = None, bias: bool = True
    ):
        super().__init__(in_features, units, bias=bias)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise ValueError(
                f"Dense here reads flat (N, features) input, got a map of shape {shape}; "
                "flatten or pool it first"
            )
        return (self.out_features,)

    def with_outputs(self, units: int) -> Dense:
        """A fresh layer like this one with another number of units."""
        return Dense(self.in_features, units, self.activation, self.bias is not None)

    def keras_variables(self) -> list[str]:
        return ["kernel"] + (["bias"] if self.bias is not None else [])

    def keras_shapes(self) -> list[tuple]:
        shapes = [(self.in_features, self.out_features)]
        return shapes + ([(self.out_features,)] if self.bias is not None else [])

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        state = {"weight": _tensor(arrays[0].T)}
        if self.bias is not None:
            state["bias"] = _tensor(arrays[1])
        return state

    def to_keras(self) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(_numpy(self.weight).T)]
        return arrays + ([_numpy(self.bias)] if self.bias is not None else [])


# Layers without weights. Each keeps the shape it gets unless it says otherwise.


class _ShapePreserving:
    def output_shape(self, shape: Shape) -> Shape:
        return shape


# Layers that can write their result into their input offer `forward_inplace`; the model uses it
# where no later layer reads that input (see `functional._plan`). Activations can do so even while
# autograd records; the others only without gradients.


class _Activation(_ShapePreserving):
    inplace_under_autograd = True


class ReLU(_Activation, nn.ReLU):
    """Keras `ReLU()`."""

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=True)


class ReLU6(_Activation, nn.ReLU6):
    """Keras `ReLU(6.0)`."""

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x, inplace=True)


class HardSwish(_Activation, nn.Hardswish):
    """Keras 3 `hard_swish`: x * relu6(x + 3) / 6."""

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x, inplace=True)


class HardSigmoid(_Activation, nn.Hardsigmoid):
    """MobileNetV3's `hard_sigmoid`: relu6(x + 3) / 6. (Keras 2's 0.2x + 0.5 is a different
    function and breaks parity.)"""

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x, inplace=True)


class Dropout(_ShapePreserving, nn.Dropout):
    """Keras `Dropout`."""


class Activation(_ShapePreserving, nn.Module):
    """Keras `Activation(fn)`: wraps any callable, such as a user's `classifier_activation`."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Rescaling(_ShapePreserving, nn.Module):
    """Keras `Rescaling(scale, offset)`: x * scale + offset."""

    def __init__(self, scale: float, offset: float = 0.0):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale).add_(self.offset)  # one new tensor, not two

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale).add_(self.offset)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class ZeroPadding2D(nn.Module):
    """Keras `ZeroPadding2D(((top, bottom), (left, right)))`."""

    def __init__(self, padding: tuple[tuple[int, int], tuple[int, int]]):
        super().__init__()
        (self.top, self.bottom), (self.left, self.right) = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.left, self.right, self.top, self.bottom))

    def output_shape(self, shape: Shape) -> Shape:
        channels, height, width = shape
        return (
            channels,
            _spatial(height, lambda n: n + self.top + self.bottom),
            _spatial(width, lambda n: n + self.left + self.right),
        )

    @property
    def padding(self) -> tuple:
        return (self.top, self.bottom), (self.left, self.right)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


class GlobalAveragePooling2D(nn.Module):
    """Keras `GlobalAveragePooling2D(keepdims=...)`."""

    def __init__(self, keepdims: bool = False):
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], 1, 1) if self.keepdims else (shape[0],)


class GlobalMaxPooling2D(nn.Module):
    """Keras `GlobalMaxPooling2D()`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0],)


class Flatten(nn.Module):
    """Keras `Flatten` / `Reshape((classes,))` on a (C, 1, 1) map: NCHW and NHWC flatten a 1x1
    map to the same order, so no transpose is needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) == 3 and (shape[1], shape[2]) != (1, 1):
            raise ValueError(f"Flatten here only handles 1x1 maps, got {shape}")
        return (shape[0],)


class Add(nn.Module):
    """Keras `Add()([a, b])`: the residual connection."""

    inplace_inputs = (0, 1)  # either can take the sum

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def forward_inplace(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.add_(b)

    def output_shape(self, a: Shape, b: Shape) -> Shape:
        return a


class Multiply(nn.Module):
    """Keras `Multiply()([a, b])`: squeeze-excite's gating."""

    inplace_inputs = (0,)  # the gated map; the gate is (N, C, 1, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def forward_inplace(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.mul_(b)

    def output_shape(self, a: Shape, b: Shape) -> Shape:
        return a


class SqueezeAndExcite2D(nn.Module):
    """KerasCV's `SqueezeAndExcite2D` with MobileNetV3's activations: one layer holding
    `squeeze_conv` (ReLU) and `excite_conv` (hard sigmoid), gating its input."""

    keras_class = "SqueezeAndExcite2D"
    # Keras 3 files store nested layers by these attribute names, in no meaningful order.
    keras_sublayers = ("squeeze_conv", "excite_conv")

    def __init__(self, filters: int, bottleneck_filters: int):
        super().__init__()
        self.squeeze_conv = Conv2d(filters, bottleneck_filters, 1, bias=True)
        self.excite_conv = Conv2d(bottleneck_filters, filters, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._gate(x)

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self._gate(x))

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.relu(self.squeeze_conv(x.mean(dim=(2, 3), keepdim=True)))
        return F.hardsigmoid(self.excite_conv(gate))

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def keras_variables(self) -> list[str]:
        return [
            f"{sub}/{v}"
            for sub in self.keras_sublayers
            for v in getattr(self, sub).keras_variables()
        ]

    def keras_shapes(self) -> list[tuple]:
        return self.squeeze_conv.keras_shapes() + self.excite_conv.keras_shapes()

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        state = {
            f"squeeze_conv.{k}": v for k, v in self.squeeze_conv.from_keras(arrays[:2]).items()
        }
        state.update(
            {f"excite_conv.{k}": v for k, v in self.excite_conv.from_keras(arrays[2:]).items()}
        )
        return state

    def to_keras(self) -> list[np.ndarray]:
        return self.squeeze_conv.to_keras() + self.excite_conv.to_keras()


# The layers a user's own model adds around a MobileNet (keras_io.config builds them from the
# model's config). Shapes stay NCHW; layers whose meaning depends on the axis order (Flatten,
# Reshape, Concatenate, Softmax) compute what Keras computes on NHWC.


class Lambda(_ShapePreserving, nn.Module):
    """A fixed element-wise function from our own table (an activation by its Keras name)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str):
        super().__init__()
        self.fn, self.fn_name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.fn_name


class Softmax(_ShapePreserving, nn.Softmax):
    """Keras' `softmax`, over the channel axis (Keras' last, our second; the same on (N, C))."""

    def __init__(self):
        super().__init__(dim=1)


class LogSoftmax(_ShapePreserving, nn.LogSoftmax):
    """Keras' `log_softmax`, over the channel axis."""

    def __init__(self):
        super().__init__(dim=1)


def _keras2_hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return (0.2 * x + 0.5).clamp_(0.0, 1.0)


def _keras2_hard_swish(x: torch.Tensor) -> torch.Tensor:
    return x * _keras2_hard_sigmoid(x)


def _exponential(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x)


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


def _named(fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> Callable[[], nn.Module]:
    return lambda: Lambda(fn, name)


# Keras' activation functions by name, as Keras 3 defines them. Keras 2 (tf-keras) defines
# `hard_sigmoid` as clip(0.2 x + 0.5, 0, 1), which KERAS2_ACTIVATIONS overrides.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: Activation(nn.Identity()),
    "softmax": Softmax,
    "log_softmax": LogSoftmax,
    "relu": ReLU,
    "relu6": ReLU6,
    "sigmoid": _named(torch.sigmoid, "sigmoid"),
    "tanh": _named(torch.tanh, "tanh"),
    "hard_sigmoid": HardSigmoid,
    "hard_swish": HardSwish,
    "hard_silu": HardSwish,
    "swish": _named(F.silu, "silu"),
    "silu": _named(F.silu, "silu"),
    "gelu": _named(F.gelu, "gelu"),
    "elu": _named(F.elu, "elu"),
    "selu": _named(F.selu, "selu"),
    "softplus": _named(F.softplus, "softplus"),
    "softsign": _named(F.softsign, "softsign"),
    "mish": _named(F.mish, "mish"),
    "exponential": _named(_exponential, "exponential"),
}
KERAS2_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    **ACTIVATIONS,
    "hard_sigmoid": _named(_keras2_hard_sigmoid, "keras2_hard_sigmoid"),
    "hard_swish": _named(_keras2_hard_swish, "keras2_hard_swish"),
    "hard_silu": _named(_keras2_hard_swish, "keras2_hard_swish"),
}
# What `classifier_activation` takes by name: every Keras activation.
CLASSIFIER_ACTIVATIONS = ACTIVATIONS


class ClippedReLU(_Activation, nn.Module):
    """Keras `ReLU(max_value, negative_slope, threshold)` in general: x above `threshold`,
    `negative_slope * (x - threshold)` below it, never above `max_value`."""

    def __init__(self, max_value: float | None, negative_slope: float, threshold: float):
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return y if self.max_value is None else y.clamp(max=self.max_value)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, slope={self.negative_slope}, at={self.threshold}"


class LeakyReLU(_Activation, nn.LeakyReLU):
    """Keras `LeakyReLU(negative_slope)` (Keras 2's `alpha`)."""

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope, inplace=True)


class ELU(_Activation, nn.ELU):
    """Keras `ELU(alpha)`."""


class PReLU(nn.Module):
    """Keras `PReLU`: a learned slope per element of its (H, W, C) input, shared over
    `shared_axes`; held here as (C, H, W) with 1 on the shared axes."""

    keras_class = "PReLU"

    def __init__(self, shape: Shape, shared_axes: Sequence[int] = ()):
        super().__init__()
        self.input_shape, self.shared_axes = tuple(shape), tuple(shared_axes)
        # Keras' axes count from 1 over (H, W, C); ours are (C, H, W).
        ours = {1: 1, 2: 2, 3: 0} if len(shape) == 3 else {1: 0}
        size = [1 if keras in shared_axes else n for keras, n in _by_keras_axis(shape, ours)]
        if any(n is None for n in size):
            raise ValueError(f"PReLU needs a static size on axes it does not share, got {shape}")
        self.alpha = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.alpha * x)

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def keras_variables(self) -> list[str]:
        return ["alpha"]

    def keras_shapes(self) -> list[tuple]:
        return [_channels_last(tuple(self.alpha.shape))]

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        alpha = arrays[0]
        return {"alpha": _tensor(alpha.transpose(2, 0, 1) if alpha.ndim == 3 else alpha)}

    def to_keras(self) -> list[np.ndarray]:
        alpha = _numpy(self.alpha)
        return [np.ascontiguousarray(alpha.transpose(1, 2, 0) if alpha.ndim == 3 else alpha)]


def _by_keras_axis(shape: Shape, ours: dict) -> list:
    """(Keras axis, size) for each of our axes, in our order."""
    keras_of = {ours_axis: keras for keras, ours_axis in ours.items()}
    return [(keras_of[i], n) for i, n in enumerate(shape)]


def _channels_last(shape: tuple) -> tuple:
    return (*shape[1:], shape[0]) if len(shape) == 3 else shape


class Scale(_ShapePreserving, nn.Module):
    """x op constant, or constant op x (`reverse`): the arithmetic `preprocess_input` records
    (Keras 3's operation layers, Keras 2's TFOpLambda), and the applications' hard sigmoid.
    `constant` is a number or one per channel, kept as Python numbers (a model built on the
    meta device must not lose it)."""

    OPS: ClassVar[dict[str, Callable]] = {
        "add": lambda a, b: a + b,
        "subtract": lambda a, b: a - b,
        "multiply": lambda a, b: a * b,
        "divide": lambda a, b: a / b,
    }

    def __init__(self, op: str, constant, reverse: bool = False):
        super().__init__()
        self.op, self.constant, self.reverse = op, constant, reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.constant
        if isinstance(c, list):
            c = x.new_tensor(c).reshape(-1, 1, 1) if x.dim() == 4 else x.new_tensor(c)
        fn = self.OPS[self.op]
        return fn(c, x) if self.reverse else fn(x, c)

    def extra_repr(self) -> str:
        c = self.constant
        return f"{c} {self.op} x" if self.reverse else f"x {self.op} {c}"


class Normalization(_ShapePreserving, nn.Module):
    """Keras `Normalization` over channels: (x - mean) / max(sqrt(variance), 1e-7), with
    Keras' epsilon. The statistics come from the config (kept as numbers) or, once adapted,
    from the file (buffers)."""

    keras_class = "Normalization"
    mean: torch.Tensor  # buffers, when adapted
    variance: torch.Tensor

    def __init__(self, channels: int, mean=None, variance=None, from_file: bool = False):
        super().__init__()
        self.channels, self.from_file = channels, from_file
        self.stats = (mean, variance)
        if from_file:
            self.register_buffer("mean", torch.zeros(channels))
            self.register_buffer("variance", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1) if x.dim() == 4 else (-1,)
        if self.from_file:
            mean, variance = self.mean, self.variance
        else:
            mean, variance = (x.new_tensor(v).expand(self.channels) for v in self.stats)
        scale = torch.sqrt(variance).clamp(min=1e-7)
        return (x - mean.reshape(shape)) / scale.reshape(shape)

    def keras_variables(self) -> list[str]:
        return ["mean", "variance"] if self.from_file else []

    def keras_shapes(self) -> list[tuple]:
        return [(self.channels,)] * 2 if self.from_file else []

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        return {"mean": _tensor(arrays[0]), "variance": _tensor(arrays[1])} if arrays else {}

    def to_keras(self) -> list[np.ndarray]:
        return [_numpy(self.mean), _numpy(self.variance)] if self.from_file else []


class Chain(_ShapePreserving, nn.Sequential):
    """Shape-preserving layers applied one after the other (a per-channel `Rescaling`)."""


class Identity(_ShapePreserving, nn.Identity):
    """A Keras layer that is the identity at inference: the augmentation layers (`Random*`),
    and in this package also in training (see `KerasModel.augmentation_layers`)."""

    def __init__(self, keras_class: str):
        super().__init__()
        self.keras_class_name = keras_class

    def extra_repr(self) -> str:
        return self.keras_class_name


class GaussianNoise(_ShapePreserving, nn.Module):
    """Keras `GaussianNoise(stddev)`: adds N(0, stddev) in training, the identity otherwise."""

    def __init__(self, stddev: float):
        super().__init__()
        self.stddev = stddev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stddev * torch.randn_like(x) if self.training else x


class GaussianDropout(_ShapePreserving, nn.Module):
    """Keras `GaussianDropout(rate)`: multiplies by N(1, rate / (1 - rate)) in training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.rate < 1:
            return x
        return x * (1 + math.sqrt(self.rate / (1 - self.rate)) * torch.randn_like(x))


class SpatialDropout2D(_ShapePreserving, nn.Dropout2d):
    """Keras `SpatialDropout2D(rate)`: drops whole channels in training."""


class AlphaDropout(_ShapePreserving, nn.AlphaDropout):
    """Keras `AlphaDropout(rate)`."""


class GlobalPooling2D(nn.Module):
    """Keras `GlobalAveragePooling2D` / `GlobalMaxPooling2D` with `keepdims`."""

    def __init__(self, reduce: str, keepdims: bool = False):
        super().__init__()
        self.reduce, self.keepdims = reduce, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce == "max":
            return x.amax(dim=(2, 3), keepdim=self.keepdims)
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], 1, 1) if self.keepdims else (shape[0],)


class Pooling2D(nn.Module):
    """Keras `MaxPooling2D` / `AveragePooling2D` with TensorFlow's "valid" or "same" padding
    (the padded cells are never the maximum, and are left out of the average)."""

    def __init__(self, reduce: str, pool_size, strides, padding: str):
        super().__init__()
        self.reduce, self.kernel, self.stride = reduce, _pair(pool_size), _pair(strides)
        self.keras_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_padding == "same":
            (kh, kw), (sh, sw) = self.kernel, self.stride
            (top, bottom), (left, right) = (
                tf_same_padding(x.shape[-2], kh, sh),
                tf_same_padding(x.shape[-1], kw, sw),
            )
            if self.reduce == "max":
                x = F.pad(x, (left, right, top, bottom), value=-math.inf)
                return F.max_pool2d(x, self.kernel, self.stride)
            total = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), self.kernel, self.stride)
            ones = F.pad(torch.ones_like(x[:1, :1]), (left, right, top, bottom))
            return total / F.avg_pool2d(ones, self.kernel, self.stride)
        if self.reduce == "max":
            return F.max_pool2d(x, self.kernel, self.stride)
        return F.avg_pool2d(x, self.kernel, self.stride)

    def output_shape(self, shape: Shape) -> Shape:
        channels, height, width = shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        if self.keras_padding == "same":
            return (
                channels,
                _spatial(height, lambda n: math.ceil(n / sh)),
                _spatial(width, lambda n: math.ceil(n / sw)),
            )
        return (
            channels,
            _spatial(height, lambda n: (n - kh) // sh + 1),
            _spatial(width, lambda n: (n - kw) // sw + 1),
        )


class Reshape(nn.Module):
    """Keras `Flatten` (`target=None`) and `Reshape(target)`, in Keras' channels-last order: a
    Dense after a Flatten reads the features as Keras laid them out. A 3-D target comes back
    channels first."""

    def __init__(self, target: tuple | None = None):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[2] * x.shape[3] != 1:
            x = x.permute(0, 2, 3, 1)
        if self.target is None:
            return x.flatten(1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if len(self.target) == 3 else x

    def output_shape(self, shape: Shape) -> Shape:
        size = None if None in shape else math.prod(shape)
        if self.target is None:
            return (size,)
        if size is not None and math.prod(self.target) != size:
            raise ValueError(f"cannot reshape {shape} ({size} values) to {self.target}")
        return _channels_first(self.target)

    def extra_repr(self) -> str:
        return "flatten" if self.target is None else f"target={self.target}"


def _channels_first(shape: tuple) -> tuple:
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


class Concatenate(nn.Module):
    """Keras `Concatenate(axis=-1)`: along channels."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)

    def output_shape(self, *shapes: Shape) -> Shape:
        channels = [s[0] for s in shapes]
        return (None if None in channels else sum(channels), *shapes[0][1:])


class Merge(nn.Module):
    """Keras' `Add`, `Subtract`, `Multiply`, `Average`, `Maximum` and `Minimum` of several
    inputs (broadcasting as Keras does)."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.op == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                out = out + x
            elif self.op == "multiply":
                out = out * x
            elif self.op == "maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(xs) if self.op == "average" else out

    def output_shape(self, *shapes: Shape) -> Shape:
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"cannot {self.op} tensors of shapes {list(shapes)}")
        # Broadcast axis by axis: a dynamic size wins over 1, and stays dynamic.
        return tuple(None if None in sizes else max(sizes) for sizes in zip(*shapes))

    def extra_repr(self) -> str:
        return self.op


def _aspect_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Keras' `smart_resize` crop: the largest centred window of the target's aspect ratio,
    its size and offset truncated as Keras truncates them."""
    rows, cols = x.shape[2], x.shape[3]
    crop_rows = max(min(rows, int(cols * height / width)), 1)
    crop_cols = max(min(cols, int(rows * width / height)), 1)
    top, left = int((rows - crop_rows) / 2), int((cols - crop_cols) / 2)
    return x[:, :, top : top + crop_rows, left : left + crop_cols]


def _resize(x: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    # TensorFlow's resize samples at half-pixel centres, without antialiasing: PyTorch's
    # align_corners=False bilinear, and its "nearest-exact" (not the legacy "nearest").
    if interpolation == "nearest":
        return F.interpolate(x, size=(height, width), mode="nearest-exact")
    return F.interpolate(
        x, size=(height, width), mode="bilinear", align_corners=False, antialias=False
    )


class Resizing(nn.Module):
    """Keras `Resizing` (bilinear or nearest, without antialiasing), optionally cropped to the
    target's aspect ratio first (`crop_to_aspect_ratio`)."""

    keras_class = "Resizing"

    def __init__(self, height: int, width: int, interpolation: str, crop_to_aspect_ratio: bool):
        super().__init__()
        self.height, self.width = height, width
        self.interpolation, self.crop_to_aspect_ratio = interpolation, crop_to_aspect_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_to_aspect_ratio:
            x = _aspect_crop(x, self.height, self.width)
        return _resize(x, self.height, self.width, self.interpolation)

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], self.height, self.width)


class CenterCrop(nn.Module):
    """Keras `CenterCrop`: the central window; an input smaller than the target on either side
    is cropped to the target's aspect ratio and resized up (bilinear), as Keras does."""

    keras_class = "CenterCrop"

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[2], x.shape[3]
        if rows >= self.height and cols >= self.width:
            top, left = (rows - self.height) // 2, (cols - self.width) // 2
            return x[:, :, top : top + self.height, left : left + self.width]
        cropped = _aspect_crop(x, self.height, self.width)
        return _resize(cropped, self.height, self.width, "bilinear")

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], self.height, self.width)


class LayerNormalization(nn.Module):
    """Keras `LayerNormalization` over channels (axis -1)."""

    keras_class = "LayerNormalization"

    def __init__(self, channels: int, epsilon: float, center: bool = True, scale: bool = True):
        super().__init__()
        self.eps, self.center, self.scale = epsilon, center, scale
        self.weight = nn.Parameter(torch.ones(channels)) if scale else None
        self.bias = nn.Parameter(torch.zeros(channels)) if center else None
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            y = F.layer_norm(
                x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps
            )
            return y.permute(0, 3, 1, 2)
        return F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def keras_variables(self) -> list[str]:
        return (["gamma"] if self.scale else []) + (["beta"] if self.center else [])

    def keras_shapes(self) -> list[tuple]:
        return [(self.channels,)] * len(self.keras_variables())

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        names = (["weight"] if self.scale else []) + (["bias"] if self.center else [])
        return {name: _tensor(a) for name, a in zip(names, arrays)}

    def to_keras(self) -> list[np.ndarray]:
        return [_numpy(t) for t in (self.weight, self.bias) if t is not None]


class SeparableConv2d(nn.Module):
    """Keras `SeparableConv2D`: a depthwise convolution, then a 1x1 convolution with the bias."""

    keras_class = "SeparableConv2D"

    def __init__(
        self, in_channels, filters, kernel_size, stride, padding, depth_multiplier, bias, dilation
    ):
        super().__init__()
        self.depthwise = DepthwiseConv2d(
            in_channels, kernel_size, stride, padding, depth_multiplier, False, dilation
        )
        self.pointwise = Conv2d(in_channels * depth_multiplier, filters, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))

    def output_shape(self, shape: Shape) -> Shape:
        return self.pointwise.output_shape(self.depthwise.output_shape(shape))

    def keras_variables(self) -> list[str]:
        return ["depthwise_kernel", "pointwise_kernel"] + (
            ["bias"] if self.pointwise.bias is not None else []
        )

    def keras_shapes(self) -> list[tuple]:
        return self.depthwise.keras_shapes() + self.pointwise.keras_shapes()

    def from_keras(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        _check_keras_shapes(self, arrays)
        state = {f"depthwise.{k}": v for k, v in self.depthwise.from_keras(arrays[:1]).items()}
        state.update(
            {f"pointwise.{k}": v for k, v in self.pointwise.from_keras(arrays[1:]).items()}
        )
        return state

    def to_keras(self) -> list[np.ndarray]:
        return self.depthwise.to_keras() + self.pointwise.to_keras()


# Layers whose output is always fresh memory, never their input or a view of it: the model
# may write into such an output in place once its readers are done. Any other layer (Dropout in
# inference returns its input, Flatten and Reshape return views, a user's activation may return
# its input) is taken to share its input's memory, so a new layer is safe until it is listed.
FRESH_OUTPUT = (
    Conv2d,  # and DepthwiseConv2d, FusedConv2d
    BatchNorm2d,
    Dense,
    ReLU,
    ReLU6,
    HardSwish,
    HardSigmoid,
    ClippedReLU,
    LeakyReLU,
    ELU,
    PReLU,
    Softmax,
    LogSoftmax,
    Rescaling,
    Scale,
    Normalization,
    ZeroPadding2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    GlobalPooling2D,
    Pooling2D,
    Add,
    Multiply,
    Merge,
    Concatenate,
    SqueezeAndExcite2D,
    LayerNormalization,
    SeparableConv2d,
)

WEIGHTED_LAYERS = (Conv2d, DepthwiseConv2d, BatchNorm2d, Dense, SqueezeAndExcite2D)
# With the layers only users' own models have.
KERAS_WEIGHTED_LAYERS = (
    *WEIGHTED_LAYERS,
    SeparableConv2d,
    LayerNormalization,
    PReLU,
    Normalization,
)
