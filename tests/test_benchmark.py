"""benchmarks/run.py runs end to end and writes the tables the README shows (tiny settings: this
checks the script, not the speed; the speed is read from its real runs). Its two costly
contenders, torch.compile with freezing (a compile takes tens of seconds) and Keras on its
PyTorch backend (a process per family and batch), are left out of that run and checked on their
own, cheaply. The run's records render its markdown through column specs (benchmarks/render.py),
and the tables the docs quote are checked against the committed records."""

import re
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import contenders, records, render

ROOT = Path(__file__).resolve().parents[1]


def cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table(text, column):
    """The rows, as dicts from header to cell, of the one Markdown table of `text` that has
    `column`."""
    found = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and all(line.startswith("|") for line in lines) and column in cells(lines[0]):
            found.append([dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]])
    assert len(found) == 1, f"{len(found)} tables with a {column!r} column:\n{text}"
    return found[0]


def assert_ratio(printed, numerator, denominator):
    """`printed` is numerator / denominator of the unrounded times, so it may differ from the
    ratio of the printed times (each rounded to 0.01) by their rounding and its own."""
    a, b = float(numerator), float(denominator)
    assert a > 0 and b > 0
    slack = 0.0051 + a / b * (0.0051 / a + 0.0051 / b)
    assert abs(float(printed) - a / b) <= slack, (printed, numerator, denominator)


def assert_close(printed, expected, relative):
    assert abs(float(printed) - expected) <= relative * expected, (printed, expected)


