"""pytest's hooks and fixtures; the helpers tests import are in helpers.py.

torch and torch._dynamo are imported before anything loads TensorFlow (see helpers.py)."""

import helpers
import pytest
import skip_summary
import torch
import torch._dynamo
import user_models


def pytest_configure(config):
    """Every skip listed at the end, with its reason (skip_summary.py)."""
    if not config.pluginmanager.has_plugin("skip_summary"):
        config.pluginmanager.register(skip_summary, "skip_summary")


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Write a Keras model's weights once per (model, layout); returns the path. Where Keras is
    not installed: a failure, or a skip where the `keras` extra is left out on purpose."""
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
    """Tests that read Keras-written files (the `weights_file` fixture) are marked `keras` too."""
    skip_tf_keras = pytest.mark.skip(reason=user_models.TF_KERAS_REASON)
    for item in items:
        if "tf_keras" in item.keywords and not user_models.HAVE_TF_KERAS:
            item.add_marker(skip_tf_keras)
        if "weights_file" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.keras)


def pytest_runtest_setup(item):
    """A test marked `keras` where Keras is not installed fails, naming the extra, or skips,
    with the reason, where the `keras` extra is left out on purpose (helpers.missing)."""
    if "keras" in item.keywords and not helpers.HAVE_KERAS:
        helpers.keras_reference()


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
