"""The official Keras ImageNet checkpoints: every file, its URL and checksum, Keras' rules for which
one a model loads, and the published size and accuracy figures.

The registry is data built from Keras' file-naming rules (`keras/src/applications/mobilenet*.py`):

- MobileNet (V1): `mobilenet/mobilenet_{1_0,7_5,5_0,2_5}_{128,160,192,224}_tf[_no_top].h5`
- MobileNetV2:
  `mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}[_no_top].h5`
  for alpha 0.35, 0.5, 0.75, 1.0 at 96..224, and 1.3, 1.4 at 224 only
- MobileNetV3: `mobilenet_v3/weights_mobilenet_v3_{small,large}[_minimalistic]_224_{alpha}_float`
  + `.h5` or `_no_top_v2.h5`

Checksums, and how far each can be trusted (`Checkpoint.hash_status`):

- "pinned by Keras": V3, md5, as `keras.applications` itself checks them;
- "checked": sha256 compared with the real file (V1 `mobilenet_2_5_224_tf_no_top.h5`);
- "likely": the other V1 sha256, from a public copy of Keras' `mobilenet.py` that added them;
  not checked against the files here;
- "published": V2 0.35 at 96, a published sha256;
- "none": the other V2 files. Keras pins nothing for them; a download records the sha256 it saw
  (trust on first use) and says so.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..keras_io import build
from ..models.official import (
    V1_ALPHAS,
    V1_SIZES,
    V2_ALPHAS,
    V2_ONLY_224,
    V2_SIZES,
    V3_MODELS,
    imagenet_choice,
    v3_file_name,
    v3_model_key,
)
from .transforms import KerasPreprocessing

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# What an official file holds besides its float32 weights (HDF5 headers, B-trees, names), with
# room to spare: the most measured is 1.2 MB, in V1 0.25 without the top (2,108,140 bytes for
# 874,176 bytes of weights; Keras 2.0.4). V2 and V3 files carry 0.4 to 0.7 MB.
HDF5_OVERHEAD_BYTES = 2 << 20
# Another location for the same tree of files (a mirror, or a local server in tests).
BASE_URL_ENV = "TORCH_MOBILENETS_WEIGHTS_URL"

# ---------------------------------------------------------------------------------- checksums
# V3 md5 as Keras 3.15 pins them: key -> (top, no top).
V3_MD5 = {
    "large_224_0.75_float": (
        "765b44a33ad4005b3ac83185abf1d0eb",
        "40af19a13ebea4e2ee0c676887f69a2e",
    ),
    "large_224_1.0_float": ("59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389"),
    "large_minimalistic_224_1.0_float": (
        "675e7b876c45c57e9e63e6d90a36599c",
        "ec5221f64a2f6d1ef965a614bdae7973",
    ),
    "small_224_0.75_float": (
        "cb65d4e5be93758266aa0a7f2c6708b7",
        "ebdb5cc8e0b497cd13a7c275d475c819",
    ),
    "small_224_1.0_float": ("8768d4c2e7dee89b9d02b2d03d65d862", "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "small_minimalistic_224_1.0_float": (
        "99cd97fb2fcdad2bf028eb838de69e37",
        "cde8136e733e811080d9fcd8a252f7e4",
    ),
}

# V1 sha256: "{alpha text}_{rows}" -> (top, no top).
V1_SHA256 = {
    "1_0_128": (
        "ef1480dcb7f11a75bc5187a74863b3b97c4cfed6b6dd5c78f003ba002a4d7fe6",
        "8fbb8332b956430de61ad4fa1ab261ab5b7922ef1d0f38c30056a485ec0d4ecb",
    ),
    "1_0_160": (
        "a41aa0195ebe0a5301ab90af589155b42671f78704fd9a2e7dda919c478cd479",
        "22d25b67a8936869b5f0d0c840ba150c90dc89c0b07f8aacd387614be67845d2",
    ),
    "1_0_192": (
        "bd7e7f6a7cd6690a10aedba3e93bec811240418bd9179546e50c0f4c35899a01",
        "d67556231564ded95aaa7a44004c73aa9696fba267a6817f430eee097af11782",
    ),
    "1_0_224": (
        "006a2d9484fbea625dd4e6518652c101a3eca052671671c56265fc84f2e1181f",
        "9f9cfd8c925431c06ce96744e1d201575f6a681bf38ae2de38e2ae8f7d7829d3",
    ),
    "7_5_128": (
        "cafcb7455c36187c93eb7fb3a68e29f76b5761cb2d946d57d1967578e3b05361",
        "dcc5aaa418bbf397a431e79a52be0ad1a61fb6364a9bb6d68b5258f13669c8ba",
    ),
    "7_5_160": (
        "3ee6f1daa0f9da149bec3311eacfb4451ca236bc126dc25ee191f5bdc6e641be",
        "6056d87ad4e3b341cc8272d68b54a8a113ef0b0e5ab1399e4a801d2942a064fa",
    ),
    "7_5_192": (
        "a7a2364ee404c19301edb827de693f46eeb46aad13e2c5e73494545e57749eef",
        "b8ea4352b99a87552c0b84c59b59d146b823b684766026ed8f0c68d3aab9e677",
    ),
    "7_5_224": (
        "811e0307a7e8895a180b81c191033482d99470a0604ea8e88e8d947005067d84",
        "1da9019b66f05a0256dedfed0f321fcaf8bfa71f9facf3f9117e62820be39aa5",
    ),
    "5_0_128": (
        "26752cdb9ab8459c85fb4cd0f45475bbd3bd25f9225b87bbedd474f5976da145",
        "7f9871530e19990a9a180626566fcc32fb487c70880306592cae219d67179635",
    ),
    "5_0_160": (
        "71c742137645f19426ea3540bb2933310b0a5f2d3a2d09ee1aea91e348f6fba7",
        "7b15a4d22079138dd889a78cdea8d921a3b73cf7d313ff12f23634c4f71bcace",
    ),
    "5_0_192": (
        "fabfe055bd26ea40c1c0798c4e22fe1eb437feab111be9f1f722360dff81e040",
        "b848a83f140e284973d80805dc4c184a0a885dadcc1700630a86879c9103d5b1",
    ),
    "5_0_224": (
        "b4b134ed41de14fd8d6717ab4e88b53e3113194acae392bc41c012ba463906bb",
        "df860c59562f4c4af7a2fb2ae90731caef39fd5d03e5fcd6ca46988965f0a4b7",
    ),
    "2_5_128": (
        "fe295db7f78635f1403127e3ba8cdc6237f83262bdb745063a67c1d81190c7f8",
        "7d8b7f3c9555cb4579f9659ee233a540e66fd7ad514c0a8b14493b667447c5d6",
    ),
    "2_5_160": (
        "74b32700eb3f6fb8d0b3f416c3fb52ab5eca35dc82393341eb7bb52676b6b003",
        "c2f18432229c945b816f8b9f9cfa40d2964454b033efea804f6cd03942865bd4",
    ),
    "2_5_192": (
        "22a302e8a39e545c7372ca96fe8698e3cbbc7d3906f60316e0617c15616f8894",
        "4b7370b9880577f12f31942049d19610a4559c8af38f39dc67d1f90ec9663aa1",
    ),
    "2_5_224": (
        "98d047950e59f478af63681720906940efc8ce8cecb95bce5c7b47394f8bd63d",
        "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf",
    ),
}
# The one V1 value compared with the real file (2,108,140 bytes, keras_version 2.0.4).
V1_CHECKED = "mobilenet_2_5_224_tf_no_top.h5"

V2_SHA256 = {
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5": (
        "a94030b8c5e6811c60b93c8b6888d2f309dc112008bd14f0963e8c5473201c2c"
    ),
}

# ------------------------------------------------------------------- published size and accuracy
# (million MACs, million parameters, top-1 %) of the classifier each file belongs to.
# V2 and V3: the tables in Keras' docstrings (keras-applications mobilenet_v2.py, Keras
# mobilenet_v3.py), complete.
V2_PUBLISHED = {
    (1.4, 224): (582, 6.06, 75.0),
    (1.3, 224): (509, 5.34, 74.4),
    (1.0, 224): (300, 3.47, 71.8),
    (1.0, 192): (221, 3.47, 70.7),
    (1.0, 160): (154, 3.47, 68.8),
    (1.0, 128): (99, 3.47, 65.3),
    (1.0, 96): (56, 3.47, 60.3),
    (0.75, 224): (209, 2.61, 69.8),
    (0.75, 192): (153, 2.61, 68.7),
    (0.75, 160): (107, 2.61, 66.4),
    (0.75, 128): (69, 2.61, 63.2),
    (0.75, 96): (39, 2.61, 58.8),
    (0.5, 224): (97, 1.95, 65.4),
    (0.5, 192): (71, 1.95, 63.9),
    (0.5, 160): (50, 1.95, 61.0),
    (0.5, 128): (32, 1.95, 57.7),
    (0.5, 96): (18, 1.95, 51.2),
    (0.35, 224): (59, 1.66, 60.3),
    (0.35, 192): (43, 1.66, 58.2),
    (0.35, 160): (30, 1.66, 55.7),
    (0.35, 128): (20, 1.66, 50.8),
    (0.35, 96): (11, 1.66, 45.5),
}
V3_PUBLISHED = {
    ("large", False, 1.0): (217, 5.4, 75.6),
    ("large", False, 0.75): (155, 4.0, 73.3),
    ("large", True, 1.0): (209, 3.9, 72.3),
    ("small", False, 1.0): (66, 2.9, 68.1),
    ("small", False, 0.75): (44, 2.4, 65.4),
    ("small", True, 1.0): (65, 2.0, 61.9),
}
# V1: Keras' docstring gives top-1 for only 7 of the 16 models, and its MACs column repeats the
# 224 figure at every resolution. So MACs, parameters and the other top-1 come from the TF-slim
# table of the 2017-06-14 checkpoints, which are the ones Keras converted.
V1_TF_SLIM = {
    (1.0, 224): (569, 4.24, 70.7),
    (1.0, 192): (418, 4.24, 69.3),
    (1.0, 160): (291, 4.24, 67.2),
    (1.0, 128): (186, 4.24, 64.1),
    (0.75, 224): (317, 2.59, 68.4),
    (0.75, 192): (233, 2.59, 67.4),
    (0.75, 160): (162, 2.59, 65.2),
    (0.75, 128): (104, 2.59, 61.8),
    (0.5, 224): (150, 1.34, 64.0),
    (0.5, 192): (110, 1.34, 62.1),
    (0.5, 160): (77, 1.34, 59.9),
    (0.5, 128): (49, 1.34, 56.2),
    (0.25, 224): (41, 0.47, 50.6),
    (0.25, 192): (34, 0.47, 49.0),
    (0.25, 160): (21, 0.47, 46.0),
    (0.25, 128): (14, 0.47, 41.3),
}
V1_KERAS_TOP1 = {
    (1.0, 224): 70.6,
    (0.75, 224): 68.4,
    (0.5, 224): 63.7,
    (0.25, 224): 50.6,
    (1.0, 192): 69.1,
    (1.0, 160): 67.2,
    (1.0, 128): 64.4,
}

HASH_STATUS_NOTES = {
    "pinned by Keras": "md5 that keras.applications itself checks",
    "checked": "sha256 compared with the real file",
    "likely": "sha256 from a public copy of Keras' mobilenet.py, not compared with the file here",
    "published": "a published sha256",
    "none": "no published checksum: the sha256 seen on first download is recorded and "
    "later downloads must match it (trust on first use)",
}


@dataclass(frozen=True)
class Checkpoint:
    """One official Keras weights file and the model it fits."""

    family: str  # a torch_mobilenets.models.FAMILIES key
    alpha: float
    rows: int  # the square input size the weights were trained at
    include_top: bool
    minimalistic: bool  # V3 only; False elsewhere
    file_name: str
    subdir: str  # under the base URL
    hash_algorithm: str | None  # "md5", "sha256" or None
    file_hash: str | None
    hash_status: str  # a HASH_STATUS_NOTES key
    macs_m: float  # published million multiply-adds of the classifier
    params_m: float  # published million parameters of the classifier
    top1: float  # published ImageNet top-1 accuracy (%) of the classifier
    figures_source: str  # where macs_m, params_m and top1 come from

    @property
    def name(self) -> str:
        """`mobilenet_v2_0.35_96`, `mobilenet_v3_small_minimalistic_1.0_224_no_top`, ..."""
        kind = f"{self.family}_minimalistic" if self.minimalistic else self.family
        return f"{kind}_{self.alpha}_{self.rows}" + ("" if self.include_top else "_no_top")

    @property
    def url(self) -> str:
        """Where the file is: the official location, or under $TORCH_MOBILENETS_WEIGHTS_URL."""
        base = os.environ.get(BASE_URL_ENV) or BASE_URL
        return f"{base.rstrip('/')}/{self.subdir}/{self.file_name}"

    @property
    def converted_name(self) -> str:
        return Path(self.file_name).stem + ".safetensors"

    def architecture(self) -> dict:
        """What the file's tensors fix: the converter's `known` arguments."""
        known = dict(family=self.family, alpha=self.alpha, include_top=self.include_top)
        if self.family == "mobilenet":
            known["depth_multiplier"] = 1
        if self.family.startswith("mobilenet_v3"):
            known["minimalistic"] = self.minimalistic
        return known

    def builder_kwargs(self) -> dict:
        """Builder arguments for a model at this checkpoint's configuration (without weights)."""
        kwargs = {k: v for k, v in self.architecture().items() if k != "family"}
        if self.family in ("mobilenet", "mobilenet_v2"):
            kwargs["input_shape"] = (3, self.rows, self.rows)
        return kwargs

    @property
    def parameters(self) -> int:
        """The exact parameter count, as Keras' `count_params()` (BatchNorm statistics included)."""
        return _count_parameters(tuple(sorted(self.architecture().items())))

    @property
    def expected_bytes(self) -> int:
        """The file's size at most, as its parameters give it: 4 bytes each (float32) plus
        HDF5_OVERHEAD_BYTES. The size limit of its download is a margin over this."""
        return 4 * self.parameters + HDF5_OVERHEAD_BYTES

    def transforms(self) -> KerasPreprocessing:
        """The preprocessing preset: a PIL image or uint8 tensor to this model's input, as Keras'
        `load_img(target_size=...)` + `preprocess_input` do."""
        return KerasPreprocessing.for_family(self.family, size=self.rows)


