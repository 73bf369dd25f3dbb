"""The documentation cannot rot: every Python and shell example in README.md and docs/*.md runs,
offline, and every relative link and #anchor in them resolves.

Each page's examples run in the order written, in a fresh folder: its Python blocks in this
process, sharing one namespace; its shell blocks (`bash`, `sh`) with `bash -e`, the venv's
`python` and `torch-mobilenets` first on PATH. The files an example names are made here (seeded
models in the official files' layout, a user's model written by Keras 3, images), and
`weights="imagenet"` downloads seeded files from a mirror on 127.0.0.1 into a cache of the test's
own. `text` blocks are output and never run.

An HTML comment on the line before a block marks an example that is not run by default:
`<!-- example: network -->`, `gpu`, `slow REASON` (run them with TORCH_MOBILENETS_DOCS_EXAMPLES,
e.g. "network slow"), `keras` (runs where Keras is installed) and `skip-reason REASON` (never
run). Each marked example that does not run is a skipped test naming it, so none is skipped
silently. docs/contributing.md describes the same for contributors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import helpers
import numpy as np
import pytest

import torch_mobilenets as tm
from torch_mobilenets.keras_io import save_keras_h5
from torch_mobilenets.pretrained import registry

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_ENV = "TORCH_MOBILENETS_DOCS_EXAMPLES"
SHELLS = {"bash", "sh"}
RUNNABLE = {"python"} | SHELLS
LANGUAGES = RUNNABLE | {"text"}
# marker -> whether it needs a reason after it
MARKERS = {"network": False, "gpu": False, "slow": False, "keras": False, "skip-reason": True}
ON_DEMAND = {"network", "gpu", "slow"}  # run only when named in RUN_ENV
README_MOST_LINES = 250
QUICK_START = """\
make demo   # creates .venv, installs, converts seeded Keras models and compares them with Keras
make test   # creates/updates .venv with the test dependencies, runs the default suite
"""

FENCE = re.compile(r"^ {0,3}```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*example:\s*([\w-]+)\s*(.*?)\s*-->\s*$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+).+?\1")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None = None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def split(page: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """A page's fenced blocks, and its other lines (number, text) outside them."""
    lines = page.read_text().splitlines()
    blocks, prose = [], []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start + 1}: a fence never closed"
        before = _next_text(lines, start, -1)
        found = MARKER.match(lines[before].strip()) if before is not None else None
        marker, reason = (found.group(1), found.group(2)) if found else (None, "")
        code = "\n".join(lines[start + 1 : i]) + "\n"
        blocks.append(Block(page, start + 1, opening.group(1), code, marker, reason))
        i += 1
    return blocks, prose


def _next_text(lines: list[str], index: int, step: int) -> int | None:
    """The index of the first non-blank line from `index` on, `step` at a time (not `index`)."""
    index += step
    while 0 <= index < len(lines) and not lines[index].strip():
        index += step
    return index if 0 <= index < len(lines) else None


def blocks_of(page: Path) -> list[Block]:
    return split(page)[0]


def enabled() -> set[str]:
    return set(re.split(r"[\s,]+", os.environ.get(RUN_ENV, "").strip())) - {""}


def runs(block: Block) -> bool:
    """Whether the page test runs this block here and now."""
    if block.language not in RUNNABLE:
        return False
    if block.marker is None:
        return True
    if block.marker == "keras":
        return helpers.HAVE_KERAS
    return block.marker in ON_DEMAND and block.marker in enabled()


