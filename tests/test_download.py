"""weights="imagenet" end to end over real HTTP: a server on 127.0.0.1 serves a real Keras-layout
file (seeded weights, written as the official files are), and we check download, checksums,
conversion, caching, failures and two processes loading at once. Nothing of the network is
mocked; only the base URL points at the local server."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import keras_model
from weights_server import WeightsServer, closed_port_url

import torch_mobilenets as tm
from torch_mobilenets.pretrained import download, registry
from torch_mobilenets.pretrained.download import ChecksumError, DownloadError

ROOT = Path(__file__).resolve().parent.parent
FAMILY = "mobilenet_v2"
KWARGS = dict(input_shape=(96, 96, 3), alpha=0.35)
# A V2 file Keras publishes no checksum for (trust on first use). Its weights fit the seeded
# 0.35 model: V2 weights do not depend on the input size.
TOFU = registry.find_checkpoint("mobilenet_v2", 0.35, 128, include_top=True)
MODEL_ARGS = dict(alpha=0.35, input_shape=(3, 128, 128))


@pytest.fixture(scope="module")
def keras_file(weights_file):
    return weights_file(FAMILY, keras_model(FAMILY, **KWARGS), "keras2_h5")


@pytest.fixture(scope="module")
def reference_state(keras_file):
    return tm.MobileNetV2(weights=str(keras_file), **MODEL_ARGS).state_dict()


@pytest.fixture
def server():
    with WeightsServer() as s:
        yield s


@pytest.fixture
def hub(tmp_path, monkeypatch, server):
    """torch's hub cache under tmp_path and the official base URL on the local server; returns
    the cache directory torch-mobilenets uses."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(registry.BASE_URL_ENV, server.base_url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv(download.PROGRESS_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints" / "torch_mobilenets"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kept_files(directory: Path) -> list:
    """What a failed download left, lock files aside."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_imagenet_downloads_records_converts_and_caches(server, hub, keras_file, reference_state):
    data = keras_file.read_bytes()
    path = server.serve(TOFU.subdir, TOFU.file_name, data)
    hub.mkdir(parents=True)
    stale = hub / f".{TOFU.file_name}.x1y2z3.part"  # left by a process that died mid-download
    stale.write_bytes(data[:1000])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert server.requests[path] == 1
    assert_same_state(model.state_dict(), reference_state)
    assert sorted(kept_files(hub)) == sorted(
        [TOFU.file_name, TOFU.converted_name, download.SEEN_HASHES_FILE]
    )
    assert (hub / TOFU.file_name).read_bytes() == data
    # No published checksum: the sha256 seen is recorded, and a warning says it was not
    # verified, pointing at the caller's line rather than inside the package.
    recorded = json.loads((hub / download.SEEN_HASHES_FILE).read_text())
    assert recorded == {TOFU.file_name: sha256(data)}
    unverified = [w for w in caught if "NOT verified" in str(w.message)]
    assert len(unverified) == 1 and sha256(data) in str(unverified[0].message)
    assert unverified[0].filename == __file__

    # Cached: no request, no warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert server.requests[path] == 1 and not [w for w in caught if "verified" in str(w.message)]
    assert_same_state(again.state_dict(), reference_state)

    # The Keras file alone is cached (say the conversion was deleted): converted again, offline.
    (hub / TOFU.converted_name).unlink()
    tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert server.requests[path] == 1 and (hub / TOFU.converted_name).exists()

    # Trust on first use means later downloads must match what was recorded.
    for name in (TOFU.file_name, TOFU.converted_name):
        (hub / name).unlink()
    server.modes[path] = "corrupt"
    with pytest.raises(ChecksumError, match="recorded when .* was first downloaded"):
        tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert kept_files(hub) == [download.SEEN_HASHES_FILE]


def test_checksum_mismatch_is_an_error_and_the_file_is_discarded(server, hub, keras_file):
    data = keras_file.read_bytes()
    # The registry entry, with the real hash of the file it should be: the check is not vacuous.
    entry = dataclasses.replace(
        TOFU, hash_algorithm="sha256", file_hash=sha256(data), hash_status="published"
    )
    path = server.serve(entry.subdir, entry.file_name, data, mode="corrupt")
    with pytest.raises(ChecksumError) as error:
        download.converted_checkpoint(entry)
    message = str(error.value)
    assert entry.url in message and sha256(data) in message and "discarded" in message
    assert kept_files(hub) == []

    server.modes[path] = "ok"
    converted = download.converted_checkpoint(entry)
    assert converted == hub / entry.converted_name and converted.exists()
    # Verified against a known hash: nothing to record.
    assert kept_files(hub) == sorted([entry.file_name, entry.converted_name])


def test_registry_md5_is_checked_for_v3(server, hub, keras_file):
    entry = registry.find_checkpoint("mobilenet_v3_small", 0.75, 224, include_top=True)
    server.serve(entry.subdir, entry.file_name, keras_file.read_bytes())  # not the official bytes
    with pytest.warns(UserWarning, match="undefined or non-square"):  # Keras' V3 warning
        with pytest.raises(ChecksumError, match=f"md5 .* is not the expected {entry.file_hash}"):
            tm.MobileNetV3Small(weights="imagenet", alpha=0.75)
    assert kept_files(hub) == []


def test_cached_file_with_wrong_bytes_is_fetched_again(server, hub, keras_file):
    data = keras_file.read_bytes()
    entry = dataclasses.replace(
        TOFU, hash_algorithm="sha256", file_hash=sha256(data), hash_status="published"
    )
    path = server.serve(entry.subdir, entry.file_name, data)
    hub.mkdir(parents=True)
    (hub / entry.file_name).write_bytes(data[:-10])
    with pytest.warns(UserWarning, match="Downloading it again"):
        download.converted_checkpoint(entry)
    assert server.requests[path] == 1 and (hub / entry.file_name).read_bytes() == data


def test_local_file_in_the_cache_is_used_offline(hub, monkeypatch, keras_file, reference_state):
    monkeypatch.setenv(registry.BASE_URL_ENV, closed_port_url())
    hub.mkdir(parents=True)
    (hub / TOFU.file_name).write_bytes(keras_file.read_bytes())
    with pytest.warns(UserWarning, match="NOT verified"):
        model = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert_same_state(model.state_dict(), reference_state)


@pytest.mark.parametrize(
    "mode,message",
    [
        ("truncate", r"the transfer ended after \d+ of \d+ bytes"),
        ("error", "HTTP 500"),
    ],
)
def test_broken_transfers_fail_and_keep_nothing(server, hub, keras_file, mode, message):
    server.serve(TOFU.subdir, TOFU.file_name, keras_file.read_bytes(), mode=mode)
    with pytest.raises(DownloadError, match=message) as error:
        tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert TOFU.url in str(error.value)
    assert kept_files(hub) == []


def test_offline_fails_fast_naming_the_url_and_the_local_alternative(hub, monkeypatch):
    base = closed_port_url()
    monkeypatch.setenv(registry.BASE_URL_ENV, base)
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        tm.MobileNetV2(weights="imagenet")
    assert time.monotonic() - start < 5
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    message = str(error.value)
    assert f"{base}mobilenet_v2/{file_name}" in message
    assert f"weights='/path/to/{file_name}'" in message
    assert kept_files(hub) == []


def test_progress_bar_on_request_only(server, hub, keras_file, capsys):
    server.serve(TOFU.subdir, TOFU.file_name, keras_file.read_bytes())
    entry = dataclasses.replace(
        TOFU,
        hash_algorithm="sha256",
        file_hash=sha256(keras_file.read_bytes()),
        hash_status="published",
    )
    download.download(entry, progress=False)
    assert "Downloading" not in capsys.readouterr().err
    (hub / entry.file_name).unlink()
    download.download(entry, progress=True)
    err = capsys.readouterr().err
    assert f'Downloading: "{entry.url}"' in err and entry.file_name in err


LOADER = """
import hashlib, time
import torch, torch_mobilenets as tm
start = time.time()
model = tm.MobileNetV2(weights="imagenet", alpha=0.35, input_shape=(3, 128, 128))
state = model.state_dict()
print(start, hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in state)).hexdigest())
"""


def test_two_processes_loading_at_once_download_once(server, hub, keras_file, reference_state):
    path = server.serve(TOFU.subdir, TOFU.file_name, keras_file.read_bytes())
    server.delay = 0.03  # about 3 s for the file: both processes ask while it is under way
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", LOADER],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [loader.communicate(timeout=120) for loader in loaders]
    for loader, (out, err) in zip(loaders, outputs):
        assert loader.returncode == 0, err
    starts, digests = zip(*(out.split() for out, _ in outputs))
    assert server.requests[path] == 1
    assert max(float(s) for s in starts) < server.finished_at[path]
    expected = hashlib.sha256(
        b"".join(reference_state[k].numpy().tobytes() for k in reference_state)
    ).hexdigest()
    assert digests == (expected, expected)
    assert sorted(kept_files(hub)) == sorted(
        [TOFU.file_name, TOFU.converted_name, download.SEEN_HASHES_FILE]
    )
