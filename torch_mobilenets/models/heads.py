"""The tops `KerasModel.reset_classifier` gives models without a classifier, the pooled
features it leaves with `num_classes=0`, and what the end of a model computes
(`output_activation`). Registered with `nn.graph.HEADS`, by family.

Official families (built here, or loaded from an official file) get exactly the top their
builder makes with `include_top=True, classifier_activation=None`: Keras' layers under Keras'
names (V1 `global_average_pooling2d`, `dropout`, `conv_preds`, `reshape_2`, `predictions`; V2
`global_average_pooling2d`, `predictions`; V3 `global_average_pooling2d`, `conv_2`,
`conv_2_activation`, `dropout`, `logits`, `flatten`, `predictions`), Glorot-uniform kernels and
zero biases as Keras initialises them, on the base's own weights. The model is then the
builder's, and its config says so: a checkpoint of it rebuilds it. (Keras builds V1 and V2 with
the top at a static size only: a dynamic-size base keeps its dynamic size, and its config
records the builder's default, 224x224, for a rebuild.) `num_classes=0` leaves the model
`include_top=False, pooling="avg"` builds: the global average of the feature map (for V3, before
`conv_2`, whose features `forward_head(x, pre_logits=True)` gives on the model with the top).

Users' graphs (`load_model` of their own Keras model) get their base family's top in flat
form, global average pooling (unless the graph ends pooled) then Dense layers under the same
names: V1 `dropout`, `conv_preds`, `predictions`; V2 `predictions`; V3 `conv_2` (hard-swish,
ReLU for a minimalistic base), `dropout`, `logits`, `predictions`; a graph around no base we
recognise gets V2's. A 1x1 convolution on a pooled vector is that Dense, and a flat top keeps
the graph's feature map its `feature_layer` when it is rebuilt. The model's recorded Keras
graph gets the same layers, so a checkpoint of it rebuilds it too. (In a graph Keras 2 wrote,
`hard_swish` is Keras 2's, x * clip(0.2 x + 0.5, 0, 1), as Keras 2 computes that activation.)
`num_classes=0` leaves the global pooling of the feature map (the graph's own, when one reads
it directly, else an average).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator

from torch import nn

from ..nn import layers as L
from ..nn.graph import HEADS, KerasModel, KerasTensor
from . import arguments, mobilenet_v1, mobilenet_v2, mobilenet_v3
from .mobilenet_v3 import LAST_POINT_FILTERS, POOLING_NAMES, last_point_filters

OFFICIAL = ("mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
# The output filters of the last V3 block before alpha, by model type: the base's width.
V3_LAST_FILTERS = {"small": 96, "large": 160}
# Blocks of the V3 tables (`expanded_conv_0` .. `expanded_conv_{n-1}`), by model type.
V3_BLOCKS = {len(mobilenet_v3.SMALL): "small", len(mobilenet_v3.LARGE): "large"}
V3_PROJECT = re.compile(r"^expanded_conv_(\d+)[_/]project$")
# Layers that leave their input as it is at inference (or only reshape it).
PASSING = (
    L.Dropout,
    L.SpatialDropout2D,
    L.GaussianDropout,
    L.AlphaDropout,
    L.GaussianNoise,
    L.Identity,
    L.Flatten,
    L.Reshape,
    nn.Identity,
)
GLOBAL_POOLING = (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D, L.GlobalPooling2D)


def _output(model: KerasModel) -> KerasTensor:
    """The symbolic output of the model's last layer, to add layers after it."""
    return KerasTensor(len(model.layer_names), model.output_shape(model.input_shape))


def _place(model: KerasModel, start: int) -> None:
    """The layers from position `start` on, as the rest of the model: device, dtype, mode."""
    reference = next(iter(model.parameters()), None)
    for name in model.layer_names[start:]:
        layer = model.get_submodule(name)
        if reference is not None:
            layer.to(device=reference.device, dtype=reference.dtype)
        layer.train(model.training)


def _no_top(model: KerasModel) -> ValueError:
    return ValueError(
        f"model {model.name!r} has no classifier (built without the top), and no top is "
        f"known for its family {model.config.get('family')!r}"
    )


