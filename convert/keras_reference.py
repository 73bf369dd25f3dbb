"""Keras-side helpers for the parity tests: seeded Keras MobileNets and weight files.

Builds the real Keras applications with deterministic random weights and writes them
in every weight-file layout a user meets (see LAYOUTS), so that the PyTorch side can be
checked against real Keras outputs and real Keras files.

This module must not import torch: the test process imports torch (and torch._dynamo)
before TensorFlow, and keeps the two apart.
"""

import collections
import os
import pathlib
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format

from torch_mobilenets.models import FAMILIES


def keras_builder(family: str):
    """Keras' builder of `family` (KerasCV's imported on first use: keras_cv is slow to import)."""
    entry = FAMILIES[family]
    if not entry.keras_cv:
        return getattr(keras.applications, entry.keras_class)
    import keras_cv

    backbone = getattr(keras_cv.models, entry.keras_class)

    def build(weights=None, **kwargs):
        assert weights is None, "KerasCV backbones take weights through presets"
        return backbone(**kwargs)

    return build


LAYOUTS = ("keras2_h5", "keras3_h5", "full_model_h5", "weights_h5", "keras_zip")

# Suffixes all end in ".h5"/".keras" because Keras' load_weights dispatches on them;
# ".weights.h5" is reserved for the Keras 3 format.
_SUFFIX = {
    "keras2_h5": ".keras2.h5",
    "keras3_h5": ".keras3.h5",
    "full_model_h5": ".full.h5",
    "weights_h5": ".weights.h5",
    "keras_zip": ".keras",
}

KERAS2_VERSION = b"2.4.0"


# --------------------------------------------------------------------------- models
def build_keras(family, seed=0, **kwargs):
    """Keras `family` model built with `weights=None` + kwargs, weights drawn from `seed`."""
    model = keras_builder(family)(weights=None, **kwargs)
    randomize_weights(model, seed)
    return model


