"""The way back for users' own Keras models: loaded here, fine-tuned, saved, and written back to
Keras in the format of the user's original file (`save_keras_like`, `convert --to keras
--like`), for files Keras 3 and Keras 2 (tf-keras) wrote in each layout they save; Keras opens
what comes back and computes what our model computes, and not what the original did.
"""

import json
import zipfile

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import user_models as um
from helpers import keras_reference

import torch_mobilenets as tm
from torch_mobilenets.keras_io import GraphMismatchError, WriteBackUsageError, save_keras_like

keras_reference()  # skips this module, with the reason, without Keras
pytestmark = pytest.mark.keras

WRITERS = ["keras3", pytest.param("keras2", marks=pytest.mark.tf_keras)]
LAYOUTS = ["keras", "h5", "weights_json"]
SHAPE = (96, 96, 3)
TOLERANCE = 1e-4  # relative, Keras' outputs against ours
MOVED = 1e-2  # relative: the fine-tuned outputs against the original model's
# What save_keras_like reports writing, by the layout the user saved.
WRITTEN = {
    ("keras3", "keras"): "keras_archive",
    ("keras3", "h5"): "legacy_full_model_h5",
    ("keras3", "weights_json"): "keras3_weights_h5",
    ("keras2", "keras"): "keras_archive",
    ("keras2", "h5"): "legacy_full_model_h5",
    ("keras2", "weights_json"): "legacy_h5",
}


def head(layers, x):
    """A user's head on the nested base: a convolution, BatchNorm, pooling, Dropout, logits."""
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="head_conv")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dropout(0.2, name="head_dropout")(x)
    return layers.Dense(3, name="classes")(x)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """writer -> (the user's Keras model, {layout: (file, config for load_model)}), built and
    saved once per writer."""
    cache: dict = {}

    def get(writer):
        if writer not in cache:
            keras_model = um.build(
                writer, "head", "mobilenet_v2", SHAPE, base_kwargs={"alpha": 0.35}, head=head
            )
            folder = tmp_path_factory.mktemp(f"original_{writer}")
            files = {
                layout: um.save(keras_model, writer, layout, folder / layout) for layout in LAYOUTS
            }
            cache[writer] = keras_model, files
        return cache[writer]

    return get


def ours(model, x_nhwc):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def relative_error(got, expected):
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


def fine_tune(model, seed=0):
    """Two SGD steps on every trainable weight (BatchNorm statistics move too), then noise on a
    base convolution and the classifier: trained weights, everywhere in the model."""
    torch.manual_seed(seed)
    x = torch.from_numpy(um.pixels(96, 96, 8, seed=seed + 1)).permute(0, 3, 1, 2).contiguous()
    x = x / 127.5 - 1  # the base's input range (this model has no preprocessing inside)
    labels = torch.arange(8) % 3
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    model.eval()
    base = next(m for m in model.children() if isinstance(m, tm.KerasModel))
    with torch.no_grad():
        for module in (base.get_submodule(base.layer_names[0]), model.get_classifier()):
            module.weight.add_(torch.randn_like(module.weight) * module.weight.std())
    return model


def output_name(path):
    """`tuned` with the suffix of the user's file: Keras needs `.keras`, `.weights.h5`,
    `.h5`."""
    return "tuned" + path.name[path.name.index(".") :]


def keras_load(writer, layout, path, config):
    """What the user's Keras does with the file: load_model, or the model rebuilt from its JSON
    and load_weights."""
    keras = um.keras_module(writer)
    if layout == "weights_json":
        keras_model = keras.models.model_from_json(config.read_text())
        keras_model.load_weights(str(path))
        return keras_model
    return keras.models.load_model(path, compile=False)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("writer", WRITERS)
