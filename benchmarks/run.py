"""Inference and training speed against the peers, with ratios, and the machine's limit.

    python benchmarks/run.py [--threads 2] [--batches 1 8 32] [--rounds 5] [--train-batch 16]
                             [--no-compile-cpu] [--no-keras-torch] [--no-training] [--out FILE.md]

CPU, for each family and batch size: our eager model (as a user calls it: NCHW input), our
`optimize_for_inference` copy (channels-last input) and the same copy with public PyTorch ops
only (what the private oneDNN op buys), torchvision's eager model of the family
(V2, V3 Large/Small), timm's nearest model and Keras on TensorFlow (`tf.function`); then our
eager model exported by `torch.onnx.export(dynamo=True)` at the batch's static shape, run by ONNX
Runtime and by OpenVINO (benchmarks/deploy.py's runners: ONNX Runtime without spinning threads,
OpenVINO in float32 and unpinned); our eager model `torch.compile`d with Inductor's freezing,
which folds the weights into the graph as constants (switched on around the compile only, see
compiled_with_freezing), and `optimize_for_inference(compile=True)` (`--no-compile-cpu` leaves
both out: each compile takes tens of seconds); and Keras on its PyTorch backend
(`--no-keras-torch` leaves it out).

How it is fair: the process is pinned to `--threads` cores and every framework uses that many
threads. Within a round the PyTorch contenders (the compiled model too) take turns call by
call, so a machine that slows down slows them alike, and "eager / torchvision" is the median of
those paired ratios. Keras on TensorFlow, ONNX Runtime and OpenVINO each run in their own block
of the round, after a pause, because a framework's thread pool spins for a while after work and
would steal the cores from the next one; "keras / optimized" and "optimized / onnxruntime" are
ratios of medians. Keras fixes its backend once per process, so Keras on PyTorch runs in a
process of its own (pinned to the same cores, as many threads, inference mode), once per family
and batch after that batch's rounds: it cannot take turns with the others, and load that comes
and goes on the machine shows in its column alone. Each cell is the median over all timed calls.
Our model, its optimized copy, its export, its compiled form and both Kerases carry the same
seeded, calibrated weights, and each one's output is checked against our eager output (the run
stops where one is off by more than 1e-4); the peers carry their own random init with BatchNorm
statistics calibrated the same way, and denormals are flushed, so nobody is timed on subnormal
arithmetic or on activations that blow up.

Training (`--train-batch`, `--no-training`): one SGD step (cross-entropy, backward, update) of
our V2, V3 Large and V3 Small against torchvision's, both in train mode, the two taking turns
step by step with the order alternating; "ours / torchvision" is the median of the paired ratios.

The physical limit: multiply-accumulates per image (every convolution and linear layer of our
model at 224x224), the time they take at the nominal fp32 peak of `--threads` cores, and the
fraction of that peak our `optimize_for_inference` copy reaches at the largest batch timed.

With a CUDA device (or `--accelerator DEVICE`), also images per second at a large batch in
float32, float16 and bfloat16, channels-last and `torch.compile`d, ours against torchvision.
Finally, converting an official-size file and loading its safetensors, with peak memory.

`--tuned-malloc` runs the same with glibc keeping freed memory for reuse (written to
results-tuned-malloc.md): by default glibc hands large freed blocks back to the system, and every
fresh activation then costs a page fault per 4 KiB page, which at batch 8 and more can take
longer than the arithmetic. `torch_mobilenets.keep_freed_memory()` sets the same from Python.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch._dynamo
from torch import nn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from torch_mobilenets.keras_io.parity import PARITY_TOLERANCE  # noqa: E402 (after the path)

FAMILIES = {
    # family: (Keras arguments, torchvision builder, timm model)
    "mobilenet": (dict(input_shape=(224, 224, 3)), None, "mobilenetv1_100"),
    "mobilenet_v2": (dict(input_shape=(224, 224, 3)), "mobilenet_v2", "mobilenetv2_100"),
    "mobilenet_v3_large": ({}, "mobilenet_v3_large", "tf_mobilenetv3_large_100"),
    "mobilenet_v3_small": ({}, "mobilenet_v3_small", "tf_mobilenetv3_small_100"),
}
# glibc settings that keep freed memory for reuse instead of returning it to the system, so large
# activations stop costing a page fault per 4 KiB page; glibc reads them at process start.
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
EAGER, OPTIMIZED, TORCHVISION, TIMM, KERAS = (
    "ours eager",
    "ours optimized",
    "torchvision eager",
    "timm",
    "keras",
)
COMPILED, ONNXRUNTIME, OPENVINO, KERAS_TORCH = (
    "compiled (freezing)",
    "onnxruntime",
    "openvino",
    "keras (torch backend)",
)
# The optimized copy without its private oneDNN op (`fuse=False`): BatchNorm folded, weights
# channels-last, every layer a public PyTorch one. optimized / this is what the op buys.
FOLDED = "ours folded (public ops)"
# `optimize_for_inference(compile=True)`: the public-ops copy compiled by Inductor with the C++
# wrapper (`inference.COMPILE_OPTIONS`).
OURS_COMPILED = "ours compiled (compile=True)"
# max |difference| / max(1, max |ours eager|), the parity tests' measure and tolerance: past it a
# contender computes something else, and its time means nothing.
TOLERANCE = PARITY_TOLERANCE


def calibrate(model: torch.nn.Module, size: int = 224) -> torch.nn.Module:
    """BatchNorm statistics from a batch of random images, so activations have realistic
    ranges (a fresh init's unit variance lets them grow layer after layer)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size))
    return model.eval()


def our_model(family, weights=None):
    """Our model of `family` as the benchmark times it: logits, V1 and V2 built for 224x224
    (static, as in Keras), V3 for any size."""
    import torch_mobilenets as tm

    keras_kwargs = FAMILIES[family][0]
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
    from benchmarks import deploy  # here, not above: deploy.py imports this module

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
    from benchmarks import deploy  # here, not above: deploy.py imports this module
    from convert import keras_reference as kr

    keras_kwargs, torchvision_name, timm_name = FAMILIES[family]
    keras_model = kr.build_keras(family, classifier_activation=None, **keras_kwargs)
    weights = kr.write_keras_file(keras_model, workdir / family, "weights_h5", family=family)
    eager = our_model(family, weights).eval()
    fast = tm.optimize_for_inference(eager)
    folded = tm.optimize_for_inference(eager, fuse=False)

    x = model_input(family, batch)
    x_last = x.contiguous(memory_format=torch.channels_last)
    keras_input = x.permute(0, 2, 3, 1).numpy()
    x_keras = tf.constant(keras_input)
    keras_call = tf.function(lambda t: keras_model(t, training=False))

    with torch.inference_mode():
        reference = eager(x)
        errors = {OPTIMIZED: checked(OPTIMIZED, fast(x_last), reference)}
        checked(FOLDED, folded(x_last), reference)
    runs = {
        EAGER: lambda: eager(x),
        OPTIMIZED: lambda: fast(x_last),
        FOLDED: lambda: folded(x_last),
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
            checked(COMPILED, compiled(x), reference)
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


def time_family(family, batch, rounds, workdir, threads, compile_cpu, keras_torch):
    """Median milliseconds per contender, the paired ratios (eager / torchvision, optimized /
    folded), and the relative errors against our eager output."""
    runs, blocks, errors, weights, keras_input, reference = contenders(
        family, batch, workdir, threads, compile_cpu
    )
    calls = max(4, 32 // batch)
    samples = {name: [] for name in [*runs, *blocks]}
    with torch.inference_mode():
        for fn in [*runs.values(), *blocks.values()]:  # warm-up, tf.function tracing
            fn(), fn()
        for _ in range(rounds):
            time.sleep(0.2)
            for _ in range(calls):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
            for name, fn in blocks.items():
                time.sleep(0.2)
                fn()  # the clock and caches come back up untimed
                for _ in range(calls):
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
    times = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    if keras_torch:
        times[KERAS_TORCH], output = keras_torch_ms(
            family, weights, keras_input, threads, calls * rounds, workdir / family
        )
        checked(KERAS_TORCH, torch.from_numpy(output), reference)
    pairs = {
        "eager / torchvision": (EAGER, TORCHVISION),
        "optimized / folded": (OPTIMIZED, FOLDED),
        "ours compiled / optimized": (OURS_COMPILED, OPTIMIZED),
    }
    paired = {
        ratio: statistics.median(a / b for a, b in zip(samples[top], samples[bottom]))
        for ratio, (top, bottom) in pairs.items()
        if top in samples and bottom in samples
    }
    return times, paired, errors


def keras_torch_ms(family, weights, keras_input, threads, calls, workdir):
    """(median ms, outputs) of the Keras model of `family` with `weights`, on Keras' PyTorch
    backend, in a fresh process pinned to this one's cores, on `keras_input` (NHWC)."""
    inputs, outputs = workdir / "keras-torch-input.npy", workdir / "keras-torch-output.npy"
    np.save(inputs, keras_input)
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    code = (
        "import sys; from benchmarks.run import keras_torch_child; keras_torch_child(*sys.argv[1:])"
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
    model = kr.FAMILIES[family](weights=None, classifier_activation=None, **FAMILIES[family][0])
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


def train_step(model, optimizer, x, labels):
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()


def training_rows(families, batch, steps, warmup):
    """(family, ours ms, torchvision ms, median paired ratio) per training step, for the
    families torchvision has."""
    import torchvision

    rows = []
    for family in families:
        torchvision_name = FAMILIES[family][1]
        if torchvision_name is None:
            continue
        torch.manual_seed(0)
        models = {
            "ours": our_model(family).train(),
            "torchvision": getattr(torchvision.models, torchvision_name)().train(),
        }
        # The same images for both: in train mode BatchNorm normalises by the batch, so the
        # range torchvision expects would change no time.
        x = model_input(family, batch)
        labels = torch.randint(0, 1000, (batch,))
        steps_of = {
            name: functools.partial(
                train_step, model, torch.optim.SGD(model.parameters(), lr=1e-3), x, labels
            )
            for name, model in models.items()
        }
        time.sleep(0.2)  # other thread pools stop spinning
        for _ in range(warmup):
            steps_of["ours"](), steps_of["torchvision"]()
        samples = {"ours": [], "torchvision": []}
        for i in range(steps):
            for name in ("ours", "torchvision")[:: 1 if i % 2 else -1]:
                start = time.perf_counter()
                steps_of[name]()
                samples[name].append(time.perf_counter() - start)
        rows.append(
            (
                family,
                statistics.median(samples["ours"]) * 1e3,
                statistics.median(samples["torchvision"]) * 1e3,
                statistics.median(a / b for a, b in zip(samples["ours"], samples["torchvision"])),
            )
        )
    return rows


def macs_per_image(model, size=224):
    """Multiply-accumulates of one image through every nn.Conv2d and nn.Linear of `model`:
    output elements x inputs per output (in_channels / groups x kernel area, or in_features)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
        else:
            per_output = module.in_features
        total += output.numel() * per_output

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return total


class Peak(NamedTuple):
    flops: float  # per second, fp32
    mhz: float
    clock_source: str
    floats: int  # per vector
    vector_source: str


def nominal_peak(cores):
    """fp32 FLOP/s of `cores` cores: cores x clock x floats per vector x 2 FMA units x 2 FLOPs
    per FMA. The clock is lscpu's maximum, else the highest "cpu MHz" of /proc/cpuinfo (the
    clock now); None where neither says."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        lscpu = ""
    if found := re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M):
        mhz, clock_source = float(found.group(1)), "lscpu's CPU max MHz"
    elif clocks := re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M):
        mhz, clock_source = max(map(float, clocks)), "/proc/cpuinfo's cpu MHz"
    else:
        return None
    found = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    flags = set(found.group(1).split()) if found else set()
    if "avx512f" in flags:
        floats, vector_source = 16, "avx512f"
    elif flags & {"avx2", "fma"}:
        floats, vector_source = 8, "avx2/fma"
    else:
        floats, vector_source = 4, "no avx2, fma or avx512f flag"
    return Peak(cores * mhz * 1e6 * floats * 2 * 2, mhz, clock_source, floats, vector_source)


def limit_rows(families, results, batch, peak):
    """(family, MACs per image, ms per image at peak, fraction of peak reached by the optimized
    copy at `batch`); the last two None without a peak."""
    rows = []
    for family in families:
        macs = macs_per_image(our_model(family))
        if peak is None:
            rows.append((family, macs, None, None))
            continue
        optimized_s = results[family, batch][0][OPTIMIZED] / 1e3
        rows.append(
            (family, macs, 2 * macs / peak.flops * 1e3, 2 * macs * batch / optimized_s / peak.flops)
        )
    return rows


def accelerator_rows(device, batch, dtypes, compile_models):
    """Images per second, ours (`optimize_for_inference`) against torchvision, both
    channels-last and (by default) compiled, for the families torchvision has."""
    import torchvision

    import torch_mobilenets as tm

    rows = []
    for family, (_, torchvision_name, _) in FAMILIES.items():
        if torchvision_name is None:
            continue
        for dtype in dtypes:
            ours = tm.optimize_for_inference(calibrate(tm.FAMILIES[family](weights=None)))
            peer = calibrate(getattr(torchvision.models, torchvision_name)())
            rates = {}
            for name, model in ((OPTIMIZED, ours), (TORCHVISION, peer)):
                model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
                if compile_models:
                    model = torch.compile(model)
                x = torch.rand(batch, 3, 224, 224, device=device, dtype=dtype).contiguous(
                    memory_format=torch.channels_last
                )
                rates[name] = images_per_second(model, x, device)
            rows.append((family, str(dtype).removeprefix("torch."), rates))
    return rows


def images_per_second(model, x, device, calls=20):
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):  # compilation, autotuning
            model(x)
        synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            model(x)
        synchronize()
    return calls * x.shape[0] / (time.perf_counter() - start)


