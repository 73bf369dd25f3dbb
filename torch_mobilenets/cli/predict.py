"""`torch-mobilenets predict IMAGE...`: the ImageNet top classes of images.

Loads the model (the official Keras weights by default, or `--weights FILE`: a Keras weights file
or a converted `.safetensors`), preprocesses each image as Keras does (`load_img` at the model's
size, then `preprocess_input`) and prints the top classes with Keras' `decode_predictions` labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import FAMILIES
from ..keras_io import WeightsFileError, file_config, read, read_safetensors
from ..pretrained.download import DownloadError
from ..pretrained.imagenet import decode_predictions
from ..pretrained.registry import list_weights
from ..pretrained.transforms import KerasPreprocessing
from .common import EXIT_BAD_INPUT, add_debug, run_guarded

EXIT_DOWNLOAD = 4

EPILOG = """examples:
  torch-mobilenets predict elephant.jpg                          # MobileNetV2, official weights
  torch-mobilenets predict a.png b.png --model mobilenet_v3_small --top 3
  torch-mobilenets predict cat.jpg --model mobilenet --weights fine_tuned.safetensors

exit codes: 0 done, 1 internal error (rerun with --debug), 2 usage, 3 unreadable image or
weights, 4 download failure, 130 interrupted (143 by SIGTERM)."""


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "predict",
        help="ImageNet top classes of images",
        description=__doc__.split("\n\n")[1],
        epilog=EPILOG,
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    classifiers = list(dict.fromkeys(c.family for c in list_weights()))
    parser.add_argument("--model", default="mobilenet_v2", choices=classifiers)
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default: the official file, downloaded once) or a "
        "Keras weights file / converted .safetensors",
    )
    parser.add_argument(
        "--alpha", type=float, help="width multiplier (default 1.0, or read from --weights FILE)"
    )
    parser.add_argument(
        "--minimalistic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="V3 minimalistic variant (default: off, or read from --weights FILE)",
    )
    parser.add_argument(
        "--size",
        type=int,
        help="square input size (default: 224; V1/V2 official files exist at 128..224, V2 also 96)",
    )
    parser.add_argument("--top", type=int, default=5, help="classes to print per image")
    add_debug(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # ValueError: weights that do not fit; OSError: unreadable images (DownloadError first).
    return run_guarded(
        args,
        _predict,
        {DownloadError: EXIT_DOWNLOAD, ValueError: EXIT_BAD_INPUT, OSError: EXIT_BAD_INPUT},
    )


def _predict(args: argparse.Namespace) -> int:
    model = build_model(args.model, args.weights, args.alpha, args.minimalistic, args.size)
    results = predict(model, args.images, args.top)
    for path, result in zip(args.images, results):
        print(path)
        for rank, (wnid, name, score) in enumerate(result, start=1):
            print(f"  {rank}. {wnid} {name:30s} {score:.4f}")
    return 0


def build_model(family: str, weights: str, alpha=None, minimalistic=None, size=None):
    """The classifier to predict with: `family` at the given or the weights file's width."""
    kwargs = {}
    if weights != "imagenet" and (alpha is None or minimalistic is None):
        kwargs.update(_file_architecture(Path(weights), family))
    if alpha is not None:
        kwargs["alpha"] = alpha
    if minimalistic is not None:
        kwargs["minimalistic"] = minimalistic
    if not family.startswith("mobilenet_v3"):
        kwargs.pop("minimalistic", None)
    if size is not None:
        kwargs["input_shape"] = (3, size, size)
    return FAMILIES[family](weights=weights, **kwargs).eval()


def _file_architecture(path: Path, family: str) -> dict:
    """Width (and V3 minimalistic) of a weights file's classifier, so --alpha can be left out."""
    if path.suffix == ".safetensors":
        config = read_safetensors(path)[1] or {}
    else:
        config = file_config(read(path), family=family)
    if config.get("include_top") is False:
        raise WeightsFileError(
            f"{path}: holds a model without its classifier (no top); predicting needs the top"
        )
    return {k: config[k] for k in ("alpha", "minimalistic") if k in config}


def predict(model, images, top: int = 5) -> list:
    """Per image, the `top` (wnid, name, score) of the model, as Keras' decode_predictions."""
    preprocess = KerasPreprocessing.for_model(model)
    batch = torch.stack([preprocess(image) for image in images])
    with torch.no_grad():
        return decode_predictions(model(batch), top=top)
