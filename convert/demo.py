"""The main job end to end, offline: Keras MobileNets -> official-layout .h5 -> `python -m convert`
-> PyTorch, compared with Keras.

    python -m convert.demo                      # seeded random weights, all four families
    python -m convert.demo --weights FILE.h5    # a real (official) Keras file instead

Prints one row per model: the file, max |logit difference| against Keras, and top-1 agreement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter

OUTPUT = Path("demo-output")
# One model per family at the official files' configurations, logits rather than softmax.
MODELS = [
    ("mobilenet", dict(alpha=1.0, input_shape=(224, 224, 3))),
    ("mobilenet_v2", dict(alpha=1.0, input_shape=(224, 224, 3))),
    ("mobilenet_v3_small", dict(alpha=1.0)),
    ("mobilenet_v3_large", dict(alpha=1.0)),
]
IMAGES = 8


def images(n=IMAGES, size=224, seed=0):
    """Seeded smooth pixel images in [0, 255], NHWC."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, size // 16, size // 16, 3))
    smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)
    return np.clip(smooth + rng.normal(0, 16, smooth.shape), 0, 255).astype(np.float32)


def compare(family, keras_model, torch_model, x):
    """(max |logit difference|, relative to max(1, max |Keras logit|), top-1 agreement)."""
    import keras

    import torch_mobilenets as tm

    keras_input, torch_input = x.copy(), torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    if family in ("mobilenet", "mobilenet_v2"):
        keras_input = keras.applications.mobilenet_v2.preprocess_input(keras_input)
        torch_input = tm.mobilenet_v2.preprocess_input(torch_input)
    expected = np.asarray(keras_model(keras_input, training=False))
    with torch.no_grad():
        got = torch_model.eval()(torch_input).numpy()
    difference = float(np.abs(got - expected).max())
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    return difference, difference / max(1.0, float(np.abs(expected).max())), agreement


def convert_with_cli(src: Path) -> Path:
    dst = OUTPUT / (src.stem + ".safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "convert", str(src), str(dst), "--force"],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(f"python -m convert {src} {dst} failed:\n{result.stderr}")
    return dst


def seeded_rows():
    import torch_mobilenets as tm
    from convert import keras_reference as kr

    for family, kwargs in MODELS:
        keras_model = kr.build_keras(family, seed=0, classifier_activation=None, **kwargs)
        src = kr.write_keras_file(keras_model, OUTPUT, "keras2_h5", family=family)
        dst = convert_with_cli(src)
        torch_model = tm.FAMILIES[family](
            weights=dst, classifier_activation=None, **_channels_first(kwargs)
        )
        yield family, src.name, compare(family, keras_model, torch_model, images())


def official_rows(path: Path):
    """A real Keras file: convert it, rebuild the Keras model it fits, compare."""
    import keras

    import torch_mobilenets as tm
    from torch_mobilenets.keras_io import file_config, read
    from torch_mobilenets.models import FAMILIES

    config = file_config(read(path))
    dst = convert_with_cli(path)
    family = config.pop("family")
    config.pop("input_shape", None)
    keras_builder = getattr(keras.applications, FAMILIES[family].keras_class)
    shape = (224, 224, 3) if family in ("mobilenet", "mobilenet_v2") else None
    keras_model = keras_builder(
        weights=None, input_shape=shape, classifier_activation=None, **config
    )
    keras_model.load_weights(path)
    torch_model = tm.FAMILIES[family](
        weights=dst, classifier_activation=None, **_channels_first(dict(config, input_shape=shape))
    )
    yield family, path.name, compare(family, keras_model, torch_model, images())


def _channels_first(kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("input_shape"):
        height, width, channels = kwargs["input_shape"]
        kwargs["input_shape"] = (channels, height, width)
    return kwargs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert.demo", description=__doc__)
    parser.add_argument("--weights", type=Path, help="a Keras .h5/.keras file to convert")
    args = parser.parse_args(argv)
    OUTPUT.mkdir(exist_ok=True)
    import keras
    import tensorflow as tf

    print(
        f"torch {torch.__version__}, keras {keras.__version__}, tensorflow {tf.__version__}; "
        f"{IMAGES} seeded 224x224 images; files in {OUTPUT}/\n"
    )
    header = f"{'model':20s} {'file':42s} {'max |dlogit|':>12s} {'relative':>9s} {'top-1':>6s}"
    print(header)
    print("-" * len(header))
    start = time.time()
    rows = official_rows(args.weights) if args.weights else seeded_rows()
    worst = 0.0
    for family, name, (difference, relative, agreement) in rows:
        worst = max(worst, relative)
        print(
            f"{family:20s} {name:42s} {difference:12.2e} {relative:9.2e} {agreement:6.0%}",
            flush=True,
        )
    print(f"\nworst relative difference {worst:.2e} (tolerance 1e-4), {time.time() - start:.0f} s")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
