"""pytest's hooks and fixtures; the helpers tests import are in helpers.py.

torch and torch._dynamo are imported before anything loads TensorFlow (see helpers.py)."""

import helpers
import pytest
import torch
import torch._dynamo
import user_models


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Write a Keras model's weights once per (model, layout); returns the path. Skips the test
    where Keras is not installed."""
    kr = helpers.keras_reference()
    root = tmp_path_factory.mktemp("keras_files")
    cache = {}

    def write(family, model, layout="weights_h5", **options):
        key = (id(model), layout, tuple(sorted(options.items())))
        if key not in cache:
            directory = root / f"{len(cache)}"
            path = kr.write_keras_file(model, directory, layout, family=family, **options)
            # The model is kept with its file: while it lives, no other model can take its id.
            cache[key] = (model, path)
        return cache[key][1]

    return write


def pytest_collection_modifyitems(items):
    """Tests that read Keras-written files (the `weights_file` fixture) are marked `keras` too;
    tests marked `keras` skip, with the reason, where Keras is not installed."""
    skip = pytest.mark.skip(reason=helpers.KERAS_REASON)
    skip_tf_keras = pytest.mark.skip(reason=user_models.TF_KERAS_REASON)
    for item in items:
        if "tf_keras" in item.keywords and not user_models.HAVE_TF_KERAS:
            item.add_marker(skip_tf_keras)
        if "weights_file" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.keras)
        if "keras" in item.keywords and not helpers.HAVE_KERAS:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if not helpers.worst:
        return
    import keras
    import tensorflow as tf

    terminalreporter.section("parity against Keras (worst relative logit error per family)")
    terminalreporter.write_line(
        f"keras {keras.__version__}, tensorflow {tf.__version__}, torch {torch.__version__}"
    )
    for family, (error, case) in sorted(helpers.worst.items()):
        terminalreporter.write_line(f"{family:20s} {error:.2e}  ({case})")
