"""No temporary file is left behind by the command line, whatever stops it mid-write: an
exception, SIGINT or SIGTERM. Each case stops one write at the moment its temporary file is
complete and about to be renamed (the widest window: everything is on disk), then lists every
folder the command writes to.

The writes: a conversion (`convert SRC DST`), the way back (`convert --to keras`), and, in
`--all-official`, the download (`.part` renamed to the `.h5`), the first-seen record of a file
Keras publishes no checksum for, and the conversion. The signals are real, sent to a real
process; the exception is raised in-process.
"""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import keras_model
from weights_server import WeightsServer

from torch_mobilenets import keras_io
from torch_mobilenets.cli import main
from torch_mobilenets.pretrained import download, registry

ROOT = Path(__file__).resolve().parent.parent
FAMILY = "mobilenet_v2"
KWARGS = dict(input_shape=(96, 96, 3), alpha=0.35)
# No published checksum: its first download writes the first-seen record.
OFFICIAL = registry.find_checkpoint(FAMILY, 0.35, 128, include_top=True)

# Runs the command line with the rename onto the file named argv[1] held up: it prints the
# temporary file's path and sleeps, for the test to stop it there.
HELD_UP = """
import os, sys, time
from pathlib import Path

replace = os.replace

def held_up_replace(src, dst):
    if Path(dst).name == sys.argv[1]:
        print("renaming", src, flush=True)
        time.sleep(120)
    replace(src, dst)

os.replace = held_up_replace
from torch_mobilenets.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def keras_file(weights_file):
    return weights_file(FAMILY, keras_model(FAMILY, **KWARGS), "keras2_h5")


@pytest.fixture(scope="module")
def checkpoint(keras_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    keras_io.convert(keras_file, path)
    return path


@pytest.fixture
def server(keras_file):
    with WeightsServer() as s:
        s.serve(OFFICIAL.subdir, OFFICIAL.file_name, keras_file.read_bytes())
        yield s


def every_file(directory: Path) -> list:
    """Every file under `directory`, relative, lock files aside."""
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    )


# case -> (the file whose rename is held up, the command's arguments after `torch-mobilenets`,
# what the output folder holds afterwards). SRC, CKPT and OUT stand for the Keras file, the
# checkpoint and the output folder.
ALL_OFFICIAL = ["convert", "--all-official", "OUT", "--only", OFFICIAL.name, "--no-parity"]
CASES = {
    "conversion": ("out.safetensors", ["convert", "SRC", "OUT/out.safetensors"], []),
    "way back": ("out.h5", ["convert", "--to", "keras", "CKPT", "OUT/out.h5"], []),
    "download": (OFFICIAL.file_name, ALL_OFFICIAL, [f"keras/{download.SEEN_HASHES_FILE}"]),
    "first-seen record": (download.SEEN_HASHES_FILE, ALL_OFFICIAL, []),
    "all-official conversion": (
        OFFICIAL.converted_name,
        ALL_OFFICIAL,
        [f"keras/{OFFICIAL.file_name}", f"keras/{download.SEEN_HASHES_FILE}"],
    ),
}


def arguments(argv: list, keras_file: Path, checkpoint: Path, out: Path) -> list:
    names = {"SRC": str(keras_file), "CKPT": str(checkpoint), "OUT": str(out)}
    return [names.get(a, a.replace("OUT/", f"{out}/") if a.startswith("OUT/") else a) for a in argv]


@pytest.fixture
def environment(server, monkeypatch, tmp_path):
    monkeypatch.setenv(registry.BASE_URL_ENV, server.base_url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "case,signum",
    [(case, signal.SIGTERM) for case in CASES]
    + [("download", signal.SIGINT), ("first-seen record", signal.SIGINT)],
)
def test_a_signal_mid_write_leaves_no_temporary_file(
    case, signum, keras_file, checkpoint, environment, tmp_path
):
    held_up, argv, kept = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_UP, held_up, *arguments(argv, keras_file, checkpoint, out)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(180, process.kill)  # a hang fails the test instead of blocking
    watchdog.start()
    try:
        line = process.stdout.readline()
        assert line.startswith("renaming "), process.communicate()[1]
        temporary = Path(line.split(" ", 1)[1].strip())
        assert temporary.exists() and temporary.is_relative_to(out)  # mid-write
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    expected_code = 143 if signum == signal.SIGTERM else 130
    assert process.returncode == expected_code, stderr
    *warned, last = stderr.splitlines()  # all-official warns of the first-seen record
    assert all(line.startswith("torch-mobilenets convert: warning: ") for line in warned), stderr
    assert last.startswith("torch-mobilenets convert: error: interrupted"), stderr
    assert last.endswith(" (SIGTERM)") == (signum == signal.SIGTERM)
    assert every_file(out) == kept


@pytest.mark.parametrize("case", CASES)
def test_an_error_mid_write_leaves_no_temporary_file(
    case, keras_file, checkpoint, environment, tmp_path, monkeypatch, capsys
):
    held_up, argv, kept = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == held_up:
            assert Path(src).exists()
            raise OSError(28, "No space left on device")
        replace(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", failing_replace)
        code = main(arguments(argv, keras_file, checkpoint, out))
    output = capsys.readouterr()
    assert "No space left on device" in output.out + output.err
    assert code == (4 if "--all-official" in argv else 3)
    assert every_file(out) == kept