# ------------------------------------------------------------------------ official families
def _v1_top(model: KerasModel, x: KerasTensor, classes: int, config: dict) -> None:
    logits = arguments.classifier_activation(None, None)
    mobilenet_v1.add_top(model, x, classes, config.get("dropout", 1e-3), logits)


def _v2_top(model: KerasModel, x: KerasTensor, classes: int, config: dict) -> None:
    mobilenet_v2.add_top(model, x, classes, arguments.classifier_activation(None, None))


def _v3_top(model: KerasModel, x: KerasTensor, classes: int, config: dict) -> None:
    model_type = config["family"].rsplit("_", 1)[-1]
    mobilenet_v3.add_top(
        model,
        x,
        classes,
        last_point_filters(model_type, float(config.get("alpha", 1.0))),
        L.ReLU if config.get("minimalistic") else L.HardSwish,
        config.get("dropout_rate", 0.2),
        arguments.classifier_activation(None, None),
    )


TOPS: dict[str, Callable[[KerasModel, KerasTensor, int, dict], None]] = {
    "mobilenet": _v1_top,
    "mobilenet_v2": _v2_top,
    "mobilenet_v3_small": _v3_top,
    "mobilenet_v3_large": _v3_top,
}


class OfficialHeads:
    """The builder's own top, on a model of an official family."""

    def fresh(self, model: KerasModel, num_classes: int) -> None:
        config = model.config
        family = config["family"]
        if not config.get("include_top") and config.get("pooling") == "max":
            raise ValueError(
                f"model {model.name!r} pools by maximum (pooling='max'), and the {family} top "
                "pools by average: build the base with pooling=None or 'avg' to give it the top"
            )
        model.truncate(model.feature_layer)  # the pooling without the top, if any
        start = len(model.layer_names)
        TOPS[family](model, _output(model), num_classes, config)
        _place(model, start)
        config.update(
            include_top=True, classes=num_classes, pooling=None, classifier_activation=None
        )
        shape = config.get("input_shape")
        if family in ("mobilenet", "mobilenet_v2") and (shape is None or None in shape):
            config["input_shape"] = None  # Keras' default with the top: 224x224

    def features(self, model: KerasModel) -> None:
        config = model.config
        if not config.get("include_top") and config.get("pooling") in ("avg", "max"):
            return  # pooled already
        model.truncate(model.feature_layer)
        start = len(model.layer_names)
        name = POOLING_NAMES[0] if config["family"].startswith("mobilenet_v3") else None
        model.add(name or "global_average_pooling2d", L.GlobalAveragePooling2D(), _output(model))
        _place(model, start)
        config.update(include_top=False, pooling="avg")
        config.pop("classifier_activation", None)

    def resized(self, model: KerasModel, name: str, num_classes: int) -> None:
        pass  # config["classes"] says it


# ---------------------------------------------------------------------------- users' graphs
def keras_layers(model: KerasModel) -> Iterator[tuple[str, nn.Module]]:
    """(Keras name, layer) of every layer, those of nested models included."""
    for name in model.layer_names:
        layer = model.get_submodule(name)
        yield model.keras_names.get(name, name), layer
        if isinstance(layer, KerasModel):
            yield from keras_layers(layer)


def base_family(model: KerasModel) -> tuple[str | None, dict]:
    """The MobileNet family a model is built around (nested or inlined), read from the layer
    names Keras gives each family's base, Keras 2's included; (None, {}) if none. For V3 also
    the top's `conv_2` width and activation."""
    found = dict(keras_layers(model))
    if "conv_pw_13" in found or "conv_pw_13_relu" in found:
        return "mobilenet", {}
    if "out_relu" in found or "block_16_project" in found:
        return "mobilenet_v2", {}
    projects = {int(m[1]): name for name in found if (m := V3_PROJECT.match(name))}
    if projects and max(projects) + 1 in V3_BLOCKS:
        model_type = V3_BLOCKS[max(projects) + 1]
        last = found[projects[max(projects)]]
        width = getattr(last, "out_channels", V3_LAST_FILTERS[model_type])
        minimalistic = not any("squeeze_excite" in name.lower() for name in found)
        return f"mobilenet_v3_{model_type}", {
            "conv_2": last_point_filters(model_type, width / V3_LAST_FILTERS[model_type])
            if width > V3_LAST_FILTERS[model_type]
            else LAST_POINT_FILTERS[model_type],
            "activation": "relu" if minimalistic else "hard_swish",
        }
    return None, {}