def randomize_weights(model, seed):
    """Overwrite every weight with values drawn from numpy's Generator(seed).

    All random values are numpy draws in model.layers order: kernels He-normal on the
    fan-in (DepthwiseConv2D: kh*kw), biases ~ N(0, 0.1), BatchNorm gamma ~ U(0.5, 1.5),
    beta ~ N(0, 0.1), moving_mean ~ N(0, 0.1) and moving_variance ~ U(0.5, 1.5).

    Pure random BatchNorm statistics make ~50-layer nets explode (V3-Large logits ~1e2,
    minimalistic ~1e4) or collapse to input-independent logits, because inference-mode
    BatchNorm does not renormalise anything. So one inference pass over a seeded noise
    batch then expresses the BatchNorm statistics in units of the layer's real input
    (moving_mean = mean + std * draw, moving_variance = std**2 * draw) and divides the
    kernels of the BatchNorm-less layers (squeeze-excite convs, head, classifier) by
    the rms of their input. Every layer then sees O(1) activations, BatchNorm is far
    from identity, and eps / padding / activation mistakes stay visible in the logits.
    The calibration goes through TensorFlow, so weights are bit-identical for a seed on
    one TF/Keras build and CPU, and equal to float32 rounding elsewhere.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        values = []
        for w in layer.weights:  # get_weights() order
            shape, name = tuple(w.shape), w.name
            if name == "kernel":
                fan_in = int(np.prod(shape[:2] if depthwise else shape[:-1]))
                v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            elif name in ("gamma", "moving_variance"):
                v = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "moving_mean", "bias"):
                v = rng.normal(0.0, 0.1, shape)
            else:
                raise ValueError(f"unexpected weight {w.path}")
            values.append(v.astype(np.float32))
        layer.set_weights(values)

    # Dynamic-shape models are calibrated at 128x128. Enough images that the last
    # (stride 32) feature map still gives >= 64 samples per channel: statistics from a
    # handful of 1x1 maps do not carry over to other inputs.
    rows, cols = (d or 128 for d in model.input_shape[1:3])
    n = max(8, -(-64 // (-(-rows // 32) * -(-cols // 32))))
    x = rng.uniform(-1.0, 1.0, (n, rows, cols, model.input_shape[-1]))
    if any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers):
        x = (x + 1.0) * 127.5  # V3 models rescale [0, 255] themselves
    weighted = [layer for layer in model.layers if layer.weights]
    _calibrate(model, x.astype(np.float32), classifier=weighted[-1])


def _calibrate(model, x, classifier):
    """Run `model` once on `x`, rescaling each weighted layer from its actual input just
    before it is applied (so everything upstream is already final)."""

    def fit_then_call(op):
        def call(*args, **kwargs):
            if isinstance(op, keras.layers.Layer) and op.weights:
                _fit_to_input(op, keras.ops.convert_to_numpy(args[0]), op is classifier)
            return op(*args, **kwargs)

        return call

    # Functional._run_through_graph is private but is exactly "call each layer in
    # topological order": one pass instead of one sub-model per layer.
    model._run_through_graph(x, operation_fn=fit_then_call)


def _fit_to_input(layer, x, is_classifier):
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes, dtype=np.float64), x.var(axes, dtype=np.float64)
    if isinstance(layer, keras.layers.BatchNormalization):
        gamma, beta, mean_draw, var_draw = layer.get_weights()
        # Shrink towards the layer average: a channel that barely moved on the
        # calibration batch must not be amplified 100x on other inputs.
        var = var + 0.1 * var.mean()
        moving_mean = mean + np.sqrt(var) * mean_draw
        layer.set_weights(
            [gamma, beta, moving_mean.astype(np.float32), (var * var_draw).astype(np.float32)]
        )
    elif hasattr(layer, "squeeze_conv"):
        # KerasCV's nested squeeze-excite: scale each conv to its own input, as below.
        pooled = x.mean(axis=(1, 2), dtype=np.float64)
        kernel, bias, excite_kernel, excite_bias = layer.get_weights()
        kernel = kernel / np.sqrt(np.mean(pooled**2))
        squeezed = np.maximum(pooled @ kernel.reshape(pooled.shape[1], -1) + bias, 0)
        excite_kernel = excite_kernel / np.sqrt(np.mean(squeezed**2) + 1e-12)
        layer.set_weights(
            [w.astype(np.float32) for w in (kernel, bias, excite_kernel, excite_bias)]
        )
    elif any(w.name == "bias" for w in layer.weights):
        kernel, bias = layer.get_weights()
        if is_classifier:
            # Top classifier (1x1 conv or Dense): centre its input on the calibration
            # batch, so that the logits follow the image rather than a fixed per-class
            # offset (random deep nets map all noise images to nearly the same point).
            kernel = kernel / np.sqrt(var.mean())
            bias = bias - mean @ kernel.reshape(mean.size, -1)
        else:
            # Squeeze-excite convs and V3's conv_2 have no BatchNorm after them: make
            # their output O(1) (the SE gate then stays in hard_sigmoid's linear range).
            kernel = kernel / np.sqrt(np.mean(mean**2 + var))
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def keras_predict(model, x_nhwc):
    """Inference-mode outputs (BatchNorm uses moving stats, Dropout off) as float32 numpy."""
    x = np.asarray(x_nhwc, dtype=np.float32)
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float32)


def legacy_weights(model):
    """(layer, [variables]) for each weighted layer, in the order the legacy .h5 files use
    (model.layers order; within a layer trainable then non-trainable)."""
    return [
        (layer, legacy_h5_format._legacy_weights(layer)) for layer in model.layers if layer.weights
    ]


# ------------------------------------------------------------- Keras 2 (tf.keras) names
# The official V3 files were written by tf.keras 2.4-2.x, whose mobilenet_v3.py named
# layers with slashes ("expanded_conv_3/squeeze_excite/Conv_1"); Keras 3 forbids "/" in
# layer names and uses underscores and lower case instead.
_V3_TOP = {
    "conv": "Conv",
    "conv_bn": "Conv/BatchNorm",
    "conv_1": "Conv_1",
    "conv_1_bn": "Conv_1/BatchNorm",
    "conv_2": "Conv_2",
    "logits": "Logits",
    "predictions": "Predictions",
}
_V3_BLOCK = {
    "expand": "expand",
    "expand_bn": "expand/BatchNorm",
    "depthwise_pad": "depthwise/pad",
    "depthwise": "depthwise",
    "depthwise_bn": "depthwise/BatchNorm",
    "squeeze_excite_avg_pool": "squeeze_excite/AvgPool",
    "squeeze_excite_conv": "squeeze_excite/Conv",
    "squeeze_excite_relu": "squeeze_excite/Relu",
    "squeeze_excite_conv_1": "squeeze_excite/Conv_1",
    "squeeze_excite_mul": "squeeze_excite/Mul",
    "project": "project",
    "project_bn": "project/BatchNorm",
    "add": "Add",
}


def keras2_layer_name(family, name):
    """Name tf.keras 2 / keras-applications gave the layer Keras 3 calls `name`.

    Auto-generated names (re_lu_3, activation_7, ...) are kept: they carry no weights and
    Keras loads legacy files by the order of weighted layers anyway.
    """
    if family.startswith("mobilenet_v3"):
        if name in _V3_TOP:
            return _V3_TOP[name]
        m = re.fullmatch(r"(expanded_conv(?:_\d+)?)_(.+)", name)
        if m and m.group(2) in _V3_BLOCK:
            return f"{m.group(1)}/{_V3_BLOCK[m.group(2)]}"
    # keras-applications' mobilenet_v2.py (which wrote the official V2 files) called
    # the Dense top "Logits"; tf.keras 2.x later renamed it "predictions".
    if family == "mobilenet_v2" and name == "predictions":
        return "Logits"
    return name


def _keras2_weight_name(layer, k2_layer_name, variable):
    # TF variables were "<layer>/<var>:0"; DepthwiseConv2D's kernel was "depthwise_kernel".
    var = variable.name
    if isinstance(layer, keras.layers.DepthwiseConv2D) and var == "kernel":
        var = "depthwise_kernel"
    return f"{k2_layer_name}/{var}:0"


def _save_attr_chunked(group, name, data, limit=legacy_h5_format.HDF5_OBJECT_HEADER_LIMIT):
    """Keras' save_attributes_to_hdf5_group with a configurable size limit: one attr
    `name`, or name0, name1, ... when the array is over `limit` bytes."""
    n = 1
    while any(c.nbytes > limit for c in np.array_split(data, n)):
        n += 1
    if n == 1:
        group.attrs[name] = data
    else:
        for i, chunk in enumerate(np.array_split(data, n)):
            group.attrs[f"{name}{i}"] = chunk


def write_keras2_h5(model, path, family, *, chunk_layer_names=False):
    """Weights-only .h5 as tf.keras 2.x `save_weights` wrote the official files.

    Strings are fixed-length numpy bytes ("S" dtypes), which is what h5py 2.x (used by
    tf.keras <= 2.4) stored; Keras 3 with h5py 3 writes variable-length strings instead.
    """
    names = [keras2_layer_name(family, layer.name) for layer in model.layers]
    _write_legacy_h5(path, list(zip(names, model.layers)), chunk_layer_names)


def _write_legacy_h5(path, named_layers, chunk_layer_names=False):
    """`named_layers`: (name in the file, Keras 3 layer, or None for a layer without weights
    that tf.keras had and Keras 3 does not), in the file's order."""
    names = [name for name, _ in named_layers]
    layer_names = np.array([n.encode("utf8") for n in names])
    limit = legacy_h5_format.HDF5_OBJECT_HEADER_LIMIT
    if chunk_layer_names:
        limit = layer_names.nbytes // 3  # small models never reach 64 KB: force >= 3 chunks
    with h5py.File(path, "w") as f:
        _save_attr_chunked(f, "layer_names", layer_names, limit)
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs["keras_version"] = np.bytes_(KERAS2_VERSION)
        # tf.keras created the groups sorted by name, so "Conv" exists before the nested
        # "Conv/BatchNorm" and "expanded_conv/depthwise" before ".../depthwise/pad".
        for name, layer in sorted(named_layers, key=lambda t: t[0]):
            g = f.create_group(name)
            variables = legacy_h5_format._legacy_weights(layer) if layer is not None else []
            wnames = [_keras2_weight_name(layer, name, v) for v in variables]
            # Unweighted layers get an empty float64 weight_names attr, as in Keras 2.
            _save_attr_chunked(g, "weight_names", np.array([w.encode("utf8") for w in wnames]))
            for wname, v in zip(wnames, variables):
                g.create_dataset(wname, data=keras.ops.convert_to_numpy(v))


