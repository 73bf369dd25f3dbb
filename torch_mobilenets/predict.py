"""python -m torch_mobilenets.predict IMAGE [IMAGE ...] --model mobilenet_v2: ImageNet top-5.

Loads the model (the official Keras weights by default, or `--weights FILE`: a Keras weights file
or a converted `.safetensors`), preprocesses each image as Keras does (`load_img` at the model's
size, then `preprocess_input`) and prints the top classes with Keras' `decode_predictions` labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_DOWNLOAD = 4


def parse_args(argv):
    from .weights import list_weights

    parser = argparse.ArgumentParser(
        prog="python -m torch_mobilenets.predict", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 success, 2 usage error, 3 unreadable image or weights, "
               "4 download failure.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    classifiers = list(dict.fromkeys(c.family for c in list_weights()))
    parser.add_argument("--model", default="mobilenet_v2", choices=classifiers)
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' (default: the official file, downloaded once) or a "
                             "Keras weights file / converted .safetensors")
    parser.add_argument("--alpha", type=float,
                        help="width multiplier (default 1.0, or read from --weights FILE)")
    parser.add_argument("--minimalistic", action=argparse.BooleanOptionalAction, default=None,
                        help="V3 minimalistic variant (default: off, or read from --weights FILE)")
    parser.add_argument("--size", type=int,
                        help="square input size (default: 224; V1/V2 official files exist at "
                             "128..224, V2 also 96)")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def build_model(family: str, weights: str, alpha=None, minimalistic=None, size=None):
    """The classifier to predict with: `family` at the given or the weights file's width."""
    from . import FAMILIES

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
    from .conversion import file_config, read, read_safetensors
    from .keras_files import WeightsFileError

    if path.suffix == ".safetensors":
        config = read_safetensors(path)[1] or {}
    else:
        config = file_config(read(path), family=family)
    if config.get("include_top") is False:
        raise WeightsFileError(f"{path}: holds a model without its classifier (no top); "
                               "predicting needs the top")
    return {k: config[k] for k in ("alpha", "minimalistic") if k in config}


def predict(model, images, top: int = 5) -> list:
    """Per image, the `top` (wnid, name, score) of the model, as Keras' decode_predictions."""
    import torch

    from .imagenet import decode_predictions
    from .transforms import KerasPreprocessing

    preprocess = KerasPreprocessing.for_model(model)
    batch = torch.stack([preprocess(image) for image in images])
    with torch.no_grad():
        return decode_predictions(model(batch), top=top)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .download import DownloadError

    try:
        model = build_model(args.model, args.weights, args.alpha, args.minimalistic, args.size)
        results = predict(model, args.images, args.top)
    except DownloadError as error:
        if args.debug:
            raise
        print(f"predict: error: {error}", file=sys.stderr)
        return EXIT_DOWNLOAD
    except (ValueError, OSError) as error:  # weights that do not fit, unreadable images
        if args.debug:
            raise
        print(f"predict: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path, result in zip(args.images, results):
        print(path)
        for rank, (wnid, name, score) in enumerate(result, start=1):
            print(f"  {rank}. {wnid} {name:30s} {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
