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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

keras_reference()  # skips this module, with the reason, without Keras

pytestmark = pytest.mark.keras

# TORCH_MOBILENETS_FUZZ_SCALE=20 runs twenty times the examples, for a longer hunt by hand; such a
# run is random (new examples each time), and a failure prints the @reproduce_failure to replay.
SCALE = int(os.environ.get("TORCH_MOBILENETS_FUZZ_SCALE", "1"))


def fuzz_settings(examples):
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def originals(weights_file, workdir):
    return fuzzing.make_originals(weights_file, workdir)


@fuzz_settings(50)
@given(data=st.data())
def test_flipped_bytes_convert_or_fail_cleanly(originals, workdir, data):
    fuzzing.flipped_bytes(originals, workdir, data)


@fuzz_settings(25)
@given(data=st.data())
def test_truncated_files_always_fail_cleanly(originals, workdir, data):
    fuzzing.truncated(originals, workdir, data)


@fuzz_settings(6)
@given(data=st.data())
def test_reordered_recoded_files_convert_to_the_same_weights(originals, workdir, data):
    fuzzing.reordered_recoded(originals, workdir, data)


@fuzz_settings(20)  # refusals here mostly go through the whole architecture search
@given(data=st.data())
def test_changed_attributes_and_groups_convert_or_fail_cleanly(originals, workdir, data):
    fuzzing.changed_attributes(originals, workdir, data)


@fuzz_settings(25)
@given(data=st.data())
def test_changed_datasets_fail_cleanly_unless_harmless(originals, workdir, data):
    fuzzing.changed_datasets(originals, workdir, data)
