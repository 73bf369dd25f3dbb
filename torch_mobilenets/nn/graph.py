"""`KerasModel`: a Keras functional model in PyTorch.

Keras models are flat: every layer has a unique name and the graph says which outputs feed which
layer. We keep exactly that. Each layer is a child module registered under its Keras name, in
Keras' order, so `model.state_dict()` keys read `conv_dw_1_bn.running_mean` and
`model.get_submodule("block_12_add")` finds the layer a Keras user knows. The builders write the
graph the way Keras code does:

    x = model.add("conv1", Conv2d(3, 32, 3, stride=2), x)
    x = model.add("conv1_bn", BatchNorm2d(32), x)

`add` returns a symbolic tensor carrying the static shape, which the builders need because Keras
fixes some paddings from static shapes at build time. `forward` replays the recorded graph.

Code that rewrites a built model (the inference folds) reads the graph through `nodes()` and
`readers()` and swaps layers with `replace()`, never the private wiring.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from .layers import FRESH_OUTPUT, ZeroPadding2D, capturing_graph, compiling_for_speed
from .memory import (
    CallMemory,
    MemoryPlan,
    MemoryPlans,
    Output,
    OutputMemory,
    lifetimes_of,
    minor_faults,
)


class KerasTensor(NamedTuple):
    """A symbolic tensor while a model is built: which node made it, and its static shape
    without the batch axis (`None` for a dynamic size)."""

    node: int
    shape: tuple


class Node(NamedTuple):
    """One layer call in the graph. Nodes are numbered from 1 in Keras' order; node 0 is the
    model's input, and `inputs` are the numbers of the nodes the layer reads."""

    number: int
    name: str
    layer: nn.Module
    inputs: tuple


