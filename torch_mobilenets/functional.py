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
        # The last layer of the body: what the top (or pooling) reads. Set by the builders.
        self.feature_layer: Optional[str] = None

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
        source = self._graph[self.layer_names.index(classifier)][1][0]
        if source == start:
            return features.flatten(1) if features.dim() == 2 else features.mean((2, 3))
        name = self._graph[source - 1][0]
        return self._run(features, keep={name}, last_node=source, start_node=start)[1][name] \
            .flatten(1)

    def feature_layers(self) -> list[str]:
        """The last layer at each resolution of the body (strides 2, 4, ..., 32): the maps a
        detection or segmentation head reads. Use with `forward_layers`."""
        reduction, last_at = {0: 1}, {}
        for node, (name, inputs) in enumerate(self._graph, start=1):
            stride = getattr(self._modules[name], "stride", (1,))
            reduction[node] = reduction[inputs[0]] * stride[0]
            if not isinstance(self._modules[name], ZeroPadding2D):  # a pad is no feature map
                last_at[reduction[node]] = name
            if name == self.feature_layer:
                break
        return [name for r, name in sorted(last_at.items()) if r > 1]

    def get_classifier(self) -> Optional[nn.Module]:
        """The top's classifier layer (`conv_preds`, `predictions` or `logits`), or None."""
        name = self._classifier_name()
        return self._modules[name] if name else None

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for `num_classes`, initialised as Keras initialises it (Glorot
        uniform kernel, zero bias); the rest of the top (activation, dropout) is kept."""
        name = self._classifier_name()
        if name is None:
            raise ValueError(f"model {self.name!r} has no classifier (built without the top)")
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1; for features use forward_head("
                             "x, pre_logits=True) or a model built with include_top=False")
        old = self._modules[name]
        device, dtype = old.weight.device, old.weight.dtype
        self._modules[name] = old.with_outputs(num_classes).to(device=device, dtype=dtype)
        self.config["classes"] = num_classes

    def freeze(self, up_to: Optional[str] = None) -> None:
        """Make every layer up to and including `up_to` (all when None) non-trainable, as
        Keras' `layer.trainable = False`: no gradients, and BatchNormalization in inference mode
        even when the model trains."""
        names = self.layer_names
        last = names.index(up_to) if up_to is not None else len(names) - 1
        for name in names[:last + 1]:
            _set_trainable(self._modules[name], False)

    def unfreeze(self) -> None:
        for name in self.layer_names:
            _set_trainable(self._modules[name], True)

    def _classifier_name(self) -> Optional[str]:
        head = self.layer_names[self.layer_names.index(self.feature_layer) + 1:]
        weighted = [n for n in head if hasattr(self._modules[n], "keras_class")]
        return weighted[-1] if weighted else None

    def forward_layers(self, x: torch.Tensor, names: Iterable[str]) -> dict:
        """The outputs of the named layers, computing only as far as the last of them."""
        names = set(names)
        unknown = sorted(names - set(self.layer_names))
        if unknown:
            raise ValueError(f"model {self.name!r} has no layers {unknown}")
        last = max(self.layer_names.index(n) for n in names) + 1
        return self._run(x, keep=names, last_node=last)[1]

    def _run(self, x: torch.Tensor, keep=frozenset(), last_node: Optional[int] = None,
             start_node: int = 0):
        """Replay the graph, `x` being node `start_node` (the input by default); returns (the
        last output, the outputs of the layers in `keep`)."""
        if start_node == 0:
            self._check_input(x)
        keep = frozenset(keep)
        if self._plan is None:
            self._plan = {}
        if keep not in self._plan:
            self._plan[keep] = _plan(self, keep)
        values, kept = {start_node: x}, {}
        for node, step in enumerate(self._plan[keep], start=1):
            if step.how == "skip" or node <= start_node:
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
                values.pop(i, None)
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


def _set_trainable(layer: nn.Module, trainable: bool) -> None:
    for parameter in layer.parameters():
        parameter.requires_grad_(trainable)
    for module in layer.modules():
        if hasattr(module, "trainable"):
            module.trainable = trainable


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
