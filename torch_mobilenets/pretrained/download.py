"""`weights="imagenet"`: the official Keras file, downloaded, verified, converted once and cached.

Both the Keras `.h5` and its safetensors conversion live in torch's hub cache,
`<torch.hub.get_dir()>/checkpoints/torch_mobilenets/` (so `TORCH_HOME` moves them). A download goes
to a temporary `.part` file and becomes the cached file only once complete and verified; the
conversion is written atomically too. One lock file per checkpoint (an OS file lock, released
when its process dies) makes processes that load the same model at once wait for a single
download instead of fetching or writing it twice.

Files with no published checksum (most V2 files) are trusted on first use: the sha256 seen is
recorded in `sha256_seen.json` in the cache directory, a warning says it was not verified, and
later downloads into that directory must match it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from .._version import __version__
from ..keras_io import convert
from ..keras_io.atomic import atomic_write_text
from .registry import HASH_STATUS_NOTES, Checkpoint, imagenet_checkpoint

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

SEEN_HASHES_FILE = "sha256_seen.json"
# Seconds to wait for a connection or for the next block of data.
TIMEOUT_S = 60
# "0" turns progress bars off, "1" forces them on; by default they show on a terminal only.
PROGRESS_ENV = "TORCH_MOBILENETS_PROGRESS"
_progress_override: contextvars.ContextVar = contextvars.ContextVar("progress", default=None)


class DownloadError(OSError):
    """The official file could not be fetched (offline, HTTP error, cut-off transfer); the message
    names the URL and how to use a local file instead."""


class ChecksumError(DownloadError):
    """A downloaded or cached file is not the expected one; it has been deleted."""


def cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / "torch_mobilenets"


@contextlib.contextmanager
def progress_bars(enabled: bool | None):
    """Within the block, show (True) or hide (False) download progress bars; None: the default."""
    token = _progress_override.set(enabled)
    try:
        yield
    finally:
        _progress_override.reset(token)


def imagenet_weights(config: dict, stacklevel: int = 1) -> Path:
    """The converted official checkpoint for a model built with `config` (Keras' choice of file),
    fetched into the cache if needed. Warnings point `stacklevel` frames up (1: the caller)."""
    return converted_checkpoint(
        imagenet_checkpoint(config, stacklevel + 1), stacklevel=stacklevel + 1
    )


def converted_checkpoint(
    checkpoint: Checkpoint,
    directory=None,
    keras_directory=None,
    progress: bool | None = None,
    stacklevel: int = 1,
) -> Path:
    """The `.safetensors` conversion of `checkpoint`'s Keras file, in `directory` (default: the
    cache); downloads and verifies the Keras file into `keras_directory` (default: the same).
    Warnings point `stacklevel` frames up (1: the caller)."""
    directory = Path(directory or cache_dir())
    keras_directory = Path(keras_directory or directory)
    converted = directory / checkpoint.converted_name
    if converted.exists():  # written atomically, so complete if it exists
        return converted
    directory.mkdir(parents=True, exist_ok=True)
    keras_directory.mkdir(parents=True, exist_ok=True)
    with _checkpoint_lock(keras_directory, checkpoint):
        if converted.exists():  # another process made it while we waited for the lock
            return converted
        keras_file = _fetch_verified(checkpoint, keras_directory, progress, stacklevel + 1)
        convert(keras_file, converted, **checkpoint.architecture())
    return converted


def download(
    checkpoint: Checkpoint, directory=None, progress: bool | None = None, stacklevel: int = 1
) -> Path:
    """The verified Keras file of `checkpoint` in `directory` (default: the cache), downloaded
    unless a verified copy is already there. Warnings point `stacklevel` frames up."""
    directory = Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    with _checkpoint_lock(directory, checkpoint):
        return _fetch_verified(checkpoint, directory, progress, stacklevel + 1)


# ------------------------------------------------------------------------------ under the lock
def _fetch_verified(
    checkpoint: Checkpoint, directory: Path, progress: bool | None, stacklevel: int
) -> Path:
    target = directory / checkpoint.file_name
    # We hold the lock, so any partial download left here is from a process that died.
    for stale in directory.glob(f".{checkpoint.file_name}.*.part"):
        stale.unlink()
    if target.exists():
        try:
            _verify(checkpoint, _digests_of(target), directory, str(target), stacklevel + 1)
            return target
        except ChecksumError as error:
            target.unlink()
            warnings.warn(f"{error} Downloading it again.", UserWarning, stacklevel=stacklevel + 1)
    fd, part = tempfile.mkstemp(prefix=f".{checkpoint.file_name}.", suffix=".part", dir=directory)
    os.close(fd)
    try:
        digests = _http_get(checkpoint, Path(part), directory, progress)
        _verify(checkpoint, digests, directory, checkpoint.url, stacklevel + 1)
        os.replace(part, target)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return target


def _http_get(checkpoint: Checkpoint, part: Path, directory: Path, progress: bool | None) -> dict:
    """Stream the file into `part`; returns its md5 and sha256. Raises DownloadError with the URL
    and the offline alternative on any failure, a short transfer included."""
    url = checkpoint.url
    request = urllib.request.Request(url, headers={"User-Agent": f"torch-mobilenets/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise DownloadError(
            _failure(checkpoint, directory, f"HTTP {error.code} {error.reason}")
        ) from None
    except (urllib.error.URLError, OSError) as error:  # refused, no route, no DNS, timeout
        raise DownloadError(
            _failure(checkpoint, directory, getattr(error, "reason", error))
        ) from None
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    received = 0
    with response, open(part, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with _progress_bar(checkpoint, total, directory, progress) as bar:
            while True:
                try:
                    block = response.read(1 << 16)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(
                        _failure(
                            checkpoint,
                            directory,
                            f"the transfer broke off after {received} bytes "
                            f"({error!r}); nothing was kept",
                        )
                    ) from None
                if not block:
                    break
                out.write(block)
                md5.update(block)
                sha256.update(block)
                received += len(block)
                bar.update(len(block))
    # http.client ends a body cut short by the server as if it were complete.
    if total is not None and received != total:
        raise DownloadError(
            _failure(
                checkpoint,
                directory,
                f"the transfer ended after {received} of {total} bytes; nothing was kept",
            )
        )
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _failure(checkpoint: Checkpoint, directory: Path, reason) -> str:
    return (
        f"Could not download the official weights {checkpoint.url}: {reason}. If this "
        f"machine cannot fetch it, get that file elsewhere and pass its path instead, "
        f"weights='/path/to/{checkpoint.file_name}' (or its `python -m convert` output), "
        f"or put it at {directory / checkpoint.file_name}."
    )


def _verify(
    checkpoint: Checkpoint, digests: dict, directory: Path, where: str, stacklevel: int
) -> None:
    if checkpoint.hash_algorithm:
        expected, got = checkpoint.file_hash, digests[checkpoint.hash_algorithm]
        if got != expected:
            raise ChecksumError(
                f"{where}: {checkpoint.hash_algorithm} {got} is not the expected {expected} "
                f"({checkpoint.hash_status}: {HASH_STATUS_NOTES[checkpoint.hash_status]}), so "
                f"the file was discarded. If you trust a copy of {checkpoint.file_name} anyway, "
                f"pass weights='/path/to/{checkpoint.file_name}'."
            )
        return
    # Trust on first use: nothing published to check against.
    seen = digests["sha256"]
    recorded = _record_first_seen(directory, checkpoint.file_name, seen)
    if recorded is None:
        warnings.warn(
            f"{checkpoint.file_name} was NOT verified: Keras publishes no checksum for it. Its "
            f"sha256 {seen} is now recorded in {directory / SEEN_HASHES_FILE}, and later "
            "downloads must match it (trust on first use).",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    elif recorded != seen:
        raise ChecksumError(
            f"{where}: sha256 {seen} differs from {recorded}, recorded when "
            f"{checkpoint.file_name} was first downloaded into {directory} (trust on first use), "
            f"so the file was discarded. If the official file has really changed, delete its "
            f"entry in {directory / SEEN_HASHES_FILE}."
        )


def _record_first_seen(directory: Path, file_name: str, sha256: str) -> str | None:
    """The sha256 recorded for `file_name`; records `sha256` and returns None if there was none."""
    record = directory / SEEN_HASHES_FILE
    with _file_lock(directory / f"{SEEN_HASHES_FILE}.lock"):
        seen = json.loads(record.read_text()) if record.exists() else {}
        if file_name in seen:
            return seen[file_name]
        seen[file_name] = sha256
        atomic_write_text(record, json.dumps(seen, indent=1, sort_keys=True))
    return None


def _digests_of(path: Path) -> dict:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


# ------------------------------------------------------------------------ locks, progress bars
def _checkpoint_lock(directory: Path, checkpoint: Checkpoint):
    return _file_lock(directory / f"{checkpoint.file_name}.lock")


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive OS lock on `path`, held for the block. The lock file stays: removing it
    while another process waits on it would let a third one in."""
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        else:
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after ~10 s; keep waiting
                    continue
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            else:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def _progress_bar(
    checkpoint: Checkpoint, total: int | None, directory: Path, progress: bool | None
):
    from tqdm import tqdm

    if progress is None:
        progress = _progress_override.get()
    if progress is None and os.environ.get(PROGRESS_ENV, "") != "":
        progress = os.environ[PROGRESS_ENV].lower() not in ("0", "false", "no", "off")
    # disable=None: tqdm shows the bar only on a terminal.
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=checkpoint.file_name,
        disable=None if progress is None else not progress,
    )
    if not bar.disable:
        bar.write(
            f'Downloading: "{checkpoint.url}" to {directory / checkpoint.file_name}',
            file=sys.stderr,
        )
    return bar
