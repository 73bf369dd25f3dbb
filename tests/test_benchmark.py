"""benchmarks/run.py runs end to end and writes the table the README shows (tiny settings: this
checks the script, not the speed; the speed is read from its real runs)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.keras  # Keras on TensorFlow is one of the contenders


def test_benchmark_script_writes_every_table(tmp_path):
    out = tmp_path / "results.md"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            "--families",
            "mobilenet_v3_small",
            "mobilenet",
            "--batches",
            "2",
            "--rounds",
            "1",
            "--accelerator",
            "cpu",
            "--accelerator-batch",
            "2",
            "--dtypes",
            "float32",
            "bfloat16",
            "--no-compile",
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
    assert "pinned to 2 cores, 2 threads" in text
    # --tuned-malloc restarts the script with glibc's settings in its environment
    assert "glibc malloc keeping freed memory (MALLOC_MMAP_MAX_=0" in text
    cpu = [r for r in text.splitlines() if re.match(r"\| mobilenet\w* \| 2 \|", r)]
    assert len(cpu) == 2, text
    for row in cpu:
        cells = [c.strip() for c in row.strip("|").split("|")]
        eager, optimized, keras = float(cells[2]), float(cells[3]), float(cells[6])
        assert eager > 0 and optimized > 0 and keras > 0
        assert abs(float(cells[8]) - keras / optimized) < 0.02  # from unrounded times
        assert float(cells[9]) < 1e-4  # the optimized copy is within parity of the eager one
        if cells[0] == "mobilenet":
            assert cells[4] == "-" and cells[7] == "-"  # torchvision has no MobileNet V1
        else:
            assert float(cells[4]) > 0 and 0 < float(cells[7]) < 10
    images = [
        r for r in text.splitlines() if re.match(r"\| mobilenet\w* \| (float32|bfloat16) \|", r)
    ]
    assert len(images) == 6 and "cpu, batch 2, channels-last; images per second" in text
    assert re.search(
        r"Converting an official-size MobileNetV2 file \(1\d\.\d MiB.*: \d+ ms, "
        r"the converter's peak memory \d+ MiB",
        text,
    )
