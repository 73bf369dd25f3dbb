"""A benchmark run as records: what `benchmarks/run.py` and `benchmarks/deploy.py` measured, saved
as JSON beside the markdown rendered from it (benchmarks/render.py).

A results file is `{"schema": 1, "header": {...}, "records": [...]}`. The header says how the
run was made: `benchmark` ("run" or "deploy"), `date` (UTC, YYYY-MM-DD) and `started` (ISO
time, or null), `machine` (in words) with `cpu_model` and `cpus` (online), `versions` (name to
version, in the order printed), `command` (the exact command line), `settings` (the options
and process settings: threads, batches, rounds, `tuned_malloc` and the `malloc` environment,
...), `load_average` (`before` and `after`, or null), `peak` (the nominal fp32 peak, see
peak.py) and `accelerator` where measured, and `note` (null, or how the records were made
where not by a run, such as converted from an older run's markdown).

Each record is one measured cell, a flat dict with `table` naming its table:

- `inference`: `family`, `batch`, `contender`, `ms` (the median per batch) and `error` (max
  |difference| / max(1, max |ours eager|), null where not checked); or, instead of `contender`,
  `ratio` (a name from PAIRED or OF_MEDIANS), `value` and `how` ("paired": the median of the
  ratios of calls that took turns; "of medians").
- `training`: `family`, `batch`, `ours_ms`, `torchvision_ms`, `ratio` (paired, ours /
  torchvision); under `torch.compile`: `ours_compiled_ms`, `torchvision_compiled_ms`,
  `compiled_ratio` (paired, ours compiled / ours eager), `compiled_torchvision_ratio` (paired,
  ours compiled / torchvision compiled), `ours_compile_s` and `torchvision_compile_s`; null
  (or absent, in older runs) where not measured, torchvision's for V1.
- `limit`: `family`, `batch` (the largest timed), `macs` per image, `peak_ms` (ms per image at
  the peak) and `fraction` (of the peak reached by the optimized copy), the last two null
  without a peak.
- `accelerator`: `family`, `dtype`, `contender`, `images_per_second`.
- `conversion`: `convert_s`, `load_s`, `peak_mb`, `size_mb`.
- `memory`: `family`, `batch`, `contender`, `steady_mb` (resident memory after the timed calls,
  over that before the first) and `peak_mb` (the peak during the calls, over the same), each
  contender in a fresh process.
- `deploy`: `path`, `title`, `model`, `ms`, `ratio` (paired, to eager), `error`.

Only the standard library here: rendering needs neither torch nor the frameworks.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1

# The contenders of the inference table, as records and tables name them.
EAGER, OPTIMIZED, TORCHVISION, TIMM, KERAS = (
    "ours eager",
    "ours optimized",
    "torchvision eager",
    "timm",
    "keras",
)
COMPILED, ONNXRUNTIME, OPENVINO, KERAS_TORCH = (
    "compiled (freezing)",
    "onnxruntime",
    "openvino",
    "keras (torch backend)",
)
# The optimized copy without its private oneDNN op (`fuse=False`): BatchNorm folded, weights
# channels-last, every layer a public PyTorch one. optimized / this is what the op buys.
FOLDED = "ours folded (public ops)"
# `optimize_for_inference(compile=True)`: the public-ops copy compiled by Inductor with the C++
# wrapper (`inference.COMPILE_OPTIONS`).
OURS_COMPILED = "ours compiled (compile=True)"
# The optimized copy with `keep_memory=False`: every activation from malloc afresh, as before
# the copy kept its own (nn/memory.py). optimized / this is what keeping the memory buys.
UNPLANNED = "ours optimized, memory not kept"
# Ratios of contenders that took turns call by call: the median of the paired ratios.
PAIRED = {
    "eager / torchvision": (EAGER, TORCHVISION),
    "optimized / folded": (OPTIMIZED, FOLDED),
    "optimized / memory not kept": (OPTIMIZED, UNPLANNED),
    "ours compiled / optimized": (OURS_COMPILED, OPTIMIZED),
}
# Ratios of contenders that ran in blocks of their own: the ratio of their medians.
OF_MEDIANS = {
    "keras / optimized": (KERAS, OPTIMIZED),
    "optimized / onnxruntime": (OPTIMIZED, ONNXRUNTIME),
    "ours compiled / onnxruntime": (OURS_COMPILED, ONNXRUNTIME),
}
# glibc settings that keep freed memory for reuse instead of returning it to the system, so large
# activations stop costing a page fault per 4 KiB page; glibc reads them at process start.
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967296"}

Record = dict[str, Any]


class Results:
    """A run: its header and its records, with lookups by key."""

    def __init__(self, header: dict[str, Any], records: Iterable[Record] = ()):
        self.header = header
        self.records = list(records)

    def where(self, table: str, **key: Any) -> list[Record]:
        """The records of `table` whose fields include `key`."""
        return [
            r
            for r in self.records
            if r.get("table") == table and all(r.get(k) == v for k, v in key.items())
        ]

    def get(self, table: str, field: str, **key: Any) -> Any:
        """`field` of the one record of `table` with `key`; None where there is none."""
        found = self.where(table, **key)
        if len(found) > 1:
            raise ValueError(f"{len(found)} {table} records with {key}")
        return found[0].get(field) if found else None

    def keys(self, table: str, fields: Sequence[str], **key: Any) -> list[tuple]:
        """The distinct values of `fields` among `table`'s records with `key`, in order."""
        seen: dict[tuple, None] = {}
        for r in self.where(table, **key):
            if all(f in r for f in fields):
                seen.setdefault(tuple(r[f] for f in fields), None)
        return list(seen)

    def to_json(self) -> str:
        """The header indented, one record a line (so a rerun's diff reads cell by cell)."""
        header = json.dumps(self.header, indent=2)
        records = ",\n".join("    " + json.dumps(r) for r in self.records)
        body = f"[\n{records}\n  ]" if self.records else "[]"
        return (
            f'{{\n  "schema": {SCHEMA},\n  "header": '
            + header.replace("\n", "\n  ")
            + f',\n  "records": {body}\n}}\n'
        )

    @classmethod
    def from_json(cls, text: str) -> Results:
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"records of schema {data.get('schema')}, not {SCHEMA}")
        return cls(data["header"], data["records"])

    def save(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> Results:
        return cls.from_json(Path(path).read_text())


def records_path(markdown: Path) -> Path:
    """Where the records of the markdown `markdown` go: beside it, as .json."""
    return Path(markdown).with_suffix(".json")


def cpu_model() -> str | None:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def versions(names: Sequence[str]) -> dict[str, str]:
    """name -> version of what is installed, in the order of `names`: an imported module's
    `__version__` (torch's carries its build, +cu130), else the distribution's (tensorflow
    also as tensorflow-cpu); names not installed are left out."""
    found = {}
    for name in names:
        module = sys.modules.get(name.replace("-", "_"))
        version = getattr(module, "__version__", None)
        for distribution in (name, f"{name}-cpu"):
            if version is not None:
                break
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                version = importlib.metadata.version(distribution)
        if version is not None:
            found[name] = str(version)
    return found


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def command_line(script: str | Path, argv: Sequence[str]) -> str:
    """`python SCRIPT ARGV` as typed from the checkout's root."""
    script = Path(script).resolve()
    if script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *argv])


def header(
    benchmark: str, command: str, settings: dict[str, Any], version_names: Sequence[str]
) -> dict[str, Any]:
    """The header of a run starting now on this machine (load_average's `after` is filled in
    at the end, see finish)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    model, cpus = cpu_model(), os.cpu_count()
    return {
        "benchmark": benchmark,
        "date": now.date().isoformat(),
        "started": now.isoformat(timespec="seconds"),
        "machine": f"{model or 'an unknown CPU'}, {cpus} CPUs online",
        "cpu_model": model,
        "cpus": cpus,
        "python": sys.version.split()[0],
        "versions": versions(version_names),
        "command": command,
        "settings": settings,
        "load_average": {"before": load_average(), "after": None},
        "note": None,
    }


def finish(results: Results) -> Results:
    """Record the load average at the end of the run."""
    if results.header.get("load_average") is not None:
        results.header["load_average"]["after"] = load_average()
    return results