@functools.cache
def _count_parameters(architecture: tuple) -> int:
    model = build(dict(architecture), "meta")
    return sum(
        t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked")
    )


def _v1(alpha: float, rows: int, top: bool) -> Checkpoint:
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    file_name = f"mobilenet_{alpha_text}_{rows}_tf{'' if top else '_no_top'}.h5"
    macs, params, top1 = V1_TF_SLIM[(alpha, rows)]
    source = "TF-slim 2017-06-14 table"
    if (alpha, rows) in V1_KERAS_TOP1:
        top1 = V1_KERAS_TOP1[(alpha, rows)]
        source = "top-1: Keras docstring; MACs, params: TF-slim 2017-06-14 table"
    return Checkpoint(
        "mobilenet",
        alpha,
        rows,
        top,
        False,
        file_name,
        "mobilenet",
        "sha256",
        V1_SHA256[f"{alpha_text}_{rows}"][0 if top else 1],
        "checked" if file_name == V1_CHECKED else "likely",
        macs,
        params,
        top1,
        source,
    )


def _v2(alpha: float, rows: int, top: bool) -> Checkpoint:
    file_name = (
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}"
        f"{'' if top else '_no_top'}.h5"
    )
    known = V2_SHA256.get(file_name)
    return Checkpoint(
        "mobilenet_v2",
        alpha,
        rows,
        top,
        False,
        file_name,
        "mobilenet_v2",
        "sha256" if known else None,
        known,
        "published" if known else "none",
        *V2_PUBLISHED[(alpha, rows)],
        "Keras docstring",
    )


