"""How `forward` runs the graph: the rewrites that make it fast (folded pads, in-place layers,
a channels-last graph on the CPU) must change nothing a caller can see."""

import copy
import pickle
import random

import pytest
import torch
from helpers import assert_sensitive, model_images, trained_like
from torch import nn
from torch.profiler import profile

import torch_mobilenets as tm
from torch_mobilenets.nn import layers
from torch_mobilenets.nn.graph import How, KerasModel, _plan

BUILDERS = [
    (tm.MobileNet, dict(alpha=0.5, input_shape=(3, 67, 96))),
    (tm.MobileNetV2, dict(alpha=0.35, input_shape=(3, 67, 96))),
    (tm.MobileNetV3Small, dict(alpha=0.75)),
    (tm.MobileNetV3Large, dict(minimalistic=True)),
    (tm.MobileNetV3Backbone.from_preset, dict(preset="mobilenet_v3_small")),
]
IDS = ["v1", "v2", "v3s", "v3l-minimalistic", "kerascv"]


def build(builder, kwargs):
    if builder == tm.MobileNetV3Backbone.from_preset:
        return builder(kwargs["preset"]).eval()
    return builder(weights=None, classifier_activation=None, **kwargs).eval()


def naive_outputs(model, x):
    """Every layer's output, calling each layer as the graph says, with no plan rewrites."""
    values = {0: x}
    for node in model.nodes():
        values[node.number] = node.layer(*(values[i].clone() for i in node.inputs))
    return {node.name: values[node.number] for node in model.nodes()}


@pytest.mark.parametrize("builder,kwargs", BUILDERS, ids=IDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_plan_computes_every_layer_as_the_graph_says(builder, kwargs, grad):
    """The output and any requested layer outputs equal the layers called one by one, and the
    caller's input is left as it was, in either memory layout, with or without autograd."""
    model = trained_like(build(builder, kwargs), size=(67, 96))
    x = model_images(model, 2, 67, 96, seed=1)  # what it was calibrated for: moderate values
    with torch.no_grad():
        expected = naive_outputs(model, x)
    assert_sensitive(expected[model.layer_names[-1]])
    rng = random.Random(0)
    for layout in (torch.contiguous_format, torch.channels_last):
        given = x.contiguous(memory_format=layout)
        before = given.clone()
        names = rng.sample(model.layer_names, 8)
        with torch.set_grad_enabled(grad):
            out = model(given)
            got = model.forward_layers(given, names)
        assert torch.equal(given, before), "the caller's input was written into"
        torch.testing.assert_close(out, expected[model.layer_names[-1]], rtol=1e-5, atol=1e-4)
        assert set(got) == set(names)
        for name in names:
            message = f"{name}: {{}}".format
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-4, msg=message)


@pytest.mark.parametrize("builder,kwargs", BUILDERS[:3], ids=IDS[:3])
def test_outputs_come_back_in_the_callers_layout(builder, kwargs):
    model = build(builder, kwargs)
    x = torch.rand(1, 3, 67, 96)
    name = model.feature_layers()[-1]
    with torch.no_grad():
        plain = model.forward_layers(x, [name])[name]
        last = model.forward_layers(x.contiguous(memory_format=torch.channels_last), [name])[name]
        features = model.forward_features(x)
    assert plain.is_contiguous() and features.is_contiguous()
    assert plain.view(plain.shape[0], -1).shape[1] == plain[0].numel()
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    torch.testing.assert_close(plain, last, rtol=1e-5, atol=1e-5)


def test_forward_head_leaves_the_given_features_alone():
    model = trained_like(tm.MobileNetV3Small(weights=None, classifier_activation=None), size=64)
    with torch.no_grad():
        features = model.forward_features(torch.rand(2, 3, 64, 64) * 255)
        before = features.clone()
        logits = model.forward_head(features)
        assert_sensitive(logits)
        assert torch.equal(features, before)
        assert torch.equal(model.forward_head(features), logits)


def test_a_layer_sharing_its_input_blocks_writing_into_that_input():
    """Dropout in inference returns its very input: a later in-place layer on that input must
    not change what Dropout handed on, nor may anything be written into an output asked for."""
    graph = KerasModel("shares", (2, 4, 4), {})
    x = graph.add("conv", layers.Conv2d(2, 2, 1, bias=True), graph.input())
    dropped = graph.add("dropout", layers.Dropout(0.5), x)
    activated = graph.add("relu", layers.ReLU(), x)
    graph.add("residual", layers.Add(), dropped, activated)
    graph.eval()
    steps = {s.name: s.how for s in _plan(graph, frozenset())}
    assert steps["relu"] is How.CALL and steps["residual"] is How.INPLACE_NOGRAD
    x = torch.randn(3, 2, 4, 4)
    conv = graph.get_submodule("conv")(x)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), conv + conv.relu())
        kept = graph.forward_layers(x, ["conv", "residual"])
    torch.testing.assert_close(kept["conv"], conv)