class KerasModel(nn.Module):
    """A Keras functional model: Keras-named layers plus the wiring between them.

    `config` holds the arguments the model was built with (`config["family"]` names the builder),
    so the model can be rebuilt and checkpoints can say what they fit.
    """

    def __init__(self, name: str, input_shape: tuple, config: dict):
        super().__init__()
        self.name = name
        self.input_shape = tuple(input_shape)
        self.config = dict(config)
        # For each layer, in order: its name and the nodes it reads. Node 0 is the model's input,
        # node i the output of the i-th layer.
        self._graph: list[tuple[str, tuple[int, ...]]] = []
        # (keep, last node, start node, overwrite, own input) -> _Program, made on first use
        self._programs: dict | None = None
        # The activation memory kept between calls, by program and input shape; None: none is
        # kept (see `keep_activation_memory`).
        self._memory: MemoryPlans | None = None
        # The last layer of the body: what the top (or pooling) reads. Set by the builders.
        self.feature_layer: str = ""
        # The nodes whose outputs `forward` returns, when there are several (a tuple, in Keras'
        # order); by default the last layer's alone.
        self.output_nodes: tuple[int, ...] = ()
        # Keras names that are no module names (they hold a "."), by module name.
        self.keras_names: dict[str, str] = {}
        # Keras' augmentation layers (`RandomFlip`, ...): the identity here, in training too.
        self.augmentation_layers: tuple[str, ...] = ()
        # Layers that run in inference mode even when the model trains (Keras 2's
        # `base(x, training=False)`).
        self.inference_layers: tuple[str, ...] = ()

    def input(self) -> KerasTensor:
        return KerasTensor(0, self.input_shape)

    def add(self, name: str, layer: nn.Module, *inputs: KerasTensor) -> KerasTensor:
        """Register `layer` under its Keras `name`, called on `inputs`; returns its output.
        A name holding "." (Keras 2's `tf.math.truediv`, a nested `mobilenetv2_1.00_160`) is
        registered with "_" in its place, one that is an attribute of ours (`add`) with "_"
        after it, and `get_submodule` takes either."""
        keras_name, name = name, name.replace(".", "_")
        if name in self._modules or keras_name in self.keras_names.values():
            raise ValueError(f"duplicate layer name {keras_name!r}")
        while hasattr(self, name):  # a name of ours (Keras 3 names an op `add`)
            name += "_"
        if keras_name != name:
            self.keras_names[name] = keras_name
        self.add_module(name, layer)
        self._graph.append((name, tuple(t.node for t in inputs)))
        self._programs = None
        shape = self._layer(name).output_shape(*(t.shape for t in inputs))
        if any(n is not None and n < 1 for n in shape):
            raise ValueError(
                f"layer {keras_name!r} would output shape {shape}: the input is too small"
            )
        return KerasTensor(len(self._graph), shape)

    def keep_activation_memory(self) -> None:
        """Keep the memory of the large activations between calls without gradients, for each
        input shape (the last few), instead of taking it from malloc afresh on every call
        (`memory.MemoryPlan`). Only layers that can write into a given tensor (`writes_into`,
        the inference copy's FusedConv2d) use it; `optimize_for_inference` turns it on."""
        if self._memory is None:
            self._memory = MemoryPlans()

    def _layer(self, name: str) -> Any:
        """The layer registered under `name`, typed loosely: our layers add Keras' methods."""
        return self._modules[name]

    @property
    def layer_names(self) -> list[str]:
        """The Keras layer names, in Keras' order."""
        return [name for name, _ in self._graph]

    # The graph, for code that rewrites a built model.

    def nodes(self) -> list[Node]:
        """Every layer call, in Keras' order (node i is `nodes()[i - 1]`)."""
        return [
            Node(i, name, self._layer(name), inputs)
            for i, (name, inputs) in enumerate(self._graph, start=1)
        ]

    def readers(self) -> dict[int, list[int]]:
        """node -> the nodes that read its output, in order (node 0: the input)."""
        return readers_of(inputs for _, inputs in self._graph)

    def replace(self, name: str, layer: nn.Module) -> None:
        """Put `layer` where layer `name` is, with the same wiring (say, a folded layer)."""
        if name not in self.layer_names:
            raise ValueError(f"model {self.name!r} has no layer {name!r}")
        setattr(self, name, layer)
        self._programs = None

    def forward(self, x: torch.Tensor):
        if len(self.output_nodes) > 1:
            names = [self._graph[node - 1][0] for node in self.output_nodes]
            kept = self._run(x, keep=frozenset(names))[1]
            return tuple(kept[name] for name in names)
        return self._run(x)[0]

    def output_shape(self, shape: tuple) -> tuple:
        """The static shape this model gives for an input of `shape` (a model nested in
        another is one of its layers)."""
        shapes = {0: tuple(shape)}
        for node, (name, inputs) in enumerate(self._graph, start=1):
            shapes[node] = self._layer(name).output_shape(*(shapes[i] for i in inputs))
        return shapes[len(self._graph)]

    def get_submodule(self, target: str) -> nn.Module:
        """The layer at a dotted path of Keras names, such as
        `mobilenetv2_1.00_160.block_1_expand` (a nested model's name may hold dots)."""
        if not target:
            return self
        try:
            return super().get_submodule(target)
        except AttributeError:
            pass
        by_keras_name = {keras: name for name, keras in self.keras_names.items()}
        for keras, name in sorted(by_keras_name.items(), key=lambda kv: -len(kv[0])):
            if target == keras:
                return self._modules[name]  # type: ignore[return-value]
            if target.startswith(keras + "."):
                return self._modules[name].get_submodule(target[len(keras) + 1 :])  # type: ignore[union-attr]
        return super().get_submodule(target)

    # Fine-tuning and feature extraction, by Keras layer name.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output (`feature_layer`), before any pooling or top."""
        return self.forward_layers(x, [self.feature_layer])[self.feature_layer]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The layers after `feature_layer`, applied to its output. With `pre_logits`, stop at
        what the classifier reads, as (N, C)."""
        start = self.layer_names.index(self.feature_layer) + 1
        if not pre_logits:
            return self._run(features, start_node=start)[0]
        classifier = self._classifier_name()
        if classifier is None:
            raise ValueError(f"model {self.name!r} has no classifier (built without the top)")
        source = self._graph[self.layer_names.index(classifier)][1][0]
        if source == start:
            return features.flatten(1) if features.dim() == 2 else features.mean((2, 3))
        name = self._graph[source - 1][0]
        return self._run(features, keep={name}, last_node=source, start_node=start)[1][
            name
        ].flatten(1)

    def feature_layers(self) -> list[str]:
        """The last layer at each resolution of the body (strides 2, 4, ..., 32): the maps a
        detection or segmentation head reads. Use with `forward_layers`."""
        reduction, last_at = {0: 1}, {}
        for node, (name, inputs) in enumerate(self._graph, start=1):
            stride = getattr(self._layer(name), "stride", (1,))
            reduction[node] = reduction[inputs[0]] * stride[0]
            if not isinstance(self._layer(name), ZeroPadding2D):  # a pad is no feature map
                last_at[reduction[node]] = name
            if name == self.feature_layer:
                break
        return [name for r, name in sorted(last_at.items()) if r > 1]

    def get_classifier(self) -> nn.Module | None:
        """The top's classifier layer (`conv_preds`, `predictions` or `logits`), or None."""
        name = self._classifier_name()
        return self._layer(name) if name else None

    def reset_classifier(self, num_classes: int) -> KerasModel:
        """A fresh classifier for `num_classes`, initialised as Keras initialises it (Glorot
        uniform kernels, zero biases); returns the model, changed in place.

        - A model with a classifier gets a new one; the rest of the top (activation,
          dropout) is kept.
        - A model without one (built with `include_top=False`, or a loaded graph that ends at
          a feature map or a pooled vector) gets a fresh top of `num_classes` logits in the
          shape of its family's own top, under Keras' layer names (`models.heads`).
        - `num_classes=0` leaves no classifier: `forward` gives the pooled features, as in
          timm (`models.heads` says which for each kind of model).
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(
                f"num_classes must be an integer, at least 1, or 0 for the pooled features; "
                f"got {num_classes!r}"
            )
        heads = HEADS.get(self.config.get("family", ""), HEADS.get("*"))
        name = self._classifier_name()
        if num_classes and name is not None:
            old = self._layer(name)
            if not hasattr(old, "with_outputs"):
                raise ValueError(
                    f"model {self.name!r}: its last weighted layer {name!r} "
                    f"({type(old).__name__}) is no classifier that can be resized"
                )
            device, dtype = old.weight.device, old.weight.dtype
            self.replace(name, old.with_outputs(num_classes).to(device=device, dtype=dtype))
            self.config["classes"] = num_classes
            if heads is not None:
                heads.resized(self, name, num_classes)
        elif heads is None:
            raise ValueError(
                f"model {self.name!r} has no classifier (built without the top), and no top "
                f"is known for its family {self.config.get('family')!r}"
            )
        elif num_classes:
            heads.fresh(self, num_classes)
        else:
            heads.features(self)
        return self

    def truncate(self, name: str) -> None:
        """Drop every layer after `name`, whose output becomes the model's (for the head
        rewrites of `reset_classifier`)."""
        names = self.layer_names
        if name not in names:
            raise ValueError(f"model {self.name!r} has no layer {name!r}")
        keep = names.index(name) + 1
        for dropped, _ in self._graph[keep:]:
            del self._modules[dropped]
            self.keras_names.pop(dropped, None)
        self._graph = self._graph[:keep]
        self._programs = None
        self.output_nodes = ()
        kept = set(self.layer_names) | {self.keras_names.get(n, n) for n in self.layer_names}
        self.augmentation_layers = tuple(n for n in self.augmentation_layers if n in kept)
        self.inference_layers = tuple(n for n in self.inference_layers if n in kept)
        if self.feature_layer not in kept:
            self.feature_layer = name

    def freeze(self, up_to: str | None = None) -> None:
        """Make every layer up to and including `up_to` (all when None) non-trainable, as
        Keras' `layer.trainable = False`: no gradients, and BatchNormalization in inference mode
        even when the model trains."""
        names = self.layer_names
        last = names.index(up_to) if up_to is not None else len(names) - 1
        for name in names[: last + 1]:
            _set_trainable(self._layer(name), False)

    def freeze_layers(self, names: Iterable[str]) -> None:
        """Make the named layers non-trainable, as Keras' `layer.trainable = False`."""
        for name in names:
            _set_trainable(self._layer(name), False)

    def train(self, mode: bool = True):
        if mode and self.augmentation_layers and not getattr(self, "_warned_augmentation", False):
            warnings.warn(
                f"model {self.name!r}: the augmentation layers {list(self.augmentation_layers)} "
                "are the identity here, in training too; augment the data in your input "
                "pipeline (torchvision.transforms v2, say) instead",
                UserWarning,
                stacklevel=2,
            )
            self._warned_augmentation = True
        super().train(mode)
        for name in self.inference_layers:
            self._layer(name).train(False)
        return self

    def unfreeze(self) -> None:
        for name in self.layer_names:
            _set_trainable(self._layer(name), True)

    def _classifier_name(self) -> str | None:
        head = self.layer_names[self.layer_names.index(self.feature_layer) + 1 :]
        weighted = [n for n in head if hasattr(self._layer(n), "keras_class")]
        return weighted[-1] if weighted else None

    def forward_layers(self, x: torch.Tensor, names: Iterable[str]) -> dict:
        """The outputs of the named layers, computing only as far as the last of them."""
        names = set(names)
        unknown = sorted(names - set(self.layer_names))
        if unknown:
            raise ValueError(f"model {self.name!r} has no layers {unknown}")
        last = max(self.layer_names.index(n) for n in names) + 1
        return self._run(x, keep=names, last_node=last)[1]

    def _run(
        self, x: torch.Tensor, keep=frozenset(), last_node: int | None = None, start_node: int = 0
    ):
        """Replay the graph, `x` being node `start_node` (the input by default); returns (the
        last output, the outputs of the layers in `keep`)."""
        if start_node == 0:
            self._check_input(x)
        # Rewrites that autograd or a tracer could not follow are made only in eager mode:
        eager = not capturing_graph()
        # in-place layer calls, also only without gradients;
        overwrite = eager and not torch.is_grad_enabled()
        # and on the CPU, running the graph channels-last, in compiled training too (see
        # `compiling_for_speed`): oneDNN convolutions then neither reorder their input nor
        # allocate for it: 1.15x faster at batch 1, up to 3x at 32. The copy of `x` this takes
        # is ours, so the first layer may write into it; outputs go back to the caller's layout.
        relayout = (
            (eager or compiling_for_speed())
            and x.device.type == "cpu"
            and x.dim() == 4
            and not x.is_contiguous(memory_format=torch.channels_last)
        )
        if relayout:
            x = x.contiguous(memory_format=torch.channels_last)
        key = (frozenset(keep), last_node, start_node, overwrite, relayout)
        # Read once: threads calling the model together may each make a program, and each
        # runs its own, never a missing one.
        programs = self._programs
        if programs is None:
            programs = self._programs = {}
        program = programs.get(key)
        if program is None:
            program = programs[key] = _program(self, *key)
        values = {start_node: x}
        # The kept activation memory, only where calls write in place (so without gradients):
        # the plain loop wherever its plan for this input shape has nothing to do.
        memory = self._memory if overwrite else None
        if memory is None:
            self._replay(program, values)
        else:
            shape_key = (key, tuple(x.shape), x.stride(), x.dtype, x.device)
            plan = memory.get(shape_key)
            if plan is None or plan.active:
                self._replay_planned(program, values, memory, shape_key, plan)
            else:
                self._replay(program, values)
        out = values[program.output]
        kept = {name: values[node] for name, node in program.kept.items()}
        if relayout:
            out = _contiguous(out)
            kept = {name: _contiguous(value) for name, value in kept.items()}
        return out, kept

    def _replay(self, program: _Program, values: dict) -> None:
        """Run `program` on `values` (node -> value, its start node's given), dropping each value
        after its last read. The hot loop of every forward pass: it checks nothing per call."""
        # `_call` inlined, its constants read once: a function call per layer cost 1-2% of
        # MobileNetV3Small's time at batch 1.
        modules, inplace, padded = self._modules, How.INPLACE, How.PADDED
        for call in program.calls:
            layer: Any = modules[call.name]
            args = [values[i] for i in call.inputs]
            if call.how is inplace:
                values[call.node] = layer.forward_inplace(*args)
            elif call.how is padded:
                values[call.node] = layer(args[0], pad=call.pad)
            else:
                values[call.node] = layer(*args)
            for i in call.released:  # drop activations nothing reads again
                del values[i]

    def _replay_planned(
        self,
        program: _Program,
        values: dict,
        memory: MemoryPlans,
        shape_key: tuple,
        plan: MemoryPlan | None,
    ) -> None:
        """`_replay` with the activation memory kept for one input shape (`shape_key` in
        `memory`): with no `plan` yet it records the outputs to plan for; a plan still counting
        has their layers' page faults counted; from then on they are written into an arena of
        the plan's."""
        arena: list | None = None
        record: dict[int, Output] | None = None
        counting: dict[int, int] = {}  # call -> its faults, for the candidates being counted
        if plan is None:
            record = {}
        elif plan.counting:
            counting = dict.fromkeys(plan.lifetimes, 0)
        else:
            arena = plan.take()
        modules = self._modules
        try:
            for k, call in enumerate(program.calls):
                layer: Any = modules[call.name]
                args = [values[i] for i in call.inputs]
                counted = k in counting
                if counted:
                    before = minor_faults()
                if arena is not None and arena[k] is not None:
                    values[call.node] = layer(args[0], pad=call.pad, out=arena[k])
                else:
                    values[call.node] = _call(layer, call, args)
                if counted:
                    counting[k] = minor_faults() - before
                if (
                    record is not None
                    and call.how is not How.INPLACE
                    and getattr(layer, "writes_into", False)
                    and (output := Output.of(values[call.node]))
                ):
                    record[k] = output
                for i in call.released:  # drop activations nothing reads again
                    del values[i]
        finally:
            if arena is not None and plan is not None:
                plan.give_back(arena)
        if record is not None:  # even empty: not recorded again
            memory.put(shape_key, self._candidates(program, record))
        elif counting and plan is not None:
            memory.put(shape_key, plan.faulted(counting))

    def _candidates(self, program: _Program, outputs: dict[int, Output]) -> MemoryPlan:
        """The plan, still counting faults, for the recorded `outputs` (call index -> output) of
        `program`: the graph says whose memory each call's output may be in, `memory` what
        lifetimes follow."""
        calls = [CallMemory(c.node, c.inputs, self._output_memory(c)) for c in program.calls]
        returned = (program.output, *program.kept.values())
        return MemoryPlan(
            lifetimes_of(calls, program.start, returned, outputs), len(calls), counting=True
        )

    def _output_memory(self, call: _Call) -> OutputMemory:
        if call.how is How.INPLACE:
            return OutputMemory.INPUT
        if isinstance(self._modules[call.name], FRESH_OUTPUT):
            return OutputMemory.FRESH
        return OutputMemory.SHARED  # a view, or a layer not known to return fresh memory

    def __setstate__(self, state):  # the cached programs are remade (an older release's too)
        state.pop("_plan", None)
        for name, default in (
            ("output_nodes", ()),
            ("keras_names", {}),
            ("augmentation_layers", ()),
            ("inference_layers", ()),
        ):
            state.setdefault(name, default)  # a model pickled before they were kept
        state.setdefault("_memory", None)
        super().__setstate__({**state, "_programs": None})

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (None, *self.input_shape)
        if x.dim() != 4 or any(e is not None and e != s for e, s in zip(expected, x.shape)):
            raise ValueError(
                f"Input of model {self.name!r} is incompatible: expected shape "
                f"(N, {', '.join('None' if s is None else str(s) for s in self.input_shape)}), "
                f"got {tuple(x.shape)}. The spatial size is fixed when `input_shape` is given "
                "(as in Keras); build the model without it to accept any size."
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"


class Heads(Protocol):
    """How `reset_classifier` rewrites the top of a family's models: `fresh` adds a top of
    `num_classes` to a model without a classifier, `features` leaves none (num_classes=0),
    `resized` records a classifier that `reset_classifier` resized (in the model's config)."""

    def fresh(self, model: KerasModel, num_classes: int) -> None: ...

    def features(self, model: KerasModel) -> None: ...

    def resized(self, model: KerasModel, name: str, num_classes: int) -> None: ...


# `Heads` by `config["family"]`, "*" for any other family. The builders' package registers
# them (`models.heads`): the tops are the families' own, and nn knows no family.
HEADS: dict[str, Heads] = {}


def readers_of(inputs_per_step: Iterable[tuple]) -> dict[int, list[int]]:
    """node -> the steps (1, 2, ...) that read it, in order, given each step's input nodes."""
    readers: dict[int, list[int]] = {}
    for step, inputs in enumerate(inputs_per_step, start=1):
        for i in inputs:
            readers.setdefault(i, []).append(step)
    return readers


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous() if x.dim() == 4 else x


def _set_trainable(layer: nn.Module, trainable: bool) -> None:
    for parameter in layer.parameters():
        parameter.requires_grad_(trainable)
    for module in layer.modules():
        if hasattr(module, "trainable"):
            setattr(module, "trainable", trainable)  # noqa: B010  (nn.Module types attributes as tensors)


class How(enum.Enum):
    """How the plan runs one layer."""

    CALL = "call"
    ALIAS = "alias"  # an identity: its output is its input
    PADDED = "padded"  # a conv reading the input of the skipped ZeroPadding2D before it
    SKIP = "skip"  # a ZeroPadding2D folded into the conv after it
    INPLACE = "inplace"  # writes its result into its first input
    INPLACE_NOGRAD = "inplace_nograd"  # the same, but only when no gradient is being recorded


class _Step(NamedTuple):
    name: str
    inputs: tuple  # nodes read
    how: How = How.CALL
    pad: tuple | None = None


def _plan(model: KerasModel, keep: frozenset) -> list:
    """How `forward` runs the graph. The rewrites keep Keras' layers and cost nothing in accuracy:

    - a ZeroPadding2D read only by a "valid" convolution is folded into it (a bigger kernel with
      zeros and symmetric padding), so the padded copy of the input is never made;
    - a layer that can write its result into its input (`forward_inplace`: activations,
      BatchNormalization, Add, Multiply, Rescaling) does so when no later layer reads that
      input.

    Each fresh tensor costs more than its arithmetic on the CPU: large blocks come from the
    system page by page (a page fault each), so in MobileNetV2 at batch 8 the allocations take
    longer than the convolutions. Outputs asked for in `keep` are never written into.
    """
    graph = model._graph
    steps: list[_Step] = []
    readers = readers_of(inputs for _, inputs in graph)
    for step, (name, inputs) in enumerate(graph, start=1):
        layer = model._layer(name)
        how, pad = How.CALL, None
        source = inputs[0] if len(inputs) == 1 else None
        if source and readers[source] == [step] and graph[source - 1][0] not in keep:
            producer = model._layer(graph[source - 1][0])
            if isinstance(layer, nn.Identity):  # a layer folded into its producer
                how = How.ALIAS
            elif (
                isinstance(producer, ZeroPadding2D)
                and getattr(layer, "keras_padding", None) == "valid"
            ):
                how, pad, inputs = How.PADDED, producer.padding, graph[source - 1][1]
                steps[source - 1] = steps[source - 1]._replace(how=How.SKIP, inputs=())
        steps.append(_Step(name, tuple(inputs), how, pad))

    readers = readers_of(s.inputs for s in steps)  # as the plan runs, after the folding

    def shares_input(step: int) -> bool:  # may return its input, or a view of it
        # A nested model may, too: it is not listed.
        return (
            not isinstance(model._layer(steps[step - 1].name), FRESH_OUTPUT)
            or steps[step - 1].how is How.ALIAS
        )

    def owns(node: int, via: int | None = None) -> bool:
        """No tensor that a later layer reads, or that the caller gets, shares `node`'s memory;
        `via` is a reader allowed to share it because it takes the memory over."""
        if node > 0 and steps[node - 1].name in keep:
            return False
        if any(shares_input(r) for r in readers.get(node, ()) if r != via):
            return False
        if node > 0 and shares_input(node):  # it owns its input's memory if that input ends here
            source = steps[node - 1].inputs[0]
            return readers[source] == [node] and owns(source, via=node)
        return True

    for step, s in enumerate(steps, start=1):
        layer = model._layer(s.name)
        if s.how is not How.CALL or not hasattr(layer, "forward_inplace"):
            continue
        writable = [
            s.inputs[k]
            for k in getattr(layer, "inplace_inputs", (0,))
            if readers[s.inputs[k]][-1] == step and owns(s.inputs[k])
        ]
        if not writable:
            continue
        target = writable[0]
        if s.inputs.count(target) > 1:  # x + x cannot be written into x
            continue
        k = s.inputs.index(target)
        inputs = (target, *s.inputs[:k], *s.inputs[k + 1 :])
        autograd_safe = getattr(layer, "inplace_under_autograd", False) and readers[target] == [
            step
        ]
        steps[step - 1] = s._replace(
            inputs=inputs, how=How.INPLACE if autograd_safe else How.INPLACE_NOGRAD
        )

    return steps


class _Call(NamedTuple):
    """One layer call of a `_Program`."""

    name: str
    how: How  # CALL, INPLACE or PADDED
    inputs: tuple  # the nodes read, each the call that made its value (aliases followed)
    node: int
    released: tuple = ()  # nodes no later call reads
    pad: tuple | None = None


class _Program(NamedTuple):
    calls: list
    start: int  # the node the input is
    output: int  # the node whose value is the result
    kept: dict  # name -> node, for the layers asked for


def _call(layer: Any, call: _Call, args: list) -> Any:
    """Run one call of a program on its arguments' values (into fresh memory, or its first
    argument's where it is in place)."""
    if call.how is How.INPLACE:
        return layer.forward_inplace(*args)
    if call.how is How.PADDED:
        return layer(args[0], pad=call.pad)
    return layer(*args)


def _program(
    model: KerasModel,
    keep: frozenset,
    last_node: int | None,
    start_node: int,
    overwrite: bool,
    own_input: bool,
) -> _Program:
    """The plan as `_run` executes it for one kind of call: only the layers that compute (an
    alias is its input, a folded pad nothing), each in-place step decided, so that a forward pass
    spends no Python on what does nothing (half the layers of an `optimize_for_inference` copy
    are folded away). `own_input`: the input is our copy, so the first layer may write into it.
    """
    source = {start_node: start_node}  # node -> the node whose value it has
    calls: list[_Call] = []
    kept: dict[str, int] = {}
    node = start_node
    for node, step in enumerate(_plan(model, keep), start=1):
        if node <= start_node or step.how is How.SKIP:
            continue
        inputs = tuple(source[i] for i in step.inputs)
        if step.how is How.ALIAS:
            source[node] = inputs[0]
        else:
            how = step.how
            if how is How.INPLACE_NOGRAD:
                how = How.INPLACE if overwrite else How.CALL
            if how is How.INPLACE and inputs[0] == start_node and not own_input:
                how = How.CALL  # `x` belongs to the caller: never write into it
            calls.append(_Call(step.name, how, inputs, node, pad=step.pad))
            source[node] = node
        if step.name in keep:
            kept[step.name] = source[node]
        if node == last_node:
            break
    output = source[node]
    last_read = {}
    for k, call in enumerate(calls):
        for i in call.inputs:
            last_read[i] = k
    held = {output, *kept.values()}
    released: dict[int, list[int]] = {}
    for i, k in last_read.items():
        if i not in held:
            released.setdefault(k, []).append(i)
    calls = [c._replace(released=tuple(released.get(k, ()))) for k, c in enumerate(calls)]
    return _Program(calls, start_node, output, kept)