def _v3(model_type: str, minimalistic: bool, alpha: float, top: bool) -> Checkpoint:
    key = v3_model_key(model_type, minimalistic, alpha)
    file_name = v3_file_name(model_type, minimalistic, alpha, top)
    return Checkpoint(
        f"mobilenet_v3_{model_type}",
        alpha,
        224,
        top,
        minimalistic,
        file_name,
        "mobilenet_v3",
        "md5",
        V3_MD5[key][0 if top else 1],
        "pinned by Keras",
        *V3_PUBLISHED[(model_type, minimalistic, alpha)],
        "Keras docstring",
    )


@functools.cache
def _registry() -> tuple:
    entries = []
    for alpha in V1_ALPHAS:
        for rows in reversed(V1_SIZES):
            entries += [_v1(alpha, rows, top) for top in (True, False)]
    for alpha in V2_ALPHAS:
        for rows in (224,) if alpha in V2_ONLY_224 else reversed(V2_SIZES):
            entries += [_v2(alpha, rows, top) for top in (True, False)]
    for model_type, minimalistic, alpha in V3_MODELS:
        entries += [_v3(model_type, minimalistic, alpha, top) for top in (True, False)]
    return tuple(entries)


def list_weights(family: str | None = None, include_top: bool | None = None) -> list:
    """Every official Keras ImageNet checkpoint (88 files), optionally of one family and/or with
    or without the top, as `Checkpoint`s: file, URL, checksum, published figures."""
    return [
        c
        for c in _registry()
        if (family is None or c.family == family)
        and (include_top is None or c.include_top == include_top)
    ]


