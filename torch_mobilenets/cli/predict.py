"""`torch-mobilenets predict IMAGE...`: the top classes of images.

Loads the model (the official Keras ImageNet weights by default, or `--weights FILE`: any file
`load_model` takes, your own Keras model included), preprocesses each image as Keras does
(`load_img` at the model's size, then the family's `preprocess_input` unless the model scales
pixels itself) and prints the top classes: ImageNet's names on a 1000-class head, the names of
`--labels FILE` (one per line) on any head, class numbers otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from .. import FAMILIES
from ..keras_io import (
    WeightsFileError,
    build,
    file_config,
    load_model,
    load_weights,
    read,
    read_safetensors,
)
from ..keras_io.config import is_model_config
from ..models.heads import output_activation
from ..models.preprocessing import preprocesses_input
from ..nn.graph import KerasModel
from ..pretrained.download import DownloadError
from ..pretrained.imagenet import decode_predictions
from ..pretrained.registry import list_weights
from ..pretrained.transforms import KerasPreprocessing
from .common import EXIT_BAD_INPUT, add_debug, run_guarded

EXIT_DOWNLOAD = 4
DEFAULT_FAMILY = "mobilenet_v2"
DEFAULT_SIZE = 224  # the size of a model the file does not fix
IMAGENET_CLASSES = 1000
# A labels file is read whole, up to these sizes.
MAX_LABELS_BYTES = 1 << 22
MAX_LABELS = 1 << 16

EPILOG = """examples:
  torch-mobilenets predict elephant.jpg                          # MobileNetV2, official weights
  torch-mobilenets predict a.png b.png --model mobilenet_v3_small --top 3
  torch-mobilenets predict cat.jpg --weights my_classifier.keras --labels labels.txt
  torch-mobilenets predict cat.jpg --weights weights.h5 --config model.json --labels labels.txt

--weights FILE: a .keras archive or full-model .h5 (your own model, or an official one), a
weights-only file of an official architecture (any number of classes), a weights file of your
own model with --config, or a .safetensors from `convert` or save_checkpoint. A head of one
output (sigmoid, or a logit) is read as the probability of the positive class: give two labels,
the negative class first. A head of logits gets their softmax.

