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
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import torch
from torch import nn

from .layers import ZeroPadding2D


class KerasTensor(NamedTuple):
    """A symbolic tensor while a model is built: which node made it, and its static shape
    without the batch axis (`None` for a dynamic size)."""

    node: int
    shape: tuple


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
        self._plan: Optional[dict] = None  # keep-set -> steps, made on first use

    def input(self) -> KerasTensor:
        return KerasTensor(0, self.input_shape)

    def add(self, name: str, layer: nn.Module, *inputs: KerasTensor) -> KerasTensor:
        """Register `layer` under its Keras `name`, called on `inputs`; returns its output."""
        if name in self._modules:
            raise ValueError(f"duplicate layer name {name!r}")
        self.add_module(name, layer)
        self._graph.append((name, tuple(t.node for t in inputs)))
        self._plan = None
        return KerasTensor(len(self._graph), layer.output_shape(*(t.shape for t in inputs)))

    @property
    def layer_names(self) -> list[str]:
        """The Keras layer names, in Keras' order."""
        return [name for name, _ in self._graph]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_layers(self, x: torch.Tensor, names: Iterable[str]) -> dict:
        """The outputs of the named layers, computing only as far as the last of them."""
        names = set(names)
        unknown = sorted(names - set(self.layer_names))
        if unknown:
            raise ValueError(f"model {self.name!r} has no layers {unknown}")
        last = max(self.layer_names.index(n) for n in names) + 1
        return self._run(x, keep=names, last_node=last)[1]

    def _run(self, x: torch.Tensor, keep=frozenset(), last_node: Optional[int] = None):
        """Replay the graph; returns (the last output, the outputs of the layers in `keep`)."""
        self._check_input(x)
        keep = frozenset(keep)
        if self._plan is None:
            self._plan = {}
        if keep not in self._plan:
            self._plan[keep] = _plan(self, keep)
        values, kept = {0: x}, {}
        for node, step in enumerate(self._plan[keep], start=1):
            if step.how == "skip":
                continue
            layer = self._modules[step.name]
            if step.how == "alias":
                out = values[step.inputs[0]]
            elif step.how == "inplace":
                out = layer.forward_inplace(values[step.inputs[0]])
            elif step.how == "padded":
                out = layer(values[step.inputs[0]], pad=step.pad)
            else:
                out = layer(*(values[i] for i in step.inputs))
            values[node] = out
            if step.name in keep:
                kept[step.name] = out
            if node == last_node:
                break
            for i in step.released:  # drop activations nothing reads again
                del values[i]
        return out, kept

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (None,) + self.input_shape
        if x.dim() != 4 or any(e is not None and e != s for e, s in zip(expected, x.shape)):
            raise ValueError(
                f"Input of model {self.name!r} is incompatible: expected shape "
                f"(N, {', '.join('None' if s is None else str(s) for s in self.input_shape)}), "
                f"got {tuple(x.shape)}. The spatial size is fixed when `input_shape` is given "
                "(as in Keras); build the model without it to accept any size."
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"


class _Step(NamedTuple):
    name: str
    inputs: tuple  # nodes read
    released: tuple  # nodes no later step reads
    # "call", or "inplace", "padded" (reads the input of the skipped pad), "skip", "alias"
    how: str = "call"
    pad: Optional[tuple] = None


def _plan(model: KerasModel, keep: frozenset) -> list:
    """How `forward` runs the graph. Two rewrites keep Keras' layers and cost nothing in
    accuracy: a ZeroPadding2D read only by a "valid" convolution is folded into it (a bigger
    kernel with zeros and symmetric padding, so the padded copy of the input is never made),
    and an activation whose input nothing else reads runs in place. Outputs asked for in `keep`
    are left alone."""
    graph = model._graph
    readers: dict[int, list[int]] = {}
    for step, (_, inputs) in enumerate(graph, start=1):
        for i in inputs:
            readers.setdefault(i, []).append(step)
    steps = []
    for step, (name, inputs) in enumerate(graph, start=1):
        layer = model._modules[name]
        source = inputs[0] if len(inputs) == 1 else None
        source_name = graph[source - 1][0] if source else None
        how, pad = "call", None
        if source and readers[source] == [step] and source_name not in keep:
            producer = model._modules[source_name]
            if isinstance(layer, nn.Identity):  # a layer folded into its producer
                how = "alias"
            elif hasattr(layer, "forward_inplace"):
                how = "inplace"
            elif isinstance(producer, ZeroPadding2D) and \
                    getattr(layer, "keras_padding", None) == "valid":
                how, pad, inputs = "padded", producer.padding, graph[source - 1][1]
                steps[source - 1] = steps[source - 1]._replace(how="skip", inputs=())
        steps.append(_Step(name, tuple(inputs), (), how, pad))
    last_reader = {}
    for step, s in enumerate(steps, start=1):
        for i in s.inputs:
            last_reader[i] = step
    released: dict[int, list[int]] = {}
    for node, step in last_reader.items():
        released.setdefault(step, []).append(node)
    return [s._replace(released=tuple(released.get(step, ()))) for step, s in enumerate(steps, 1)]