def test_a_fine_tuned_model_goes_back_into_its_own_file(writer, layout, originals, tmp_path):
    keras_model, files = originals(writer)
    path, config = files[layout]
    x = um.pixels(96, 96)
    before = um.predict(keras_model, x)[0]
    model = fine_tune(tm.load_model(path, config=config))
    checkpoint = tmp_path / "tuned.safetensors"
    tm.save_checkpoint(model, checkpoint)
    model = tm.load_model(checkpoint)  # as a user picks up the fine-tuned model later
    dst = tmp_path / output_name(path)

    assert save_keras_like(model, dst, like=path, config=config) == WRITTEN[writer, layout]

    back = um.predict(keras_load(writer, layout, dst, config), x)[0]
    got = ours(model, x)
    assert np.abs(back[0] - back[1]).max() / max(1.0, np.abs(back).max()) >= MOVED
    error, moved = relative_error(got, back), relative_error(back, before)
    print(f"{writer} {layout}: relative error {error:.2e}, moved {moved:.2e}")
    assert error <= TOLERANCE, f"{writer} {layout}: Keras' outputs {error:.3g} from ours"
    assert moved >= MOVED, f"{writer} {layout}: the written weights are the original's"
    _assert_same_structure(path, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tuned.safetensors", dst.name])


def _assert_same_structure(original, written):
    """Everything but the weights as it was: the archive's other entries byte for byte, the
    HDF5 file's groups, datasets (shapes, dtypes) and attributes."""
    if original.suffix == ".keras":
        with zipfile.ZipFile(original) as a, zipfile.ZipFile(written) as b:
            assert [i.filename for i in a.infolist()] == [i.filename for i in b.infolist()]
            for name in ("config.json", "metadata.json"):
                assert a.read(name) == b.read(name), name
            return
    assert _hdf5_outline(original) == _hdf5_outline(written)


def _hdf5_outline(path):
    outline = {}
    with h5py.File(path, "r") as f:

        def visit(name, node):
            attributes = {k: np.asarray(v).tolist() for k, v in node.attrs.items()}
            kind = (node.shape, str(node.dtype)) if isinstance(node, h5py.Dataset) else "group"
            outline[name] = (kind, json.dumps(attributes, sort_keys=True, default=str))

        f.visititems(visit)
        outline["/"] = json.dumps({k: np.asarray(v).tolist() for k, v in f.attrs.items()})
    return outline


# ------------------------------------------------------------------------------- refusals
def test_another_graph_is_refused_and_nothing_is_written(originals, tmp_path):
    """A model is only written like its own graph: another architecture, the same one with a
    resized classifier, or an official model into a user's file, are refused naming the file and
    the layer, and leave nothing behind."""
    _, files = originals("keras3")
    path, _ = files["keras"]
    model = tm.load_model(path)
    other = um.build("keras3", "sequential", "mobilenet", SHAPE, base_kwargs={"alpha": 0.25})
    other_path, _ = um.save(other, "keras3", "keras", tmp_path / "other")
    dst = tmp_path / "tuned.keras"
    with pytest.raises(GraphMismatchError, match=r"layer '[^']+' \(\w+\): ") as caught:
        save_keras_like(model, dst, like=other_path)
    assert str(other_path) in str(caught.value) and "graph is not this file's" in str(caught.value)
    model.reset_classifier(7)
    with pytest.raises(GraphMismatchError, match=r"layer 'classes' \(Dense\): ") as caught:
        save_keras_like(model, dst, like=path)
    assert str(path) in str(caught.value)
    official = tm.MobileNetV2(weights=None, alpha=0.35, input_shape=(3, 96, 96), classes=3)
    with pytest.raises(GraphMismatchError, match="holds a user's own graph"):
        save_keras_like(official, dst, like=path)
    # a weights file without its JSON, an output Keras would not open
    weights, config = files["weights_json"]
    with pytest.raises(ValueError, match=r"records no model config: pass the model's JSON"):
        save_keras_like(tm.load_model(path), tmp_path / "tuned.weights.h5", like=weights)
    with pytest.raises(WriteBackUsageError, match=r"only under a name ending in \.keras"):
        save_keras_like(tm.load_model(path), tmp_path / "tuned.h5", like=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_an_official_model_saved_whole_goes_back_into_its_file(tmp_path):
    keras = um.keras_module("keras3")
    keras.utils.set_random_seed(3)
    keras_model = keras.applications.MobileNetV3Small(
        input_shape=SHAPE, weights=None, alpha=0.75, classes=4, classifier_activation=None
    )
    um.calibrate("keras3", keras_model, keras_model, "mobilenet_v3_small", SHAPE, 3, "inlined")
    path = tmp_path / "official.keras"
    keras_model.save(path)
    checkpoint = tmp_path / "official.safetensors"
    assert tm.keras_io.convert(path, checkpoint)["family"] == "mobilenet_v3_small"
    model = tm.load_model(checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2 * p.abs().mean())
    dst = tmp_path / "tuned.keras"
    save_keras_like(model, dst, like=path)
    x = um.pixels(96, 96)
    back = um.predict(keras.models.load_model(dst, compile=False), x)[0]
    assert relative_error(ours(model, x), back) <= TOLERANCE
    assert relative_error(back, um.predict(keras_model, x)[0]) >= MOVED


# ---------------------------------------------------------------------------- command line
def test_the_command_line_writes_a_users_model_back_like_its_file(originals, tmp_path, capsys):
    from torch_mobilenets.cli import main

    keras_model, files = originals("keras3")
    path, _ = files["keras"]
    checkpoint = tmp_path / "tuned.safetensors"
    tm.save_checkpoint(fine_tune(tm.load_model(path), seed=1), checkpoint)
    model = tm.load_model(checkpoint)
    capsys.readouterr()

    # a user's graph without --like: a usage error saying what to give
    assert main(["convert", "--to", "keras", str(checkpoint), str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err
    assert "--like ORIGINAL" in err and len(err.strip().splitlines()) == 1
    # an output name Keras would not open as ORIGINAL's format
    argv = ["convert", "--to", "keras", str(checkpoint), str(tmp_path / "out.h5")]
    assert main([*argv, "--like", str(path)]) == 2
    assert "ending in .keras" in capsys.readouterr().err
    assert not (tmp_path / "out.h5").exists()

    dst = tmp_path / "out.keras"
    assert main(["convert", "--to", "keras", str(checkpoint), str(dst), "--like", str(path)]) == 0
    assert f"like {path}" in capsys.readouterr().out
    x = um.pixels(96, 96)
    back = um.predict(um.keras_module("keras3").models.load_model(dst, compile=False), x)[0]
    assert relative_error(ours(model, x), back) <= TOLERANCE
    assert relative_error(back, um.predict(keras_model, x)[0]) >= MOVED

    # a weights file with its JSON (--config), read back here
    weights, config = files["weights_json"]
    out = tmp_path / "out.weights.h5"
    argv = ["convert", "--to", "keras", str(checkpoint), str(out), "--like", str(weights)]
    assert main([*argv, "--config", str(config)]) == 0
    again = tm.load_model(out, config=config)
    np.testing.assert_array_equal(ours(again, x), ours(model, x))
    # and --like goes with --to keras only
    with pytest.raises(SystemExit) as caught:
        main(["convert", str(path), str(tmp_path / "x.safetensors"), "--like", str(path)])
    assert caught.value.code == 2
