"""A faster inference copy of a model: `optimize_for_inference(model)`.

Eager `forward` already folds Keras' stride-2 padding into the convolutions, runs the graph
channels-last on the CPU and writes layers into their inputs where it can (see `graph._plan`).
For inference only, this also folds every BatchNormalization and activation into the convolution
before it, keeps the kernels packed for oneDNN, runs 1x1 convolutions as matrix products,
stores weights channels-last, and optionally compiles. The copy computes the same function to
float32 round-off; the model given is untouched.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from .graph import KerasModel
from .layers import BatchNorm2d, Conv2d, DepthwiseConv2d, HardSigmoid, HardSwish, ReLU, ReLU6

# oneDNN's fused convolution and matrix product, which PyTorch itself runs for compiled models on
# the CPU (Inductor); here they are called eagerly. A build without oneDNN keeps the plain layers.
# They are private (Inductor's), so FusedConv2d calls them only where their schemas are the ones
# below, the arguments it passes, positionally (`_onednn_usable`), and where one raises anyway
# the copy goes back to public ops (`_call_private`, `_Fallback`).
ONEDNN_SCHEMAS = {
    "_convolution_pointwise": "mkldnn::_convolution_pointwise(Tensor X, Tensor W, Tensor? B, "
    "int[] padding, int[] stride, int[] dilation, int groups, str attr, Scalar?[] scalars, "
    "str? algorithm) -> Tensor Y",
    "_reorder_convolution_weight": "mkldnn::_reorder_convolution_weight(Tensor self, "
    "int[2] padding=0, int[2] stride=1, int[2] dilation=1, int groups=1, "
    "int[]? input_size=None) -> Tensor Y",
    "_linear_pointwise": "mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, "
    "Scalar?[] scalars, str? algorithm) -> Tensor Y",
    "_reorder_linear_weight": "mkldnn::_reorder_linear_weight(Tensor self, "
    "int? batch_size=None) -> Tensor Y",
    # The convolution summed into a given tensor: how a planned output is written.
    "_convolution_pointwise_.binary": "mkldnn::_convolution_pointwise_.binary(Tensor(a!) other, "
    "Tensor X, Tensor W, Tensor? B, int[] padding, int[] stride, int[] dilation, int groups, "
    "str binary_attr, Scalar? alpha, str? unary_attr, Scalar?[] unary_scalars, "
    "str? unary_algorithm) -> Tensor(a!) Y",
}
_ONEDNN = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op.split(".")[0]) for op in ONEDNN_SCHEMAS
)


def _overload(name: str) -> Any:
    """The op's overload ("op" its default, "op.overload" another), or None: resolving one from
    its packet costs ~10 us a call."""
    op, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.mkldnn, op), overload or "default", None) if _ONEDNN else None


_CONVOLUTION_POINTWISE: Any = _overload("_convolution_pointwise")
_CONVOLUTION_POINTWISE_INTO: Any = _overload("_convolution_pointwise_.binary")
_REORDER_CONVOLUTION_WEIGHT: Any = _overload("_reorder_convolution_weight")
_LINEAR_POINTWISE: Any = _overload("_linear_pointwise")
_REORDER_LINEAR_WEIGHT: Any = _overload("_reorder_linear_weight")
# torch.backends.mkldnn.enabled, read on every call: the property costs 4x this.
_mkldnn_enabled: Callable[[], bool] = getattr(
    torch._C, "_get_mkldnn_enabled", lambda: bool(torch.backends.mkldnn.enabled)
)


def _op_schema(name: str) -> Any:
    op, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.mkldnn, op), overload or "default")._schema


def _schema_mismatch(name: str, expected: str) -> str | None:
    """Why `torch.ops.mkldnn.<name>` cannot be called as FusedConv2d calls it, or None: its
    leading arguments must be the expected ones (name, type, positional), any more must have
    defaults, and it must return one tensor."""
    try:
        found = _op_schema(name)
    except (AttributeError, RuntimeError) as error:
        return f"torch.ops.mkldnn.{name} is missing ({error})"
    try:
        want = torch._C.parse_schema(expected)
        n = len(want.arguments)

        def leading(schema):
            return [(a.name, str(a.type), a.kwarg_only) for a in schema.arguments[:n]]

        same = (
            leading(found) == leading(want)
            and all(a.has_default_value() for a in found.arguments[n:])
            and [str(r.type) for r in found.returns] == ["Tensor"]
        )
    except Exception as error:  # a schema API of torch's changed: nothing to rely on
        return f"torch.ops.mkldnn.{name}'s schema could not be checked ({error!r})"
    if not same:
        return f"torch.ops.mkldnn.{name} is `{found}`, not the `{want}` that FusedConv2d calls"
    return None


@functools.cache
def _onednn_usable() -> bool:
    """Whether optimize_for_inference makes FusedConv2d layers: oneDNN built in and its private
    ops as FusedConv2d calls them. Checked once per process; a mismatch warns, once."""
    if not torch.backends.mkldnn.is_available():
        return False  # a build without oneDNN: the plain layers, as expected
    problems = [p for name, s in ONEDNN_SCHEMAS.items() if (p := _schema_mismatch(name, s))]
    if problems:
        warnings.warn(
            f"optimize_for_inference: {'; '.join(problems)}; its copies run public PyTorch "
            "ops instead (the same results, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
    return not problems


_FALLBACK_LOCK = threading.Lock()


class _Fallback:
    """Shared by the FusedConv2d layers of one copy: why they run the public ops where they
    would call oneDNN's, None until one of its private ops raised."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def fail(self, op: str, error: Exception) -> None:
        """The first failure of the copy's: kept, and warned about once."""
        with _FALLBACK_LOCK:  # threads failing together: one warning
            if self.reason is not None:
                return
            self.reason = f"torch.ops.mkldnn.{op} raised {type(error).__name__}: {error}"
        warnings.warn(
            f"optimize_for_inference: {self.reason}; this copy runs public PyTorch ops from "
            "now on (the same results, slower)",
            RuntimeWarning,
            stacklevel=4,
        )


