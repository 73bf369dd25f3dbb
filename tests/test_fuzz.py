"""Fuzzing the readers: hypothesis mutates real Keras files (every layout of a seeded
MobileNetV2) by flipping bytes, truncating, rebuilding them with their groups in another order,
and changing attributes and datasets (`fuzzing`). Whatever it does, the converter either
converts correctly or raises one clean WeightsFileError; see `fuzzing` for what is checked.

Deterministic (derandomized, no example database) and small enough for every run; see SCALE for
longer, random hunts, and test_soak.py for many more files in one process.
"""

import os

import fuzzing
import pytest
from helpers import keras_reference
from hypothesis import given, settings
from hypothesis import strategies as st

keras_reference()  # skips this module, with the reason, without Keras

pytestmark = pytest.mark.keras

# TORCH_MOBILENETS_FUZZ_SCALE=20 runs twenty times the examples, for a longer hunt by hand; such a
# run is random (new examples each time), and a failure prints the @reproduce_failure to replay.
SCALE = int(os.environ.get("TORCH_MOBILENETS_FUZZ_SCALE", "1"))


def fuzz_settings(examples):
    # No health check suppressed: none fires (measured), and too_slow, data_too_large or
    # filter_too_much would say that a strategy went wrong.
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        print_blob=True,
    )


def fuzz(case, examples):
    """A test that runs `examples` hypothesis examples of `case` (a `fuzzing.CASES` entry) and
    then checks that they all ran to their end: a strategy that stopped drawing, or draws that
    hypothesis drops, would otherwise pass with fewer (or no) files checked."""

    @fuzz_settings(examples)
    @given(data=st.data())
    def examples_of(originals, workdir, ran, data):
        case(originals, workdir, data)
        ran.append(1)

    def test(originals, workdir):
        ran = []
        examples_of(originals, workdir, ran)
        assert len(ran) == examples * SCALE, f"{len(ran)} of {examples * SCALE} examples ran"

    test.__doc__ = case.__doc__
    return test


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def originals(weights_file, workdir):
    return fuzzing.make_originals(weights_file, workdir)


test_flipped_bytes_convert_or_fail_cleanly = fuzz(fuzzing.flipped_bytes, 50)
test_truncated_files_always_fail_cleanly = fuzz(fuzzing.truncated, 25)
test_reordered_recoded_files_convert_to_the_same_weights = fuzz(fuzzing.reordered_recoded, 6)
# refusals here mostly go through the whole architecture search
test_changed_attributes_and_groups_convert_or_fail_cleanly = fuzz(fuzzing.changed_attributes, 20)
test_changed_datasets_fail_cleanly_unless_harmless = fuzz(fuzzing.changed_datasets, 25)
