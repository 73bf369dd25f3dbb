"""Every deployment path, taken as a user would take it: the recipes that tests/test_export.py
checks against eager PyTorch, and their speed for the README's "Deploying" table.

    python benchmarks/deploy.py [--models ...] [--paths ...] [--calls 200] [--threads 2]
                                [--out benchmarks/deploy-results.md]

It writes the run's records (benchmarks/records.py) beside the markdown, as .json; the docs quote
the table from them (benchmarks/render.py).

A path turns an eval-mode model and an example input into a runner: a function from an NCHW
float32 tensor to the model's output, computed by the target runtime (ONNX Runtime, OpenVINO,
AOTInductor, TorchScript, ExecuTorch). With `dynamic`, the export keeps the batch and the
spatial size free (the example then needs a batch of 2: torch.export specialises sizes 0 and 1).

Timing: batch 1, 224x224, models built for that static size, BatchNorm statistics calibrated like
a trained model's (calibration.trained_like: random statistics make activations denormal, and the
timings meaningless). The process is pinned to `--threads` cores; each path runs in turns with
eager PyTorch, call for call after a warm-up, and its ratio is the median of those paired
ratios, so a machine that slows down slows both alike. Other work on the machine still shows:
the table records the load average before and after. ONNX Runtime runs with that many intra-op
threads and without spinning threads (`session.intra_op.allow_spinning` = 0), OpenVINO with that
many inference threads in float32 (on CPUs with AMX its default is bfloat16), ExecuTorch's
threadpool with that many threads.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch._dynamo  # before anything loads TensorFlow
from torch import nn
from torch.export import Dim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch_mobilenets as tm  # noqa: E402
from benchmarks import records, render  # noqa: E402
from benchmarks.calibration import trained_like  # noqa: E402
from benchmarks.records import Results  # noqa: E402

Runner = Callable[[torch.Tensor], torch.Tensor]


def _keras_cv(preset: str) -> Callable[..., nn.Module]:
    return lambda **kwargs: tm.MobileNetV3Backbone.from_preset(preset, **kwargs)


# Each builder takes `input_shape` (a static size) or nothing (the dynamic default). V1 and V2
# with the top are static (224x224 by default, as in Keras), so their dynamic default is the
# model without it.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet": lambda **kw: tm.MobileNet(
        weights=None, classifier_activation=None, **(kw or dict(include_top=False, pooling="avg"))
    ),
    "mobilenet_v2": lambda **kw: tm.MobileNetV2(
        weights=None, classifier_activation=None, **(kw or dict(include_top=False, pooling="avg"))
    ),
    "mobilenet_v3_small": lambda **kw: tm.MobileNetV3Small(
        weights=None, classifier_activation=None, **kw
    ),
    "mobilenet_v3_large": lambda **kw: tm.MobileNetV3Large(
        weights=None, classifier_activation=None, **kw
    ),
    "mobilenet_v3_small_minimalistic": lambda **kw: tm.MobileNetV3Small(
        weights=None, classifier_activation=None, minimalistic=True, **kw
    ),
    "mobilenet_v3_large_minimalistic": lambda **kw: tm.MobileNetV3Large(
        weights=None, classifier_activation=None, minimalistic=True, **kw
    ),
    "keras_cv_small": _keras_cv("mobilenet_v3_small"),
    "keras_cv_large": _keras_cv("mobilenet_v3_large"),
}


def build(name: str, size: int | None) -> nn.Module:
    """Model `name` built for a static `size`x`size` input, or the dynamic default (None), with
    seeded weights and trained-like BatchNorm statistics, in eval mode."""
    kwargs = {} if size is None else dict(input_shape=(3, size, size))
    with torch.random.fork_rng():  # the same weights every time: exports are reused
        torch.manual_seed(0)
        return trained_like(MODELS[name](**kwargs))


def images(model: nn.Module, n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Seeded inputs in the range the model expects: pixels in [0, 255], preprocessed as the
    family's `preprocess_input` does (V1 and V2 to [-1, 1])."""
    pixels = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255
    family = getattr(model, "config", {}).get("family")
    if family == "mobilenet":
        return tm.mobilenet_v1.preprocess_input(pixels)
    if family == "mobilenet_v2":
        return tm.mobilenet_v2.preprocess_input(pixels)
    return pixels  # V3 and KerasCV's backbones rescale inside


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |difference| / max(1, max |expected|), the parity tests' measure."""
    return (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def dynamic_shapes() -> dict:
    """torch.export's free sizes: batch up to 8 and 64 to 448 pixels a side (below 64 the last
    map of some models is 1x1, where broadcasting rules change; ExecuTorch plans its memory for
    the largest)."""
    return {"x": {0: Dim("n", max=8), 2: Dim("h", min=64, max=448), 3: Dim("w", min=64, max=448)}}


# The exporters.


def export_onnx(model: nn.Module, example: torch.Tensor, dynamic: bool, path: Path, dynamo: bool):
    """`torch.onnx.export` as its documentation shows it, through torch.export (`dynamo`) or
    the TorchScript-based exporter; once per file, so both runtimes read the same one."""
    if path.exists():
        return path
    if dynamo:
        shapes = dynamic_shapes() if dynamic else None
        torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=shapes)
    else:
        axes = {"x": {0: "n", 2: "h", 3: "w"}} if dynamic else None
        torch.onnx.export(
            model, (example,), path, dynamo=False, input_names=["x"], dynamic_axes=axes
        )
    return path


