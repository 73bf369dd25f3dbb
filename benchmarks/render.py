"""Markdown from a run's records (benchmarks/records.py): every table is a column spec, a list of
(header, how to get the cell from the records), applied to rows of keys; a cell with no record
renders "-". The docs quote the tables as views of one committed run, between markers

    <!-- BEGIN benchmark table NAME from benchmarks/results.json -->
    ...
    <!-- END benchmark table NAME -->

and this script rewrites what is between them; tests/test_benchmark.py checks that nothing
there, nor any benchmarks/*.md, differs from what the committed records render.

    python -m benchmarks.render              # every benchmarks/*.json to its .md, and the docs
    python -m benchmarks.render --check      # the same, writing nothing: exit 1 if stale
    python -m benchmarks.render RESULTS.json [--out FILE.md]   # one run's markdown

Standard library only: rendering needs neither torch nor the frameworks.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.records import (  # noqa: E402 (after the path)
    COMPILED,
    EAGER,
    FOLDED,
    KERAS,
    KERAS_TORCH,
    ONNXRUNTIME,
    OPENVINO,
    OPTIMIZED,
    OURS_COMPILED,
    TIMM,
    TORCHVISION,
    UNPLANNED,
    Results,
)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN benchmark table (?P<name>[\w-]+) from (?P<source>\S+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END benchmark table (?P=name) -->)",
    re.S,
)


# ---------------------------------------------------------------------- column specs
@dataclass(frozen=True)
class Row:
    """One row of a table: the records of `table` with `key` (and what a cell adds to it)."""

    results: Results
    table: str
    key: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, **more: Any) -> Any:
        return self.results.get(self.table, name, **{**self.key, **more})


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], Any]  # None: no such cell
    fmt: Callable[[Any], str] = str


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table with a blank line before and after."""
    return [
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        "",
    ]


def table(columns: Sequence[Column], rows: Sequence[Row]) -> list[str]:
    """The Markdown table of `columns` over `rows`: each cell the column's value formatted, "-"
    where there is none."""

    def cell(column: Column, row: Row) -> str:
        value = column.value(row)
        return "-" if value is None else column.fmt(value)

    return markdown_table(
        [c.header for c in columns], [[cell(c, row) for c in columns] for row in rows]
    )


def two(value: float) -> str:
    return f"{value:.2f}"


def exponent(value: float) -> str:
    return f"{value:.1e}"


def significant(value: float) -> str:
    return f"{value:.3g}"


def key(name: str) -> Column:
    return Column(name, lambda row: row.key[name])


def ms(contender: str, header: str | None = None) -> Column:
    return Column(header or contender, lambda row: row.get("ms", contender=contender), two)


def ratio(name: str, header: str | None = None) -> Column:
    return Column(header or name, lambda row: row.get("value", ratio=name), two)


def error(contender: str, header: str) -> Column:
    return Column(header, lambda row: row.get("error", contender=contender), exponent)


def quantity(header: str, name: str, fmt: Callable[[Any], str] = two) -> Column:
    return Column(header, lambda row: row.get(name), fmt)


def rows(results: Results, table_name: str, fields: Sequence[str], **key: Any) -> list[Row]:
    """A row per distinct value of `fields` among the records of `table_name`, in order."""
    return [
        Row(results, table_name, dict(zip(fields, values)))
        for values in results.keys(table_name, fields, **key)
    ]


