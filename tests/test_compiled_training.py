"""Fine-tuning under torch.compile: one graph, the eager model's gradients, and the speed-ups
eager mode has (the padding folded into the kernel, channels-last, a backward op that keeps
oneDNN's layouts), which exporters never see.

The captures here use AOTAutograd without Inductor (`aot_eager`), in float64, so a gradient
that differs from eager mode's by more than round-off shows; Inductor itself, which compiles
for a minute or more per family, runs on V1 in the default suite and on every family in
`make test-full`.
"""

import copy

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn
from torch._dynamo.backends.common import aot_autograd

import torch_mobilenets as tm
from tests.helpers import model_images, trained_like
from torch_mobilenets.nn.layers import Conv2d

CONV2D_BACKWARD = torch.ops.torch_mobilenets.conv2d_backward.default
PAD_OPS = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)
BATCH = 3

# Each family once, with what it pads: V1 and V2 static Keras ZeroPadding2D (an odd,
# non-square size), V3 its own pads computed from the size (the dynamic default), Large
# minimalistic; the first layers frozen in two, whose BatchNorm then runs on its moving
# statistics.
CASES = {
    "MobileNet": (lambda: tm.MobileNet(weights=None, alpha=0.25, input_shape=(3, 67, 95)), None),
    "MobileNetV2": (
        lambda: tm.MobileNetV2(weights=None, alpha=0.35, input_shape=(3, 67, 95)),
        "block_2_add",
    ),
    "MobileNetV3Small": (
        lambda: tm.MobileNetV3Small(weights=None, alpha=0.75),
        "expanded_conv_project_bn",
    ),
    "MobileNetV3Large": (
        lambda: tm.MobileNetV3Large(weights=None, alpha=0.75, minimalistic=True),
        None,
    ),
}
SIZE = {"MobileNetV3Small": (70, 61), "MobileNetV3Large": (64, 64)}


def model_and_input(case, dtype=torch.float64):
    build, frozen_up_to = CASES[case]
    model = trained_like(build()).to(dtype).train()
    if frozen_up_to:
        model.freeze(up_to=frozen_up_to)
    for module in model.modules():  # the same computation on every call
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    height, width = SIZE.get(case, (67, 95))
    x = model_images(model, BATCH, height, width, seed=1).to(dtype)
    return model, x


def step(model, run, x, labels):
    """One training step's loss, gradients and moving statistics (the model's own `model`,
    through `run`), from a copy of the state it started in."""
    logits = run(x)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    statistics = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    return logits.detach(), gradients, statistics


class Graphs:
    """An aot_eager backend that keeps the forward and backward graphs it was handed."""

    def __init__(self):
        self.forward, self.backward = [], []

        def keep(graphs):
            def compiler(graph, example_inputs):
                graphs.append(graph)
                return graph

            return compiler

        self.backend = aot_autograd(fw_compiler=keep(self.forward), bw_compiler=keep(self.backward))


def targets(graphs):
    return [node.target for graph in graphs for node in graph.graph.nodes]


@pytest.mark.parametrize("case", list(CASES))
def test_a_compiled_step_is_one_graph_with_the_eager_gradients(case):
    torch._dynamo.reset()
    model, x = model_and_input(case)
    labels = torch.arange(BATCH) % 7
    start = copy.deepcopy(model.state_dict())
    logits, gradients, statistics = step(model, model, x, labels)
    # The comparisons below are relative to the logits' scale, and so is this: two images'
    # logits differ by far more than the tolerance.
    assert (logits[0] - logits[1]).abs().max() >= 1e-2 * logits.abs().max()

    model.load_state_dict(start)
    model.zero_grad(set_to_none=True)
    graphs = Graphs()
    counter = torch._dynamo.testing.CompileCounterWithBackend(graphs.backend)
    compiled = torch.compile(model, backend=counter)
    got_logits, got_gradients, got_statistics = step(model, compiled, x, labels)
    assert counter.frame_count == 1, "graph breaks in the compiled training step"

    torch.testing.assert_close(got_logits, logits, rtol=1e-10, atol=1e-10)
    assert got_gradients.keys() == gradients.keys() and gradients
    for name, gradient in gradients.items():
        torch.testing.assert_close(got_gradients[name], gradient, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(got_statistics, statistics, rtol=1e-10, atol=1e-12)
    frozen = CASES[case][1]
    if frozen:  # the frozen layers' BatchNorm normalised by its moving statistics: unchanged
        names = model.layer_names[: model.layer_names.index(frozen) + 1]
        kept = [n for n in statistics if n.split(".")[0] in names]
        assert kept and all(torch.equal(got_statistics[n], start[n]) for n in kept)
        assert not any(n.split(".")[0] in names for n in gradients)

    # What made it fast: every convolution's backward is our op, none of Inductor's own, and
    # no activation is padded (the pads grow kernels).
    convolutions = sum(
        1 for m in model.modules() if isinstance(m, Conv2d) and m.weight.requires_grad
    )
    backward = targets(graphs.backward)
    assert backward.count(CONV2D_BACKWARD) == convolutions
    assert torch.ops.aten.convolution_backward.default not in backward
    forward = [n for g in graphs.forward for n in g.graph.nodes if n.target in PAD_OPS]
    assert forward and all(n.args[0].meta["val"].shape[0] != BATCH for n in forward)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_exporters_see_keras_padding_and_no_private_op_in_training_too():
    """torch.export (under which the ONNX exporter runs) of a model in train mode with
    gradients gets Keras' Pad then Conv and the public convolution, as in inference."""
    model, x = model_and_input("MobileNetV3Small", torch.float32)
    program = torch.export.export(model, (x,))
    nodes = list(program.graph.nodes)
    assert not any(n.target == CONV2D_BACKWARD for n in nodes)
    parameters = set(program.graph_signature.inputs_to_parameters)
    pads = [n for n in nodes if n.target in PAD_OPS]
    assert pads and all(n.args[0].name not in parameters for n in pads)
    assert all(n.args[0].meta["val"].shape[0] == BATCH for n in pads)
    traced = torch.jit.trace(model.eval(), x.contiguous())
    assert "conv2d_backward" not in str(traced.inlined_graph)
    assert "aten::pad" in str(traced.inlined_graph)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=() if c == "MobileNet" else pytest.mark.full) for c in CASES],
)
def test_inductor_trains_as_eager_does(case):
    """Inductor's kernels in float32 against eager float32, both against eager float64: the
    compiled gradients are as close to the exact ones as eager mode's are (a layout or stride
    that Inductor's view of our op got wrong would make them garbage)."""
    torch._dynamo.reset()
    exact_model, x = model_and_input(case)
    labels = torch.arange(BATCH) % 7
    model = copy.deepcopy(exact_model).float()
    _, exact, _ = step(exact_model, exact_model, x, labels)
    _, eager, _ = step(model, model, x.float(), labels)
    model.zero_grad(set_to_none=True)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    _, compiled, _ = step(model, torch.compile(model, backend=counter), x.float(), labels)
    assert counter.frame_count == 1

    def error(gradients):
        scale = max(g.abs().max().item() for g in exact.values())
        return max((gradients[n].double() - g).abs().max().item() for n, g in exact.items()) / scale

    assert error(compiled) < max(10 * error(eager), 1e-5), (error(compiled), error(eager))