def torch_export(model: nn.Module, example: torch.Tensor, dynamic: bool):
    return torch.export.export(
        model, (example,), dynamic_shapes=dynamic_shapes() if dynamic else None
    )


# The runtimes.


def onnxruntime_runner(path: Path, threads: int) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def openvino_runner(path: Path, threads: int) -> Runner:
    import openvino

    # float32: on CPUs with AMX OpenVINO's default is bfloat16. No pinning: OpenVINO would pin
    # its threads to cores, and PyTorch's threads in the same process then crawl (100x).
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = openvino.Core().compile_model(
        str(path), "CPU", {**config, "ENABLE_CPU_PINNING": False}
    )
    return lambda x: torch.from_numpy(compiled(x.numpy())[0])


def aot_inductor(model, example, dynamic, workdir: Path, threads: int) -> Runner:
    """torch.export, compiled ahead of time by Inductor into a package, loaded back and run."""
    package = torch._inductor.aoti_compile_and_package(
        torch_export(model, example, dynamic), package_path=str(workdir / "model.pt2")
    )
    return torch._inductor.aoti_load_package(package)


def torchscript(model, example, dynamic, workdir: Path, threads: int) -> Runner:
    """torch.jit.trace, then torch.jit.freeze (weights become constants, folded). The trace
    records the TF padding from the input's size, so a dynamic model's trace runs at any size."""
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, example))


