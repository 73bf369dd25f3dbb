"""The soak: one process converts 500 fuzzed files (the mutations of the fuzz tests, `fuzzing`)
and 200 good ones, in ten rounds. Every outcome must be a correct conversion or one clean error,
as in test_fuzz.py, and the process must not leak: after every round its open file descriptors
may exceed those after the first by at most FD_SLACK, and its resident memory by at most
RSS_GROWTH_MIB. The figures are printed at the end.

A few minutes on 2 cores: marked `soak`, run by `make test-soak`.
"""

import gc
import json
import os
import sys
import time
from collections import Counter

import fuzzing
import hypothesis
import pytest
from helpers import keras_reference
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

keras_reference()  # skips this module, with the reason, without Keras

pytestmark = [pytest.mark.keras, pytest.mark.soak]

ROUNDS = 10
# Fuzzed files per round, per mutation (50 in all), and good files per round.
FUZZED = {
    "flipped bytes": 20,
    "truncated": 10,
    "reordered and recoded": 4,
    "changed attributes": 8,
    "changed datasets": 8,
}
GOOD = 20
FD_SLACK = 4
RSS_GROWTH_MIB = 64


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def run_examples(case, examples: int, seed: int, originals, workdir) -> int:
    """`examples` hypothesis examples of a `fuzzing.CASES` entry, seeded; returns how many ran to
    their end (hypothesis also starts some it drops, when a draw runs out of data)."""
    ran = []

    @hypothesis.seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(data=st.data())
    def one(data):
        case(originals, workdir, data)
        ran.append(1)

    one()
    return len(ran)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("soak")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_soak_of_700_conversions_in_one_process(weights_file, workdir, capfd):
    originals = fuzzing.make_originals(weights_file, workdir)
    counts: Counter = Counter()
    samples = []
    start = time.monotonic()
    for round_ in range(ROUNDS):
        for name, examples in FUZZED.items():
            counts[name] += run_examples(fuzzing.CASES[name], examples, round_, originals, workdir)
        for i in range(GOOD):
            original = originals[fuzzing.LAYOUTS[i % len(fuzzing.LAYOUTS)]]
            converted = fuzzing.convert_outcome(
                original.data, original.suffix, workdir, record=False
            )
            fuzzing.assert_same_state(converted, original.state)
            counts["good"] += 1
        gc.collect()
        samples.append({"fds": open_fds(), "rss_mib": round(rss_mib(), 1)})
        assert list(workdir.iterdir()) == []  # every case's folder removed
    figures = {
        "conversions": dict(counts),
        "seconds": round(time.monotonic() - start),
        "after each round": samples,
    }
    with capfd.disabled():
        print(f"\nsoak: {json.dumps(figures)}")
    assert sum(counts[name] for name in FUZZED) == ROUNDS * sum(FUZZED.values()) == 500
    assert counts["good"] == ROUNDS * GOOD == 200
    first = samples[0]
    assert max(s["fds"] for s in samples) <= first["fds"] + FD_SLACK, samples
    assert max(s["rss_mib"] for s in samples) <= first["rss_mib"] + RSS_GROWTH_MIB, samples