INFERENCE = [
    key("family"),
    key("batch"),
    ms(EAGER),
    ms(OPTIMIZED),
    ms(TORCHVISION),
    ms(TIMM),
    ms(KERAS),
    ratio("eager / torchvision"),
    ratio("keras / optimized"),
    error(OPTIMIZED, "optimized error"),
    ms(ONNXRUNTIME),
    ms(OPENVINO),
    ms(COMPILED),
    ms(KERAS_TORCH),
    ratio("optimized / onnxruntime"),
    error(ONNXRUNTIME, "onnxruntime error"),
    error(OPENVINO, "openvino error"),
    ms(FOLDED),
    ratio("optimized / folded"),
    ms(OURS_COMPILED),
    ratio("ours compiled / optimized"),
    ratio("ours compiled / onnxruntime"),
    ms(UNPLANNED),
    ratio("optimized / memory not kept"),
]
# The README's "How fast": the headline columns at batch 1 and 8.
README = [
    key("family"),
    key("batch"),
    ms(EAGER, "ours eager (ms)"),
    ms(OPTIMIZED, "ours optimized (ms)"),
    ratio("eager / torchvision", "eager / torchvision eager"),
    ratio("keras / optimized", "Keras on TensorFlow / optimized"),
    ratio("optimized / onnxruntime", "optimized / ONNX Runtime"),
]
README_BATCHES = (1, 8)
TRAINING = [
    key("family"),
    key("batch"),
    quantity("ours ms", "ours_ms"),
    quantity("torchvision ms", "torchvision_ms"),
    quantity("ours / torchvision", "ratio"),
    quantity("ours compiled ms", "ours_compiled_ms"),
    quantity("torchvision compiled ms", "torchvision_compiled_ms"),
    quantity("ours compiled / ours", "compiled_ratio"),
    quantity("ours compiled / torchvision compiled", "compiled_torchvision_ratio"),
    quantity("ours compile s", "ours_compile_s", lambda v: f"{v:.0f}"),
    quantity("torchvision compile s", "torchvision_compile_s", lambda v: f"{v:.0f}"),
]


def resident(contender: str, field: str, header: str) -> Column:
    return Column(header, lambda row: row.get(field, contender=contender), significant)


def _resident_ratio(row: Row) -> float | None:
    ours, theirs = (row.get("steady_mb", contender=c) for c in (OPTIMIZED, ONNXRUNTIME))
    return ours / theirs if ours and theirs else None


MEMORY = [
    key("family"),
    key("batch"),
    resident(OPTIMIZED, "steady_mb", "optimized steady MiB"),
    resident(ONNXRUNTIME, "steady_mb", "onnxruntime steady MiB"),
    Column("optimized / onnxruntime", _resident_ratio, two),
    resident(UNPLANNED, "steady_mb", "memory not kept: steady MiB"),
    resident(OPTIMIZED, "peak_mb", "optimized peak MiB"),
    resident(ONNXRUNTIME, "peak_mb", "onnxruntime peak MiB"),
    resident(UNPLANNED, "peak_mb", "memory not kept: peak MiB"),
]


def limit_columns(batch: int) -> list[Column]:
    return [
        key("family"),
        Column("MMACs per image", lambda row: row.get("macs"), lambda v: f"{v / 1e6:.1f}"),
        quantity("ms per image at peak", "peak_ms", significant),
        quantity(f"optimized at batch {batch}: fraction of peak", "fraction", significant),
    ]


def _rate(contender: str) -> Callable[[Row], Any]:
    return lambda row: row.get("images_per_second", contender=contender)


def _rate_ratio(row: Row) -> float | None:
    ours, theirs = _rate(OPTIMIZED)(row), _rate(TORCHVISION)(row)
    return None if ours is None or theirs is None else ours / theirs


ACCELERATOR = [
    key("family"),
    key("dtype"),
    Column("ours optimized", _rate(OPTIMIZED), lambda v: f"{v:.0f}"),
    Column("torchvision", _rate(TORCHVISION), lambda v: f"{v:.0f}"),
    Column("ours / torchvision", _rate_ratio, two),
]


def deploy_columns(models: Sequence[str]) -> list[Column]:
    def cell(model: str) -> Callable[[Row], Any]:
        def value(row: Row) -> Any:
            found = row.results.where("deploy", path=row.key["path"], model=model)
            return (found[0]["ms"], found[0]["ratio"]) if found else None

        return value

    return [
        Column("path", lambda row: row.get("title", model=models[0])),
        *(Column(m, cell(m), lambda v: f"{v[0]:.2f} ({v[1]:.2f})") for m in models),
    ]


