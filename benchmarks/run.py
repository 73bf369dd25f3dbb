"""Inference speed against the peers, in one process, interleaved, with ratios.

    python benchmarks/run.py [--threads 2] [--batches 1 8 32] [--rounds 5] [--out FILE.md]

For each family and batch size, times: our eager model, `optimize_for_inference` (channels-last
input), torchvision's eager model of the family (V2, V3 Large/Small), timm's nearest model, and
Keras on TensorFlow (`tf.function`). Contenders alternate within every round, so a busy machine
slows them alike; each cell is the median over rounds of the per-call median. All models carry
the same kind of weights (our and Keras' the same seeded, calibrated ones; the peers their own
random init) and flush denormals, so no contender is timed on subnormal arithmetic.
Also times converting an official-size file and loading its safetensors, with peak memory.
"""

from __future__ import annotations

import torch  # noqa: F401  (torch and torch._dynamo before TensorFlow)
import torch._dynamo  # noqa: F401

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def per_call_ms(fn, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def contenders(family, batch, workdir):
    """name -> zero-argument callable running one batch."""
    import tensorflow as tf
    import timm
    import torchvision

    import torch_mobilenets as tm
    from convert import keras_reference as kr
    from torch_mobilenets.inference import optimize_for_inference

    keras_kwargs, torchvision_name, timm_name = FAMILIES[family]
    keras_model = kr.build_keras(family, classifier_activation=None, **keras_kwargs)
    weights = kr.write_keras_file(keras_model, workdir / family, "weights_h5", family=family)
    ours = tm.FAMILIES[family](weights=weights, classifier_activation=None,
                               **({"input_shape": (3, 224, 224)} if keras_kwargs else {})).eval()
    fast = optimize_for_inference(ours)

    pixels = torch.rand(batch, 3, 224, 224) * 255
    x = tm.mobilenet_v2.preprocess_input(pixels) if family in ("mobilenet", "mobilenet_v2") \
        else pixels
    x_last = x.contiguous(memory_format=torch.channels_last)
    x_keras = tf.constant(x.permute(0, 2, 3, 1).numpy())
    keras_call = tf.function(lambda t: keras_model(t, training=False))

    with torch.inference_mode():
        error = (fast(x_last) - ours(x)).abs().max().item() / max(1.0, ours(x).abs().max().item())
    runs = {
        "ours eager": lambda: ours(x),
        "ours optimized": lambda: fast(x_last),
        "keras (tf.function)": lambda: keras_call(x_keras).numpy(),
    }
    if torchvision_name:
        peer = getattr(torchvision.models, torchvision_name)().eval()
        runs["torchvision eager"] = lambda: peer(x)
    peer_timm = timm.create_model(timm_name, pretrained=False).eval()
    runs[f"timm {timm_name}"] = lambda: peer_timm(x)
    return runs, error


def time_family(family, batch, rounds, workdir):
    runs, error = contenders(family, batch, workdir)
    calls = max(5, 48 // batch)
    samples = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up, tf.function tracing
            fn(), fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                # Both frameworks' thread pools spin for a while after work; let them settle so
                # no contender pays for the previous one.
                time.sleep(0.2)
                fn()  # and the clock and caches come back up untimed
                samples[name].append(per_call_ms(fn, calls))
    return {name: statistics.median(s) for name, s in samples.items()}, error


def conversion_figures(workdir):
    """Convert an official-size V2 file (alpha 1.0, 224, official layout) in a fresh process,
    reporting wall time and peak memory; then load the safetensors and time that."""
    from convert import keras_reference as kr

    keras_model = kr.build_keras("mobilenet_v2", input_shape=(224, 224, 3))
    src = kr.write_keras_file(keras_model, workdir / "conversion", "keras2_h5",
                              family="mobilenet_v2")
    dst = workdir / "conversion" / "v2.safetensors"
    script = (
        "import time\n"
        "def vm(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) / 1024\n"
        "from torch_mobilenets.conversion import convert\n"
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
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    convert_s, load_s, peak_mb = map(float, out[-3:])
    return convert_s, load_s, peak_mb, src.stat().st_size / 2**20


def markdown(results, threads, conversion):
    import tensorflow as tf
    import timm
    import torchvision

    lines = [
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm "
        f"{timm.__version__}, tensorflow {tf.__version__}; {threads} threads (intra-op; "
        f"TensorFlow inter-op 1); fp32 CPU, 224x224; median ms per batch.",
        "",
        "| family | batch | ours eager | ours optimized | torchvision eager | timm | keras | "
        "eager / torchvision | keras / optimized | optimized error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (family, batch), (times, error) in results.items():
        timm_ms = next(v for k, v in times.items() if k.startswith("timm"))
        eager, fast, keras = times["ours eager"], times["ours optimized"], times["keras (tf.function)"]
        tv = times.get("torchvision eager")
        lines.append(
            f"| {family} | {batch} | {eager:.2f} | {fast:.2f} | {f'{tv:.2f}' if tv else '-'} | "
            f"{timm_ms:.2f} | {keras:.2f} | {f'{eager / tv:.2f}' if tv else '-'} | "
            f"{keras / fast:.2f} | {error:.1e} |")
    convert_s, load_s, peak_mb, size_mb = conversion
    lines += ["", f"Converting an official-size MobileNetV2 file ({size_mb:.1f} MiB, alpha 1.0, 224, "
              f"official layout): {convert_s * 1e3:.0f} ms, the converter's peak memory "
              f"{peak_mb:.0f} MiB (peak RSS growth of a fresh process during the conversion); "
              f"loading the .safetensors into a model: {load_s * 1e3:.0f} ms."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    args = parser.parse_args(argv)

    import tensorflow as tf

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for batch in args.batches:
                results[family, batch] = time_family(family, batch, args.rounds, Path(tmp))
                times, _ = results[family, batch]
                print(f"{family:20s} batch {batch:3d}  " +
                      "  ".join(f"{k} {v:7.2f}" for k, v in times.items()), flush=True)
        conversion = conversion_figures(Path(tmp))
    table = markdown(results, args.threads, conversion)
    print("\n" + table)
    args.out.write_text(table)
    print(f"written to {args.out}; peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
