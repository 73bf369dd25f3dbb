"""The contenders of the inference table, for benchmarks/run.py: each a zero-argument callable
running one batch, checked against our eager output.

Our eager model (as a user calls it: NCHW input), our `optimize_for_inference` copy
(channels-last input) and the same copy with public PyTorch ops only, torchvision's eager model
of the family, timm's nearest model and Keras on TensorFlow (`tf.function`); our eager model
exported by `torch.onnx.export(dynamo=True)` at the batch's static shape, run by ONNX Runtime
and OpenVINO (benchmarks/deploy.py's runners); with `compile_cpu`, our eager model
`torch.compile`d with Inductor's freezing and `optimize_for_inference(compile=True)`; and Keras
on its PyTorch backend, in a process of its own (keras_torch_ms).

Our model, its copies, its export, its compiled forms and both Kerases carry the same seeded,
calibrated weights; the peers carry their own random init with BatchNorm statistics calibrated
(calibration.calibrate).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch._dynamo

from benchmarks import deploy
from benchmarks.calibration import calibrate
from benchmarks.records import (
    COMPILED,
    EAGER,
    FOLDED,
    KERAS,
    ONNXRUNTIME,
    OPENVINO,
    OPTIMIZED,
    OURS_COMPILED,
    ROOT,
    TIMM,
    TORCHVISION,
    UNPLANNED,
)
from torch_mobilenets.keras_io.parity import PARITY_TOLERANCE

# The families benchmarked, with what runs them beside ours (family names: models.FAMILIES).
PEERS = {
    # family: (Keras arguments, torchvision builder, timm model)
    "mobilenet": (dict(input_shape=(224, 224, 3)), None, "mobilenetv1_100"),
    "mobilenet_v2": (dict(input_shape=(224, 224, 3)), "mobilenet_v2", "mobilenetv2_100"),
    "mobilenet_v3_large": ({}, "mobilenet_v3_large", "tf_mobilenetv3_large_100"),
    "mobilenet_v3_small": ({}, "mobilenet_v3_small", "tf_mobilenetv3_small_100"),
}
# max |difference| / max(1, max |ours eager|), the parity tests' measure and tolerance: past it a
# contender computes something else, and its time means nothing.
TOLERANCE = PARITY_TOLERANCE


def our_model(family, weights=None):
    """Our model of `family` as the benchmark times it: logits, V1 and V2 built for 224x224
    (static, as in Keras), V3 for any size."""
    import torch_mobilenets as tm

    keras_kwargs = PEERS[family][0]
    return tm.FAMILIES[family](
        weights=weights,
        classifier_activation=None,
        **({"input_shape": (3, 224, 224)} if keras_kwargs else {}),
    )


def model_input(family, batch):
    """Pixels in [0, 255], preprocessed where the family's model does not do it itself (V1 and
    V2 take [-1, 1])."""
    import torch_mobilenets as tm

    pixels = torch.rand(batch, 3, 224, 224) * 255
    if family in ("mobilenet", "mobilenet_v2"):
        return tm.mobilenet_v2.preprocess_input(pixels)
    return pixels


def checked(name, got, reference):
    """The relative error of `got` against our eager output; raises past TOLERANCE."""
    error = deploy.relative_error(got, reference)
    if error > TOLERANCE:
        raise RuntimeError(f"{name}: relative error {error:.1e} against ours eager")
    return error


def compiled_with_freezing(model, example):
    """`torch.compile(model)` with Inductor's freezing, compiled by two calls on `example`.

    Freezing is read when Inductor compiles, at the first call, so the patch covers the first
    calls; `options={"freezing": True}` would not do (torch 2.14 compiles the graph unfrozen
    with it). Later calls on a tensor of the same shape, in inference mode as here, pass
    Dynamo's guards and never recompile, so the frozen graph is the one timed."""
    compiled = torch.compile(model)
    with torch._inductor.config.patch(freezing=True), torch.inference_mode():
        compiled(example), compiled(example)
    return compiled


class Contenders(NamedTuple):
    paired: dict[str, Callable[[], object]]  # PyTorch's, taking turns call by call
    blocks: dict[str, Callable[[], object]]  # the other runtimes', each in its own block
    errors: dict[str, float]  # against our eager output
    weights: Path  # the Keras file our model's weights come from, for Keras on PyTorch too
    keras_input: np.ndarray  # NHWC
    reference: torch.Tensor  # our eager output