class _View(torch.nn.Module):
    """A layer the planner has never heard of, returning a view of its input."""

    def forward(self, x):
        return x[:, :, :, :]

    def output_shape(self, shape):
        return shape


def test_an_unlisted_layer_is_taken_to_share_its_input():
    """Writing in place is the opt-in: a layer not known to return fresh memory (a new one, a
    view) keeps its input from being written into while the view is still read."""
    graph = KerasModel("view", (2, 4, 4), {})
    x = graph.add("conv", layers.Conv2d(2, 2, 1, bias=True), graph.input())
    view = graph.add("view", _View(), x)
    activated = graph.add("relu", layers.ReLU(), x)
    graph.add("residual", layers.Add(), view, activated)
    graph.eval()
    steps = {s.name: s.how for s in _plan(graph, frozenset())}
    assert steps["relu"] is How.CALL
    x = torch.randn(3, 2, 4, 4)
    conv = graph.get_submodule("conv")(x)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), conv + conv.relu())
    # while a listed layer's output is written into once its readers are done
    assert layers.Conv2d in layers.FRESH_OUTPUT and _View not in layers.FRESH_OUTPUT


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_batchnorm_in_place_is_bit_for_bit_the_same(layout):
    bn = trained_like(layers.BatchNorm2d(16))
    x = torch.randn(3, 16, 9, 7).contiguous(memory_format=layout)
    expected = bn(x)
    y = x.clone()
    with torch.no_grad():
        out = bn.forward_inplace(y)
    assert out.data_ptr() == y.data_ptr()
    assert torch.equal(out, expected)
    bn.train()  # batch statistics: no shortcut, the moving averages still move
    before = bn.running_mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(bn.forward_inplace(x.clone()), bn.forward(x), atol=1e-6, rtol=0)
    assert not torch.equal(bn.running_mean, before)


@pytest.mark.parametrize(
    "builder,size",
    [
        (tm.MobileNet, (3, 224, 224)),
        (tm.MobileNetV2, (3, 67, 96)),
        (tm.MobileNetV3Small, None),
        (tm.MobileNetV3Large, None),
    ],
)
@pytest.mark.parametrize("spatial", [(64, 64), (67, 95)], ids=["even", "odd"])
def test_no_padded_copy_of_an_activation(builder, size, spatial):
    """Keras' asymmetric stride-2 padding costs no copy of the feature map: the only tensors
    padded are kernels (grown by a zero row), never an activation of the batch."""
    if size and size[1:] != spatial:
        size = (3, *spatial)
    model = builder(weights=None, input_shape=size).eval()
    x = torch.rand(5, 3, *spatial)
    with torch.no_grad(), profile(record_shapes=True) as trace:
        model(x)
    padded = [e.input_shapes[0] for e in trace.events() if e.name == "aten::constant_pad_nd"]
    assert padded, "the stride-2 layers were expected to grow their kernels"
    assert all(shape[0] != 5 for shape in padded), padded
    # Of feature maps: oneDNN may copy the output of a convolution on a 1x1 map (the heads'
    # pooled features) into the layout asked for; it did on one of this project's machines.
    copies = [
        e.input_shapes[0]
        for e in trace.events()
        if e.name == "aten::copy_"
        and e.input_shapes[0][:1] == [5]
        and len(e.input_shapes[0]) == 4
        and e.input_shapes[0][2:] != [1, 1]
    ]
    assert copies == [[5, 3, *spatial]], "one copy only: the input, made channels-last"


def test_forward_runs_only_the_layers_that_compute():
    """An optimized copy's folded layers are aliases and its folded pads nothing: the program
    `forward` runs calls neither, and each kind of call (here: with a kept layer) has its own."""
    fast = tm.optimize_for_inference(tm.MobileNetV2(weights=None, input_shape=(3, 64, 64)))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fast(x)
        fast.forward_layers(x, ["block_3_expand_relu"])
    assert len(fast._programs) == 2
    program = fast._programs[(frozenset(), None, 0, True, True)]
    called = [fast.get_submodule(c.name) for c in program.calls]
    assert not any(isinstance(m, (nn.Identity, layers.ZeroPadding2D)) for m in called)
    assert len(called) == 64 and len(fast.layer_names) == 155  # V2: 52 convs, 10 adds, pool, top
    fast.replace("predictions", layers.Dense(1280, 3))  # a change of the graph remakes them
    assert fast._programs is None and fast(x).shape == (1, 3)


def test_a_pickled_model_remakes_its_programs():
    model = tm.MobileNetV3Small(weights=None, alpha=0.75).eval()
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        expected = model(x)
        older = copy.copy(model)  # as an older release pickled it: its cache named _plan
        older.__dict__["_plan"] = older.__dict__.pop("_programs")
        for pickled in (model, older):
            again = pickle.loads(pickle.dumps(pickled))
            assert again._programs is None and "_plan" not in again.__dict__
            assert torch.equal(again(x), expected)
