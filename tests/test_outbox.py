"""The SQLite outbox: order, acknowledgement, survival across reopen, cap with counted drops."""

from __future__ import annotations

import logging
import resource
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge_agent.link.outbox import Outbox


def test_messages_come_back_in_order_until_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_messages=100)
    ids = [outbox.put(f"t/{i}", f"p{i}".encode(), now=1000.0 + i) for i in range(5)]
    assert [m.topic for m in outbox.pending()] == [f"t/{i}" for i in range(5)]
    assert [m.id for m in outbox.pending(after_id=ids[2])] == ids[3:]
    outbox.ack(ids[0])
    outbox.ack(ids[0])  # a second PUBACK for the same message changes nothing
    assert [m.payload for m in outbox.pending(limit=2)] == [b"p1", b"p2"]
    stats = outbox.stats()
    assert (stats.pending, stats.dropped, stats.oldest_created_at) == (4, 0, 1001.0)
    assert not outbox.contains(ids[0]) and outbox.contains(ids[1])


def test_survives_reopen_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "o.sqlite"
    first = Outbox(path, max_messages=3)
    for i in range(5):
        first.put("t", bytes([i]), qos=1, retain=i == 4)
    first.close()
    again = Outbox(path, max_messages=3)
    pending = again.pending()
    assert [m.payload for m in pending] == [b"\x02", b"\x03", b"\x04"]
    assert pending[-1].retain and pending[-1].qos == 1
    assert again.stats().dropped == 2
    again.put("t", b"\x05")
    assert again.stats().dropped == 3 and again.stats().pending == 3
    # ids keep growing after a drop of the newest-ever row: order is never reused
    assert again.pending()[-1].id > pending[-1].id


def test_cap_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages must be at least 1"):
        Outbox(tmp_path / "o.sqlite", max_messages=0)


def test_unreadable_file_is_moved_aside_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"power cut on a worn SD card" * 200)
    with caplog.at_level(logging.ERROR, logger="edge_agent.link.outbox"):
        outbox = Outbox(path, max_messages=10)
    [aside] = tmp_path.glob("o.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(b"power cut")  # kept for inspection
    assert f"outbox {path} is unreadable (file is not a database): moved to {aside}" in caplog.text
    outbox.put("t", b"after")
    assert [m.payload for m in outbox.pending()] == [b"after"]
    assert outbox.stats().corrupt_files == 1
    outbox.close()
    assert Outbox(path, max_messages=10).stats().corrupt_files == 1  # persists: status keeps showing it


def test_other_open_errors_are_raised_not_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.mkdir()  # cannot be opened, but not a corrupt file: nothing to move aside
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        Outbox(path, max_messages=10)
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


@contextmanager
def _files_limited_to(size: int) -> Iterator[None]:
    """No file of this process may grow past `size` bytes: a write beyond fails (EFBIG) as on a full disk.

    A disk that fills by the byte lets a test pick where the write fails: between two statements too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("room_frames", range(8))
def test_a_write_cut_short_by_a_full_disk_keeps_nothing_of_the_message(
    tmp_path: Path, room_frames: int
) -> None:
    """At the cap a put inserts, deletes the oldest and counts the drop: a disk that fills after any of these
    must leave the outbox as it was (and its count right), never the new message kept over the cap."""
    outbox = Outbox(tmp_path / "o.sqlite", max_messages=3)
    for i in range(3):
        outbox.put("t", f"old-{i}".encode())
    wal = tmp_path / "o.sqlite-wal"
    room = wal.stat().st_size + room_frames * (24 + 4096)  # WAL frames of 4 KiB pages
    try:
        with _files_limited_to(room):
            outbox.put("t", b"new")
    except sqlite3.Error:
        kept = [b"old-0", b"old-1", b"old-2"]
        dropped = 0
    else:
        kept = [b"old-1", b"old-2", b"new"]
        dropped = 1
    assert [m.payload for m in outbox.pending()] == kept
    stats = outbox.stats()
    assert (stats.pending, stats.dropped) == (3, dropped)
    outbox.put("t", b"after")  # the disk has room again: the outbox works on
    assert [m.payload for m in outbox.pending()][-1] == b"after" and outbox.stats().pending == 3
