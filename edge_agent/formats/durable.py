"""Durable appends to line files (the audit log, the nonce journal): a line is on disk before it counts,
and a line the disk refuses is cut back off, so that the next one never lands on a torn line."""

from __future__ import annotations

import os
from pathlib import Path


def append_durably(path: Path, line: bytes) -> int:
    """Append `line` and fsync; where it starts. OSError when the disk refuses it (nothing of it is left)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
        return start
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or removal in the folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