def executorch_xnnpack(model, example, dynamic, workdir: Path, threads: int) -> Runner:
    """torch.export, lowered to ExecuTorch with the XNNPACK delegate, written as a .pte and run
    by ExecuTorch's Python runtime."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    program = to_edge_transform_and_lower(
        torch_export(model, example, dynamic), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    path = workdir / "model.pte"
    path.write_bytes(program.buffer)
    _unsafe_reset_threadpool(threads)  # ExecuTorch's own pool; nothing runs on it yet
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute([x])[0]


def _onnx(dynamo: bool, runtime: Callable[[Path, int], Runner]):
    def build_runner(model, example, dynamic, workdir: Path, threads: int) -> Runner:
        path = workdir / ("dynamo.onnx" if dynamo else "torchscript.onnx")
        return runtime(export_onnx(model, example, dynamic, path, dynamo), threads)

    return build_runner


class DeployPath(NamedTuple):
    name: str
    requires: tuple[str, ...]  # the modules it needs
    build: Callable[[nn.Module, torch.Tensor, bool, Path, int], Runner]


PATHS = {
    path.name: path
    for path in [
        DeployPath(
            "onnx-dynamo-onnxruntime",
            ("onnxscript", "onnxruntime"),
            _onnx(True, onnxruntime_runner),
        ),
        DeployPath(
            "onnx-dynamo-openvino", ("onnxscript", "openvino"), _onnx(True, openvino_runner)
        ),
        DeployPath(
            "onnx-torchscript-onnxruntime",
            ("onnx", "onnxruntime"),
            _onnx(False, onnxruntime_runner),
        ),
        DeployPath(
            "onnx-torchscript-openvino", ("onnx", "openvino"), _onnx(False, openvino_runner)
        ),
        DeployPath("aot-inductor", (), aot_inductor),
        DeployPath("torchscript-freeze", (), torchscript),
        DeployPath("executorch-xnnpack", ("executorch",), executorch_xnnpack),
    ]
}
# How the README names them.
TITLES = {
    "eager": "PyTorch eager (the model itself)",
    "onnx-dynamo-onnxruntime": "`torch.onnx.export(dynamo=True)` -> ONNX Runtime",
    "onnx-dynamo-openvino": "`torch.onnx.export(dynamo=True)` -> OpenVINO",
    "onnx-torchscript-onnxruntime": "`torch.onnx.export(dynamo=False)` -> ONNX Runtime",
    "onnx-torchscript-openvino": "`torch.onnx.export(dynamo=False)` -> OpenVINO",
    "aot-inductor": "`torch.export` -> AOTInductor (`aoti_compile_and_package`)",
    "torchscript-freeze": "`torch.jit.trace` -> `torch.jit.freeze`",
    "executorch-xnnpack": "`torch.export` -> ExecuTorch, XNNPACK delegate",
}


def available(path: DeployPath) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in path.requires)


# Timing.


def paired_times(runner: Runner, eager: Runner, x: torch.Tensor, calls: int, warmup: int):
    """(median ms of `runner`, median of runner / eager over paired calls); the two alternate
    which goes first, so neither always follows the other."""
    ours, theirs = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            runner(x), eager(x)
        for call in range(calls):
            for fn, samples in ((runner, ours), (eager, theirs))[:: 1 if call % 2 else -1]:
                start = time.perf_counter()
                fn(x)
                samples.append(time.perf_counter() - start)
    return statistics.median(ours) * 1e3, statistics.median(a / b for a, b in zip(ours, theirs))


VERSIONS = ["torch", "onnx", "onnxscript", "onnxruntime", "openvino", "executorch"]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS)[:4], choices=list(MODELS))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "deploy-results.md")
    args = parser.parse_args(argv)

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < args.threads:
        parser.error(f"--threads {args.threads}: this process may use only {len(cores)} cores")
    os.sched_setaffinity(0, cores[: args.threads])
    torch.set_num_threads(args.threads)
    paths = [PATHS[name] for name in args.paths if available(PATHS[name])]
    skipped = sorted(set(args.paths) - {p.name for p in paths})
    settings = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "cores": cores[: args.threads],
        "skipped": skipped,
    }
    results = Results(
        records.header("deploy", records.command_line(__file__, argv), settings, VERSIONS)
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build(name, 224)
            x = images(model, 1, 224, 224)
            with torch.no_grad():
                expected = model(x)

            def eager(x, model=model):
                return model(x)

            ms, ratio = paired_times(eager, eager, x, args.calls, args.warmup)
            results.records.append(_record("eager", name, ms, ratio, 0.0))
            for path in paths:
                workdir = Path(tmp) / name / path.name
                workdir.mkdir(parents=True)
                runner = path.build(model, x, False, workdir, args.threads)
                error = relative_error(runner(x), expected)
                ms, ratio = paired_times(runner, eager, x, args.calls, args.warmup)
                results.records.append(_record(path.name, name, ms, ratio, error))
                print(f"{name:20s} {path.name:30s} {ms:7.2f} ms  x{ratio:.2f}  {error:.1e}")
    # The records in the table's order: eager first, then the paths as asked for.
    order = ["eager", *args.paths]
    results.records.sort(key=lambda r: order.index(r["path"]))
    records.finish(results)
    results.save(records.records_path(args.out))
    table = render.markdown(results)
    print("\n" + table)
    args.out.write_text(table)
    print(f"written to {args.out} and {records.records_path(args.out)}")


def _record(path: str, model: str, ms: float, ratio: float, error: float) -> records.Record:
    return {
        "table": "deploy",
        "path": path,
        "title": TITLES[path],
        "model": model,
        "ms": ms,
        "ratio": ratio,
        "error": error,
    }


if __name__ == "__main__":
    main()