# ------------------------------------------------- V3 no-top files from before October 2021
# Until then tf.keras' mobilenet_v3.py applied Conv_2 and its activation to the
# feature map before the top's pooling, in the model without the top too, so the published
# `..._no_top.h5` files hold Conv_2; Keras then moved Conv_2 after the pooling, into the top, and
# published `..._no_top_v2.h5`. Such a model's layers are those of today's model with the top
# without the ones that came after Conv_2's activation there (Dropout, Logits, Flatten,
# Predictions) and without the top's first, the pooling, whose place Conv_2 took.
_V3_AFTER_CONV_2 = (keras.layers.Dropout, keras.layers.Flatten)


def write_keras24_v3_no_top(model, path, family):
    """A MobileNetV3 `_no_top.h5` as tf.keras 2.4 wrote the pre-October-2021 files, with the
    weights of `model`, a Keras 3 V3 *with* its top: its layers but the top's pooling, dropout,
    logits, flatten and predictions, in tf.keras 2.4's order and under its names
    (`_keras24_names`)."""
    kept = []
    for layer in model.layers:
        top_pooling = isinstance(layer, keras.layers.GlobalAveragePooling2D) and not (
            layer.name.endswith("squeeze_excite_avg_pool")
        )
        if top_pooling or isinstance(layer, _V3_AFTER_CONV_2):
            continue
        if layer.name in ("logits", "predictions"):
            continue
        kept.append(layer)
    _write_legacy_h5(path, _keras24_names(family, kept))