# ---------------------------------------------------------------------- anchors and links
def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): the rendered text, lower case, without
    punctuation other than '-' and '_', spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, text in split(page)[1]:
        heading = HEADING.match(text)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(text))
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link outside code."""
    found = []
    for number, text in split(page)[1]:
        text = CODE_SPAN.sub("", text)
        found += [(number, target) for _, target in LINK.findall(text)]
        reference = REFERENCE.match(text)
        if reference:
            found.append((number, reference.group(1)))
    return found


def test_every_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
                broken.append(f"{where} (no such anchor in {resolved.relative_to(ROOT)})")
    assert not broken, "\n".join(broken)


def test_slugs_are_githubs():
    assert slug("Fine-tuning, features and the way back to Keras") == (
        "fine-tuning-features-and-the-way-back-to-keras"
    )
    assert slug("The inference copy: optimize_for_inference") == (
        "the-inference-copy-optimize_for_inference"
    )
    assert slug("`torch.hub`, [presets](x.md)") == "torchhub-presets"


# ----------------------------------------------------------------------- the pages' form
def test_every_block_is_labelled_and_every_marker_known():
    wrong = []
    for page in PAGES:
        blocks, prose = split(page)
        for block in blocks:
            if block.language not in LANGUAGES:
                wrong.append(
                    f"{block.where}: a ```{block.language} block (use {sorted(LANGUAGES)})"
                )
            if block.marker is not None:
                if block.marker not in MARKERS:
                    wrong.append(f"{block.where}: unknown marker {block.marker!r}")
                elif MARKERS[block.marker] and not block.reason:
                    wrong.append(f"{block.where}: `{block.marker}` needs a reason")
                if block.language not in RUNNABLE:
                    wrong.append(f"{block.where}: a marker on a block that never runs")
        lines = page.read_text().splitlines()
        for number, text in prose:
            after = _next_text(lines, number - 1, 1)
            if MARKER.match(text.strip()) and (after is None or not FENCE.match(lines[after])):
                wrong.append(f"{page.relative_to(ROOT)}:{number}: a marker on no block")
    assert not wrong, "\n".join(wrong)


def test_every_example_parses():
    """Marked examples too: those the test does not run still compile (Python) or parse (bash)."""
    wrong = []
    for page in PAGES:
        for block in blocks_of(page):
            if block.language == "python":
                try:
                    compile("\n" * block.line + block.code, str(block.page), "exec")
                except SyntaxError as error:
                    wrong.append(f"{block.where}: {error}")
            elif block.language in SHELLS:
                result = subprocess.run(
                    ["bash", "-n"], input=block.code, capture_output=True, text=True
                )
                if result.returncode:
                    wrong.append(f"{block.where}: {result.stderr.strip()}")
    assert not wrong, "\n".join(wrong)


def test_readme_is_the_front_door():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= README_MOST_LINES
    # CI (.ci/run) runs `make test`, the README's command; keep the two exactly.
    assert QUICK_START in [block.code for block in blocks_of(readme)]


def test_the_converters_messages_name_a_page_that_exists():
    from torch_mobilenets.keras_io.config import SUPPORTED

    named = re.findall(r"docs/[\w-]+\.md", SUPPORTED)
    assert named and all((ROOT / name).exists() for name in named), SUPPORTED
    page = (ROOT / named[0]).read_text()
    assert "| Keras layers | notes |" in page  # the supported-layers table


# ---------------------------------------------------------------------- files and mirror
def _images(folder: Path) -> None:
    from PIL import Image

    for name, seed in [("elephant.jpg", 0), ("a.png", 1), ("b.png", 2)]:
        pixels = helpers.pixels(240, 320, 1, seed)[0].astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)


def _official_v1(folder: Path) -> None:
    save_keras_h5(helpers.trained_like(tm.MobileNet(weights=None)), folder / V1_FILE)


def _official_v2(folder: Path) -> None:
    save_keras_h5(helpers.trained_like(tm.MobileNetV2(weights=None)), folder / V2.file_name)


def _converted_v3_small(folder: Path) -> None:
    tm.save_checkpoint(
        helpers.trained_like(tm.MobileNetV3Small(weights=None)), folder / "w.safetensors"
    )


def _users_model(folder: Path) -> None:
    """A user's classifier as the TensorFlow transfer-learning guide builds it, written by
    Keras 3: the whole model, its weights with its config, and its conversion."""
    helpers.keras_reference()
    import h5py
    import user_models
    from keras.src.legacy.saving import legacy_h5_format

    model = user_models.build("keras3", "guide", "mobilenet_v2", input_shape=(160, 160, 3))
    model.save(folder / "my_classifier.keras")
    with h5py.File(folder / "weights.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    (folder / "model.json").write_text(model.to_json())
    tm.keras_io.convert(folder / "my_classifier.keras", folder / "converted.safetensors")


def _keras_v2_file(folder: Path) -> None:
    """An official-layout MobileNetV2 0.35 at 96, written by Keras from a seeded Keras model."""
    kr = helpers.keras_reference()
    model = kr.build_keras("mobilenet_v2", alpha=0.35, input_shape=(96, 96, 3))
    path = kr.write_keras_file(model, folder / "keras2", "keras2_h5")
    path.replace(folder / "mobilenetv2_0.35_96.h5")


V1_FILE = "mobilenet_1_0_224_tf.h5"
V2 = registry.find_checkpoint("mobilenet_v2", 1.0, 224, True)
# file name -> (maker, needs Keras); one maker may write several files
FILES = {
    "elephant.jpg": (_images, False),
    "a.png": (_images, False),
    "b.png": (_images, False),
    V1_FILE: (_official_v1, False),
    V2.file_name: (_official_v2, False),
    "w.safetensors": (_converted_v3_small, False),
    "my_classifier.keras": (_users_model, True),
    "weights.h5": (_users_model, True),
    "model.json": (_users_model, True),
    "converted.safetensors": (_users_model, True),
    "mobilenetv2_0.35_96.h5": (_keras_v2_file, True),
}
# What a page's folder links to: the checkout (a clone, for torch.hub's source="local") and the
# folders its scripts live in.
LINKS = {
    "torch-mobilenets": ROOT,
    **{name: ROOT / name for name in ("examples", "benchmarks", "convert")},
}


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """file name -> path, each made once on first request."""
    folder = tmp_path_factory.mktemp("docs_files")

    def make(name: str) -> Path:
        if not (folder / name).exists():
            FILES[name][0](folder)
        return folder / name

    return make


@pytest.fixture(scope="session")
def mirror(files, tmp_path_factory):
    """The official bucket's tree on 127.0.0.1, serving seeded files; and a cache of our own."""
    from weights_server import WeightsServer

    with WeightsServer() as server:
        server.serve(V2.subdir, V2.file_name, files(V2.file_name).read_bytes())
        yield {
            registry.BASE_URL_ENV: server.base_url,
            "TORCH_HOME": str(tmp_path_factory.mktemp("docs_torch_home")),
            "no_proxy": "127.0.0.1",
            "NO_PROXY": "127.0.0.1",
            "TORCH_MOBILENETS_PROGRESS": "0",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }


# ----------------------------------------------------------------------------- examples
PAGES_WITH_EXAMPLES = [p for p in PAGES if any(b.language in RUNNABLE for b in blocks_of(p))]
MARKED = [b for p in PAGES for b in blocks_of(p) if b.marker and b.language in RUNNABLE]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, files, mirror, tmp_path, monkeypatch):
    todo = [block for block in blocks_of(page) if runs(block)]
    if not todo:
        pytest.skip(f"{page.relative_to(ROOT)}: every example is marked (listed as skipped)")
    code = "".join(block.code for block in todo)
    needed = {name for name in FILES if name in code}
    if any(FILES[name][1] for name in needed) and not helpers.HAVE_KERAS:
        helpers.missing(  # a failure, or a skip where the `keras` extra is left out on purpose
            "keras",
            f"{page.relative_to(ROOT)}: its files are written by Keras; {helpers.KERAS_REASON}",
        )
    workdir = tmp_path / "work"
    workdir.mkdir()
    for name in sorted(needed):
        shutil.copy(files(name), workdir / name)
    for name, target in LINKS.items():
        (workdir / name).symlink_to(target, target_is_directory=True)
    for key, value in mirror.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "__docs__"}
    for block in todo:
        start = time.perf_counter()
        if block.language == "python":
            run_python(block, namespace)
        else:
            run_shell(block, workdir)
        print(f"{block.where}: {time.perf_counter() - start:.1f} s")


def run_python(block: Block, namespace: dict) -> None:
    # Blank lines before the code: tracebacks give the page's own line numbers.
    source = "\n" * block.line + block.code
    try:
        exec(compile(source, str(block.page), "exec"), namespace)
    except Exception:
        pytest.fail(
            f"{block.where}: the example failed\n{block.code}\n{traceback.format_exc()}",
            pytrace=False,
        )


def run_shell(block: Block, workdir: Path) -> None:
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.code],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"$ {block.where}\n{result.stdout}{result.stderr}")
    if result.returncode:
        pytest.fail(
            f"{block.where}: exit code {result.returncode}\n{block.code}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}",
            pytrace=False,
        )


@pytest.mark.parametrize("block", MARKED, ids=lambda b: f"{b.where}-{b.marker}")
def test_marked_example_is_listed(block):
    """Marked examples that do not run are each reported, with where and why."""
    if runs(block):
        return  # run by test_page_examples_run
    why = f"{block.where}: marked `{block.marker}`" + (f" ({block.reason})" if block.reason else "")
    if block.marker == "keras":
        helpers.missing("keras", f"{why}: {helpers.KERAS_REASON}")  # fails, or skips as asked
    if block.marker == "skip-reason":
        pytest.skip(f"{why}: never run by this test")
    pytest.skip(f"{why}: not run; {RUN_ENV}={block.marker} runs it")
