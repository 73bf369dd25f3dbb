"""`torch-mobilenets parity FILE [IMAGE...]`: the same weights in Keras and in PyTorch, on the same
inputs, compared output by output.

Keras builds the model the file fits (or loads a full-model `.h5` / `.keras`, or a KerasCV preset
folder) and loads the file; PyTorch builds the same model and loads the same file. Both run on
the images through Keras' own preprocessing (`load_img`, `img_to_array`, `preprocess_input`), or
on seeded images of the right range when none is given. Classifiers are compared on their
logits (the softmax of `predictions` taken off on both sides), models without the top on their
feature map, KerasCV backbones on the final map and P1..P5.

Keras is an optional dependency (`pip install 'torch-mobilenets[keras]'`), imported only here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..keras_io import build, describe_config, file_config, load_model, load_weights, read
from ..keras_io import config as model_config
from ..keras_io.checkpoints import file_spec, official_config
from ..keras_io.pairing import ARCHITECTURE_KEYS
from ..keras_io.parity import PARITY_TOLERANCE
from ..models import FAMILIES
from ..pretrained.transforms import KerasPreprocessing
from .common import (
    EXIT_BAD_INPUT,
    add_architecture_options,
    add_debug,
    fail,
    known_architecture,
    run_guarded,
)

EXIT_OUTSIDE_TOLERANCE = 1
EXIT_NO_KERAS = 4
EXIT_INTERNAL = 5  # not 1, which says the outputs differ
DEFAULT_TOLERANCE = PARITY_TOLERANCE
DEFAULT_SIZE = 224
SEEDED_IMAGES = 4
KERAS_EXTRA = "pip install 'torch-mobilenets[keras]'"
KERAS_CV_EXTRA = "pip install 'torch-mobilenets[keras-cv]'"
EPILOG = """\
examples:
  torch-mobilenets parity mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5
  torch-mobilenets parity my_model.keras cat.jpg dog.jpg --tol 1e-5
  torch-mobilenets parity backbone.weights.h5 --size 97 131 --json

The error of an output is max |PyTorch - Keras|; relative, that divided by max(1, max |Keras|).
Top-1 (top-5) agreement: the share of images whose best class (five best, in order) is the same.

