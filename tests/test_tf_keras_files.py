"""Files that real tf-keras 2.21 (Keras 2) wrote, beside the project's own Keras 2 writer
(`convert/keras_reference.write_keras2_h5`), which the other tests use for the official files'
layout.

Each case builds the model in Keras 3 with seeded, trained-like weights (moving statistics from a
forward pass), gives tf-keras's own `keras.applications` model the same weights, and lets
tf-keras save it: `save_weights` (the official files' layout), the same with the layer names
chunked over several attributes (tf-keras's own chunking, its limit lowered so that a MobileNet
needs it), and `save` to a full-model `.h5`. Then:

- our writer's file holds what tf-keras's holds: the same weighted layers in the same order,
  the same weight names, the same arrays (tf-keras also lists its weightless layers, the
  `TFOpLambda` of hard-swish included; no reader depends on those), but for the one name the
  official files give otherwise (`OFFICIAL_NAMES`);
- every file loads into our model, which computes what the tf-keras model computes, on inputs
  that give outputs at least 1e-2 apart.

The Keras 2.4 layout of the pre-2021 MobileNetV3 `_no_top.h5` files (`write_keras24_v3_no_top`)
comes from an older Keras's MobileNetV3 code, which tf-keras 2.21 no longer has; it is not here.
"""

import helpers
import numpy as np
import pytest
import torch

import torch_mobilenets as tm

pytestmark = [pytest.mark.keras, pytest.mark.tf_keras]

CASES = {
    "v1_0.25_128": ("mobilenet", "MobileNet", dict(alpha=0.25, input_shape=(128, 128, 3))),
    "v2_0.35_96": ("mobilenet_v2", "MobileNetV2", dict(alpha=0.35, input_shape=(96, 96, 3))),
    "v3s_96": ("mobilenet_v3_small", "MobileNetV3Small", dict(input_shape=(96, 96, 3))),
    "v3l_min_96": (
        "mobilenet_v3_large",
        "MobileNetV3Large",
        dict(minimalistic=True, input_shape=(96, 96, 3)),
    ),
}


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _layer_names(f) -> list[str]:
    """tf-keras's `load_attributes_from_hdf5_group`, read independently: one attribute, or
    chunks `layer_names0`, `layer_names1`, ..."""
    if "layer_names" in f.attrs:
        return _strings(f.attrs["layer_names"])
    names, chunk = [], 0
    while f"layer_names{chunk}" in f.attrs:
        names += _strings(f.attrs[f"layer_names{chunk}"])
        chunk += 1
    return names


def _weighted(path) -> list[tuple[str, list[str], list[np.ndarray]]]:
    """(layer, weight names, arrays) of every layer with weights, in the file's order."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        found = []
        for name in _layer_names(group):
            weight_names = _strings(group[name].attrs["weight_names"])
            if weight_names:
                arrays = [np.asarray(group[name][w]) for w in weight_names]
                found.append((name, weight_names, arrays))
        return found


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """A Keras 3 model with trained-like weights, its tf-keras twin, and the files of both."""
    kr = helpers.keras_reference()
    import tf_keras
    from tf_keras.src.saving.legacy import hdf5_format

    family, keras_class, kwargs = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    keras3 = kr.build_keras(family, **kwargs)
    keras2 = getattr(tf_keras.applications, keras_class)(
        weights=None, classifier_activation=None, **kwargs
    )
    keras3_weights = keras3.get_weights()
    assert [w.shape for w in keras2.get_weights()] == [w.shape for w in keras3_weights]
    keras2.set_weights(keras3_weights)
    files = {"weights": folder / "real.h5", "chunked": folder / "chunked.h5"}
    keras2.save_weights(files["weights"])
    limit = hdf5_format.HDF5_OBJECT_HEADER_LIMIT
    hdf5_format.HDF5_OBJECT_HEADER_LIMIT = 512  # so a MobileNet's layer names need chunks
    try:
        keras2.save_weights(files["chunked"])
    finally:
        hdf5_format.HDF5_OBJECT_HEADER_LIMIT = limit
    files["full"] = folder / "full.h5"
    keras2.save(files["full"], save_format="h5")
    files["ours"] = kr.write_keras_file(keras3, folder / "ours", "keras2_h5", family=family)
    return request.param, family, kwargs, keras2, files


# The one name our writer gives otherwise, on purpose: it writes the official files' layout,
# and keras-applications' mobilenet_v2.py, which wrote the official V2 files, called the Dense
# top "Logits"; tf-keras later renamed it "predictions".
OFFICIAL_NAMES = {"mobilenet_v2": {"predictions": "Logits"}}


def _as_official(family, weighted):
    renames = OFFICIAL_NAMES.get(family, {})
    found = []
    for layer, weight_names, arrays in weighted:
        new = renames.get(layer, layer)
        found.append((new, [new + w[len(layer) :] for w in weight_names], arrays))
    return found


def test_our_keras2_writer_writes_what_tf_keras_writes(case):
    name, family, _, _, files = case
    import h5py

    with h5py.File(files["weights"], "r") as f:
        assert _strings([f.attrs["keras_version"]]) == ["2.21.0"]  # really tf-keras's file
    real, ours = _as_official(family, _weighted(files["weights"])), _weighted(files["ours"])
    assert [(layer, weights) for layer, weights, _ in ours] == [
        (layer, weights) for layer, weights, _ in real
    ], name
    for (layer, weight_names, expected), (_, _, got) in zip(real, ours, strict=True):
        for weight, a, b in zip(weight_names, expected, got, strict=True):
            np.testing.assert_array_equal(b, a, err_msg=f"{name}: {layer}/{weight}")
    assert len(real) > 20


def test_tf_keras_chunks_its_layer_names_and_we_read_them(case):
    _, _, _, _, files = case
    import h5py

    with h5py.File(files["chunked"], "r") as f:
        chunks = sorted(key for key in f.attrs if key.startswith("layer_names"))
        assert "layer_names" not in f.attrs and len(chunks) > 1, chunks
    assert [(n, w) for n, w, _ in _weighted(files["chunked"])] == [
        (n, w) for n, w, _ in _weighted(files["weights"])
    ]
    name, family, kwargs, _, _ = case
    chunked, whole = (
        tm.FAMILIES[family](weights=files[layout], **helpers.torch_kwargs(kwargs)).state_dict()
        for layout in ("chunked", "weights")
    )
    assert chunked.keys() == whole.keys()
    assert all(torch.equal(chunked[k], whole[k]) for k in whole), name


@pytest.mark.parametrize("layout", ["weights", "full"])
def test_files_tf_keras_wrote_compute_what_tf_keras_computes(case, layout):
    name, family, kwargs, keras2, files = case
    height, width = kwargs["input_shape"][:2]
    model = tm.FAMILIES[family](
        weights=files[layout], classifier_activation=None, **helpers.torch_kwargs(kwargs)
    )
    helpers.assert_sensitive(model.eval(), _two_inputs(family, height, width), case=name)
    helpers.assert_parity(family, keras2, model, height, width, case=f"tf-keras {layout} {name}")


def test_load_model_builds_tf_keras_full_model_files_from_their_config(case):
    name, family, kwargs, keras2, files = case
    height, width = kwargs["input_shape"][:2]
    model = tm.load_model(files["full"])
    helpers.assert_parity(family, keras2, model, height, width, case=f"tf-keras load_model {name}")


def _two_inputs(family, height, width) -> torch.Tensor:
    x = torch.from_numpy(helpers.pixels(height, width, n=2, seed=5)).permute(0, 3, 1, 2)
    return helpers.PREPROCESS[family](x.contiguous())