def _keras24_names(family, layers):
    """(tf.keras 2.4 name, layer) for the layers of a V3 model, with the layers tf.keras 2.4
    built where Keras 3 builds fewer (None for those; none holds weights): its hard_swish was
    `x + 3` (a TFOpLambda `tf.__operators__.add`), ReLU(6), `* (1/6)` (`tf.math.multiply`) and a
    Multiply layer, where Keras 3 has one Activation; its hard_sigmoid the first three, where
    Keras 3's ops leave only the ReLU(6) among the layers; and its squeeze-excite reshaped the
    pooled vector (a Reshape) where Keras 3 pools with keepdims. Unnamed layers are numbered as
    tf.keras did in a fresh session: `re_lu`, `re_lu_1`, ..."""
    counts = collections.Counter()

    def auto(kind):
        counts[kind] += 1
        return kind if counts[kind] == 1 else f"{kind}_{counts[kind] - 1}"

    named = [("input_1", None)]
    for layer in layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Rescaling):
            named.append((auto("rescaling"), None))
        elif isinstance(layer, keras.layers.Activation) and layer.name.startswith("activation"):
            # hard_swish: x * hard_sigmoid(x)
            named += [(auto(k), None) for k in ("tf.__operators__.add", "re_lu")]
            named += [(auto(k), None) for k in ("tf.math.multiply", "multiply")]
        elif isinstance(layer, keras.layers.ReLU) and layer.name.startswith("re_lu"):
            if layer.max_value == 6.0:  # hard_sigmoid: relu6(x + 3) / 6
                named += [(auto("tf.__operators__.add"), None), (auto("re_lu"), None)]
                named.append((auto("tf.math.multiply"), None))
            else:
                named.append((auto("re_lu"), None))
        else:
            named.append((keras2_layer_name(family, layer.name), layer))
            if layer.name.endswith("squeeze_excite_avg_pool"):
                named.append((auto("reshape"), None))
    return named


def write_keras_file(model, directory, layout, *, chunk_layer_names=False, family=None):
    """Write `model`'s weights to `directory` in `layout`; return the file path.

    `family` (a FAMILIES key) picks the Keras 2 layer names; it is inferred from the
    model otherwise. chunk_layer_names only applies to keras2_h5.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = _SUFFIX[layout]
    if layout == "keras2_h5" and chunk_layer_names:
        suffix = ".keras2_chunked.h5"
    path = directory / f"{model.name}{suffix}"
    if layout == "keras2_h5":
        write_keras2_h5(
            model, path, family or guess_family(model), chunk_layer_names=chunk_layer_names
        )
    elif layout == "keras3_h5":
        # Keras 3's save_weights refuses plain ".h5", but its legacy writer (the one
        # model.save("x.h5") uses for the model_weights group) is still there.
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    elif layout == "full_model_h5":
        model.save(path)  # legacy full model: model_weights group + model_config attr
    elif layout == "weights_h5":
        model.save_weights(path)
    elif layout == "keras_zip":
        model.save(path)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return path


def guess_family(model):
    name = model.name.lower()
    if name.startswith("mobilenetv3"):
        return "mobilenet_v3_small" if "small" in name else "mobilenet_v3_large"
    if name.startswith("mobilenetv2"):
        return "mobilenet_v2"
    if name.startswith("mobilenet"):
        return "mobilenet"
    raise ValueError(f"cannot tell the family of model {model.name!r}; pass family=")


# ----------------------------------------------------------------------- round trips
def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb), (len(wa), len(wb))
    for i, (x, y) in enumerate(zip(wa, wb)):
        assert x.shape == y.shape and np.array_equal(x, y), f"weight #{i} differs"


def check_keras_loads(
    family, path, reference, *, seed_for_other=1, into=None, load_model=False, **kwargs
):
    """Prove `path` is a real Keras file holding `reference`'s weights; return the loaded model.

    Loads `path` with model.load_weights into a model of the same config holding other
    weights: a fresh build_keras(family, seed_for_other, **kwargs), or `into` (same
    config, reused to save build time; its weights are scrambled first). With
    load_model=True (.keras and full-model .h5) keras.models.load_model rebuilds the
    model from the file instead. Then asserts every weight equals the reference's.
    """
    if load_model:
        loaded = keras.models.load_model(path, compile=False)
    else:
        loaded = into if into is not None else build_keras(family, seed_for_other, **kwargs)
        if into is not None:
            loaded.set_weights([-w - 1.0 for w in reference.get_weights()])
        # Guard against a vacuous check: the weights must differ before loading.
        assert not np.array_equal(loaded.get_weights()[0], reference.get_weights()[0])
        loaded.load_weights(path)
    assert_same_weights(loaded, reference)
    return loaded
