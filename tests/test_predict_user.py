"""`torch-mobilenets predict --weights FILE --labels labels.txt` on users' own models (a
3-class softmax head, a sigmoid head, a logit head, logits of several classes) and on an
official architecture trained for 2 classes, against Keras' own pipeline on the same image
file (`load_img`, `img_to_array`, the model's preprocessing)."""

import re

import numpy as np
import pytest
import user_models as um
from helpers import keras_reference
from PIL import Image

import torch_mobilenets as tm
from torch_mobilenets.cli import main

kr = keras_reference()  # skips this module, with the reason, without Keras
pytestmark = pytest.mark.keras

LINE = re.compile(r"^  (\d+)\. (.+?) +(\d+\.\d{4})$")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two PNGs of another size than the models' (resizing matters), one of them dark."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, pixels in enumerate(um.pixels(110, 150, n=2, seed=4)):
        path = folder / f"image{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def keras_input(writer, path, size, preprocess=None):
    """Keras' documented pipeline for one image file, NHWC."""
    keras = um.keras_module(writer)
    x = keras.utils.img_to_array(keras.utils.load_img(path, target_size=size))[None]
    return um.preprocess(writer, preprocess, x) if preprocess else x


def keras_outputs(writer, model, images, size, preprocess=None):
    out = np.concatenate(
        [um.predict(model, keras_input(writer, p, size, preprocess))[0] for p in images]
    )
    # Two images give outputs at least 1e-2 apart: the comparison can fail.
    assert np.abs(out[0] - out[1]).max() >= 1e-2, out
    return out


def predict(capsys, *args):
    """(exit code, {image: [(label, score), ...]}, stderr) of the command, in this process."""
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    results: dict = {}
    current = None
    for line in out.splitlines():
        match = LINE.match(line)
        if match:
            results[current].append((match[2], float(match[3])))
        else:
            current = line
            results[current] = []
    return code, results, err


def labels_file(tmp_path, *labels):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"{label}\n" for label in labels))
    return path


CLASSES = ("cat", "dog", "golden retriever")


def test_a_three_class_softmax_head(images, tmp_path, capsys):
    """Sequential([base, pooling, Dense(3, softmax)]), no preprocessing inside: the family's
    preprocess_input comes first, at the model's recorded size."""
    model = um.build(
        "keras3", "sequential", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35}
    )
    path, _ = um.save(model, "keras3", "keras", tmp_path / "model")
    expected = keras_outputs("keras3", model, images, (96, 96), "mobilenet_v2")
    labels = labels_file(tmp_path, *CLASSES)
    code, results, err = predict(capsys, *images, "--weights", path, "--labels", labels)
    assert code == 0, err
    assert err == ""  # probabilities: nothing to say
    for image, probs in zip(images, expected):
        got = results[str(image)]
        assert [name for name, _ in got] == [CLASSES[i] for i in np.argsort(-probs)]
        np.testing.assert_allclose([s for _, s in got], np.sort(probs)[::-1], atol=1e-4)
    # Without labels: the class numbers. A weights file with the model's JSON: the same.
    code, results, _ = predict(capsys, images[0], "--weights", path, "--top", "1")
    assert code == 0 and results[str(images[0])][0][0] == str(int(expected[0].argmax()))
    weights, config = um.save(model, "keras3", "weights_json", tmp_path / "weights")
    code, again, err = predict(capsys, images[0], "--weights", weights, "--config", config)
    assert code == 0 and again[str(images[0])][0] == results[str(images[0])][0], err


@pytest.mark.parametrize("writer", ["keras3", pytest.param("keras2", marks=pytest.mark.tf_keras)])
def test_a_sigmoid_head(writer, images, tmp_path, capsys):
    """Dense(1, sigmoid) on a V3 base (which rescales pixels itself): the positive class is
    the second label, its probability the sigmoid's output."""

    def head(layers, x):
        x = layers.GlobalAveragePooling2D()(x)
        return layers.Dense(1, activation="sigmoid")(x)

    model = um.build(
        writer, "head", "mobilenet_v3_small", (96, 96, 3), base_kwargs={"alpha": 0.75}, head=head
    )
    path, _ = um.save(model, writer, "h5", tmp_path / "model")
    positive = keras_outputs(writer, model, images, (96, 96))[:, 0]  # V3: pixels as they are
    labels = labels_file(tmp_path, "no defect", "defect")
    code, results, err = predict(capsys, *images, "--weights", path, "--labels", labels)
    assert code == 0, err
    for image, p in zip(images, positive):
        got = dict(results[str(image)])
        assert next(iter(got)) == ("defect" if p > 0.5 else "no defect")
        assert abs(got["defect"] - p) < 1e-4 and abs(got["no defect"] - (1 - p)) < 1e-4