class _PrivateOpFailed(Exception):
    """A private oneDNN op raised: the call that made it falls back to the public ops."""

    def __init__(self, op: str, error: Exception):
        super().__init__(f"torch.ops.mkldnn.{op} raised {type(error).__name__}: {error}")
        self.op, self.error = op, error


def _call_private(op: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, which calls the private op torch.ops.mkldnn.`op`: whatever it raises
    comes out as a `_PrivateOpFailed`, which `FusedConv2d.forward` turns into a fallback."""
    try:
        return function(*args)
    except Exception as error:
        raise _PrivateOpFailed(op, error) from error


_CHANNELS_LAST = torch.channels_last
# Our activations as oneDNN post-ops: (name, its scalars).
ONEDNN_ACTIVATIONS: dict[type[nn.Module], tuple[str, list[float]]] = {
    ReLU: ("relu", []),
    ReLU6: ("hardtanh", [0.0, 6.0]),
    HardSwish: ("hardswish", []),
    HardSigmoid: ("hardsigmoid", []),
}


class FoldedAway(nn.Identity):
    """Where a BatchNormalization or an activation was before it was folded into the
    convolution feeding it."""

    def output_shape(self, shape):
        return shape


class FusedConv2d(Conv2d):
    """A convolution (its BatchNorm folded in) and the activation after it, for CPU inference:
    oneDNN applies both in one pass over the output, with the kernel reordered into oneDNN's
    own layout once and kept, where `F.conv2d` reorders it on every call (at batch 1 that costs
    more than the convolution itself). Elsewhere (a GPU, autograd, tracing, compiling, another
    dtype) it runs as the plain convolution followed by the activation.

    A 1x1 convolution on channels-last input is a matrix product of its rows (one per pixel)
    and the (in, out) kernel, and runs as one: oneDNN remakes a convolution's descriptor on
    every call, a fixed ~30 us that dominates the small maps of a batch of one (54 of them in
    MobileNetV3Small). With little work it is `torch.addmm` and then the activation in place;
    with more, oneDNN's matrix product, activation fused and kernel packed like the
    convolution's: it took 0.72 to 1.04 of the convolution's time on 16 1x1 layer shapes of
    the four families (batch 1 to 32, 2 threads).

    One copy may be called from several threads at once: the packed kernels are looked up,
    made (once per shape) and evicted under a lock, never held while a kernel runs. Where
    `torch.backends.mkldnn.enabled` is False (checked on every call) it runs the plain layers;
    where a private oneDNN op raises, the public ones, then and for every later call of the
    layers sharing its `_Fallback` (one copy's), with one warning."""

    PACKED_SHAPES = 4
    writes_into = True  # `forward(x, pad, out=...)`: see memory.MemoryPlan
    # Below this many multiply-adds per call torch.addmm is the faster product. Measured on the
    # 276 calls of 1x1 layers in the four families at batch 1 and 8, 2 threads: addmm won 79 of
    # the 88 below, oneDNN's product 177 of the 188 above; any bound from 2**18 to 2**22 gave
    # the same total time within 0.3%.
    ADDMM_MAX_MACS = 2**21

    def __init__(
        self, conv: Conv2d, activation: nn.Module | None, fallback: _Fallback | None = None
    ):
        with torch.device("meta"):  # the parameters are conv's own
            super().__init__(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                stride=conv.stride,
                padding=conv.keras_padding,
                groups=conv.groups,
            )
        self.weight, self.bias = conv.weight, conv.bias
        # Any: one of ONEDNN_ACTIVATIONS, whose `forward_inplace` nn.Module's typing cannot see.
        self.activation: Any = activation
        self.post_op, self.post_op_scalars = (
            ONEDNN_ACTIVATIONS[type(activation)] if activation is not None else ("none", [])
        )
        # Lists made once: each one built per call costs more than the call's own Python.
        self._stride_list, self._dilation_list = list(self.stride), list(self.dilation)
        one_by_one = self.kernel_size == self.stride == (1, 1) and self.padding == (0, 0)
        self._is_pointwise = one_by_one and self.groups == 1
        # (input shape, padding or None for the product) -> (weight's version, oneDNN's kernel)
        self._packed: dict = {}
        self._lock = threading.Lock()  # around _packed
        self._matrix: tuple[int, torch.Tensor] | None = None  # (weight's address, the view)
        self._fallback = fallback if fallback is not None else _Fallback()

    def forward(self, x: torch.Tensor, pad=None, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out`: a tensor of the output's shape and strides to write the result into, where
        oneDNN applies (the model's memory plan); elsewhere the result is fresh."""
        if not self._onednn_applies(x):
            return self._forward_plain(x, pad)
        try:
            return self._forward_onednn(x, pad, out)
        except _PrivateOpFailed as failure:  # a private op's failure is no reason to fail the call
            return self._fall_back(x, pad, failure)

    def _forward_onednn(self, x: torch.Tensor, pad, out: torch.Tensor | None) -> torch.Tensor:
        # A given `out` is written by the convolution, 1x1 too: for outputs as large as the
        # planned ones it is as fast as the product, and the product has no in-place form.
        product = self.product(x) if pad is None and out is None else None
        if product is not None:
            return self._forward_product(x, product)
        if pad is None and self._dynamic_same:
            pad = self.same_padding(x)
        if pad is None:
            pad = ((self.padding[0],) * 2, (self.padding[1],) * 2)
        kernel, padding = self._packed_kernel(
            (tuple(x.shape), pad),
            lambda: _call_private("_reorder_convolution_weight", self._pack, x, pad),
        )
        if out is not None:
            return self._forward_into(out, x, kernel, padding)
        return _call_private(
            "_convolution_pointwise",
            _CONVOLUTION_POINTWISE,
            x,
            *self._convolution(kernel, padding),
            self.post_op,
            self.post_op_scalars,
            None,
        )

    def _convolution(self, kernel, padding) -> tuple:
        # the arguments both oneDNN convolutions take after their inputs
        return kernel, self.bias, padding, self._stride_list, self._dilation_list, self.groups

    def _forward_into(self, out, x, kernel, padding) -> torch.Tensor:
        # oneDNN writes a given tensor only as a sum into it (a residual connection's form), and
        # fuses no activation there but ReLU: so the sum into zeros, then the activation in
        # place. Both passes are over memory already resident, unlike a fresh output's pages.
        fused = self.post_op == "relu"
        out.zero_()
        _call_private(
            "_convolution_pointwise_.binary",
            _CONVOLUTION_POINTWISE_INTO,
            out,
            x,
            *self._convolution(kernel, padding),
            "add",
            None,
            "relu" if fused else None,
            [],
            None,
        )
        if self.activation is not None and not fused:
            self.activation.forward_inplace(out)
        return out

    def _forward_plain(self, x: torch.Tensor, pad=None) -> torch.Tensor:
        out = super().forward(x, pad)
        return out if self.activation is None else self.activation.forward_inplace(out)

    def _fall_back(self, x: torch.Tensor, pad, failure: _PrivateOpFailed) -> torch.Tensor:
        # The plain layers first: if they fail too, the input suits neither (a wrong shape),
        # and their error is the caller's, oneDNN's chained to it; nothing changes.
        out = self._forward_plain(x, pad)
        self._fallback.fail(failure.op, failure.error)
        return out

    def product(self, x: torch.Tensor) -> str | None:
        """How a call on `x` runs where oneDNN applies: "addmm", "onednn" (its matrix product)
        or None (the convolution)."""
        if not (self._is_pointwise and x.is_contiguous(memory_format=_CHANNELS_LAST)):
            return None
        n, _, height, width = x.shape
        macs = n * height * width * self.in_channels * self.out_channels
        return "addmm" if macs < self.ADDMM_MAX_MACS else "onednn"

    def _forward_product(self, x: torch.Tensor, product: str) -> torch.Tensor:
        # Each tensor op costs a few microseconds however small: one view in and one out, each
        # a single as_strided over x's and the product's channels-last memory.
        n, channels, height, width = x.shape
        rows = x.as_strided((n * height * width, channels), (channels, 1), x.storage_offset())
        bias, activation = self.bias, self.activation
        if product == "addmm":
            kernel = self._matmul_kernel()
            out = torch.addmm(bias, rows, kernel) if bias is not None else rows @ kernel
            if activation is not None:
                activation.forward_inplace(out)
        else:
            packed = self._packed_kernel(
                (tuple(x.shape), None),
                lambda: _call_private(
                    "_reorder_linear_weight",
                    _REORDER_LINEAR_WEIGHT,
                    self.weight.reshape(self.out_channels, self.in_channels),
                    len(rows),
                ),
            )
            out = _call_private(
                "_linear_pointwise",
                _LINEAR_POINTWISE,
                rows,
                packed,
                bias,
                self.post_op,
                self.post_op_scalars,
                None,
            )
        c = self.out_channels
        return out.as_strided((n, c, height, width), (height * width * c, 1, width * c, c))

    def _matmul_kernel(self) -> torch.Tensor:
        # The weight as an (in, out) matrix: a view, so it follows in-place changes; made again
        # when the weight's memory is replaced (`.to()`, `load_state_dict(assign=True)`).
        # Read once: another thread may replace it meanwhile (with a view as good).
        weight, matrix = self.weight, self._matrix
        if matrix is None or matrix[0] != weight.data_ptr():
            matrix = (weight.data_ptr(), weight.reshape(self.out_channels, self.in_channels).t())
            self._matrix = matrix
        return matrix[1]

    def _onednn_applies(self, x: torch.Tensor) -> bool:
        weight = self.weight  # a parameter: each read goes through nn.Module.__getattr__
        return (  # checked on every call, so the cheapest tests first
            x.is_cpu
            and weight.is_cpu
            and x.dtype is torch.float32
            and weight.dtype is torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
            and self._fallback.reason is None  # no private op of this copy's has failed
            and _mkldnn_enabled()  # torch.backends.mkldnn.enabled, as F.conv2d honours it
        )

    def _packed_kernel(self, key: tuple, pack: Callable[[], Any]) -> Any:
        # oneDNN picks the kernel's layout for one input shape; run on another, it reorders the
        # kernel on every call, slower than no packing at all. So one kernel per input shape,
        # the last few kept; each made again when the weight changes in place (its version) or
        # is replaced (its data). An inference tensor keeps no version: packed on every call.
        # Under the lock, so that threads sharing the copy neither lose nor evict each other's
        # entries halfway, and a shape is packed once however many threads want it (a thread
        # packing blocks only the others calling this layer, who would wait or pack too); the
        # kernel runs outside it, holding its own reference to what it was given.
        weight = self.weight
        version = None if weight.is_inference() else (weight._version, weight.data_ptr())
        packed = self._packed
        with self._lock:
            cached = packed.pop(key, None)
            if cached is None or version is None or cached[0] != version:
                cached = (version, pack())
            packed[key] = cached  # most recently used last
            while len(packed) > self.PACKED_SHAPES:
                del packed[next(iter(packed))]
        return cached[1]

    def _pack(self, x: torch.Tensor, pad) -> tuple[torch.Tensor, list]:
        weight, padding = self.padded_kernel(pad)
        kernel = _REORDER_CONVOLUTION_WEIGHT(
            weight.contiguous(),
            list(padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            list(x.shape),
        )
        return kernel, list(padding)

    def __getstate__(self):  # oneDNN kernels can be neither copied nor pickled: made again
        state = {**self.__dict__, "_packed": {}, "_matrix": None}
        del state["_lock"]  # nor can a lock
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()
        if "_fallback" not in state:  # pickled before there was one
            self._fallback = _Fallback()


def fold_batch_norms(model: KerasModel) -> KerasModel:
    """Fold each BatchNorm2d into the Conv2d it reads from, when nothing else reads the conv,
    in place. Only valid for inference (BatchNorm in training uses batch statistics)."""
    nodes, readers = model.nodes(), model.readers()
    for node in nodes:
        bn = node.layer
        if (
            not isinstance(bn, BatchNorm2d)
            or len(node.inputs) != 1
            or node.inputs[0] == 0
            or len(readers[node.inputs[0]]) != 1
        ):
            continue
        conv = nodes[node.inputs[0] - 1].layer
        if not isinstance(conv, Conv2d):
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift)
        model.replace(node.name, FoldedAway())
    return model


def fuse_convolutions(model: KerasModel, fallback: _Fallback | None = None) -> KerasModel:
    """Make each Conv2d a FusedConv2d, in place, taking in the activation that is its only
    reader (through folded BatchNorms). Run after `fold_batch_norms`. The layers share
    `fallback` (a new one if None): a private op failing in one sends them all to public ops."""
    fallback = fallback if fallback is not None else _Fallback()
    nodes, readers = model.nodes(), model.readers()
    for node in nodes:
        conv = node.layer
        if not isinstance(conv, Conv2d) or type(conv) not in (Conv2d, DepthwiseConv2d):
            continue
        if conv.dilation != (1, 1):  # a padded dilated kernel cannot grow by plain zeros
            continue
        activation, end = None, node.number
        while len(readers.get(end, ())) == 1:
            reader = nodes[readers[end][0] - 1]
            if isinstance(model.get_submodule(reader.name), FoldedAway):
                end = reader.number
                continue
            if type(reader.layer) in ONEDNN_ACTIVATIONS:
                activation = reader.layer
                model.replace(reader.name, FoldedAway())
            break
        model.replace(node.name, FusedConv2d(conv, activation, fallback))
    return model


# Inductor's options for `compile=True`: the C++ wrapper runs the compiled kernels with no Python
# between them, 1x1 convolutions become matrix products, and `freezing` among the options lets
# Inductor prepack the convolution kernels (torch 2.14 does not fold the weights into constants
# from here, unlike the config patched around the compile). Against `torch.compile(copy,
# dynamic=True)`, the previous compile=True, paired: 0.77 to 0.87 of the time at batch 1 for the
# four families, 0.72 to 1.08 at batch 8.
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True, "cpp_wrapper": True, "conv_1x1_as_mm": True}


def optimize_for_inference(
    model: KerasModel,
    channels_last: bool = True,
    compile: bool = False,
    *,
    fuse: bool = True,
    keep_memory: bool = True,
) -> nn.Module:
    """A copy of `model` for inference: BatchNorm folded, in eval mode, without gradients, and
    on the CPU each convolution run by oneDNN with its kernel packed once and its activation
    applied in the same pass, or, if it is a 1x1 convolution, as one matrix product
    (`FusedConv2d`). A layer's output in this copy (`forward_layers`) is that of the last layer
    folded into it.

    `channels_last` stores the convolution weights channels-last (call it on channels-last input
    to save the copy of the input: `x.to(memory_format=torch.channels_last)`). `fuse=False`
    leaves out `FusedConv2d` and with it the private oneDNN op: every layer a public PyTorch one
    (benchmarks/run.py times what the op buys).

    The fused copy may be called from several threads at once (its packed kernels are kept
    under a lock). It honours `torch.backends.mkldnn.enabled`, read on every call: while it is
    False, the public ops run. The private ops are Inductor's, not a public API: where their
    schemas are not the ones `FusedConv2d` calls (checked once per process), the copy is made
    with public ops only; where one raises at run time, that call and every later one of the
    copy run the public ops. Either way with one `RuntimeWarning` naming the op and the reason,
    and the same results.

    `keep_memory` (with `fuse`): calls without gradients write the large convolution outputs
    (4 MiB and more) whose layers page-fault into memory the copy keeps from one call to the
    next, for the last two input shapes, where PyTorch would take fresh memory from malloc
    each time (`memory.MemoryPlan`: by default glibc hands large freed blocks back to the
    system, and every fresh page costs a fault). The first call with a shape records the
    outputs, the second counts the faults, the third on use the plan. No process-wide setting
    changes; what the copy returns is never that memory; threads calling at once each get
    their own. Paired against `keep_memory=False`, 1 thread: 0.74 to 0.87 of the time for V1
    and V2 at batch 32 and V2 at batch 8, 0.94 for V3 Large at 32, the same elsewhere (within
    the noise, 5%); it holds about what ONNX Runtime does (81 against 80 MiB for V2 at batch
    8, 329 against 322 at 32; benchmarks/footprint.py). `keep_memory=False` leaves it all to
    malloc.

    `compile=True` returns the public-ops copy compiled by `torch.compile` with Inductor's
    `COMPILE_OPTIONS`: no Python between layers, the faster path for MobileNetV3 at batch 1
    (about 0.9 of the eager copy's time), not for V1 and V2 or larger batches (see
    benchmarks/run.py). It needs Inductor's C++ compiler, compiles at the first call of each
    new input shape (tens of seconds; the second shape compiles a graph for any size), and is
    meant to be run as it was made: change the weights, and make the copy again.
    """
    # The copy holds normal tensors even when made under torch.inference_mode(): inference
    # tensors keep no version counter, which FusedConv2d reads to notice a weight changed.
    with torch.inference_mode(False), torch.no_grad():
        fast = copy.deepcopy(model).eval()
        # compiled, FusedConv2d would run its plain layers
        fused = fuse and not compile and _onednn_usable()
        fallback = _Fallback()  # one for the copy, nested graphs included
        for graph in [m for m in fast.modules() if isinstance(m, KerasModel)]:  # nested too
            fold_batch_norms(graph)
            if fused:
                fuse_convolutions(graph, fallback)
                if keep_memory:
                    graph.keep_activation_memory()
        for parameter in fast.parameters():
            parameter.requires_grad_(False)
        if channels_last:
            fast = fast.to(memory_format=torch.channels_last)
    if compile:
        return cast(nn.Module, torch.compile(fast, options=COMPILE_OPTIONS))
    return fast


# glibc's mallopt parameters (malloc.h) and the values that keep freed memory, the same as the
# environment MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
KEPT_MEMORY_SETTINGS = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse, for the whole process, instead of
    handing large blocks back to the system.

    PyTorch takes each activation from malloc, and by default glibc serves large blocks
    (above 128 KiB to 32 MiB, adapting) from fresh pages and unmaps them on free, so every new
    activation costs a page fault per 4 KiB page: at batch 8 and more that can take longer than
    the convolutions (here an optimized MobileNetV2 ran 1.6x faster with this at batch 8, 2.4x
    at batch 32, its resident memory staying at 1.2 GiB instead of falling back to 1.0).
    ONNX Runtime and TensorFlow keep their own memory pools; this is the glibc equivalent for
    PyTorch. Call it once, before the work: the same as starting Python with
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647.
    Returns False, changing nothing, where the C library is not glibc (macOS, Windows, musl),
    and False if glibc refused a setting.
    """
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    # gnu_get_libc_version is glibc's own: musl has a mallopt that does nothing
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return False
    # every setting tried, none skipped by a short circuit: True only when glibc took them all
    taken = [libc.mallopt(option, value) == 1 for option, value in KEPT_MEMORY_SETTINGS.items()]
    return all(taken)
