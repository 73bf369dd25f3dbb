"""Inference speed against the peers, in one process, interleaved, with ratios.

    python benchmarks/run.py [--threads 2] [--batches 1 8 32] [--rounds 5] [--out FILE.md]

CPU, for each family and batch size: our eager model (as a user calls it: NCHW input), our
`optimize_for_inference` copy (channels-last input), torchvision's eager model of the family
(V2, V3 Large/Small), timm's nearest model, and Keras on TensorFlow (`tf.function`).

How it is fair: the process is pinned to `--threads` cores and both frameworks use that many
threads. Within a round the PyTorch contenders take turns call by call, so a machine that slows
down slows them alike, and "eager / torchvision" is the median of those paired ratios; Keras runs
in its own block of the round, after a pause, because each framework's thread pool spins for a
while after work and would steal the cores from the other. Each cell is the median over all
timed calls. Our model and Keras carry the same seeded, calibrated weights; the peers carry their
own random init with BatchNorm statistics calibrated the same way, and denormals are flushed, so
nobody is timed on subnormal arithmetic or on activations that blow up.

With a CUDA device (or `--accelerator DEVICE`), also images per second at a large batch in
float32, float16 and bfloat16, channels-last and `torch.compile`d, ours against torchvision.
Finally, converting an official-size file and loading its safetensors, with peak memory.

`--tuned-malloc` runs the same with glibc keeping freed memory for reuse (written to
results-tuned-malloc.md): by default glibc hands large freed blocks back to the system, and every
fresh activation then costs a page fault per 4 KiB page, which at batch 8 and more can take
longer than the arithmetic.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def contenders(family, batch, workdir):
    """(PyTorch contenders, Keras contender, the optimized model's error): zero-argument
    callables, each running one batch."""
    import tensorflow as tf
    import timm
    import torchvision

    import torch_mobilenets as tm
    from convert import keras_reference as kr

    keras_kwargs, torchvision_name, timm_name = FAMILIES[family]
    keras_model = kr.build_keras(family, classifier_activation=None, **keras_kwargs)
    weights = kr.write_keras_file(keras_model, workdir / family, "weights_h5", family=family)
    ours = tm.FAMILIES[family](
        weights=weights,
        classifier_activation=None,
        **({"input_shape": (3, 224, 224)} if keras_kwargs else {}),
    ).eval()
    fast = tm.optimize_for_inference(ours)

    pixels = torch.rand(batch, 3, 224, 224) * 255
    x = (
        tm.mobilenet_v2.preprocess_input(pixels)
        if family in ("mobilenet", "mobilenet_v2")
        else pixels
    )
    x_last = x.contiguous(memory_format=torch.channels_last)
    x_keras = tf.constant(x.permute(0, 2, 3, 1).numpy())
    keras_call = tf.function(lambda t: keras_model(t, training=False))

    with torch.inference_mode():
        reference = ours(x)
        error = (fast(x_last) - reference).abs().max().item() / reference.abs().max().item()
    runs = {EAGER: lambda: ours(x), OPTIMIZED: lambda: fast(x_last)}
    if torchvision_name:
        peer = calibrate(getattr(torchvision.models, torchvision_name)())
        runs[TORCHVISION] = lambda: peer(x)
    peer_timm = calibrate(timm.create_model(timm_name, pretrained=False))
    runs[TIMM] = lambda: peer_timm(x)
    return runs, lambda: keras_call(x_keras).numpy(), error


def time_family(family, batch, rounds, workdir):
    """Median milliseconds per contender, and the paired eager / torchvision ratio."""
    runs, keras, error = contenders(family, batch, workdir)
    calls = max(4, 32 // batch)
    samples = {name: [] for name in [*runs, KERAS]}
    with torch.inference_mode():
        for fn in [*runs.values(), keras]:  # warm-up, tf.function tracing
            fn(), fn()
        for _ in range(rounds):
            time.sleep(0.2)
            for _ in range(calls):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
            time.sleep(0.2)
            keras()  # the clock and caches come back up untimed
            for _ in range(calls):
                start = time.perf_counter()
                keras()
                samples[KERAS].append(time.perf_counter() - start)
    times = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    paired = None
    if TORCHVISION in samples:
        paired = statistics.median(a / b for a, b in zip(samples[EAGER], samples[TORCHVISION]))
    return times, paired, error


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


def markdown(results, threads, conversion, accelerator=None, tuned_malloc=False):
    import tensorflow as tf
    import timm
    import torchvision

    def ms(value):
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm "
        f"{timm.__version__}, tensorflow {tf.__version__}; pinned to {threads} cores, "
        f"{threads} threads (TensorFlow: intra-op {threads}, inter-op 1); fp32 CPU, 224x224; "
        "median ms per batch; glibc malloc "
        + (
            "keeping freed memory (" + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + ")"
            if tuned_malloc
            else "as it comes"
        )
        + ".",
    ]
    lines += markdown_table(
        [
            "family",
            "batch",
            "ours eager",
            "ours optimized",
            "torchvision eager",
            "timm",
            "keras",
            "eager / torchvision",
            "keras / optimized",
            "optimized error",
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
                ms(paired),
                f"{times[KERAS] / times[OPTIMIZED]:.2f}",
                f"{error:.1e}",
            ]
            for (family, batch), (times, paired, error) in results.items()
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
                results[family, batch] = time_family(family, batch, args.rounds, Path(tmp))
                times, paired, _ = results[family, batch]
                print(
                    f"{family:20s} batch {batch:3d}  "
                    + "  ".join(f"{k} {v:7.2f}" for k, v in times.items())
                    + (f"  eager/torchvision {paired:.2f}" if paired else ""),
                    flush=True,
                )
        conversion = None if args.no_conversion else conversion_figures(Path(tmp))

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
    table = markdown(results, args.threads, conversion, accelerator, args.tuned_malloc)
    print("\n" + table)
    args.out.write_text(table)
    print(
        f"written to {args.out}; peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