class _SpecEdit:
    """Layers added to a user's graph and to the Keras graph its config records, alike."""

    def __init__(self, model: KerasModel):
        spec = model.config.get("spec")
        if not isinstance(spec, dict):
            raise _no_top(model)
        if len(model.output_nodes) > 1:
            raise ValueError(
                f"model {model.name!r} has {len(model.output_nodes)} outputs; a head goes on "
                "a model with one"
            )
        self.model = model
        self.spec = copy.deepcopy(spec)
        self.version = self.spec.get("keras_version", 3)
        self.last = self.keras_name(model.layer_names[-1])
        self.start = len(model.layer_names)

    def keras_name(self, name: str) -> str:
        """The recorded layer whose output layer `name` gives (a convolution's activation is
        a layer here, and part of the convolution in Keras)."""
        keras = self.model.keras_names.get(name, name)
        recorded = {layer["name"] for layer in self.spec["layers"]}
        if keras not in recorded and keras.endswith("/activation"):
            keras = keras[: -len("/activation")]
        return keras

    def cut(self, name: str) -> KerasTensor:
        """Drop the layers after `name`, here and in the recorded graph."""
        model = self.model
        model.truncate(name)
        needed, todo = set(), [len(model.layer_names)]
        nodes = model.nodes()
        while todo:
            node = todo.pop()
            if node and node not in needed:
                needed.add(node)
                todo += nodes[node - 1].inputs
        if len(needed) != len(nodes):
            raise ValueError(
                f"model {model.name!r}: layers before {name!r} feed only its head; the head "
                "cannot be cut off there"
            )
        self.last = self.keras_name(name)
        names = [layer["name"] for layer in self.spec["layers"]]
        self.spec["layers"] = self.spec["layers"][: names.index(self.last) + 1]
        self.start = len(model.layer_names)
        return _output(model)

    def add(self, class_name: str, name: str, args: dict, layer: nn.Module, x: KerasTensor):
        taken = {entry["name"] for entry in self.spec["layers"]} | set(self.model.layer_names)
        taken |= set(self.model.keras_names.values())
        unique, count = name, 0
        while unique in taken:
            count += 1
            unique = f"{name}_{count}"
        x = self.model.add(unique, layer, x)
        self.spec["layers"].append(
            {
                "class_name": class_name,
                "name": unique,
                "args": args,
                "inbound": [["tensor", self.last]],
                "trainable": True,
                "inference": False,
            }
        )
        self.last = unique
        return x

    def activation(self, name: str) -> nn.Module:
        """Keras' activation `name` as the Keras that wrote the graph computes it."""
        return (L.KERAS2_ACTIVATIONS if self.version == 2 else L.ACTIVATIONS)[name]()

    def dense(self, name: str, units: int, x: KerasTensor, activation: str = "linear"):
        if x.shape[0] is None:
            raise ValueError(f"model {self.model.name!r}: its features have no static width")
        act = None if activation == "linear" else self.activation(activation)
        args = {"units": units, "activation": activation, "use_bias": True}
        return self.add("Dense", name, args, L.Dense(x.shape[0], units, act), x)

    def pooled(self, x: KerasTensor) -> KerasTensor:
        """`x` as a vector: averaged over the map, or a 1x1 map flattened."""
        if len(x.shape) == 1:
            return x
        if len(x.shape) != 3:
            raise ValueError(f"model {self.model.name!r} ends at shape {x.shape}")
        if tuple(x.shape[1:]) == (1, 1):
            return self.add("Flatten", "flatten", {}, L.Reshape(), x)
        return self.add(
            "GlobalAveragePooling2D",
            "global_average_pooling2d",
            {"keepdims": False},
            L.GlobalPooling2D("avg", False),
            x,
        )

    def commit(self) -> None:
        spec = self.spec
        spec["outputs"] = [self.last]
        if spec.get("trainable") is False:  # frozen as a whole: all but the new layers
            new = set(self.model.layer_names[self.start :])
            for entry in spec["layers"]:
                entry["trainable"] = entry["name"] in new
            spec["trainable"] = True
        self.model.config["spec"] = spec
        self.model.output_nodes = ()  # the last layer's
        _place(self.model, self.start)


