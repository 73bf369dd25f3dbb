"""Logit parity with real Keras on TensorFlow, same seeded weights carried through Keras files.

Every case builds the Keras model, writes its weights to a file, builds ours with the same
arguments and `weights=<that file>`, and compares outputs on the same images.
"""

import pytest
from helpers import assert_parity, keras_model, keras_reference, torch_kwargs

import torch_mobilenets as tm

kr = keras_reference()  # skips this module, with the reason, without Keras

pytestmark = pytest.mark.keras

EVEN, ODD, NON_SQUARE = (96, 96), (97, 97), (97, 130)

# (family, Keras arguments, sizes). A static `input_shape` is evaluated at its own size; a
# dynamic model at every size given.
CONSTRUCTIONS = [
    # V1: with the top the size is static; odd and non-square inputs, classes != 1000,
    # depth_multiplier > 1, softmax and logits, pooling.
    ("mobilenet", dict(input_shape=(128, 128, 3), alpha=0.5), None),
    (
        "mobilenet",
        dict(input_shape=(97, 131, 3), alpha=0.75, classes=10, classifier_activation=None),
        None,
    ),
    (
        "mobilenet",
        dict(input_shape=(98, 112, 3), alpha=0.25, depth_multiplier=2, classifier_activation=None),
        None,
    ),
    ("mobilenet", dict(include_top=False, alpha=1.0), [EVEN, ODD, NON_SQUARE]),
    (
        "mobilenet",
        dict(include_top=False, alpha=0.5, input_shape=(97, 130, 3), pooling="avg"),
        None,
    ),
    ("mobilenet", dict(include_top=False, alpha=0.25, pooling="max"), [ODD]),
    # V2: the stride-2 paddings depend on the construction.
    ("mobilenet_v2", dict(input_shape=(96, 96, 3), alpha=0.35, classifier_activation=None), None),
    (
        "mobilenet_v2",
        dict(input_shape=(97, 131, 3), alpha=1.3, classes=17, classifier_activation=None),
        None,
    ),
    ("mobilenet_v2", dict(input_shape=(160, 160, 3), alpha=1.4), None),
    ("mobilenet_v2", dict(include_top=False, alpha=0.5), [EVEN, ODD, NON_SQUARE]),
    ("mobilenet_v2", dict(include_top=False, alpha=0.75, input_shape=(97, 131, 3)), None),
    ("mobilenet_v2", dict(include_top=False, alpha=1.0, pooling="max"), [NON_SQUARE]),
    # V3: dynamic by default even with the top; alpha > 1 widens conv_2.
    ("mobilenet_v3_small", dict(classifier_activation=None), [EVEN, ODD, NON_SQUARE]),
    (
        "mobilenet_v3_small",
        dict(input_shape=(97, 131, 3), alpha=0.75, classifier_activation=None),
        None,
    ),
    ("mobilenet_v3_small", dict(alpha=1.25, classes=5, classifier_activation=None), [ODD]),
    ("mobilenet_v3_small", dict(minimalistic=True, include_top=False, pooling="avg"), [NON_SQUARE]),
    (
        "mobilenet_v3_small",
        dict(include_preprocessing=False, input_shape=(96, 96, 3), classifier_activation=None),
        None,
    ),
    ("mobilenet_v3_large", dict(classifier_activation=None), [EVEN, ODD, NON_SQUARE]),
    (
        "mobilenet_v3_large",
        dict(input_shape=(131, 97, 3), minimalistic=True, classifier_activation=None),
        None,
    ),
    ("mobilenet_v3_large", dict(alpha=0.75, include_top=False), [ODD, NON_SQUARE]),
    (
        "mobilenet_v3_large",
        dict(alpha=1.5, include_top=False, pooling="max", include_preprocessing=False),
        [EVEN],
    ),
]


def _id(case):
    family, kwargs, _ = case
    return family + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("case", CONSTRUCTIONS, ids=_id)
def test_parity_with_keras(case, weights_file):
    family, kwargs, sizes = case
    keras = keras_model(family, **kwargs)
    path = weights_file(family, keras)
    ours = tm.FAMILIES[family](weights=path, **torch_kwargs(kwargs))
    if sizes is None:  # static: Keras only accepts its own size
        sizes = [kwargs["input_shape"][:2]]
    for height, width in sizes:
        assert_parity(family, keras, ours, height, width, case=_id(case))


@pytest.mark.parametrize(
    "family,kwargs",
    [
        ("mobilenet_v2", dict(include_top=False, alpha=0.5)),
        ("mobilenet_v3_small", dict(classifier_activation=None)),
    ],
)
def test_static_and_dynamic_constructions_really_differ_on_odd_sizes(family, kwargs, weights_file):
    """The check above can fail: at an odd size, Keras' static model is another function of the
    same weights than its dynamic one, and each of ours matches only its own."""
    dynamic = keras_model(family, **kwargs)
    static = kr.keras_builder(family)(weights=None, input_shape=(97, 97, 3), **kwargs)
    static.set_weights(dynamic.get_weights())
    path = weights_file(family, dynamic)
    ours_dynamic = tm.FAMILIES[family](weights=path, **kwargs)
    ours_static = tm.FAMILIES[family](weights=path, input_shape=(3, 97, 97), **kwargs)
    with pytest.raises(AssertionError, match="relative error|!= Keras"):
        assert_parity(family, static, ours_dynamic, 97, 97, case="dynamic vs static", record=False)
    assert_parity(family, dynamic, ours_dynamic, 97, 97, case="dynamic")
    assert_parity(family, static, ours_static, 97, 97, case="static")
