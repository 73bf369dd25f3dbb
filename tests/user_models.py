"""Users' own Keras models, built as the Keras and TensorFlow transfer-learning guides build them,
in Keras 3 and in Keras 2 (tf-keras), with weights like a trained model's.

`build(writer, idiom, family, ...)` returns a Keras model; `save(model, writer, layout, folder)`
writes it as users do. BatchNorm moving statistics come from a forward pass (`calibrate`) and
biases are non-zero, so that outputs depend on the input: a test asserts that two inputs give
outputs at least 1e-2 apart before it trusts a comparison.
"""

import importlib.util
import json

import numpy as np

from torch_mobilenets.models import FAMILIES

HAVE_TF_KERAS = importlib.util.find_spec("tf_keras") is not None
TF_KERAS_REASON = "needs tf-keras 2.21 (Keras 2): pip install tf-keras==2.21.0 --no-deps"

# What each writer saves, by the name users give the file.
LAYOUTS = {
    "keras3": ("keras", "h5", "weights_json"),
    "keras2": ("h5", "keras", "weights_json"),
}


def keras_module(writer):
    if writer == "keras2":
        import tf_keras

        return tf_keras
    import keras

    return keras


def base_model(writer, family, input_shape, **kwargs):
    keras = keras_module(writer)
    builder = getattr(keras.applications, FAMILIES[family].keras_class)
    return builder(input_shape=input_shape, include_top=False, weights=None, **kwargs)


def preprocess(writer, family, x):
    keras = keras_module(writer)
    return getattr(keras.applications, FAMILIES[family].keras_module).preprocess_input(x)


def build(writer, idiom, family, input_shape=(96, 96, 3), seed=0, base_kwargs=None, head=None):
    """A user's model around a `family` base:

    - "guide": augmentation, preprocess_input and the base nested in a functional model
      (`base(x, training=False)`, base frozen), pooling, Dropout and a Dense of 1 (logits);
    - "sequential": `Sequential([base, GlobalAveragePooling2D, Dense(3, softmax)])`;
    - "inlined": `Model(base.input, head(base.output))`, a Dropout and a linear Dense;
    - "head": the base nested, then `head(layers, x)`'s layers.
    """
    keras = keras_module(writer)
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    base = base_model(writer, family, input_shape, **(base_kwargs or {}))
    if idiom == "guide":
        augmentation = keras.Sequential(
            [layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)], name="augmentation"
        )
        inputs = keras.Input(input_shape)
        x = augmentation(inputs)
        x = preprocess(writer, family, x)
        x = base(x, training=False)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(0.2)(x)
        outputs = layers.Dense(1)(x)
        model = keras.Model(inputs, outputs)
        base.trainable = False
    elif idiom == "sequential":
        model = keras.Sequential(
            [
                keras.Input(input_shape),
                base,
                layers.GlobalAveragePooling2D(),
                layers.Dense(3, activation="softmax"),
            ]
        )
    elif idiom == "inlined":
        x = layers.GlobalAveragePooling2D()(base.output)
        x = layers.Dropout(0.3)(x)
        outputs = layers.Dense(3)(x)
        model = keras.Model(base.input, outputs)
    elif idiom == "head":
        inputs = keras.Input(input_shape)
        x = base(inputs)
        outputs = head(layers, x)
        model = keras.Model(inputs, outputs)
    else:
        raise ValueError(idiom)
    calibrate(writer, model, base, family, input_shape, seed, idiom)
    return model


def calibrate(writer, model, base, family, input_shape, seed, idiom):
    """BatchNorm moving statistics from the batch statistics of one forward pass, and
    non-zero biases: a trained model's weights, in effect."""
    keras = keras_module(writer)
    rng = np.random.default_rng(seed)
    height, width = input_shape[0] or 96, input_shape[1] or 96
    x = pixels(height, width, 8, seed)
    batch_norms = [
        layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    saved = [(bn, bn.momentum) for bn in batch_norms]
    trainable = model.trainable, base.trainable
    model.trainable = base.trainable = True
    for bn in batch_norms:
        bn.momentum = 0.0
    # The base reads what the model feeds it: preprocessed pixels in the guide's model.
    base_input = preprocess(writer, family, x.copy()) if idiom == "guide" else x
    base(base_input, training=True)
    model(x, training=True)
    for bn, momentum in saved:
        bn.momentum = momentum
    model.trainable, base.trainable = trainable
    for layer in _all_layers(model):
        for weight in layer.weights:
            if weight.name.split("/")[-1].split(":")[0] == "bias":
                weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def pixels(height, width, n=2, seed=0):
    """Seeded NHWC pixels in [0, 255], smooth like photos; every other one a dark, low-contrast
    picture, so that the images differ the way photos do (in brightness and contrast, not
    only in noise a pooled head averages away)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, height // 8 + 2, width // 8 + 2, 3))
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]
    noise = rng.normal(0, 20, (n, height, width, 3))
    images = np.clip(np.round(smooth + noise), 0, 255)
    images[1::2] = np.round(images[1::2] * 0.3 + 10)
    return images.astype(np.float32)


def predict(model, x):
    """Keras' outputs for NHWC `x`, inference mode, as a list of arrays."""
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, list | tuple) else [np.asarray(out)]


def save(model, writer, layout, folder):
    """The model saved as users save it; returns (path, config argument for load_model)."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "keras":
        path = folder / "model.keras"
        model.save(path)
        return path, None
    if layout == "h5":
        path = folder / "model.h5"
        model.save(path)
        return path, None
    path = folder / ("model.weights.h5" if writer == "keras3" else "weights.h5")
    model.save_weights(path)
    config = folder / "model.json"
    config.write_text(model.to_json())
    return path, config


def config_of(model):
    return json.loads(model.to_json())