def test_a_logit_head_with_preprocessing_inside(images, tmp_path, capsys):
    """The transfer-learning guide's model: augmentation and preprocess_input inside, one
    linear Dense: raw pixels in, the logit's sigmoid out, said on stderr."""
    model = um.build("keras3", "guide", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35})
    path, _ = um.save(model, "keras3", "keras", tmp_path / "model")
    logits = keras_outputs("keras3", model, images, (96, 96))[:, 0]
    labels = labels_file(tmp_path, "cat", "dog")
    code, results, err = predict(capsys, *images, "--weights", path, "--labels", labels)
    assert code == 0, err
    assert "outputs one logit: its sigmoid is the positive class's score" in err
    for image, logit in zip(images, logits):
        p = 1 / (1 + np.exp(-logit))
        got = dict(results[str(image)])
        assert next(iter(got)) == ("dog" if logit > 0 else "cat")
        assert abs(got["dog"] - p) < 1e-4


def test_logits_of_several_classes_get_their_softmax(images, tmp_path, capsys):
    model = um.build("keras3", "inlined", "mobilenet", (128, 128, 3), base_kwargs={"alpha": 0.25})
    path, _ = um.save(model, "keras3", "h5", tmp_path / "model")
    logits = keras_outputs("keras3", model, images, (128, 128), "mobilenet")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    code, results, err = predict(
        capsys, *images, "--weights", path, "--labels", labels_file(tmp_path, *CLASSES)
    )
    assert code == 0, err
    assert "outputs logits: the scores are their softmax" in err
    for image, p in zip(images, probs):
        got = results[str(image)]
        assert got[0][0] == CLASSES[int(p.argmax())]
        np.testing.assert_allclose([s for _, s in got], np.sort(p)[::-1], atol=1e-4)


def test_labels_that_do_not_fit_the_head(images, tmp_path, capsys):
    model = um.build(
        "keras3", "sequential", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35}
    )
    path, _ = um.save(model, "keras3", "keras", tmp_path / "model")
    code, results, err = predict(
        capsys, images[0], "--weights", path, "--labels", labels_file(tmp_path, "cat", "dog")
    )
    assert code == 3 and results == {} and err.count("\n") == 1
    assert "2 labels for a head of 3 outputs: the labels file must hold 3" in err
    # A head of one output takes two labels, the negative class first.
    guide = um.build("keras3", "guide", "mobilenet_v2", (96, 96, 3), base_kwargs={"alpha": 0.35})
    binary, _ = um.save(guide, "keras3", "keras", tmp_path / "binary")
    code, _, err = predict(
        capsys, images[0], "--weights", binary, "--labels", labels_file(tmp_path, *CLASSES)
    )
    assert code == 3 and "3 labels for a head of 1 output (a sigmoid: two labels" in err
    # A labels file is text, one label per line, bounded.
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\n\ndog\nbird\n")
    code, _, err = predict(capsys, images[0], "--weights", path, "--labels", bad)
    assert code == 3 and "line 2 is empty" in err
    bad.write_bytes(b"x" * ((1 << 22) + 1))
    code, _, err = predict(capsys, images[0], "--weights", path, "--labels", bad)
    assert code == 3 and "over 4194304 bytes" in err
    # A model that ends at a feature map has no classes.
    no_top, _ = um.save(
        um.build(
            "keras3",
            "head",
            "mobilenet_v2",
            (96, 96, 3),
            base_kwargs={"alpha": 0.35},
            head=lambda layers, x: x,
        ),
        "keras3",
        "keras",
        tmp_path / "features",
    )
    code, _, err = predict(capsys, images[0], "--weights", no_top)
    assert code == 3 and "predicting needs a classifier head" in err


@pytest.mark.parametrize("layout", ["keras2_h5", "keras_zip"])
def test_an_official_architecture_with_two_classes(layout, images, tmp_path, capsys):
    """keras.applications.MobileNetV2(classes=2): weights only (the size from --size, the
    classes from the file), or saved whole (its own size)."""
    model = kr.build_keras("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35, classes=2)
    path = kr.write_keras_file(model, tmp_path / layout, layout, family="mobilenet_v2")
    expected = keras_outputs("keras3", model, images, (96, 96), "mobilenet_v2")
    size = ["--size", "96"] if layout == "keras2_h5" else []
    labels = labels_file(tmp_path, "cat", "dog")
    code, results, err = predict(capsys, *images, "--weights", path, "--labels", labels, *size)
    assert code == 0, err
    for image, probs in zip(images, expected):
        got = dict(results[str(image)])
        assert next(iter(got)) == ("cat", "dog")[int(probs.argmax())]
        np.testing.assert_allclose([got["cat"], got["dog"]], probs, atol=1e-4)
    # Converted, the same.
    converted = tmp_path / "converted.safetensors"
    tm.keras_io.convert(path, converted)
    code, again, err = predict(capsys, *images, "--weights", converted, "--labels", labels, *size)
    assert code == 0 and again == results, err