def find_checkpoint(
    family: str, alpha: float, rows: int, include_top: bool, minimalistic: bool = False
) -> Checkpoint:
    """The official file for exactly this configuration; ValueError naming what exists if none."""
    for c in _registry():
        if (c.family, c.alpha, c.rows, c.include_top, c.minimalistic) == (
            family,
            float(alpha),
            rows,
            bool(include_top),
            bool(minimalistic),
        ):
            return c
    available = sorted(
        {
            (c.alpha, c.rows)
            for c in _registry()
            if c.family == family and c.minimalistic == bool(minimalistic)
        }
    )
    raise ValueError(
        f"There are no official {family} ImageNet weights for alpha={alpha}, {rows}x{rows}"
        f"{', minimalistic' if minimalistic else ''}; the official (alpha, size) pairs are "
        f"{available}"
    )


def imagenet_checkpoint(config: dict, stacklevel: int = 1) -> Checkpoint:
    """The file `weights="imagenet"` loads into a model built with `config`, by Keras' rules
    (`models.official.imagenet_choice`), with Keras' warning when the model is not built for its
    size. `stacklevel` as `warnings.warn`'s, counted from this function's caller (1)."""
    choice = imagenet_choice(config)
    if choice.warning:
        warnings.warn(choice.warning, UserWarning, stacklevel=stacklevel + 1)
    return find_checkpoint(
        choice.family, choice.alpha, choice.rows, choice.include_top, choice.minimalistic
    )


