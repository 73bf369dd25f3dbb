"""`weights="imagenet"`: the official Keras file, downloaded, verified, converted once and cached.

Both the Keras `.h5` and its safetensors conversion live in torch's hub cache,
`<torch.hub.get_dir()>/checkpoints/torch_mobilenets/` (so `TORCH_HOME` moves them). A download goes
to a temporary `.part` file and becomes the cached file only once complete and verified; the
conversion is written atomically too. One lock file per checkpoint (an OS file lock, released
when its process dies) makes processes that load the same model at once wait for a single
download instead of fetching or writing it twice.

The transfer follows `transfer`'s rules (size limit, stall rule, redirects); the size limit of a
checkpoint is `size_limit`. Every failure is a DownloadError naming the URL and the offline
alternative, and leaves no file behind: the cache holds nothing but lock files and the
first-seen record afterwards. On an exception or KeyboardInterrupt the temporary files are
removed at once; after a hard kill (SIGKILL, or SIGTERM without a handler, which ends Python
without running cleanup code) the next load of that checkpoint removes them.

Files with no published checksum (most V2 files) are trusted on first use: once the first
download proves to be a Keras file of the checkpoint's architecture, its sha256 is recorded in
`sha256_seen.json` in the cache directory, a warning says it was not verified, and later
downloads into that directory must match it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

from ..keras_io import WeightsFileError, convert, file_config, read
from ..keras_io.atomic import atomic_write_text
from . import transfer
from .registry import HASH_STATUS_NOTES, Checkpoint, imagenet_checkpoint

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

SEEN_HASHES_FILE = "sha256_seen.json"
# A download may be SIZE_MARGIN times the size its checkpoint's parameters give, never more than
# MAX_DOWNLOAD_BYTES (the largest official file, V2 1.4 with its top, is about 25 MB).
SIZE_MARGIN = 1.5
MAX_DOWNLOAD_BYTES = 64 << 20
# "0" turns progress bars off, "1" forces them on; by default they show on a terminal only.
PROGRESS_ENV = "TORCH_MOBILENETS_PROGRESS"
_progress_override: contextvars.ContextVar = contextvars.ContextVar("progress", default=None)


class DownloadError(OSError):
    """The official file could not be fetched (offline, HTTP error, a cut-off, oversized or
    stalled transfer, a refused redirect); the message names the URL and how to use a local file
    instead."""


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
        _remove_leftovers(directory, f".{converted.name}.*.tmp")
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


def size_limit(checkpoint: Checkpoint) -> int:
    """The most bytes a download of `checkpoint` may have: SIZE_MARGIN times the size its
    parameters give, and never over MAX_DOWNLOAD_BYTES."""
    return min(MAX_DOWNLOAD_BYTES, int(SIZE_MARGIN * checkpoint.expected_bytes))


# ------------------------------------------------------------------------------ under the lock
def _remove_leftovers(directory: Path, pattern: str) -> None:
    """Temporary files a killed process left (a hard kill runs no cleanup). Called under the
    checkpoint's lock, so no live process is writing them."""
    for stale in directory.glob(pattern):
        stale.unlink(missing_ok=True)


def _fetch_verified(
    checkpoint: Checkpoint, directory: Path, progress: bool | None, stacklevel: int
) -> Path:
    target = directory / checkpoint.file_name
    _remove_leftovers(directory, f".{checkpoint.file_name}.*.part")
    if target.exists():
        try:
            _accept(checkpoint, target, directory, str(target), stacklevel + 1)
            return target
        except ChecksumError as error:
            target.unlink()
            warnings.warn(f"{error} Downloading it again.", UserWarning, stacklevel=stacklevel + 1)
    part = _http_get(checkpoint, directory, progress)
    try:
        _accept(checkpoint, part, directory, checkpoint.url, stacklevel + 1)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return target