exit codes: 0 every output within --tol (relative), 1 some output outside it, 2 usage, 3 a file
or image that cannot be read or does not fit, 4 Keras (or KerasCV, for a backbone) not
installed, 5 internal error (rerun with --debug), 130 interrupted (143 by SIGTERM)."""


class KerasUnavailable(Exception):
    """Keras, its backend or KerasCV cannot be imported; the message says what to install."""


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "parity",
        help="compare Keras and PyTorch on the same weights file",
        description=__doc__.split("\n\n")[1],
        epilog=EPILOG,
    )
    parser.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="Keras weights file (any layout), .keras, or KerasCV preset folder",
    )
    parser.add_argument("images", type=Path, nargs="*", metavar="IMAGE")
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        metavar=("ROWS", "COLS"),
        help="input size for a model the file does not fix (default 224x224)",
    )
    parser.add_argument(
        "--seeded",
        type=int,
        default=SEEDED_IMAGES,
        metavar="N",
        help=f"seeded images when no IMAGE is given (default {SEEDED_IMAGES})",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative error allowed per output (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    add_architecture_options(parser)
    add_debug(parser)
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.size is not None and len(args.size) > 2:
        args.parser.error("--size takes ROWS, or ROWS COLS")
    if importlib.util.find_spec("keras") is None:
        return fail(args, f"Keras is not installed; {KERAS_EXTRA}", EXIT_NO_KERAS)
    return run_guarded(
        args,
        _parity,
        {KerasUnavailable: EXIT_NO_KERAS, ValueError: EXIT_BAD_INPUT, OSError: EXIT_BAD_INPUT},
        internal=EXIT_INTERNAL,
    )


def _parity(args: argparse.Namespace) -> int:
    size = None
    if args.size:
        size = (args.size[0], args.size[-1])  # one number: square
    report = check(args.file, args.images, known_architecture(args), size, args.seeded, args.tol)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["within_tolerance"] else EXIT_OUTSIDE_TOLERANCE


# ------------------------------------------------------------------------------------ the check
def check(
    path: Path,
    images=(),
    known: dict | None = None,
    size: tuple | None = None,
    seeded: int = SEEDED_IMAGES,
    tolerance: float = DEFAULT_TOLERANCE,
    torch_weights: Path | None = None,
    input_shape: tuple | None = None,
) -> dict:
    """The parity report of a weights file: Keras loading `path`, PyTorch loading
    `torch_weights` (default: the same file), on `images` or `seeded` seeded ones. `known` fixes
    parts of the architecture, `input_shape` (channels first) builds both models static."""
    path = Path(path)
    keras_file = read(path)  # a bad file fails before TensorFlow starts
    # A model config is read, and refused where we must, before any file reaches Keras: Keras
    # 2 would run a Lambda's code while loading it.
    spec = file_spec(keras_file)
    if spec is not None and official_config(keras_file, spec) is None:
        return check_user_model(path, keras_file, spec, images, size, seeded, tolerance)
    config = file_config(keras_file, **(known or {}))
    keras = import_keras()
    if input_shape is not None:
        config["input_shape"] = list(input_shape)
    family = config["family"]
    if family == "mobilenet_v3_backbone":
        import_keras_cv()
    loader = "Keras: the builder, load_weights"
    if spec is not None:  # a full model of an official architecture: as Keras loads it
        keras, keras_model, loader = _keras_user_model(path, keras_file, spec)
        _drop_softmax(keras, keras_model)
    else:
        keras_model = _keras_model(keras, family, config, keras_file.layout, path, size)
    rows, cols = _input_size(keras_model, family, config, size)
    torch_config = _torch_config(keras, keras_model, config)
    torch_model = load_weights(build(torch_config), torch_weights or path).eval()

    pixels, sources = _pixels(keras, images, rows, cols, seeded)
    keras_input = _keras_preprocess(keras, family, torch_config, pixels)
    torch_input = torch.from_numpy(keras_input).permute(0, 3, 1, 2).contiguous()
    outputs = [
        _compare(name, ours, theirs)
        for name, ours, theirs in _outputs(
            keras, keras_model, torch_model, keras_input, torch_input
        )
    ]
    report: dict[str, Any] = {
        "file": str(path),
        "layout": keras_file.layout,
        "architecture": describe_config(config),
        "config": {k: config[k] for k in ARCHITECTURE_KEYS if k in config},
        "keras": loader,
        "inputs": {
            "images": sources,
            "shape": list(keras_input.shape),
            "preprocessing": _preprocessing_name(family, torch_config),
        },
        "outputs": outputs,
        "tolerance": tolerance,
        "within_tolerance": all(o["relative_difference"] <= tolerance for o in outputs),
        "versions": _versions(keras),
    }
    if images and family in FAMILIES and not FAMILIES[family].keras_cv:
        report["inputs"]["ours_vs_keras_preprocessing"] = _our_preprocessing_difference(
            torch_config, images, rows, cols, keras_input
        )
    return report


def check_user_model(
    path: Path, keras_file, spec, images, size, seeded: int, tolerance: float
) -> dict:
    """The parity report of a user's own model (`load_model`): every output, and the base's,
    on the Keras that wrote the file (tf-keras for Keras 2's files, where installed), or the
    model rebuilt in Keras 3 from its config (Keras 3 cannot reload its own full-model .h5)."""
    torch_model = load_model(path)
    keras, keras_model, loader = _keras_user_model(path, keras_file, spec)
    static = tuple(keras_model.input_shape[1:3])
    rows, cols = static if None not in static else (size or (DEFAULT_SIZE, DEFAULT_SIZE))
    pixels, sources = _pixels(keras, images, rows, cols, seeded)
    inside = _preprocesses_inside(spec)
    keras_input = pixels if inside else (pixels / np.float32(127.5) - 1).astype(np.float32)
    torch_input = torch.from_numpy(keras_input).permute(0, 3, 1, 2).contiguous()
    base = torch_model.feature_layer
    base_keras_name = torch_model.keras_names.get(base, base)
    runner = keras.Model(
        keras_model.inputs, [*keras_model.outputs, _output_of(keras_model, spec, base_keras_name)]
    )
    theirs = runner(keras_input, training=False)
    theirs = [np.asarray(t, np.float32) for t in theirs]
    with torch.inference_mode():
        ours = torch_model(torch_input)
        ours = list(ours) if isinstance(ours, tuple) else [ours]
        ours.append(torch_model.forward_layers(torch_input, [base])[base])
    names = [f"output {i}" if len(ours) > 2 else "output" for i in range(len(ours) - 1)]
    outputs = []
    for name, got, expected in zip([*names, f"base ({base_keras_name})"], ours, theirs):
        got = got.numpy()
        outputs.append(
            _compare(name, got.transpose(0, 2, 3, 1) if got.ndim == 4 else got, expected)
        )
    return {
        "file": str(path),
        "layout": keras_file.layout,
        "architecture": describe_config(torch_model.config),
        "config": {"family": model_config.SPEC_FAMILY, "name": spec.name},
        "keras": loader,
        "inputs": {
            "images": sources,
            "shape": list(keras_input.shape),
            "preprocessing": "none (the model preprocesses inside)"
            if inside
            else "pixels / 127.5 - 1 (the base's [-1, 1]; the model has no preprocessing)",
        },
        "outputs": outputs,
        "tolerance": tolerance,
        "within_tolerance": all(o["relative_difference"] <= tolerance for o in outputs),
        "versions": _versions(keras),
    }


def _output_of(keras_model, spec, name: str):
    """Layer `name`'s output in the model's own graph: a nested model's `.output` is that of
    its inner graph, so it is taken as the input of the layer that reads it."""
    reader = next((layer for layer in spec.layers if ("tensor", name) in layer.inbound), None)
    if reader is None or reader.class_name not in model_config.LAYERS:
        return keras_model.get_layer(name).output
    inputs = keras_model.get_layer(reader.name).input
    if isinstance(inputs, list | tuple):
        return inputs[[ref for _, ref in reader.inbound].index(name)]
    return inputs


def _preprocesses_inside(spec) -> bool:
    """Whether a Rescaling, Normalization or preprocess_input's arithmetic comes before the
    first weighted layer."""
    return _first_preprocessing(spec) is True


def _first_preprocessing(spec) -> bool | None:
    """True: preprocessing comes first; False: a weighted layer; None: neither (so far)."""
    for layer in spec.layers:
        if layer.class_name in model_config.MODELS:
            found = _first_preprocessing(layer.args["model"])
            if found is not None:
                return found
        elif layer.class_name in ("Rescaling", "Normalization", "Scale"):
            return True
        elif getattr(model_config.LAYERS.get(layer.class_name), "kind", "") == "weighted":
            return False
    return None


def _keras_user_model(path: Path, keras_file, spec):
    """(keras module, model, how it was loaded)."""
    if spec.keras_version == 2 and importlib.util.find_spec("tf_keras") is not None:
        import_keras()
        import tf_keras

        return (
            tf_keras,
            tf_keras.models.load_model(path, compile=False),
            (f"tf-keras {tf_keras.__version__} (Keras 2, the file's writer): load_model"),
        )
    keras = import_keras()
    if _holds_keras_cv(spec):
        import_keras_cv()  # Keras finds KerasCV's classes once KerasCV has registered them
    if keras_file.layout == "keras_archive" and spec.keras_version == 3:
        return keras, keras.models.load_model(path, compile=False), "Keras 3: load_model"
    # Keras 3 cannot reload its own full-model .h5 (its legacy loader passes the constants of
    # `x + 3.0` as layer inputs): the config, with the modules its own format records, is
    # rebuilt by Keras 3's deserializer, then the weights loaded.
    raw = _with_modules(json.loads(json.dumps(keras_file.model_config)))
    model = keras.models.model_from_json(json.dumps(raw))
    model.load_weights(str(path))
    return keras, model, f"Keras {keras.__version__}: rebuilt from the file's config, load_weights"


def _holds_keras_cv(spec) -> bool:
    return any(
        layer.class_name in model_config.KERAS_CV_CLASSES
        or (layer.class_name in model_config.MODELS and _holds_keras_cv(layer.args["model"]))
        for layer in spec.layers
    )


def _with_modules(entry: dict) -> dict:
    """A legacy config's layers with the `module` Keras 3's deserializer looks classes up in:
    models', operations' (a constant operand) and layers'."""
    class_name = entry.get("class_name")
    nodes = entry.get("inbound_nodes") or []
    constant = any(
        type(a) in (int, float) for n in nodes if isinstance(n, dict) for a in n.get("args", [])
    )
    if class_name in ("Functional", "Model", "Sequential"):
        kind = "sequential" if class_name == "Sequential" else "functional"
        entry.setdefault("module", f"keras.src.models.{kind}")
        entry.setdefault("registered_name", "Sequential" if kind == "sequential" else "Functional")
        for layer in entry["config"]["layers"]:
            _with_modules(layer)
    elif constant and class_name in model_config.OPERATIONS:
        entry.setdefault("module", "keras.src.ops.numpy")
        entry.setdefault("registered_name", class_name)
    else:
        entry.setdefault("module", "keras.layers")
    return entry


def import_keras():
    """Keras, with torch's compiler imported first: TensorFlow loaded before it segfaults at the
    first compile or optimizer step."""
    import torch._dynamo  # noqa: F401

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
    try:
        import keras
    except ImportError as error:  # Keras without its backend, say
        raise KerasUnavailable(f"Keras cannot be imported ({error}); {KERAS_EXTRA}") from None
    return keras


def import_keras_cv():
    if importlib.util.find_spec("keras_cv") is None:
        raise KerasUnavailable(
            f"the file holds a KerasCV backbone and KerasCV is not installed; {KERAS_CV_EXTRA}"
        )
    import keras_cv

    return keras_cv


def keras_application(keras, family: str, config: dict, input_shape: tuple | None):
    """The Keras model of `config` (random weights), logits rather than softmax, channels-last
    `input_shape` (None: Keras' dynamic default)."""
    builder = getattr(keras.applications, FAMILIES[family].keras_class)
    kwargs = {
        k: config[k]
        for k in ("alpha", "include_top", "classes", "depth_multiplier", "minimalistic")
        if k in config
    }
    if kwargs.get("include_top"):
        kwargs["classifier_activation"] = None
    else:
        kwargs.pop("classes", None)
    return builder(weights=None, input_shape=input_shape, **kwargs)


def _keras_model(keras, family: str, config: dict, layout: str, path: Path, size: tuple | None):
    if family == "mobilenet_v3_backbone":
        keras_cv = import_keras_cv()
        if layout == "keras_cv_preset":
            return keras_cv.models.MobileNetV3Backbone.from_preset(str(path))
        kwargs = {k: config[k] for k in config if k.startswith("stackwise_")}
        model = keras_cv.models.MobileNetV3Backbone(
            **kwargs,
            include_rescaling=config.get("include_rescaling", True),
            input_shape=_channels_last(config.get("input_shape")) or (None, None, 3),
            alpha=config.get("alpha", 1.0),
        )
    else:
        shape = _channels_last(config.get("input_shape"))
        if shape is None and config.get("include_top") and family in ("mobilenet", "mobilenet_v2"):
            rows, cols = size or (DEFAULT_SIZE, DEFAULT_SIZE)
            shape = (rows, cols, 3)  # Keras needs a static size with this top
        model = keras_application(keras, family, config, shape)
    model.load_weights(str(path))
    return model


def _drop_softmax(keras, model) -> None:
    """Logits, not probabilities: a softmax would hide differences in the logits."""
    try:
        predictions = model.get_layer("predictions")
    except ValueError:
        return
    if getattr(predictions, "activation", None) is keras.activations.softmax:
        predictions.activation = keras.activations.linear


def _channels_last(shape) -> tuple | None:
    return None if not shape else (shape[1], shape[2], shape[0])


def _input_size(keras_model, family: str, config: dict, size: tuple | None) -> tuple:
    """The size to run at: the model's static size, else `size`, else 224x224."""
    static = tuple(keras_model.input_shape[1:3])
    if None not in static:
        if size is not None and tuple(size) != static:
            raise ValueError(
                f"the model is built for {static[0]}x{static[1]} inputs; "
                f"--size {size[0]} {size[1]} does not fit it"
            )
        return static
    return tuple(size) if size else (DEFAULT_SIZE, DEFAULT_SIZE)


def _torch_config(keras, keras_model, config: dict) -> dict:
    """Our builder's arguments for the model Keras runs: the same static shape (or dynamic), the
    same preprocessing layers, logits."""
    family = config["family"]
    config = dict(config)
    height, width, channels = keras_model.input_shape[1:]
    config["input_shape"] = (
        (channels, height, width) if height and width else (channels, None, None)
    )
    rescales = any(isinstance(layer, keras.layers.Rescaling) for layer in keras_model.layers)
    if family == "mobilenet_v3_backbone":
        config["include_rescaling"] = rescales
    elif family.startswith("mobilenet_v3"):
        config["include_preprocessing"] = rescales
    if config.get("include_top"):
        config["classifier_activation"] = None
    return config


def _pixels(keras, images, rows: int, cols: int, seeded: int) -> tuple:
    """NHWC float32 pixels in [0, 255] and where they come from: Keras' `load_img` (nearest
    resize, RGB) and `img_to_array` of each image, or seeded smooth images."""
    if images:
        arrays = []
        for image in images:
            if not Path(image).is_file():
                raise OSError(f"{image}: no such image file")
            try:
                loaded = keras.utils.load_img(str(image), target_size=(rows, cols))
            except Exception as error:  # PIL's UnidentifiedImageError and the like
                raise OSError(f"{image}: not a readable image ({error})") from error
            arrays.append(keras.utils.img_to_array(loaded))
        return np.stack(arrays).astype(np.float32), [str(i) for i in images]
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (seeded, rows // 16 + 1, cols // 16 + 1, 3))
    smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :rows, :cols]
    noisy = np.round(smooth + rng.normal(0, 16, smooth.shape))
    return np.clip(noisy, 0, 255).astype(np.float32), f"{seeded} seeded images"


def _keras_preprocess(keras, family: str, torch_config: dict, pixels: np.ndarray) -> np.ndarray:
    """What the model expects, by Keras' own functions."""
    if family == "mobilenet_v3_backbone" and not torch_config["include_rescaling"]:
        return pixels / np.float32(255)
    module = _keras_preprocessing_module(family, torch_config)
    if module is None:
        return pixels
    return np.asarray(
        getattr(keras.applications, module).preprocess_input(pixels.copy()), np.float32
    )


def _keras_preprocessing_module(family: str, torch_config: dict) -> str | None:
    """The `keras.applications` module whose preprocess_input the model's input needs, if any."""
    if (
        family.startswith("mobilenet_v3")
        and family != "mobilenet_v3_backbone"
        and not torch_config.get("include_preprocessing", True)
    ):
        return "mobilenet_v2"  # V3 without its rescaling layer takes [-1, 1]
    if family not in FAMILIES or family.startswith("mobilenet_v3"):
        return None  # the model rescales the pixels itself, or is a user's own
    return FAMILIES[family].keras_module


def _preprocessing_name(family: str, torch_config: dict) -> str:
    if family == "mobilenet_v3_backbone":
        return "none (the model rescales)" if torch_config["include_rescaling"] else "pixels / 255"
    module = _keras_preprocessing_module(family, torch_config)
    return (
        f"keras.applications.{module}.preprocess_input" if module else "none (the model rescales)"
    )


def _our_preprocessing_difference(
    torch_config: dict, images, rows: int, cols: int, keras_input: np.ndarray
) -> float:
    """max |KerasPreprocessing - Keras' pipeline| over the images: our presets, checked."""
    preset = KerasPreprocessing.for_family(
        torch_config["family"], (rows, cols), torch_config.get("include_preprocessing", True)
    )
    ours = torch.stack([preset(image) for image in images]).permute(0, 2, 3, 1).numpy()
    return float(np.abs(ours - keras_input).max())


def _outputs(keras, keras_model, torch_model, keras_input: np.ndarray, torch_input):
    """(name, ours, Keras') NHWC numpy pairs: the model's output, and a backbone's P1..P5."""
    with torch.inference_mode():
        ours = {"output": torch_model(torch_input)}
        if hasattr(torch_model, "forward_pyramid"):
            ours.update(torch_model.forward_pyramid(torch_input))
    names = ["output"]
    keras_outputs = [keras_model.output]
    levels = getattr(keras_model, "pyramid_level_inputs", None)
    if levels and hasattr(torch_model, "forward_pyramid"):
        names += list(levels)
        keras_outputs += [keras_model.get_layer(levels[level]).output for level in levels]
    runner = keras.Model(keras_model.input, keras_outputs)
    theirs = runner(keras_input, training=False)
    theirs = theirs if isinstance(theirs, (list, tuple)) else [theirs]
    output_name = (
        "logits"
        if ours["output"].dim() == 2 and torch_model.config.get("include_top")
        else "features"
    )
    for name, expected in zip(names, theirs):
        got = ours[name].numpy()
        if got.ndim == 4:
            got = got.transpose(0, 2, 3, 1)
        yield (
            (output_name if name == "output" else name),
            got,
            np.asarray(expected, np.float32),
        )


def _compare(name: str, ours: np.ndarray, theirs: np.ndarray) -> dict:
    if ours.shape != theirs.shape:
        raise ValueError(f"output {name!r}: PyTorch gives shape {ours.shape}, Keras {theirs.shape}")
    difference = float(np.abs(ours - theirs).max())
    result = {
        "output": name,
        "shape": list(ours.shape),
        "max_abs_difference": difference,
        "relative_difference": difference / max(1.0, float(np.abs(theirs).max())),
    }
    if name == "logits":
        result["top1_agreement"] = float((ours.argmax(1) == theirs.argmax(1)).mean())
        if ours.shape[1] >= 5:
            top5 = np.argsort(-ours, axis=1)[:, :5], np.argsort(-theirs, axis=1)[:, :5]
            result["top5_agreement"] = float((top5[0] == top5[1]).all(axis=1).mean())
    return result


def _versions(keras) -> dict:
    versions = {
        "torch-mobilenets": __version__,
        "torch": torch.__version__,
        "tf-keras" if keras.__name__ == "tf_keras" else "keras": keras.__version__,
        "keras backend": keras.backend.backend(),
    }
    backend = sys.modules.get(
        {"tensorflow": "tensorflow", "jax": "jax"}.get(keras.backend.backend(), "torch")
    )
    if backend is not None:
        versions[keras.backend.backend()] = backend.__version__
    if "keras_cv" in sys.modules:
        versions["keras-cv"] = importlib.metadata.version("keras-cv")
    return versions


def format_report(report: dict) -> str:
    inputs = report["inputs"]
    images = (
        inputs["images"] if isinstance(inputs["images"], str) else f"{len(inputs['images'])} images"
    )
    lines = [
        f"{report['file']}: {report['architecture']} ({report['layout']})",
        *([f"keras: {report['keras']}"] if "keras" in report else []),
        f"inputs: {images}, NHWC {tuple(inputs['shape'])}, {inputs['preprocessing']}",
    ]
    if "ours_vs_keras_preprocessing" in inputs:
        lines.append(
            "our KerasPreprocessing vs Keras' pipeline: max |difference| "
            f"{inputs['ours_vs_keras_preprocessing']:.1e}"
        )
    width = max(10, *(len(o["output"]) for o in report["outputs"]))
    header = (
        f"{'output':{width}s} {'shape':22s} {'max abs':>9s} {'relative':>9s} {'top-1':>6s} "
        f"{'top-5':>6s}"
    )
    lines += ["", header, "-" * len(header)]
    for o in report["outputs"]:
        agreement = [
            f"{o[k]:6.0%}" if k in o else f"{'-':>6s}" for k in ("top1_agreement", "top5_agreement")
        ]
        lines.append(
            f"{o['output']:{width}s} {tuple(o['shape'])!s:22s} "
            f"{o['max_abs_difference']:9.2e} {o['relative_difference']:9.2e} " + " ".join(agreement)
        )
    verdict = "within" if report["within_tolerance"] else "OUTSIDE"
    lines += [
        "",
        f"{verdict} the tolerance {report['tolerance']:g} (relative)",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]
    return "\n".join(lines)
