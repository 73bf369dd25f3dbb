"""python -m convert --all-official OUT_DIR against the local server: a few registry entries, an
interrupted run resumed, a checksum failure reported, parity reports against Keras."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import keras_model
from weights_server import WeightsServer, partial_downloads

from torch_mobilenets.cli import main
from torch_mobilenets.pretrained import registry

ROOT = Path(__file__).resolve().parent.parent
# Registry order: 160, 128, 96. The seeded 0.35 model stands in for all three (V2 weights do not
# depend on the input size); 96 has a published sha256, which these bytes fail.
NAMES = ["mobilenet_v2_0.35_160", "mobilenet_v2_0.35_128", "mobilenet_v2_0.35_96"]
ENTRIES = [next(c for c in registry.list_weights() if c.name == name) for name in NAMES]


def command(out_dir, names, *extra):
    only = [arg for name in names for arg in ("--only", name)]
    return [sys.executable, "-m", "convert", "--all-official", str(out_dir), *only, *extra]


def test_all_official_resumes_reports_and_skips(tmp_path, weights_file):
    data = weights_file(
        "mobilenet_v2",
        keras_model("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35),
        "keras2_h5",
    ).read_bytes()
    out = tmp_path / "official"
    with WeightsServer() as server:
        paths = [server.serve(c.subdir, c.file_name, data) for c in ENTRIES]
        env = dict(
            os.environ,
            no_proxy="127.0.0.1",
            PYTHONPATH=str(ROOT),
            **{registry.BASE_URL_ENV: server.base_url},
        )

        # 1. Interrupted in the middle of the first download.
        server.delay = 0.05
        first = subprocess.Popen(
            command(out, NAMES, "--no-parity"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert server.first_block_sent.wait(timeout=120)
        partial = partial_downloads(out / "keras", ENTRIES[0].file_name)
        first.kill()
        first.wait(timeout=30)
        assert 0 < server.bytes_sent[paths[0]] < len(data)
        assert partial and not (out / "keras" / ENTRIES[0].file_name).exists()

        # 2. Run again: the partial is discarded and fetched anew, two checkpoints are converted
        # and compared with Keras, the third fails its checksum and is reported.
        server.delay = 0
        second = subprocess.run(
            command(out, NAMES), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 4, second.stdout + second.stderr
        lines = second.stdout.splitlines()
        assert lines[0].startswith(f"[1/3] {NAMES[0]}: converted") and "vs Keras" in lines[0]
        assert lines[1].startswith(f"[2/3] {NAMES[1]}: converted")
        assert lines[2].startswith(f"[3/3] {NAMES[2]}: FAILED") and "sha256" in lines[2]
        assert lines[-1] == "2 of 3 checkpoints done, 1 failed (run again to retry)"
        assert [server.requests[p] for p in paths] == [2, 1, 1]
        assert not list((out / "keras").glob(".*.part"))
        assert not (out / "keras" / ENTRIES[2].file_name).exists()
        for entry in ENTRIES[:2]:
            assert (out / entry.converted_name).exists()
            stem = Path(entry.file_name).stem
            report = json.loads((out / "parity" / f"{stem}.json").read_text())
            assert report["checkpoint"] == entry.name and report["compared"] == "logits"
            assert report["within_tolerance"] and report["top1_agreement"] == 1.0
            assert report["max_abs_difference"] < 1e-3 and report["input"] == [
                4,
                entry.rows,
                entry.rows,
                3,
            ]
        summary = (out / "parity.md").read_text()
        assert NAMES[0] in summary and NAMES[1] in summary and NAMES[2] not in summary
        seen = json.loads((out / "keras" / "sha256_seen.json").read_text())
        assert set(seen) == {ENTRIES[0].file_name, ENTRIES[1].file_name}

        # 3. Finished checkpoints are skipped: nothing fetched, nothing recomputed.
        third = subprocess.run(
            command(out, NAMES[:2]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert third.returncode == 0, third.stdout + third.stderr
        assert third.stdout.count("done already, skipped") == 2
        assert [server.requests[p] for p in paths] == [2, 1, 1]


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "the following arguments are required: src, dst"),
        (["in.h5"], "the following arguments are required: dst"),
        (["--all-official", "out", "in.h5"], "takes no src"),
        (["--all-official", "out", "--alpha", "1.0"], "takes no --alpha"),
        (["in.h5", "out.safetensors", "--only", "x"], "--only and --parity go with --all-official"),
    ],
)
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_nothing_selected_is_a_usage_error(tmp_path, capsys):
    assert main(["convert", "--all-official", str(tmp_path), "--only", "resnet*"]) == 2
    assert "no official checkpoint matches" in capsys.readouterr().err
