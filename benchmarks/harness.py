"""The harness: the process's settings and the clock, for benchmarks/run.py.

The process is pinned to `threads` cores and every framework uses that many threads; denormals
are flushed. In a round the PyTorch contenders take turns call by call, so a machine that slows
down slows them alike; each other runtime runs in a block of its own after a pause, because a
framework's thread pool spins for a while after work and would steal the cores from the next.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def settle(threads: int, tensorflow: bool = True) -> list[int]:
    """Pin this process to the first `threads` of the cores it may use, give torch (and
    TensorFlow: intra-op `threads`, inter-op 1) that many threads, flush denormals; returns
    the cores. Raises ValueError where fewer cores are allowed."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < threads:
        raise ValueError(f"--threads {threads}: this process may use only {len(cores)} cores")
    os.sched_setaffinity(0, cores[:threads])
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if tensorflow:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return cores[:threads]


def interleaved(
    paired: Mapping[str, Callable[[], object]],
    blocks: Mapping[str, Callable[[], object]],
    rounds: int,
    calls: int,
) -> dict[str, list[float]]:
    """Seconds per call of each contender: after two warm-up calls each (tf.function traces),
    `rounds` rounds of `calls` calls, the `paired` ones taking turns call by call, then each of
    `blocks` in a block of its own after a pause and one untimed call (the clock and caches
    come back up)."""
    samples: dict[str, list[float]] = {name: [] for name in [*paired, *blocks]}
    with torch.inference_mode():
        for fn in [*paired.values(), *blocks.values()]:
            fn(), fn()
        for _ in range(rounds):
            time.sleep(0.2)
            for _ in range(calls):
                for name, fn in paired.items():
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
            for name, fn in blocks.items():
                time.sleep(0.2)
                fn()
                for _ in range(calls):
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
    return samples


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def paired_ratio(top: list[float], bottom: list[float]) -> float:
    """The median of the ratios of calls that took turns."""
    return statistics.median(a / b for a, b in zip(top, bottom))