@pytest.mark.keras  # Keras on TensorFlow is one of the contenders
def test_benchmark_script_writes_every_table(tmp_path):
    out = tmp_path / "results.md"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            # One thread: on a machine busy with other work, two threads that wait for each
            # other at every operator make the run a hundred times slower.
            "--threads",
            "1",
            "--families",
            "mobilenet_v3_small",
            "mobilenet",
            "--batches",
            "2",
            "--rounds",
            "1",
            "--train-batch",
            "2",
            "--no-compile-cpu",
            "--no-keras-torch",
            "--accelerator",
            "cpu",
            "--accelerator-batch",
            "2",
            "--dtypes",
            "float32",
            "bfloat16",
            "--no-compile",
            "--memory-batches",
            "2",
            "--tuned-malloc",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.read_text()
    assert "pinned to 1 cores, 1 threads" in text
    # the records beside it: the header says how the run was made, and they render the markdown
    results = records.Results.load(tmp_path / "results.json")
    header = results.header
    assert header["benchmark"] == "run" and header["date"] in text and header["command"] in text
    assert header["command"].startswith("python benchmarks/run.py --threads 1 ")
    assert (
        header["settings"]["tuned_malloc"] and header["settings"]["malloc"] == records.TUNED_MALLOC
    )
    assert {"torch", "tensorflow", "keras", "onnxruntime", "openvino"} <= set(header["versions"])
    assert header["load_average"]["after"] is not None and header["cpus"] >= 1
    assert render.markdown(results) == text
    inference = results.where("inference", family="mobilenet", batch=2, contender="ours optimized")
    assert len(inference) == 1 and inference[0]["ms"] > 0 and inference[0]["error"] < 1e-4
    # --tuned-malloc restarts the script with glibc's settings in its environment
    assert "glibc malloc keeping freed memory (MALLOC_MMAP_MAX_=0" in text

    cpu = {(row["family"], row["batch"]): row for row in table(text, "onnxruntime")}
    assert set(cpu) == {("mobilenet_v3_small", "2"), ("mobilenet", "2")}, text
    for (family, _), row in cpu.items():
        for column in ("ours eager", "ours optimized", "timm", "keras", "onnxruntime", "openvino"):
            assert float(row[column]) > 0, column
        assert_ratio(row["keras / optimized"], row["keras"], row["ours optimized"])
        assert_ratio(row["optimized / onnxruntime"], row["ours optimized"], row["onnxruntime"])
        assert float(row["ours folded (public ops)"]) > 0
        assert 0 < float(row["optimized / folded"]) < 10  # paired, so not the ratio of medians
        assert float(row["ours optimized, memory not kept"]) > 0
        assert 0 < float(row["optimized / memory not kept"]) < 10
        # the exports compute what the eager model does, as the optimized copy does
        for column in ("optimized error", "onnxruntime error", "openvino error"):
            assert float(row[column]) < 1e-4, column
        # left out by the flags
        assert row["compiled (freezing)"] == "-" and row["keras (torch backend)"] == "-"
        compiled = ("ours compiled (compile=True)", "ours compiled / optimized")
        assert [row[column] for column in compiled] == ["-", "-"]
        assert row["ours compiled / onnxruntime"] == "-"
        if family == "mobilenet":  # torchvision has no MobileNet V1
            assert row["torchvision eager"] == "-" and row["eager / torchvision"] == "-"
        else:
            assert float(row["torchvision eager"]) > 0
            assert 0 < float(row["eager / torchvision"]) < 10

    training = table(text, "torchvision ms")
    assert [(row["family"], row["batch"]) for row in training] == [
        ("mobilenet_v3_small", "2"),
        ("mobilenet", "2"),
    ]
    v3, v1 = training
    assert float(v3["ours ms"]) > 0 and float(v3["torchvision ms"]) > 0
    assert 0 < float(v3["ours / torchvision"]) < 10
    assert float(v1["ours ms"]) > 0 and v1["torchvision ms"] == v1["ours / torchvision"] == "-"
    compiled = [c for c in v3 if "compile" in c]  # left out by --no-compile-cpu
    assert len(compiled) == 6 and all(row[c] == "-" for row in training for c in compiled)

    memory = {row["family"]: row for row in table(text, "onnxruntime steady MiB")}
    assert set(memory) == {"mobilenet_v3_small", "mobilenet"} and "VmRSS after 10 calls" in text
    for row in memory.values():
        assert row["batch"] == "2"
        for column in ("optimized peak MiB", "onnxruntime peak MiB", "memory not kept: peak MiB"):
            assert float(row[column]) > 0, column
        ours, theirs = float(row["optimized steady MiB"]), float(row["onnxruntime steady MiB"])
        assert ours > 0 and theirs > 0
        assert abs(float(row["optimized / onnxruntime"]) - ours / theirs) <= 0.02 * ours / theirs

    limit = {row["family"]: row for row in table(text, "MMACs per image")}
    assert set(limit) == {"mobilenet_v3_small", "mobilenet"}
    assert 56 <= float(limit["mobilenet_v3_small"]["MMACs per image"]) <= 66
    assert 560 <= float(limit["mobilenet"]["MMACs per image"]) <= 580  # 569 in the paper
    assert "x 2 FMA units per core (assumed) x 2 FLOPs per FMA" in text
    gflops = float(re.search(r"nominal fp32 peak of 1 cores: .* = ([\d.]+) GFLOP/s", text)[1])
    for family, row in limit.items():
        at_peak = float(row["ms per image at peak"])
        assert_close(at_peak, 2 * float(row["MMACs per image"]) / gflops, 0.01)
        fraction = row["optimized at batch 2: fraction of peak"]
        assert_close(fraction, at_peak * 2 / float(cpu[family, "2"]["ours optimized"]), 0.02)

    images = table(text, "dtype")
    assert len(images) == 6 and "cpu, batch 2, channels-last; images per second" in text
    assert {row["dtype"] for row in images} == {"float32", "bfloat16"}
    assert re.search(
        r"Converting an official-size MobileNetV2 file \(1\d\.\d MiB.*: \d+ ms, "
        r"the converter's peak memory \d+ MiB",
        text,
    )


