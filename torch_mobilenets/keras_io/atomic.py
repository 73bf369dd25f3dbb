"""Writing files so that an interrupted run leaves the old file or the whole new one, never a
part of one, and no temporary file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .reader import WeightsFileError


def check_output_directory(dst: Path) -> None:
    if not dst.parent.is_dir():
        raise WeightsFileError(f"{dst}: the output directory {dst.parent} does not exist")


def atomic_write(dst: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` into a temporary file next to `dst`, flushed to disk, then renamed over
    `dst` in one step: readers see the old file or the whole new one, never part of it. On any
    exception (KeyboardInterrupt included) the temporary file is removed; only a hard kill can
    leave one (hidden, `.<name>.*.tmp`), and never a partial `dst`."""
    check_output_directory(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename, or a crash could keep a hole
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(dst: Path, text: str) -> None:
    """`text` into `dst`, atomically (see `atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(dst, write)
