"""weights="imagenet" end to end over real HTTP: a server on 127.0.0.1 serves a real Keras-layout
file (seeded weights, written as the official files are), and we check download, checksums,
conversion, caching, the download rules against hostile servers (size, stalls, redirects),
failures, and processes loading at once or killed mid-download. Nothing of the network is
mocked; only the base URL points at the local server."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import keras_model, keras_reference
from weights_server import (
    WeightsServer,
    closed_port_url,
    partial_downloads,
    self_signed_certificate,
)

import torch_mobilenets as tm
from torch_mobilenets.pretrained import download, registry, transfer
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


# Each way a server can fail or misbehave, and what the error says. The stall window is 1 s here.
REFUSED = {
    "truncate": r"the transfer ended after \d+ of \d+ bytes; nothing was kept",
    "error": "HTTP 500 Internal Server Error",
    "endless": r"the body goes on past \d+ bytes, the most accepted; nothing was kept "
    r"\(an official mobilenet_v2_0.35_128 file is about \d+ bytes: its 1,691,208 parameters",
    "huge length": r"the server announces 10737418240 bytes \(Content-Length\), over the "
    r"\d+ accepted",
    "drip": r"it stalled: less than 1024 bytes arrived in 1 s \(\d+ bytes in all; "
    r"\$TORCH_MOBILENETS_DOWNLOAD_STALL_S sets the window\)",
    "silent": "it stalled: less than 1024 bytes arrived in 1 s [(]0 bytes in all",
    "drip headers": "it stalled: less than 1024 bytes arrived in 1 s",
}


@pytest.mark.parametrize("mode", REFUSED)
def test_hostile_or_broken_servers_fail_fast_and_keep_nothing(
    server, hub, keras_file, monkeypatch, mode
):
    monkeypatch.setenv(transfer.STALL_WINDOW_ENV, "1")
    path = server.serve(TOFU.subdir, TOFU.file_name, keras_file.read_bytes(), mode=mode)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=REFUSED[mode]) as error:
        tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert message.startswith(f"Could not download the official weights {TOFU.url}: ")
    assert f"weights='/path/to/{TOFU.file_name}'" in message and "\n" not in message
    assert server.requests[path] == 1
    if mode == "endless":  # read up to the limit, not on
        assert server.bytes_sent[path] < download.size_limit(TOFU) + (32 << 20)
    assert kept_files(hub) == []


def test_size_limit_follows_the_parameters():
    # The documented rule (docs/bad-input.md), worked by hand from Keras' published parameter
    # counts: 1.5 x (4 bytes a parameter + 2 MiB), never over 64 MiB.
    small = registry.find_checkpoint("mobilenet", 0.25, 128, include_top=False)
    large = registry.find_checkpoint("mobilenet_v2", 1.4, 224, include_top=True)
    assert (small.parameters, large.parameters) == (218_544, 6_156_712)
    # 1.5 x (874_176 + 2_097_152) and 1.5 x (24_626_848 + 2_097_152)
    assert (small.expected_bytes, large.expected_bytes) == (2_971_328, 26_724_000)
    assert (download.size_limit(small), download.size_limit(large)) == (4_456_992, 40_086_000)
    # the largest official file (V2 1.4 with its top) has the largest limit, under the cap
    assert max(download.size_limit(c) for c in registry.list_weights()) == 40_086_000
    # a checkpoint of 20 million parameters would get 1.5 x 82 MB: the 64 MiB cap instead
    huge = SimpleNamespace(expected_bytes=4 * 20_000_000 + 2_097_152)
    assert download.size_limit(huge) == 67_108_864
    # Real official files whose sizes are known (two from the checksum notes, the others as
    # Keras' download progress printed them) fit their limits.
    known = {
        ("mobilenet", 0.25, 224, False): 2_108_140,
        ("mobilenet_v2", 0.35, 96, True): 7_149_872,
        ("mobilenet_v2", 1.0, 224, False): 9_406_464,
    }
    for (family, alpha, rows, top), size in known.items():
        checkpoint = registry.find_checkpoint(family, alpha, rows, include_top=top)
        assert 4 * checkpoint.parameters < size <= download.size_limit(checkpoint)


@pytest.mark.keras
@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_0.25_128_no_top",  # the smallest: the most HDF5 overhead per weight
        "mobilenet_v2_1.4_224",  # the largest
        "mobilenet_v3_large_1.0_224",
        "mobilenet_v3_small_minimalistic_1.0_224_no_top",
    ],
)
def test_files_as_keras_writes_them_fit_the_size_limit(tmp_path, name):
    kr = keras_reference()
    checkpoint = next(c for c in registry.list_weights() if c.name == name)
    kwargs = {k: v for k, v in checkpoint.builder_kwargs().items() if k != "input_shape"}
    if checkpoint.family in ("mobilenet", "mobilenet_v2"):
        kwargs["input_shape"] = (checkpoint.rows, checkpoint.rows, 3)
    model = kr.keras_builder(checkpoint.family)(weights=None, **kwargs)
    path = tmp_path / checkpoint.file_name
    kr.write_keras2_h5(model, path, checkpoint.family)
    size = path.stat().st_size
    assert 4 * checkpoint.parameters < size <= checkpoint.expected_bytes
    assert size <= download.size_limit(checkpoint) / 1.5


# Redirect chains from the file's own path: each hop's Location as the server sends it ("{base}"
# the server's URL, "FILE" the file's new place), and what the refusal says (None: followed).
REDIRECTS = {
    "five hops, relative and absolute": (["/r1", "r2", "/r3", "{base}r4", "FILE"], None),
    "six hops": (["/r1", "/r2", "/r3", "/r4", "/r5", "FILE"], "more than 5 redirects"),
    "a loop": (["/r1", "/r2", "/r1"], "more than 5 redirects"),
    "to a local file": (["file:///etc/passwd"], "a redirect to 'file:///etc/passwd'; only http"),
    "to ftp": (["ftp://127.0.0.1/x.h5"], "only http and https are followed"),
}


@pytest.mark.parametrize("case", REDIRECTS)
def test_redirects_are_followed_within_the_rules(server, hub, keras_file, reference_state, case):
    hops, refused = REDIRECTS[case]
    target = server.serve("elsewhere", TOFU.file_name, keras_file.read_bytes())
    here = f"/{TOFU.subdir}/{TOFU.file_name}"
    for i, hop in enumerate(hops):
        location = target if hop == "FILE" else hop.format(base=server.base_url)
        server.redirects[here] = (301 if i % 2 else 302, location)
        here = urllib.parse.urlsplit(urllib.parse.urljoin(server.base_url + here, location)).path
    if refused is None:
        with pytest.warns(UserWarning, match="NOT verified"):
            model = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
        assert_same_state(model.state_dict(), reference_state)
        assert server.requests[target] == 1 and sum(server.requests.values()) == 6
        return
    with pytest.raises(DownloadError, match=refused) as error:
        tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert str(error.value).startswith(f"Could not download the official weights {TOFU.url}: ")
    assert server.requests[target] == 0 and sum(server.requests.values()) <= 6
    assert kept_files(hub) == []


def test_https_is_never_redirected_to_http(tmp_path, monkeypatch, keras_file, reference_state):
    tls = self_signed_certificate(tmp_path)
    if tls is None:
        pytest.skip("needs the openssl command to make a certificate")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[0]))  # trust the test's certificate
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "torch_mobilenets"
    data = keras_file.read_bytes()
    with WeightsServer(tls=tls) as secure, WeightsServer() as plain:
        monkeypatch.setenv(registry.BASE_URL_ENV, secure.base_url)
        start = f"/{TOFU.subdir}/{TOFU.file_name}"
        moved = plain.serve("elsewhere", TOFU.file_name, data)
        secure.redirects[start] = (302, f"{plain.base_url.rstrip('/')}{moved}")
        with pytest.raises(DownloadError, match="a redirect from https to plain http") as error:
            tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
        assert TOFU.url.startswith("https://") and TOFU.url in str(error.value)
        assert plain.requests[moved] == 0 and kept_files(hub) == []
        # https to https is followed: the refusal above is the rule, not a broken TLS setup.
        secure.redirects[start] = (302, "/elsewhere/" + TOFU.file_name)
        secure.serve("elsewhere", TOFU.file_name, data)
        with pytest.warns(UserWarning, match="NOT verified"):
            model = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert_same_state(model.state_dict(), reference_state)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_stall_window_setting_is_checked(monkeypatch, value):
    monkeypatch.setenv(transfer.STALL_WINDOW_ENV, value)
    with pytest.raises(ValueError, match=f"{transfer.STALL_WINDOW_ENV}='{value}': expected"):
        transfer.stall_window()
    monkeypatch.setenv(transfer.STALL_WINDOW_ENV, "2.5")
    assert transfer.stall_window() == 2.5


def test_a_first_download_that_is_no_keras_file_is_not_trusted(
    server, hub, keras_file, reference_state
):
    path = server.serve(TOFU.subdir, TOFU.file_name, b"<html>a captive portal</html>" * 100)
    with pytest.raises(ChecksumError, match="not a Keras weights file of mobilenet_v2_0.35_128"):
        tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert kept_files(hub) == []  # nothing recorded: the real file is still welcome
    server.files[path] = keras_file.read_bytes()
    with pytest.warns(UserWarning, match="NOT verified"):
        model = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert_same_state(model.state_dict(), reference_state)


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


# Imports, says so, and waits for the go (a line on stdin), so that every loader asks at once.
LOADER = """
import hashlib, sys, time
import torch, torch_mobilenets as tm
rows = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
model = tm.MobileNetV2(weights="imagenet", alpha=0.35, input_shape=(3, rows, rows))
state = model.state_dict()
print(start, hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in state)).hexdigest())
"""


def loader(rows: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LOADER, str(rows)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def state_digest(state) -> str:
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in state)).hexdigest()


def test_eight_processes_loading_at_once_download_each_file_once(
    server, hub, keras_file, reference_state
):
    # Three files Keras publishes no checksum for, so that their first-seen records are written
    # at the same time too; the seeded 0.35 weights fit all three sizes.
    sizes = [128, 128, 128, 160, 160, 160, 192, 192]
    entries = {rows: registry.find_checkpoint(FAMILY, 0.35, rows, True) for rows in set(sizes)}
    paths = {
        rows: server.serve(c.subdir, c.file_name, keras_file.read_bytes())
        for rows, c in entries.items()
    }
    server.delay = 0.03  # about 3 s a file: every loader asks while its file is under way
    loaders = [loader(rows) for rows in sizes]
    try:
        for process in loaders:
            assert process.stdout.readline() == "ready\n", process.communicate()[1]
        for process in loaders:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=300) for process in loaders]
    finally:
        for process in loaders:
            process.kill()
    for process, (out, err) in zip(loaders, outputs):
        assert process.returncode == 0, err
    expected = state_digest(reference_state)
    for rows, (out, _) in zip(sizes, outputs):
        start, digest = out.split()
        assert digest == expected
        assert float(start) < server.finished_at[paths[rows]]  # it waited for the other's
    assert [server.requests[paths[rows]] for rows in sorted(paths)] == [1, 1, 1]
    seen = json.loads((hub / download.SEEN_HASHES_FILE).read_text())
    assert seen == {c.file_name: sha256(keras_file.read_bytes()) for c in entries.values()}
    assert sorted(kept_files(hub)) == sorted(
        [n for c in entries.values() for n in (c.file_name, c.converted_name)]
        + [download.SEEN_HASHES_FILE]
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_loader_killed_mid_download_leaves_a_clean_load(server, hub, keras_file, reference_state):
    path = server.serve(TOFU.subdir, TOFU.file_name, keras_file.read_bytes())
    server.delay = 0.05
    killed = loader(128)
    try:
        assert killed.stdout.readline() == "ready\n", killed.communicate()[1]
        killed.stdin.write("go\n")
        killed.stdin.flush()
        assert server.first_block_sent.wait(timeout=120)
        assert partial_downloads(hub, TOFU.file_name)  # blocks in the .part file
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert 0 < server.bytes_sent[path] < len(keras_file.read_bytes())
    assert list(hub.glob(f".{TOFU.file_name}.*.part"))  # what a hard kill leaves
    assert not (hub / TOFU.file_name).exists()

    server.delay = 0
    with pytest.warns(UserWarning, match="NOT verified"):
        model = tm.MobileNetV2(weights="imagenet", **MODEL_ARGS)
    assert_same_state(model.state_dict(), reference_state)
    assert server.requests[path] == 2
    assert sorted(p.name for p in hub.iterdir() if not p.name.endswith(".lock")) == sorted(
        [TOFU.file_name, TOFU.converted_name, download.SEEN_HASHES_FILE]
    )