exit codes: 0 done, 1 internal error (rerun with --debug), 2 usage, 3 unreadable image, weights
or labels, or labels that do not fit the head, 4 download failure, 130 interrupted (143 by
SIGTERM)."""


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "predict",
        help="top classes of images (ImageNet, or your model's labels)",
        description=__doc__.split("\n\n")[1],
        epilog=EPILOG,
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    classifiers = list(dict.fromkeys(c.family for c in list_weights()))
    parser.add_argument(
        "--model",
        choices=classifiers,
        help=f"the family (default {DEFAULT_FAMILY}; with --weights FILE read from the file, "
        "this only settles what a weights-only file cannot tell)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default: the official file, downloaded once) or a file: a Keras "
        "model or weights file, or a converted .safetensors",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="JSON",
        help="the model's config (model.to_json()) for a weights file of your own model",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one per line, in the order of the head's outputs (two for a head "
        "of one sigmoid output or logit: the negative class, then the positive)",
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
        help="square input size (default: the model's own, else 224; V1/V2 official files "
        "exist at 128..224, V2 also 96)",
    )
    parser.add_argument("--top", type=int, default=5, help="classes to print per image")
    add_debug(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # ValueError: weights or labels that do not fit; OSError: unreadable files (DownloadError
    # first).
    return run_guarded(
        args,
        _predict,
        {DownloadError: EXIT_DOWNLOAD, ValueError: EXIT_BAD_INPUT, OSError: EXIT_BAD_INPUT},
    )


def _predict(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be at least 1; got {args.top}")
    if args.config is not None and args.weights == "imagenet":
        raise ValueError("--config goes with --weights FILE (a weights file of your own model)")
    model = build_model(
        args.model, args.weights, args.alpha, args.minimalistic, args.size, args.config
    )
    labels = read_labels(args.labels) if args.labels is not None else None
    head = Head.of(model, labels, args.weights)
    if head.note:
        print(f"{args.prog}: note: {head.note}", file=sys.stderr)
    results = predict(model, args.images, args.top, head, args.size)
    for path, result in zip(args.images, results):
        print(path)
        for rank, (name, score) in enumerate(result, start=1):
            print(f"  {rank}. {name:30s} {score:.4f}")
    return 0


# ------------------------------------------------------------------------------- the model
def build_model(
    family: str | None,
    weights: str,
    alpha=None,
    minimalistic=None,
    size=None,
    config=None,
) -> KerasModel:
    """The classifier to predict with, in eval mode: the official `family` (at `alpha`,
    `minimalistic`, `size`), or the model in the file `weights` (`config`: its model.to_json()
    for a weights file of a user's model). An official architecture is rebuilt at `size`; a
    single-output official top computes its logit (a softmax of one output is always 1)."""
    if weights == "imagenet":
        family = family or DEFAULT_FAMILY
        kwargs: dict = {}
        if alpha is not None:
            kwargs["alpha"] = alpha
        if minimalistic is not None and family.startswith("mobilenet_v3"):
            kwargs["minimalistic"] = minimalistic
        if size is not None:
            kwargs["input_shape"] = (3, size, size)
        return FAMILIES[family](weights=weights, **kwargs).eval()
    path = Path(weights)
    known = {"family": family, "alpha": alpha}
    if family is None or family.startswith("mobilenet_v3"):
        known["minimalistic"] = minimalistic
    known = {k: v for k, v in known.items() if v is not None}
    model = _load(path, known, config)
    recorded = model.config.get("family")
    if recorded in FAMILIES:
        if recorded not in dict.fromkeys(c.family for c in list_weights()):
            raise WeightsFileError(f"{path}: holds a {recorded} backbone, which has no classifier")
        for key, value in known.items():
            if key in model.config and model.config[key] != value:
                raise WeightsFileError(
                    f"{path}: holds {key}={model.config[key]!r}, not the {value!r} asked for"
                )
        if model.config.get("include_top") is False:
            raise WeightsFileError(
                f"{path}: holds a model without its classifier (no top); predicting needs the "
                "top (see reset_classifier to give it one and fine-tune it)"
            )
        model = _official_for_prediction(model, size)
    elif size is not None:
        _, rows, cols = model.input_shape
        if (rows is not None and rows != size) or (cols is not None and cols != size):
            raise WeightsFileError(
                f"{path}: model {model.name!r} takes {rows}x{cols} images (its input shape); "
                f"--size {size} does not fit it"
            )
    return model.eval()


def _load(path: Path, known: dict, config) -> KerasModel:
    """The file's model: with its recorded config where it has one, else the official
    architecture its weights fit (`known` settles what they cannot tell)."""
    if path.suffix == ".safetensors":
        recorded = read_safetensors(path)[1]
        if recorded is not None:
            return load_model(path)
        # A checkpoint that records no config: the official model the options describe.
        kwargs = {k: v for k, v in known.items() if k != "family"}
        return FAMILIES[known.get("family", DEFAULT_FAMILY)](weights=path, **kwargs)
    if config is not None or not known:
        return load_model(path, config=config)
    keras_file = read(path)
    if is_model_config(keras_file.model_config):
        return load_model(path)
    model = build(file_config(keras_file, **known))
    return load_weights(model, path, assign=True)


def _official_for_prediction(model: KerasModel, size: int | None) -> KerasModel:
    changes: dict = {}
    if size is not None and tuple(model.input_shape[1:]) != (size, size):
        changes["input_shape"] = (3, size, size)
    if model.config.get("classes") == 1 and output_activation(model) == "softmax":
        changes["classifier_activation"] = None
    if not changes:
        return model
    rebuilt = build({**model.config, **changes})
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


# ------------------------------------------------------------------------------ the labels
def read_labels(path: Path) -> list[str]:
    """The labels of a text file, one per line (UTF-8; trailing blank lines ignored)."""
    with open(path, "rb") as f:
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise ValueError(
            f"{path}: over {MAX_LABELS_BYTES} bytes; a labels file holds one label per line"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: holds no labels; one label per line")
    if len(lines) > MAX_LABELS:
        raise ValueError(f"{path}: {len(lines)} labels, over the limit of {MAX_LABELS}")
    empty = next((number for number, line in enumerate(lines, start=1) if not line), None)
    if empty is not None:
        raise ValueError(f"{path}: line {empty} is empty; one label per line")
    # Printed to a terminal: no control characters.
    return ["".join(c if c.isprintable() else "?" for c in line) for line in lines]


# -------------------------------------------------------------------------------- the head
class Head(NamedTuple):
    """How to read a model's output as class scores: `binary` (one output: the probability
    of the positive class, as `sigmoid` if it is a logit), else `softmax` of logits or the
    outputs as they are; the class `names`, or None for ImageNet's."""

    outputs: int
    binary: bool
    sigmoid: bool
    softmax: bool
    names: list | None
    note: str

    @classmethod
    def of(cls, model: KerasModel, labels: list | None, source="the model") -> Head:
        shape = model.output_shape(model.input_shape) if not model.output_nodes[1:] else None
        if shape is None or len(shape) != 1 or shape[0] is None:
            raise ValueError(
                f"{source}: model {model.name!r} gives "
                + ("several outputs" if shape is None else f"outputs of shape {shape}")
                + ", not one vector of class scores: predicting needs a classifier head"
            )
        outputs, activation = shape[0], output_activation(model)
        where = f"{source}: model {model.name!r}"
        note = ""
        if outputs == 1:
            if activation not in ("sigmoid", "linear"):
                raise ValueError(
                    f"{where} has one output, after {activation}: a head of one output must "
                    "be a sigmoid or a logit (the positive class)"
                )
            expected = 2
            binary, sigmoid, softmax = True, activation == "linear", False
            if sigmoid:
                note = f"{where} outputs one logit: its sigmoid is the positive class's score"
        else:
            expected = outputs
            binary, sigmoid, softmax = False, False, activation == "linear"
            if softmax:
                note = f"{where} outputs logits: the scores are their softmax"
            elif activation == "sigmoid":
                note = f"{where} ends with sigmoids: each score is its class's own probability"
            elif activation != "softmax":
                note = f"{where} ends with {activation}: the scores are its outputs as they are"
        if labels is not None and len(labels) != expected:
            raise ValueError(
                f"{len(labels)} labels for a head of {outputs} output"
                + ("s" if outputs > 1 else "")
                + (
                    " (a sigmoid: two labels, the negative class then the positive)"
                    if binary
                    else ""
                )
                + f": the labels file must hold {expected}"
            )
        if labels is None and not (outputs == IMAGENET_CLASSES and not binary):
            labels = [str(i) for i in range(expected)]
        return cls(outputs, binary, sigmoid, softmax, labels, note)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """(N, classes) scores of the model's outputs."""
        outputs = outputs.float()
        if self.binary:
            positive = outputs[:, :1].sigmoid() if self.sigmoid else outputs[:, :1]
            return torch.cat([1 - positive, positive], dim=1)
        return outputs.softmax(dim=1) if self.softmax else outputs

    def top(self, scores: torch.Tensor, top: int) -> list:
        """Per image, its `top` (name, score), best first."""
        if self.names is None:
            return [
                [(f"{wnid} {name}", score) for wnid, name, score in result]
                for result in decode_predictions(scores, top=top)
            ]
        values, indices = scores.topk(min(top, scores.shape[1]), dim=1)
        return [
            [(self.names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)
        ]


def preprocessing(model: KerasModel, size: int | None = None) -> KerasPreprocessing:
    """Keras' pipeline for the model: at `size`, else its input size (224 where it has none),
    pixels in [0, 255] where the model scales them itself, else the family's
    `preprocess_input` (V1's, V2's and V3's without its rescaling are the same)."""
    _, rows, cols = model.input_shape
    target = (size, size) if size else (rows, cols) if rows and cols else DEFAULT_SIZE
    family = model.config.get("family", "")
    if family in FAMILIES:
        include = model.config.get("include_preprocessing", True)
        return KerasPreprocessing.for_family(family, target, include)
    return KerasPreprocessing(target, scale=not preprocesses_input(model))


def predict(model, images, top: int = 5, head: Head | None = None, size=None) -> list:
    """Per image, the `top` (name, score) of the model, best first (ImageNet names as
    "wnid name", as Keras' decode_predictions)."""
    head = head or Head.of(model, None)
    preprocess = preprocessing(model, size)
    batch = torch.stack([preprocess(image) for image in images])
    parameter = next(model.parameters(), None)
    if parameter is not None:
        batch = batch.to(parameter.device, parameter.dtype)
    with torch.no_grad():
        return head.top(head.scores(model(batch)), top)
