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
        self._plan: Optional[list] = None

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
        if self._plan is None:
            self._plan = _with_release_points(self._graph)
        values, kept = {0: x}, {}
        for node, (name, inputs, released) in enumerate(self._plan, start=1):
            out = values[node] = self._modules[name](*(values[i] for i in inputs))
            if name in keep:
                kept[name] = out
            if node == last_node:
                break
            for i in released:  # drop activations nothing reads again, as Keras' executor does
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


def _with_release_points(graph):
    """Add to each layer the nodes whose last reader it is (the model output is read by none)."""
    last_reader = {}
    for step, (_, inputs) in enumerate(graph, start=1):
        for i in inputs:
            last_reader[i] = step
    released: dict[int, list[int]] = {}
    for node, step in last_reader.items():
        released.setdefault(step, []).append(node)
    return [(name, inputs, tuple(released.get(step, ())))
            for step, (name, inputs) in enumerate(graph, start=1)]