# ------------------------------------------------------------------------------------ the table
def weights_table() -> str:
    """The registry as the Markdown table in README.md: one row per trained network, each with a
    file with the top and one without (`..._no_top.h5`; V3 `..._no_top_v2.h5`)."""
    lines = [
        "| model | alpha | input | top-1 % | MACs (M) | parameters, top / no top | file (top) | "
        "checksum |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    entries = list_weights()
    for top, no_top in zip(entries[::2], entries[1::2]):
        kind = f"{top.family}{' minimalistic' if top.minimalistic else ''}"
        # Mark the top-1 figures that are TF-slim's rather than Keras' own.
        top1 = f"{top.top1}" + (
            "" if top.figures_source.startswith(("top-1: Keras", "Keras")) else " *"
        )
        checksum = _checksum_text(top)
        if _checksum_text(no_top) != checksum:
            checksum += f" (no top: {_checksum_text(no_top)})"
        lines.append(
            f"| {kind} | {top.alpha} | {top.rows} | {top1} | {top.macs_m} | "
            f"{top.parameters:,} / {no_top.parameters:,} | `{top.subdir}/{top.file_name}` | "
            f"{checksum} |"
        )
    return "\n".join(lines) + "\n"


def _checksum_text(c: Checkpoint) -> str:
    if c.hash_algorithm is None:
        return "none (trust on first use)"
    return f"{c.hash_algorithm}, {c.hash_status}"
