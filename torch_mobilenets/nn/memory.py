"""Activation memory that an inference copy keeps between calls (`MemoryPlan`).

On the CPU PyTorch takes every activation from malloc, and glibc serves blocks above its mmap
threshold (128 KiB at first, at most 32 MiB) with fresh pages and hands them back on free: each
large activation then costs a page fault per 4 KiB on every call, longer than the convolutions
themselves in MobileNetV2 at batch 8. ONNX Runtime and TensorFlow plan their memory once per
shape and keep it. This does the same for one model's program, without touching any
process-wide setting: the first call with a new input shape runs as usual and records the
shape of every large output that a layer can write into a given tensor (`writes_into`); the
second counts the page faults of each of those layers, since malloc does reuse many blocks
(all of MobileNetV3 Small's up to batch 32, here) and a planned output costs two passes over
it; from the outputs that faulted, a plan gives each a buffer, buffers shared by outputs
whose lifetimes do not overlap; later calls with that shape write into the same memory.

The graph tells which calls write into their input and which layers give fresh memory
(`CallMemory`); the lifetimes follow from that here (`lifetimes_of`), as do the buffers. Only
float32 outputs are planned (`PLANNED_DTYPE`); sizes are counted in bytes, by each output's own
element size.

A call checks an arena (one set of buffers) out of the plan and gives it back at its end, so
threads calling one copy together each write into their own. The model's output and anything
that shares its memory are never planned: what `forward` returns is the caller's to keep.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch

# Smaller outputs stay with malloc, which mostly reuses blocks this small without faults, while a
# planned output costs two passes over it (oneDNN writes a given tensor only as a sum into
# zeros, then the activation in place).
PLANNED_MIN_BYTES = 4 << 20
# An output is planned where its layer faulted on at least this share of its pages in the
# counted call: glibc serves a block from fresh pages or from reused ones, nothing between.
FAULTED_SHARE = 0.25
PAGE = 4096
# The one dtype planned: the inference copy's FusedConv2d writes into a given tensor only where
# oneDNN runs it, which is in float32 alone.
PLANNED_DTYPE = torch.float32


def _minor_faults() -> tuple[bool, Callable[[], int]]:
    """(whether they can be counted, the process's minor page faults so far): where they
    cannot (Windows), every large output is planned."""
    try:
        import resource
    except ImportError:
        return False, lambda: 0
    return True, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt


FAULTS_COUNTED, minor_faults = _minor_faults()


class Output(NamedTuple):
    """A planned output: its shape, strides (in elements) and dtype."""

    size: tuple
    stride: tuple
    dtype: torch.dtype

    @staticmethod
    def of(value: object) -> Output | None:
        """The output to plan for this layer result, or None: only large CPU tensors of
        PLANNED_DTYPE, contiguous or channels-last, are planned."""
        if not (
            isinstance(value, torch.Tensor)
            and value.is_cpu
            and value.dtype is PLANNED_DTYPE
            and value.numel() * value.element_size() >= PLANNED_MIN_BYTES
            and (value.is_contiguous() or value.is_contiguous(memory_format=torch.channels_last))
        ):
            return None
        return Output(tuple(value.shape), value.stride(), value.dtype)

    def elements(self) -> int:
        """The elements its strides span."""
        return 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))

    def nbytes(self) -> int:
        """The memory its strides span."""
        return self.elements() * self.dtype.itemsize


class Lifetime(NamedTuple):
    """When a planned output's memory is in use: from the call that writes it to the last call
    that reads it or a value sharing its memory (an in-place layer's output), both included."""

    first: int
    last: int
    output: Output


class OutputMemory(enum.Enum):
    """Whose memory a call's output may be in."""

    FRESH = "fresh"  # its own: a layer known to return fresh memory
    INPUT = "input"  # its first input's: the call writes into it
    SHARED = "shared"  # its own or any of its inputs': a view, or a layer not known to be fresh


class CallMemory(NamedTuple):
    """One call of a program as its lifetimes see it: the nodes it reads, the node it makes and
    whose memory that may be in."""

    node: int
    inputs: tuple
    output: OutputMemory


def lifetimes_of(
    calls: Sequence[CallMemory],
    start: int,
    returned: Iterable[int],
    outputs: dict[int, Output],
) -> dict[int, Lifetime]:
    """The lifetimes of the recorded `outputs` (call index -> output) of a program's `calls`,
    whose input is node `start`: each runs to the last read of any value that may share its
    memory, and outputs sharing memory with a node in `returned` (what the caller gets) are
    left out: that memory is the caller's to keep."""
    shared: dict[int, frozenset] = {start: frozenset({start})}  # node -> the memories it may use
    last_read: dict[int, int] = {}
    for k, call in enumerate(calls):
        for i in call.inputs:
            for memory in shared[i]:
                last_read[memory] = k
        if call.output is OutputMemory.INPUT:
            shared[call.node] = shared[call.inputs[0]]
        elif call.output is OutputMemory.FRESH:
            shared[call.node] = frozenset({call.node})
        else:
            shared[call.node] = frozenset({call.node}).union(*(shared[i] for i in call.inputs))
    kept = frozenset().union(*(shared[node] for node in returned))
    return {
        k: Lifetime(k, last_read.get(calls[k].node, k), output)
        for k, output in outputs.items()
        if calls[k].node not in kept
    }


def assign_buffers(lifetimes: dict[int, Lifetime]) -> tuple[list[int], dict[int, int]]:
    """(buffer sizes in bytes, call -> buffer): outputs whose lifetimes overlap get separate
    buffers; a free buffer is reused best-fit (the smallest that is large enough, else the
    largest, grown)."""
    sizes: list[int] = []
    buffer_of: dict[int, int] = {}
    busy: list[tuple[int, int]] = []  # (last call, buffer)
    free: list[int] = []
    for call, lifetime in sorted(lifetimes.items()):
        for last, buffer in [b for b in busy if b[0] < lifetime.first]:
            busy.remove((last, buffer))
            free.append(buffer)
        need = lifetime.output.nbytes()
        fits = [b for b in free if sizes[b] >= need]
        if fits:
            buffer = min(fits, key=lambda b: sizes[b])
        elif free:
            buffer = max(free, key=lambda b: sizes[b])
            sizes[buffer] = need
        else:
            buffer = len(sizes)
            sizes.append(need)
        if buffer in free:
            free.remove(buffer)
        busy.append((lifetime.last, buffer))
        buffer_of[call] = buffer
    return sizes, buffer_of


class MemoryPlan:
    """The buffers of one program at one input shape: `take` an arena (a list, by call, of the
    tensor to write into or None), `give_back` it when the call is done. A plan still
    `counting` holds the candidates only: the next call counts their faults (`faulted`). A
    plan that is not `active` has nothing to do: calls run as if none were kept."""

    IDLE_ARENAS = 2  # kept for threads calling at once; more are made and dropped as needed

    def __init__(self, lifetimes: dict[int, Lifetime], calls: int, counting: bool = False):
        self.lifetimes, self.counting = lifetimes, counting and FAULTS_COUNTED
        if self.counting:
            lifetimes = {}  # nothing planned until the faults are counted
        self.sizes, self.buffer_of = assign_buffers(lifetimes)
        self.outputs = {call: lifetime.output for call, lifetime in lifetimes.items()}
        self.calls = calls
        self._idle: list[list] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether a call with this plan does anything: counts faults or writes outputs."""
        return bool(self.lifetimes if self.counting else self.outputs)

    def faulted(self, faults: dict[int, int]) -> MemoryPlan:
        """The plan of the candidates whose layers faulted (call -> faults counted) on at least
        FAULTED_SHARE of their output's pages."""
        return MemoryPlan(
            {
                call: lifetime
                for call, lifetime in self.lifetimes.items()
                if faults.get(call, 0) * PAGE >= FAULTED_SHARE * lifetime.output.nbytes()
            },
            self.calls,
        )

    @property
    def nbytes(self) -> int:
        """The memory of one arena."""
        return sum(self.sizes)

    def take(self) -> list:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        # Normal tensors, even under torch.inference_mode: an inference tensor could not be
        # written into by a later call made outside it.
        # Buffers of bytes, each output a view of its own dtype at the start of one.
        with torch.inference_mode(False), torch.no_grad():
            buffers = [torch.empty(n, dtype=torch.uint8) for n in self.sizes]
            arena: list = [None] * self.calls
            for call, output in self.outputs.items():
                memory = buffers[self.buffer_of[call]][: output.nbytes()].view(output.dtype)
                arena[call] = memory.as_strided(output.size, output.stride)
        return arena

    def give_back(self, arena: list) -> None:
        with self._lock:
            if len(self._idle) < self.IDLE_ARENAS:
                self._idle.append(arena)


class MemoryPlans:
    """A model's plans by (program, input shape), the most recently used few kept: a shape no
    longer used gives its memory back once others have replaced it."""

    SHAPES = 2

    def __init__(self) -> None:
        self._plans: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> MemoryPlan | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key: tuple, plan: MemoryPlan) -> None:
        with self._lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > self.SHAPES:
                self._plans.popitem(last=False)

    def nbytes(self) -> int:
        """The memory the plans hold now: their idle arenas."""
        with self._lock:
            return sum(plan.nbytes * len(plan._idle) for plan in self._plans.values())

    def __len__(self) -> int:
        return len(self._plans)

    # Neither plans nor locks are copied or pickled: a copy plans for itself.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]