def conversion_figures(workdir):
    """Convert an official-size V2 file (alpha 1.0, 224, official layout) in a fresh process,
    reporting wall time and peak memory; then load the safetensors and time that."""
    from convert import keras_reference as kr

    keras_model = kr.build_keras("mobilenet_v2", input_shape=(224, 224, 3))
    src = kr.write_keras_file(
        keras_model, workdir / "conversion", "keras2_h5", family="mobilenet_v2"
    )
    dst = workdir / "conversion" / "v2.safetensors"
    script = (
        "import time\n"
        "def vm(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) / 1024\n"
        "from torch_mobilenets.keras_io import convert\n"
        "before = vm('VmRSS')\n"
        "start = time.perf_counter()\n"
        f"convert({str(src)!r}, {str(dst)!r})\n"
        "done = time.perf_counter()\n"
        "peak = vm('VmHWM') - before\n"
        "import torch_mobilenets as tm\n"
        "model = tm.MobileNetV2(weights=None)\n"
        "before = time.perf_counter()\n"
        f"tm.conversion.load_weights(model, {str(dst)!r}, assign=True)\n"
        "loaded = time.perf_counter()\n"
        "print(done - start, loaded - before, peak)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    convert_s, load_s, peak_mb = map(float, out[-3:])
    return convert_s, load_s, peak_mb, src.stat().st_size / 2**20


def markdown_table(header, rows) -> list[str]:
    """A Markdown table with a blank line before and after."""
    return [
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        "",
    ]


def markdown(
    results,
    threads,
    conversion,
    accelerator=None,
    tuned_malloc=False,
    training=None,
    limit=None,
):
    import tensorflow as tf
    import timm
    import torchvision

    def ms(value):
        return "-" if value is None else f"{value:.2f}"

    def version(name):
        return f"{name} {importlib.metadata.version(name)}"

    lines = [
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm "
        f"{timm.__version__}, tensorflow {tf.__version__}, "
        + ", ".join(map(version, ["keras", "onnxruntime", "openvino"]))
        + f"; pinned to {threads} cores, {threads} threads (TensorFlow: intra-op {threads}, "
        "inter-op 1); fp32 CPU, 224x224; median ms per batch; glibc malloc "
        + (
            "keeping freed memory (" + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + ")"
            if tuned_malloc
            else "as it comes"
        )
        + ". onnxruntime and openvino run our `torch.onnx.export(dynamo=True)` export at the "
        "batch's static shape (ONNX Runtime without spinning threads, OpenVINO in float32, "
        "unpinned); compiled (freezing): `torch.compile` of our eager model with Inductor's "
        "freezing, taking turns with the other PyTorch contenders; ours compiled (compile=True): "
        "`optimize_for_inference(compile=True)`, Inductor with the C++ wrapper on the public-ops "
        "copy, taking turns too, ours compiled / optimized the median of the paired ratios; "
        "keras (torch backend): in a "
        "process of its own, not paired call by call; ours folded (public ops): the optimized "
        "copy without its private oneDNN op (BatchNorm folded, channels-last, plain PyTorch "
        "layers), taking turns with the others, optimized / folded the median of the paired "
        "ratios. Errors: max |difference| / max(1, max "
        "|ours eager|).",
    ]
    lines += markdown_table(
        [
            "family",
            "batch",
            EAGER,
            OPTIMIZED,
            TORCHVISION,
            TIMM,
            KERAS,
            "eager / torchvision",
            "keras / optimized",
            "optimized error",
            ONNXRUNTIME,
            OPENVINO,
            COMPILED,
            KERAS_TORCH,
            "optimized / onnxruntime",
            "onnxruntime error",
            "openvino error",
            FOLDED,
            "optimized / folded",
            OURS_COMPILED,
            "ours compiled / optimized",
            "ours compiled / onnxruntime",
        ],
        [
            [
                family,
                batch,
                ms(times[EAGER]),
                ms(times[OPTIMIZED]),
                ms(times.get(TORCHVISION)),
                ms(times[TIMM]),
                ms(times[KERAS]),
                ms(paired.get("eager / torchvision")),
                f"{times[KERAS] / times[OPTIMIZED]:.2f}",
                f"{errors[OPTIMIZED]:.1e}",
                ms(times[ONNXRUNTIME]),
                ms(times[OPENVINO]),
                ms(times.get(COMPILED)),
                ms(times.get(KERAS_TORCH)),
                f"{times[OPTIMIZED] / times[ONNXRUNTIME]:.2f}",
                f"{errors[ONNXRUNTIME]:.1e}",
                f"{errors[OPENVINO]:.1e}",
                ms(times[FOLDED]),
                f"{paired['optimized / folded']:.2f}",
                ms(times.get(OURS_COMPILED)),
                ms(paired.get("ours compiled / optimized")),
                ms(times[OURS_COMPILED] / times[ONNXRUNTIME] if OURS_COMPILED in times else None),
            ]
            for (family, batch), (times, paired, errors) in results.items()
        ],
    )
    if training:
        batch, steps, warmup, rows = training
        lines += [
            f"Training: one step (cross-entropy, backward, SGD lr 1e-3) in train mode, batch "
            f"{batch}, 224x224, fp32 CPU, ours against torchvision's same architecture; median "
            f"ms per step over {steps} steps each after {warmup} warm-up steps, the two taking "
            "turns with the order alternating; ours / torchvision is the median of the paired "
            "ratios."
        ]
        lines += markdown_table(
            ["family", "batch", "ours ms", "torchvision ms", "ours / torchvision"],
            [
                [family, batch, ms(ours_ms), ms(torchvision_ms), f"{ratio:.2f}"]
                for family, ours_ms, torchvision_ms, ratio in rows
            ],
        )
    if limit:
        batch, peak, rows = limit
        if peak is None:
            lines += ["The physical limit: the clock is unknown (neither lscpu nor /proc/cpuinfo)."]
        else:
            lines += [
                f"The physical limit: multiply-accumulates per image at 224x224 (every nn.Conv2d "
                f"and nn.Linear of our model: output elements x in_channels / groups x kernel "
                f"area); the nominal fp32 peak of {threads} cores: {threads} cores x "
                f"{peak.mhz:.0f} MHz ({peak.clock_source}) x {peak.floats} floats per vector "
                f"({peak.vector_source}) x 2 FMA units per core (assumed) x 2 FLOPs per FMA = "
                f"{peak.flops / 1e9:.1f} GFLOP/s, assuming every core holds that clock under "
                "vector load; ms per image at peak = 2 x MACs / peak; fraction of peak = 2 x MACs "
                "x batch / the optimized copy's time per batch / peak."
            ]

        def significant(value):
            return "-" if value is None else f"{value:.3g}"

        lines += markdown_table(
            [
                "family",
                "MMACs per image",
                "ms per image at peak",
                f"optimized at batch {batch}: fraction of peak",
            ],
            [
                [family, f"{macs / 1e6:.1f}", significant(peak_ms), significant(fraction)]
                for family, macs, peak_ms, fraction in rows
            ],
        )
    if accelerator:
        name, batch, compiled, rows = accelerator
        lines += [
            f"{name}, batch {batch}, channels-last"
            f"{', torch.compile' if compiled else ''}; images per second (higher is "
            "better)."
        ]
        lines += markdown_table(
            ["family", "dtype", "ours optimized", "torchvision", "ours / torchvision"],
            [
                [
                    family,
                    dtype,
                    f"{rates[OPTIMIZED]:.0f}",
                    f"{rates[TORCHVISION]:.0f}",
                    f"{rates[OPTIMIZED] / rates[TORCHVISION]:.2f}",
                ]
                for family, dtype, rates in rows
            ],
        )
    if conversion:
        convert_s, load_s, peak_mb, size_mb = conversion
        lines += [
            f"Converting an official-size MobileNetV2 file ({size_mb:.1f} MiB, alpha "
            f"1.0, 224, official layout): {convert_s * 1e3:.0f} ms, the converter's peak "
            f"memory {peak_mb:.0f} MiB (peak RSS growth of a fresh process during the "
            f"conversion); loading the .safetensors into a model: {load_s * 1e3:.0f} ms."
        ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument(
        "--accelerator", help="device for the images/second table (default: cuda when there is one)"
    )
    parser.add_argument("--accelerator-batch", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out of the accelerator table"
    )
    parser.add_argument(
        "--no-compile-cpu",
        action="store_true",
        help="leave torch.compile (with freezing) out of the CPU table: each compile takes tens of "
        "seconds",
    )
    parser.add_argument(
        "--no-keras-torch",
        action="store_true",
        help="leave Keras on its PyTorch backend (a process per family and batch) out",
    )
    parser.add_argument("--train-batch", type=int, default=16, help="the training table's batch")
    parser.add_argument("--no-training", action="store_true", help="leave the training table out")
    parser.add_argument("--no-conversion", action="store_true")
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="run with glibc keeping freed memory ("
        + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
        + ")",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(
            sys.executable,
            [sys.executable, __file__, *(argv or sys.argv[1:])],
            {**os.environ, **TUNED_MALLOC},
        )
    if args.out is None:
        args.out = (
            ROOT / "benchmarks" / ("results-tuned-malloc.md" if args.tuned_malloc else "results.md")
        )

    import tensorflow as tf

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < args.threads:
        parser.error(f"--threads {args.threads}: this process may use only {len(cores)} cores")
    os.sched_setaffinity(0, cores[: args.threads])
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for batch in args.batches:
                results[family, batch] = time_family(
                    family,
                    batch,
                    args.rounds,
                    Path(tmp),
                    args.threads,
                    not args.no_compile_cpu,
                    not args.no_keras_torch,
                )
                times, paired, _ = results[family, batch]
                print(
                    f"{family:20s} batch {batch:3d}  "
                    + "  ".join(f"{k} {v:7.2f}" for k, v in times.items())
                    + "".join(f"  {k} {v:.2f}" for k, v in paired.items()),
                    flush=True,
                )
        conversion = None if args.no_conversion else conversion_figures(Path(tmp))
    training = None
    if not args.no_training:
        # Steps grow with --rounds as the inference calls do; the warm-up steps take the first
        # steps' costs (allocations, lazy initialisation) out.
        steps, warmup = 4 * args.rounds, 3
        training = (
            args.train_batch,
            steps,
            warmup,
            training_rows(args.families, args.train_batch, steps, warmup),
        )
        for family, ours_ms, torchvision_ms, ratio in training[3]:
            print(
                f"{family:20s} training step: ours {ours_ms:.1f} ms, torchvision "
                f"{torchvision_ms:.1f} ms, paired ratio {ratio:.2f}",
                flush=True,
            )
    largest = max(args.batches)
    peak = nominal_peak(args.threads)
    limit = (largest, peak, limit_rows(args.families, results, largest, peak))

    accelerator = None
    device = args.accelerator or ("cuda" if torch.cuda.is_available() else None)
    if device:
        device = torch.device(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        dtypes = [getattr(torch, d) for d in args.dtypes]
        accelerator = (
            name,
            args.accelerator_batch,
            not args.no_compile,
            accelerator_rows(device, args.accelerator_batch, dtypes, not args.no_compile),
        )
    table = markdown(
        results, args.threads, conversion, accelerator, args.tuned_malloc, training, limit
    )
    print("\n" + table)
    args.out.write_text(table)
    print(
        f"written to {args.out}; peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