def test_compiled_with_freezing_folds_the_weights_in():
    """The compiled contender is frozen: its weights are constants of the compiled graph, so
    changing the model's weights in place afterwards changes eager outputs but not its own (a
    model compiled without freezing, or recompiled, reads the new ones)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Hardswish()).eval()
    x = torch.rand(1, 3, 16, 16)
    compiled = contenders.compiled_with_freezing(model, x)
    with torch.inference_mode():
        before = compiled(x)
        torch.testing.assert_close(before, model(x))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    with torch.inference_mode():
        assert not torch.allclose(model(x), before)
        torch.testing.assert_close(compiled(x), before, rtol=0, atol=0)


@pytest.mark.keras  # the weights file and the expected outputs come from Keras on TensorFlow
def test_keras_on_the_torch_backend_runs_the_same_model(tmp_path, weights_file):
    kr = helpers.keras_reference()
    model = kr.build_keras("mobilenet_v3_small", classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    ms, outputs = contenders.keras_torch_ms(
        "mobilenet_v3_small", weights_file("mobilenet_v3_small", model), x, 1, 2, tmp_path
    )
    assert ms > 0
    expected = kr.keras_predict(model, x)
    assert np.abs(outputs - expected).max() / max(1.0, np.abs(expected).max()) < 1e-4


def small_results():
    """A run of one family at batches 1 and 8, V1 without torchvision (no such cells)."""
    header = {
        "benchmark": "run",
        "date": "2026-12-07",
        "machine": "a test machine",
        "command": "python benchmarks/run.py --families mobilenet",
        "versions": {"torch": "2.14.1"},
        "settings": {"threads": 2, "tuned_malloc": False},
        "load_average": None,
        "note": None,
    }
    found = []
    for batch, eager, optimized in ((1, 13.851, 8.8649), (8, 69.5, 53.794)):
        key = {"table": "inference", "family": "mobilenet", "batch": batch}
        found += [
            {**key, "contender": records.EAGER, "ms": eager, "error": None},
            {**key, "contender": records.OPTIMIZED, "ms": optimized, "error": 3.21e-05},
        ]
    key = {"table": "inference", "family": "mobilenet", "batch": 1}  # batch 8 has no Keras
    found.append({**key, "ratio": "keras / optimized", "value": 1.6251, "how": "of medians"})
    return records.Results(header, found)


def test_a_table_is_its_column_spec_over_the_records():
    results = small_results()
    columns = [
        render.key("family"),
        render.key("batch"),
        render.ms(records.OPTIMIZED, "optimized (ms)"),
        render.ms(records.TORCHVISION),  # V1: no record, so no cell
        render.ratio("keras / optimized"),
        render.error(records.OPTIMIZED, "optimized error"),
        render.error(records.EAGER, "eager error"),  # a record without the field
    ]
    lines = render.table(columns, render.rows(results, "inference", ["family", "batch"]))
    assert lines == [
        "",
        "| family | batch | optimized (ms) | torchvision eager | keras / optimized "
        "| optimized error | eager error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| mobilenet | 1 | 8.86 | - | 1.63 | 3.2e-05 | - |",
        "| mobilenet | 8 | 53.79 | - | - | 3.2e-05 | - |",
        "",
    ]
    # the headers come from the spec, so a column moved is moved with its cells
    swapped = render.table(columns[::-1], render.rows(results, "inference", ["family", "batch"]))
    assert swapped[3] == "| - | 3.2e-05 | 1.63 | - | 8.86 | 1 | mobilenet |"


def test_the_inference_table_renders_every_column_and_dashes_for_the_missing():
    text = render.markdown(small_results())
    assert text.startswith(
        "Run of 2026-12-07 on a test machine: `python benchmarks/run.py --families mobilenet`."
    )
    rows = table(text, "onnxruntime")
    assert [list(row) for row in rows] == [[c.header for c in render.INFERENCE]] * 2
    assert rows[0]["ours eager"] == "13.85" and rows[0]["keras / optimized"] == "1.63"
    assert rows[1]["keras / optimized"] == "-" and rows[1]["onnxruntime"] == "-"
    # no training, limit, accelerator or conversion records: no such tables
    assert "Training" not in text and "physical limit" not in text and "Converting" not in text


def test_records_round_trip_through_json(tmp_path):
    results = small_results()
    path = results.save(tmp_path / "results.json")
    again = records.Results.load(path)
    assert again.header == results.header and again.records == results.records
    assert render.markdown(again) == render.markdown(results)
    # one record a line, so a rerun's diff reads cell by cell
    lines = path.read_text().splitlines()
    assert sum(line.strip().startswith('{"table": "inference"') for line in lines) == 5
    with pytest.raises(ValueError, match="schema"):
        records.Results.from_json('{"schema": 0, "header": {}, "records": []}')


def test_the_docs_tables_are_views_of_the_committed_records():
    """Every marked table in README.md and docs/*.md, and every benchmarks/*.md, is what its
    committed records render: a hand edit, or records changed without `python -m
    benchmarks.render`, fails here."""
    assert render.refresh(write=False) == []
    quoted = {
        (found["name"], found["source"])
        for page in render.PAGES
        for found in render.BLOCK.finditer(page.read_text())
    }
    assert {
        ("readme", "benchmarks/results.json"),
        ("results", "benchmarks/results.json"),
        ("inference", "benchmarks/results-tuned-malloc.json"),
        ("deploy", "benchmarks/deploy-results.json"),
    } <= quoted
    for source in render.committed_records():
        header = records.Results.load(source).header
        assert header["date"] and header["machine"] and header["command"].startswith("python ")


def test_a_stale_docs_table_is_found_and_rewritten(tmp_path, monkeypatch):
    results = small_results()
    results.save(tmp_path / "run.json")
    page = tmp_path / "page.md"
    begin = "<!-- BEGIN benchmark table readme from run.json -->"
    end = "<!-- END benchmark table readme -->"
    page.write_text(
        f"Before.\n\n{begin}\n| a hand-made table |\n{end}\n\n```text\n{begin}\n{end}\n```\n"
    )
    monkeypatch.setattr(render, "ROOT", tmp_path)
    assert render.refresh_page(page, write=False) == ["page.md: readme from run.json"]
    assert render.refresh_page(page, write=True) == ["page.md: readme from run.json"]
    assert render.refresh_page(page, write=False) == []
    text = page.read_text()
    assert "hand-made" not in text and "| mobilenet | 8 | 69.50 | 53.79 | - | - | - |" in text
    assert text.endswith(f"```text\n{begin}\n{end}\n```\n")  # an example in a code block stays


def test_nothing_in_benchmarks_imports_the_tests():
    for source in (ROOT / "benchmarks").glob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(from|import)\s+(tests|helpers|conftest)\b", text, re.M), source
        assert '"tests"' not in text and "'tests'" not in text, source


def test_the_training_table_times_compiled_steps(monkeypatch):
    """The compiled contenders of the training table, with Dynamo's eager backend standing in
    for Inductor (whose compiles take minutes): every field filled where torchvision has the
    family, and the paired ratios are ratios of those steps."""
    from benchmarks import training

    compiles, compile = [], torch.compile

    def compile_eagerly(model):
        compiles.append(model)
        return compile(model, backend="eager")

    monkeypatch.setattr(training.torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    (record,) = training.training_records(["mobilenet_v3_small"], 2, 2, 1, compiled=True)
    assert len(compiles) == 2  # ours and torchvision's
    for field in ("ours_ms", "torchvision_ms", "ours_compiled_ms", "torchvision_compiled_ms"):
        assert record[field] > 0, field
    for field in ("ours_compile_s", "torchvision_compile_s"):
        assert record[field] >= 0, field
    for field in ("ratio", "compiled_ratio", "compiled_torchvision_ratio"):
        assert 0 < record[field] < 10, field
    assert record["compiled_ratio"] != record["ratio"]