class GraphHeads:
    """A flat top of the base's family, on a user's graph."""

    def fresh(self, model: KerasModel, num_classes: int) -> None:
        edit = _SpecEdit(model)
        family, found = base_family(model)
        x = edit.pooled(_output(model))
        if family == "mobilenet":
            x = edit.add("Dropout", "dropout", {"rate": 1e-3}, L.Dropout(1e-3), x)
            x = edit.dense("conv_preds", num_classes, x)
        elif family is not None and family.startswith("mobilenet_v3"):
            x = edit.dense("conv_2", found["conv_2"], x, found["activation"])
            x = edit.add("Dropout", "dropout", {"rate": 0.2}, L.Dropout(0.2), x)
            x = edit.dense("logits", num_classes, x)
        else:
            edit.dense("predictions", num_classes, x)
        if family in ("mobilenet", "mobilenet_v3_small", "mobilenet_v3_large"):
            linear = {"activation": "linear"}
            edit.add("Activation", "predictions", linear, edit.activation("linear"), x)
        edit.commit()
        model.config["classes"] = num_classes

    def features(self, model: KerasModel) -> None:
        edit = _SpecEdit(model)
        if model.get_classifier() is None and len(_output(model).shape) == 1:
            return  # pooled already
        nodes = model.nodes()
        feature = model.layer_names.index(model.feature_layer) + 1
        after = nodes[feature] if feature < len(nodes) else None
        if (
            after is not None
            and after.inputs == (feature,)
            and isinstance(after.layer, GLOBAL_POOLING)
        ):
            x = edit.cut(after.name)  # the graph's own pooling
        else:
            x = edit.cut(model.feature_layer)
        edit.pooled(x)
        edit.commit()
        model.config.pop("classes", None)

    def resized(self, model: KerasModel, name: str, num_classes: int) -> None:
        spec = model.config.get("spec")
        if not isinstance(spec, dict):
            return
        edit = _SpecEdit(model)
        keras = edit.keras_name(name)
        for entry in edit.spec["layers"]:
            if entry["name"] == keras:
                key = {"Dense": "units", "Conv2D": "filters"}.get(entry["class_name"])
                if key:
                    entry["args"][key] = num_classes
                entry["trainable"] = True
        model.config["spec"] = edit.spec


for _family in OFFICIAL:
    HEADS[_family] = OfficialHeads()
HEADS["*"] = GraphHeads()


# -------------------------------------------------------------- what the end of a model computes
def output_activation(model: KerasModel) -> str:
    """The function the model's output ends with, past layers that pass values through
    (dropout, flatten, reshape, a linear activation): "softmax", "sigmoid", "linear" (logits),
    another Keras activation's name, or the class of the last layer that computes."""
    if len(model.output_nodes) > 1:
        raise ValueError(f"model {model.name!r} has {len(model.output_nodes)} outputs")
    nodes = model.nodes()
    node = model.output_nodes[0] if model.output_nodes else len(nodes)
    while node > 0:
        step = nodes[node - 1]
        kind = _computes(step.layer)
        if kind != "pass":
            return kind
        node = step.inputs[0] if len(step.inputs) == 1 else 0
    return "linear"


def _computes(layer: nn.Module) -> str:
    if isinstance(layer, KerasModel):
        return output_activation(layer)
    if isinstance(layer, L.Dense):
        kind = _computes(layer.activation)
        return "linear" if kind == "pass" else kind
    if isinstance(layer, (L.Conv2d, L.SeparableConv2d)):
        return "linear"
    if isinstance(layer, L.Softmax):
        return "softmax"
    if isinstance(layer, L.Lambda):
        return layer.fn_name
    if isinstance(layer, L.Activation):
        if isinstance(layer.fn, nn.Identity):
            return "pass"
        return getattr(layer.fn, "__name__", type(layer.fn).__name__)
    if isinstance(layer, PASSING):
        return "pass"
    return type(layer).__name__