def _http_get(checkpoint: Checkpoint, directory: Path, progress: bool | None) -> Path:
    """The file, streamed into a new `.part` file in `directory` under the download rules
    (`transfer`); DownloadError with the URL and the offline alternative on any failure, and
    then no `.part` is left."""
    limit = size_limit(checkpoint)
    part = None
    try:
        with transfer.get(checkpoint.url, limit) as response:
            # Created only once the headers passed: a refused response writes nothing.
            fd, name = tempfile.mkstemp(
                prefix=f".{checkpoint.file_name}.", suffix=".part", dir=directory
            )
            part = Path(name)
            with (
                os.fdopen(fd, "wb") as out,
                _progress_bar(checkpoint, response.length, directory, progress) as bar,
            ):
                for block in response.blocks():
                    out.write(block)
                    bar.update(len(block))
    except BaseException as error:
        if part is not None:
            part.unlink(missing_ok=True)
        if isinstance(error, transfer.TransferError):
            reason = f"{error}; nothing was kept"
            if isinstance(error, transfer.TooLarge):
                reason += (
                    f" (an official {checkpoint.name} file is about "
                    f"{checkpoint.expected_bytes} bytes: its {checkpoint.parameters:,} "
                    "parameters as float32, and HDF5's overhead)"
                )
            raise DownloadError(_failure(checkpoint, directory, reason)) from None
        raise
    return part


def _failure(checkpoint: Checkpoint, directory: Path, reason) -> str:
    return (
        f"Could not download the official weights {checkpoint.url}: {reason}. If this "
        f"machine cannot fetch it, get that file elsewhere and pass its path instead, "
        f"weights='/path/to/{checkpoint.file_name}' (or its `torch-mobilenets convert` "
        f"output), or put it at {directory / checkpoint.file_name}."
    )


def _accept(checkpoint: Checkpoint, path: Path, directory: Path, where: str, stacklevel: int):
    """Raises ChecksumError unless `path` is `checkpoint`'s file: it has the published
    checksum, or, for files Keras publishes none for, the sha256 recorded when the file was first
    downloaded into `directory`. A file seen for the first time must read as a Keras file of the
    checkpoint's architecture before its sha256 is recorded (trust on first use), with a warning
    that it was not verified."""
    digests = _digests_of(path)
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
    seen = digests["sha256"]
    with _file_lock(directory / f"{SEEN_HASHES_FILE}.lock"):
        recorded = _seen_hashes(directory).get(checkpoint.file_name)
    if recorded is not None and recorded != seen:
        raise ChecksumError(
            f"{where}: sha256 {seen} differs from {recorded}, recorded when "
            f"{checkpoint.file_name} was first downloaded into {directory} (trust on first use), "
            f"so the file was discarded. If the official file has really changed, delete its "
            f"entry in {directory / SEEN_HASHES_FILE}."
        )
    if recorded is not None:
        return
    # Nothing to check the bytes against, so at least they must be what they claim to be: a
    # first download that is not becomes no reference for later ones.
    try:
        file_config(read(path), **checkpoint.architecture())
    except WeightsFileError as error:
        detail = str(error).removeprefix(f"{path}: ")
        raise ChecksumError(
            f"{where}: not a Keras weights file of {checkpoint.name} ({detail}), so the file "
            "was discarded."
        ) from None
    _record_first_seen(directory, checkpoint.file_name, seen)
    warnings.warn(
        f"{checkpoint.file_name} was NOT verified: Keras publishes no checksum for it. Its "
        f"sha256 {seen} is now recorded in {directory / SEEN_HASHES_FILE}, and later "
        "downloads must match it (trust on first use).",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def _seen_hashes(directory: Path) -> dict:
    record = directory / SEEN_HASHES_FILE
    return json.loads(record.read_text()) if record.exists() else {}


def _record_first_seen(directory: Path, file_name: str, sha256: str) -> None:
    """Adds `file_name`'s sha256 to the record, atomically (other files' entries may be
    recorded by other processes at the same time)."""
    with _file_lock(directory / f"{SEEN_HASHES_FILE}.lock"):
        _remove_leftovers(directory, f".{SEEN_HASHES_FILE}.*.tmp")
        seen = _seen_hashes(directory)
        seen[file_name] = sha256
        atomic_write_text(directory / SEEN_HASHES_FILE, json.dumps(seen, indent=1, sort_keys=True))


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