def contenders(family, batch, workdir, threads, compile_cpu):
    """Zero-argument callables, each running one batch, and what they are checked against."""
    import tensorflow as tf
    import timm
    import torchvision

    import torch_mobilenets as tm
    from convert import keras_reference as kr

    keras_kwargs, torchvision_name, timm_name = PEERS[family]
    keras_model = kr.build_keras(family, classifier_activation=None, **keras_kwargs)
    weights = kr.write_keras_file(keras_model, workdir / family, "weights_h5", family=family)
    eager = our_model(family, weights).eval()
    fast = tm.optimize_for_inference(eager)
    folded = tm.optimize_for_inference(eager, fuse=False)
    unplanned = tm.optimize_for_inference(eager, keep_memory=False)

    x = model_input(family, batch)
    x_last = x.contiguous(memory_format=torch.channels_last)
    keras_input = x.permute(0, 2, 3, 1).numpy()
    x_keras = tf.constant(keras_input)
    keras_call = tf.function(lambda t: keras_model(t, training=False))

    with torch.inference_mode():
        reference = eager(x)
        errors = {
            OPTIMIZED: checked(OPTIMIZED, fast(x_last), reference),
            FOLDED: checked(FOLDED, folded(x_last), reference),
            UNPLANNED: checked(UNPLANNED, unplanned(x_last), reference),
        }
    runs = {
        EAGER: lambda: eager(x),
        OPTIMIZED: lambda: fast(x_last),
        FOLDED: lambda: folded(x_last),
        UNPLANNED: lambda: unplanned(x_last),
    }
    if torchvision_name:
        peer = calibrate(getattr(torchvision.models, torchvision_name)())
        runs[TORCHVISION] = lambda: peer(x)
    peer_timm = calibrate(timm.create_model(timm_name, pretrained=False))
    runs[TIMM] = lambda: peer_timm(x)
    if compile_cpu:
        # Each compile for this batch alone: after a compile at another shape Dynamo would
        # compile a graph for any batch size.
        torch._dynamo.reset()
        compiled = compiled_with_freezing(eager, x)
        ours_compiled = tm.optimize_for_inference(eager, compile=True)
        with torch.inference_mode():
            errors[COMPILED] = checked(COMPILED, compiled(x), reference)
            errors[OURS_COMPILED] = checked(OURS_COMPILED, ours_compiled(x_last), reference)
        runs[COMPILED] = lambda: compiled(x)
        runs[OURS_COMPILED] = lambda: ours_compiled(x_last)

    onnx_file = deploy.export_onnx(eager, x, False, workdir / family / f"{batch}.onnx", True)
    onnxruntime = deploy.onnxruntime_runner(onnx_file, threads)
    openvino = deploy.openvino_runner(onnx_file, threads)
    errors[ONNXRUNTIME] = checked(ONNXRUNTIME, onnxruntime(x), reference)
    errors[OPENVINO] = checked(OPENVINO, openvino(x), reference)
    blocks = {
        KERAS: lambda: keras_call(x_keras).numpy(),
        ONNXRUNTIME: lambda: onnxruntime(x),
        OPENVINO: lambda: openvino(x),
    }
    return Contenders(runs, blocks, errors, weights, keras_input, reference)


def keras_torch_ms(family, weights, keras_input, threads, calls, workdir):
    """(median ms, outputs) of the Keras model of `family` with `weights`, on Keras' PyTorch
    backend, in a fresh process pinned to this one's cores, on `keras_input` (NHWC)."""
    inputs, outputs = workdir / "keras-torch-input.npy", workdir / "keras-torch-output.npy"
    np.save(inputs, keras_input)
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    code = (
        "import sys; from benchmarks.contenders import keras_torch_child; "
        "keras_torch_child(*sys.argv[1:])"
    )
    # cpu: on a machine with a GPU, Keras' PyTorch backend puts everything on it by default.
    env = {**os.environ, "KERAS_BACKEND": "torch", "KERAS_TORCH_DEVICE": "cpu"}
    args = [family, weights, inputs, outputs, threads, cores, calls]
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"Keras on the PyTorch backend failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.split()[-1]), np.load(outputs)


def keras_torch_child(family, weights, inputs, outputs, threads, cores, calls):
    """keras_torch_ms's process: prints the median ms, saves the outputs of the first call."""
    os.sched_setaffinity(0, [int(core) for core in cores.split(",")])
    torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    import keras

    from convert import keras_reference as kr

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()}, not torch")
    # The builder alone (build_keras would draw and calibrate weights, then overwritten).
    model = kr.keras_builder(family)(weights=None, classifier_activation=None, **PEERS[family][0])
    model.load_weights(weights)
    x = torch.from_numpy(np.load(inputs))
    samples = []
    with torch.inference_mode():
        np.save(outputs, keras.ops.convert_to_numpy(model(x, training=False)))
        model(x, training=False)
        for _ in range(int(calls)):
            start = time.perf_counter()
            model(x, training=False)
            samples.append(time.perf_counter() - start)
    print(statistics.median(samples) * 1e3)
