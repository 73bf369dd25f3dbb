"""Inference and training speed against the peers, with ratios, and the machine's limit.

    python benchmarks/run.py [--threads 2] [--batches 1 8 32] [--rounds 5] [--train-batch 16]
                             [--no-compile-cpu] [--no-keras-torch] [--no-training] [--out FILE.md]

It writes the run's records (benchmarks/records.py) to FILE.json and the markdown rendered from
them (benchmarks/render.py) to FILE.md; `python -m benchmarks.render` then refreshes the tables
the docs quote. The jobs live in their own modules: the harness (harness.py: pinning, the
clock), the contenders (contenders.py), training (training.py), the peak estimate (peak.py),
the accelerator table (accelerator.py), conversion timing (conversion.py); this file runs them
and records what they measured.

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
each family against torchvision's same architecture (V1 has none), in train mode, eager and
under `torch.compile` (`--no-compile-cpu` leaves it out), all taking turns step by step with the
order alternating; every ratio is the median of the paired ratios, and compile time is reported
apart.

The physical limit: multiply-accumulates per image (every convolution and linear layer of our
model at 224x224), the time they take at the nominal fp32 peak of `--threads` cores, and the
fraction of that peak our `optimize_for_inference` copy reaches at the largest batch timed.

With a CUDA device (or `--accelerator DEVICE`), also images per second at a large batch in
float32, float16 and bfloat16, channels-last and `torch.compile`d, ours against torchvision.
Resident memory (`--memory-batches`, 8 and 32 by default): our optimized copy, with and
without its kept activation memory, beside ONNX Runtime, each in a fresh process
(benchmarks/footprint.py).
Finally, converting an official-size file and loading its safetensors, with peak memory.

`--tuned-malloc` runs the same with glibc keeping freed memory for reuse (written to
results-tuned-malloc.md and .json): by default glibc hands large freed blocks back to the
system, and every
fresh activation then costs a page fault per 4 KiB page, which at batch 8 and more can take
longer than the arithmetic. `torch_mobilenets.keep_freed_memory()` sets the same from Python.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

import torch
import torch._dynamo  # before anything loads TensorFlow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import (  # noqa: E402 (after the path)
    accelerator,
    contenders,
    conversion,
    footprint,
    harness,
    peak,
    records,
    render,
    training,
)
from benchmarks.contenders import PEERS  # noqa: E402
from benchmarks.records import (  # noqa: E402
    KERAS_TORCH,
    OF_MEDIANS,
    OPTIMIZED,
    PAIRED,
    TUNED_MALLOC,
    Results,
)

VERSIONS = [
    "torch",
    "torchvision",
    "timm",
    "tensorflow",
    "keras",
    "onnxruntime",
    "openvino",
    "numpy",
    "torch-mobilenets",
]


def time_family(family, batch, rounds, workdir, threads, compile_cpu, keras_torch):
    """The `inference` records of `family` at `batch`: each contender's median ms and error
    against our eager output, and the ratios (PAIRED: medians of paired ratios; OF_MEDIANS)."""
    c = contenders.contenders(family, batch, workdir, threads, compile_cpu)
    calls = max(4, 32 // batch)
    samples = harness.interleaved(c.paired, c.blocks, rounds, calls)
    times = {name: harness.median_ms(s) for name, s in samples.items()}
    errors = dict(c.errors)
    if keras_torch:
        times[KERAS_TORCH], output = contenders.keras_torch_ms(
            family, c.weights, c.keras_input, threads, calls * rounds, workdir / family
        )
        errors[KERAS_TORCH] = contenders.checked(KERAS_TORCH, torch.from_numpy(output), c.reference)
    key = {"table": "inference", "family": family, "batch": batch}
    found = [
        {**key, "contender": name, "ms": ms, "error": errors.get(name)}
        for name, ms in times.items()
    ]
    for name, (top, bottom) in PAIRED.items():
        if top in samples and bottom in samples:
            value = harness.paired_ratio(samples[top], samples[bottom])
            found.append({**key, "ratio": name, "value": value, "how": "paired"})
    for name, (top, bottom) in OF_MEDIANS.items():
        if top in times and bottom in times:
            value = times[top] / times[bottom]
            found.append({**key, "ratio": name, "value": value, "how": "of medians"})
    return found


def parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--families", nargs="+", default=list(PEERS), choices=list(PEERS))
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
        help="leave torch.compile out of the CPU tables (inference with freezing, and training): "
        "each compile takes tens of seconds",
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
        "--memory-batches",
        type=int,
        nargs="*",
        default=[8, 32],
        help="the batches of the resident-memory table (none: leave it out)",
    )
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="run with glibc keeping freed memory ("
        + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
        + ")",
    )
    parser.add_argument("--out", type=Path, help="the markdown; the records go beside it, as .json")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser()
    args = options.parse_args(argv)
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, **TUNED_MALLOC})
    if args.out is None:
        args.out = (
            ROOT / "benchmarks" / ("results-tuned-malloc.md" if args.tuned_malloc else "results.md")
        )
    try:
        cores = harness.settle(args.threads)
    except ValueError as error:
        options.error(str(error))
    device = args.accelerator or ("cuda" if torch.cuda.is_available() else None)
    steps, warmup = 4 * args.rounds, 3
    settings = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "cores": cores,
        "accelerator": device,
        "compile_cpu": not args.no_compile_cpu,
        "keras_torch": not args.no_keras_torch,
        "training": not args.no_training,
        "conversion": not args.no_conversion,
        # Steps grow with --rounds as the inference calls do; the warm-up steps take the first
        # steps' costs (allocations, lazy initialisation) out.
        "training_steps": steps,
        "training_warmup": warmup,
        "malloc": {k: os.environ[k] for k in TUNED_MALLOC if k in os.environ},
        "flush_denormal": True,
    }
    results = Results(
        records.header("run", records.command_line(__file__, argv), settings, VERSIONS)
    )
    optimized_ms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for batch in args.batches:
                found = time_family(
                    family,
                    batch,
                    args.rounds,
                    Path(tmp),
                    args.threads,
                    not args.no_compile_cpu,
                    not args.no_keras_torch,
                )
                results.records += found
                optimized_ms[family, batch] = next(
                    r["ms"] for r in found if r.get("contender") == OPTIMIZED
                )
                print(
                    f"{family:20s} batch {batch:3d}  "
                    + "  ".join(
                        f"{r['contender']} {r['ms']:7.2f}"
                        if "contender" in r
                        else f"{r['ratio']} {r['value']:.2f}"
                        for r in found
                    ),
                    flush=True,
                )
        for family in args.families:
            for batch in args.memory_batches:
                found = footprint.memory_records(family, batch, Path(tmp) / "memory", args.threads)
                results.records += found
                print(
                    f"{family:20s} batch {batch:3d}  resident MiB "
                    + "  ".join(f"{r['contender']} {r['steady_mb']:.0f}" for r in found),
                    flush=True,
                )
        if not args.no_conversion:
            results.records.append(conversion.conversion_record(Path(tmp)))
    if not args.no_training:
        for r in training.training_records(
            args.families, args.train_batch, steps, warmup, compiled=not args.no_compile_cpu
        ):
            results.records.append(r)
            print(
                f"{r['family']:20s} training step ms: "
                + "  ".join(
                    f"{name} {r[field]:.1f}"
                    for name, field in (
                        ("ours", "ours_ms"),
                        ("torchvision", "torchvision_ms"),
                        ("ours compiled", "ours_compiled_ms"),
                        ("torchvision compiled", "torchvision_compiled_ms"),
                    )
                    if r[field] is not None
                ),
                flush=True,
            )
    largest = max(args.batches)
    nominal = peak.nominal_peak(args.threads)
    results.header["peak"] = nominal._asdict() if nominal else None
    results.records += peak.limit_records(
        args.families, {f: optimized_ms[f, largest] for f in args.families}, largest, nominal
    )
    if device:
        device = torch.device(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        results.header["accelerator"] = {
            "name": name,
            "batch": args.accelerator_batch,
            "compiled": not args.no_compile,
        }
        results.records += accelerator.accelerator_records(
            device,
            args.accelerator_batch,
            [getattr(torch, d) for d in args.dtypes],
            not args.no_compile,
        )
    records.finish(results)
    results.save(records.records_path(args.out))
    table = render.markdown(results)
    print("\n" + table)
    args.out.write_text(table)
    print(
        f"written to {args.out} and {records.records_path(args.out)}; peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; the docs' tables: "
        "python -m benchmarks.render"
    )


if __name__ == "__main__":
    main()
