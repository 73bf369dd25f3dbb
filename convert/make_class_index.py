"""Generate ``torch_mobilenets/data/imagenet_class_index.json``.

Keras downloads ``imagenet_class_index.json`` at run time; we ship it as package
data instead. It is rebuilt here from a pinned timm wheel from PyPI, which
carries the 1000 ImageNet-1k wnids in class order and the WordNet lemmas of
every synset.

Rule: name = first lemma of the synset with spaces replaced by underscores.
Checked against the real Keras file: the rule reproduces all 1000 entries
(including Keras' duplicate names 'crane' at 134/517 and 'maillot' at 638/639,
which are genuinely identical first lemmas in WordNet), and ``json.dumps`` with
default settings reproduces Keras' bytes, so the output's md5 equals the
``file_hash`` Keras checks. The script refuses to write anything else.

Usage::

    python convert/make_class_index.py [--timm-wheel PATH] [--out PATH]

Without ``--timm-wheel`` the pinned wheel is fetched with
``pip download --no-deps`` into a temporary directory. timm is never installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TIMM_VERSION = "1.0.31"
# sha256 of timm-1.0.31-py3-none-any.whl as downloaded from PyPI; for reference only,
# the md5 check on the output is what guarantees correctness.
TIMM_WHEEL_SHA256 = "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7"

SYNSETS_MEMBER = "timm/data/_info/imagenet_synsets.txt"
LEMMAS_MEMBER = "timm/data/_info/imagenet_synset_to_lemma.txt"

# md5 Keras passes as ``file_hash`` for its imagenet_class_index.json.
KERAS_MD5 = "c2c37ea517e94d9795004a39431a14cb"

# Overrides (wnid -> Keras name) for entries where Keras deviates from the
# first-lemma rule. Empty: comparing the rule's output entry by entry with a
# public copy of Keras' file (github.com/sarwojowo/KerasProject, whose only
# differences were 4 locally translated names and a trailing newline) and then
# with Keras' md5 showed no deviation. Add an entry here, with its source, if a
# future timm release changes a lemma.
CORRECTIONS: dict[str, str] = {}

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "torch_mobilenets" / "data" / "imagenet_class_index.json"
)


def download_timm_wheel(dest: Path) -> Path:
    """Fetch the pinned timm wheel into ``dest`` with the current interpreter's pip."""
    dest = Path(dest)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            f"timm=={TIMM_VERSION}",
            "-d",
            str(dest),
        ],
        check=True,
    )
    wheels = sorted(dest.glob(f"timm-{TIMM_VERSION}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip did not leave a timm {TIMM_VERSION} wheel in {dest}")
    return wheels[0]


def build_class_index(wheel: Path) -> dict[str, list[str]]:
    """Build Keras' ``{"0": [wnid, name], ...}`` mapping from a timm wheel."""
    with zipfile.ZipFile(wheel) as zf:
        wnids = zf.read(SYNSETS_MEMBER).decode("utf-8").split()
        lemma_lines = zf.read(LEMMAS_MEMBER).decode("utf-8").splitlines()
    lemmas = dict(line.split("\t", 1) for line in lemma_lines if line.strip())
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(f"expected 1000 distinct wnids in {SYNSETS_MEMBER}, got {len(wnids)}")

    index = {}
    for i, wnid in enumerate(wnids):
        name = lemmas[wnid].split(",")[0].strip().replace(" ", "_")
        index[str(i)] = [wnid, CORRECTIONS.get(wnid, name)]
    return index


def render(index: dict[str, list[str]]) -> bytes:
    # Default json.dumps settings (", "/": " separators, ASCII, no trailing
    # newline) are what Keras' file uses; insertion order keeps keys 0..999.
    return json.dumps(index).encode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-wheel", type=Path, help=f"local timm {TIMM_VERSION} wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output json path")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.timm_wheel or download_timm_wheel(Path(tmp))
        data = render(build_class_index(wheel))

    digest = hashlib.md5(data).hexdigest()
    if digest != KERAS_MD5:
        print(f"error: md5 {digest} != Keras' {KERAS_MD5}; not writing {args.out}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, md5 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