# ---------------------------------------------------------------------- the views
def run_line(results: Results, source: str | None = None) -> list[str]:
    """When, where and how the run was made."""
    h = results.header
    parts = [f"Run of {h['date']} on {h['machine']}: `{h['command']}`"]
    load = h.get("load_average")
    if load and load.get("after") and h["benchmark"] != "deploy":  # deploy's caption has it
        parts.append(f"load average {_load(load['before'])} before, {_load(load['after'])} after")
    if source:
        parts.append(f"records: `{source}`")
    if h.get("note"):
        parts.append(h["note"])
    return ["; ".join(parts) + "."]


def _load(values: Sequence[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values)


def _versions(results: Results) -> str:
    return ", ".join(f"{name} {version}" for name, version in results.header["versions"].items())


def _malloc(settings: dict[str, Any]) -> str:
    if not settings.get("tuned_malloc"):
        return "as it comes"
    return (
        "keeping freed memory ("
        + " ".join(f"{k}={v}" for k, v in settings.get("malloc", {}).items())
        + ")"
    )


def inference_view(results: Results) -> list[str]:
    settings = results.header["settings"]
    threads = settings["threads"]
    caption = (
        f"{_versions(results)}; pinned to {threads} cores, {threads} threads (TensorFlow: "
        f"intra-op {threads}, inter-op 1); fp32 CPU, 224x224; median ms per batch; glibc malloc "
        f"{_malloc(settings)}. onnxruntime and openvino run our `torch.onnx.export(dynamo=True)` "
        "export at the batch's static shape (ONNX Runtime without spinning threads, OpenVINO in "
        "float32, unpinned); compiled (freezing): `torch.compile` of our eager model with "
        "Inductor's freezing, taking turns with the other PyTorch contenders; ours compiled "
        "(compile=True): `optimize_for_inference(compile=True)`, Inductor with the C++ wrapper "
        "on the public-ops copy, taking turns too, ours compiled / optimized the median of the "
        "paired ratios; keras (torch backend): in a process of its own, not paired call by "
        "call; ours folded (public ops): the optimized copy without its private oneDNN op "
        "(BatchNorm folded, channels-last, plain PyTorch layers), taking turns with the others, "
        "optimized / folded the median of the paired ratios. Errors: max |difference| / max(1, "
        "max |ours eager|)."
    )
    return [caption, *table(INFERENCE, rows(results, "inference", ["family", "batch"]))]


def readme_view(results: Results) -> list[str]:
    batches = [b for b in README_BATCHES if results.where("inference", batch=b)]
    selected = [
        row
        for row in rows(results, "inference", ["family", "batch"])
        if row.key["batch"] in batches
    ]
    caption = (
        f"{_versions(results)}; pinned to {results.header['settings']['threads']} cores; "
        f"batches {' and '.join(map(str, batches))} of the run."
    )
    return [caption, *table(README, selected)]


def training_view(results: Results) -> list[str]:
    found = rows(results, "training", ["family", "batch"])
    if not found:
        return []
    settings = results.header["settings"]
    caption = (
        "Training: one step (cross-entropy, backward, SGD lr 1e-3) in train mode, batch "
        f"{settings['train_batch']}, 224x224, fp32 CPU, ours against torchvision's same "
        f"architecture (none for V1), eager and `torch.compile`d (Inductor, default mode); "
        f"median ms per step over {settings['training_steps']} steps each after "
        f"{settings['training_warmup']} warm-up steps, all contenders taking turns with the "
        "order alternating; every ratio is the median of the paired ratios. Compile s: the "
        "first two compiled steps less two median steps (forward and backward compiled)."
    )
    return [caption, *table(TRAINING, found)]


def memory_view(results: Results) -> list[str]:
    found = rows(results, "memory", ["family", "batch"])
    if not found:
        return []
    caption = (
        "Resident memory (benchmarks/footprint.py), each contender in a fresh process with "
        f"glibc malloc {_malloc(results.header['settings'])}: steady = VmRSS after 10 calls "
        "minus VmRSS once the model and input were ready (what a runtime holds between calls: "
        "activations, packed kernels, its allocator's cache); peak = the peak during the calls "
        "minus the same. Memory not kept: `optimize_for_inference(keep_memory=False)`."
    )
    return [caption, *table(MEMORY, found)]


def limit_view(results: Results) -> list[str]:
    found = rows(results, "limit", ["family", "batch"])
    if not found:
        return []
    peak, threads = results.header.get("peak"), results.header["settings"]["threads"]
    if peak is None:
        caption = "The physical limit: the clock is unknown (neither lscpu nor /proc/cpuinfo)."
    else:
        caption = (
            "The physical limit: multiply-accumulates per image at 224x224 (every nn.Conv2d and "
            "nn.Linear of our model: output elements x in_channels / groups x kernel area); the "
            f"nominal fp32 peak of {threads} cores: {threads} cores x {peak['mhz']:.0f} MHz "
            f"({peak['clock_source']}) x {peak['floats']} floats per vector "
            f"({peak['vector_source']}) x 2 FMA units per core (assumed) x 2 FLOPs per FMA = "
            f"{peak['flops'] / 1e9:.1f} GFLOP/s, assuming every core holds that clock under "
            "vector load; ms per image at peak = 2 x MACs / peak; fraction of peak = 2 x MACs x "
            "batch / the optimized copy's time per batch / peak."
        )
    return [caption, *table(limit_columns(found[0].key["batch"]), found)]


def accelerator_view(results: Results) -> list[str]:
    found = rows(results, "accelerator", ["family", "dtype"])
    device = results.header.get("accelerator")
    if not found or not device:
        return []
    caption = (
        f"{device['name']}, batch {device['batch']}, channels-last"
        f"{', torch.compile' if device['compiled'] else ''}; images per second (higher is "
        "better)."
    )
    return [caption, *table(ACCELERATOR, found)]


def conversion_view(results: Results) -> list[str]:
    found = results.where("conversion")
    if not found:
        return []
    c = found[0]
    return [
        f"Converting an official-size MobileNetV2 file ({c['size_mb']:.1f} MiB, alpha 1.0, 224, "
        f"official layout): {c['convert_s'] * 1e3:.0f} ms, the converter's peak memory "
        f"{c['peak_mb']:.0f} MiB (peak RSS growth of a fresh process during the conversion); "
        f"loading the .safetensors into a model: {c['load_s'] * 1e3:.0f} ms."
    ]


def results_view(results: Results) -> list[str]:
    """Everything a run measured: the markdown benchmarks/run.py writes."""
    lines = [*run_line(results), "", *inference_view(results)]
    for view in (training_view, memory_view, limit_view, accelerator_view, conversion_view):
        part = view(results)
        if part:
            lines += ["", *part] if lines[-1] else part  # a table ends with its blank line
    return lines


def deploy_view(results: Results) -> list[str]:
    """The markdown benchmarks/deploy.py writes."""
    h, settings = results.header, results.header["settings"]
    threads, load = settings["threads"], h["load_average"]
    models = settings["models"]
    # A run converted from markdown knows only the worst error, not each cell's.
    worst = h.get("worst_error")
    if worst is None:
        worst = max(r["error"] for r in results.where("deploy") if r["error"] is not None)
    caption = (
        f"{_versions(results)}; fp32 CPU, batch 1, 224x224, models built for 224x224; pinned to "
        f"{threads} cores, {threads} threads; median ms per image over {settings['calls']} "
        "calls, each paired with an eager call (in brackets: the median ratio to eager, below 1 "
        f"is faster); load average {_load(load['before'])} before, {_load(load['after'])} after; "
        f"worst relative error against eager {worst:.1e}."
    )
    found = [row for row in rows(results, "deploy", ["path"]) if row.get("ms", model=models[0])]
    lines = [*run_line(results), "", caption, *table(deploy_columns(models), found)]
    if settings.get("skipped"):
        lines.append(f"Not installed, so not timed: {', '.join(settings['skipped'])}.")
    return lines


VIEWS: dict[str, Callable[[Results], list[str]]] = {
    "results": results_view,
    "inference": lambda results: [*run_line(results), "", *inference_view(results)],
    "readme": lambda results: [*run_line(results), "", *readme_view(results)],
    "training": training_view,
    "limit": limit_view,
    "accelerator": accelerator_view,
    "conversion": conversion_view,
    "deploy": deploy_view,
}


def text(lines: Sequence[str]) -> str:
    return "\n".join(lines).strip("\n") + "\n"


def markdown(results: Results) -> str:
    """The whole markdown of a run (what run.py and deploy.py write beside the records)."""
    view = deploy_view if results.header["benchmark"] == "deploy" else results_view
    return text(view(results))


# ---------------------------------------------------------------------- the docs
def render_block(name: str, source: str) -> str:
    if name not in VIEWS:
        raise KeyError(f"no benchmark table {name!r}; the views: {', '.join(VIEWS)}")
    return "\n" + text(VIEWS[name](Results.load(ROOT / source))) + "\n"


def refresh_page(page: Path, write: bool) -> list[str]:
    """Rewrite the benchmark tables of `page` from their records; returns the stale ones."""
    old = page.read_text()
    stale = []
    fenced = _fenced(old)

    def replace(found: re.Match) -> str:
        if any(start <= found.start() < end for start, end in fenced):
            return found[0]  # an example of the markers, in a code block
        body = render_block(found["name"], found["source"])
        if body != found["body"]:
            stale.append(f"{page.relative_to(ROOT)}: {found['name']} from {found['source']}")
        return found["begin"] + body + found["end"]

    new = BLOCK.sub(replace, old)
    if write and new != old:
        page.write_text(new)
    return stale


def _fenced(text: str) -> list[tuple[int, int]]:
    """The character ranges of the fenced code blocks of a Markdown text."""
    ranges, start, offset = [], None, 0
    for line in text.splitlines(keepends=True):
        if line.lstrip(" ").startswith("```"):
            if start is None:
                start = offset
            else:
                ranges.append((start, offset + len(line)))
                start = None
        offset += len(line)
    return ranges


def refresh_markdown(records: Path, write: bool) -> list[str]:
    """Re-render the markdown beside `records`; returns it where it was stale."""
    out = records.with_suffix(".md")
    new = markdown(Results.load(records))
    if out.exists() and out.read_text() == new:
        return []
    if write:
        out.write_text(new)
    return [str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)]


def committed_records() -> list[Path]:
    return sorted((ROOT / "benchmarks").glob("*.json"))


def refresh(write: bool) -> list[str]:
    """Every committed run's markdown and every docs table; returns what was stale."""
    stale = [s for records in committed_records() for s in refresh_markdown(records, write)]
    return stale + [s for page in PAGES for s in refresh_page(page, write)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "records", nargs="*", type=Path, help="render these runs only (default: every committed)"
    )
    parser.add_argument("--out", type=Path, help="with one RESULTS.json: where its markdown goes")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.records:
        if args.out and len(args.records) != 1:
            parser.error("--out takes one RESULTS.json")
        for records in args.records:
            out = args.out or records.with_suffix(".md")
            out.write_text(markdown(Results.load(records)))
            print(f"written to {out}")
        return 0
    stale = refresh(write=not args.check)
    for name in stale:
        print(("stale: " if args.check else "rewritten: ") + name)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
