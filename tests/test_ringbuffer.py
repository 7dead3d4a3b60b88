"""The ring buffer: retention by age and quota (injected clock), holds, recovery, index rebuild."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import sqlite3
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.commands import cli
from edge_agent.formats.bundle import MANIFEST_NAME
from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.sealing import SegmentWriter, verify_chain, verify_segment
from edge_agent.storage.index import SegmentRecord
from edge_agent.storage.maintenance import Maintenance
from edge_agent.storage.retention import DAY
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import seal_segment
from tests.storage_support import Keys, make_keys, storage

T0 = 1_700_000_000.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _add(
    ring: RingBuffer,
    keys: Keys,
    start: float,
    seconds: float = 10.0,
    camera: str = "cam1",
    payload: int = 1000,
) -> SegmentRecord:
    """Seal a segment of `seconds` starting at `start` through the ring's real write path."""
    stream = StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, start)
    frames = int(seconds * 10)
    packets = [
        EncodedPacket(i * 100, i * 100, 100, i == 0, os.urandom(payload // frames + 1)) for i in range(frames)
    ]
    return seal_segment(ring, stream, packets, keys.device, keys.csu.public_key(), camera)


def _ring(root: Path, keys: Keys, clock: Clock, **fields: object) -> RingBuffer:
    return RingBuffer(root, storage(root, **fields), clock, device_public_key=keys.device.public_key())


def _check_consistent(ring: RingBuffer, keys: Keys) -> list[SegmentRecord]:
    """Every row's file verifies and names itself; the chain of each camera is whole."""
    records = []
    for camera in ring.cameras():
        rows = ring.segments(camera)
        infos = [
            verify_segment(
                r.path,
                keys.device.public_key(),
                allow_partial=r.state == "partial",
                expect_camera=camera,
                expect_sequence=r.sequence,
            )
            for r in rows
        ]
        assert [i.sha256 for i in infos] == [r.sha256 for r in rows]
        assert verify_chain(infos) == []
        records.extend(rows)
    on_disk = {p for p in ring.root.glob("*/*.seg")}
    assert on_disk == {r.path for r in records}
    return records


def test_rows_answer_time_range_queries(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    for i in range(5):
        _add(ring, keys, T0 + 10 * i)
    _add(ring, keys, T0, camera="cam2")
    assert [r.sequence for r in ring.segments("cam1", T0 + 15, T0 + 31)] == [2, 3, 4]
    assert [r.sequence for r in ring.segments("cam2")] == [1]
    stats = ring.stats()
    assert stats["cam1"]["segments"] == 5 and stats["cam1"]["oldest_ts"] == T0
    assert stats["cam1"]["newest_ts"] == pytest.approx(T0 + 50)
    assert stats["cam1"]["bytes"] == sum(r.size for r in ring.segments("cam1"))
    _check_consistent(ring, keys)


def test_a_row_as_the_clip_api_lists_it_and_bundles_it(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    first, second = _add(ring, keys, T0), _add(ring, keys, T0 + 10)
    values = {
        "sequence": 2,
        "start_ts": second.start_ts,
        "end_ts": second.end_ts,
        "size": second.size,
        "sha256": second.sha256,
        "prev_sha256": first.sha256,
        "state": "complete",
    }
    listed = second.to_bundle_segment().to_listing()
    assert list(listed) == list(values) and listed == values  # GET /v1/segments: same keys, same order
    bundled = second.to_bundle_segment(size=123)
    assert bundled.to_manifest() == {"file": "segments/000000000002.seg", **values, "size": 123}
    assert bundled.path == second.path


def test_age_retention_is_a_hard_cap_even_with_free_space(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = make_keys()
    clock = Clock(T0)
    ring = _ring(tmp_path, keys, clock, retention_days=2)
    for day in range(4):
        _add(ring, keys, T0 + day * DAY)
    clock.now = T0 + 4 * DAY + 5
    with caplog.at_level(logging.INFO, logger="edge_agent.storage.ringbuffer"):
        deletions = ring.enforce_retention()
    assert [(d.segment.sequence, d.reason) for d in deletions] == [(1, "age"), (2, "age"), (3, "age")]
    assert [r.sequence for r in ring.segments("cam1")] == [4]
    assert "deleted segment cam1#1" in caplog.text and ": age" in caplog.text
    assert not deletions[0].segment.path.exists()


def test_a_segment_straddling_the_cutoff_goes(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0), retention_days=1)
    _add(ring, keys, T0, seconds=10)
    assert ring.enforce_retention(T0 + DAY + 1) != []  # its first frames are older than the cap


def test_quota_deletes_oldest_first_across_cameras(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0), max_bytes=10**9)
    for i in range(4):
        _add(ring, keys, T0 + 20 * i, camera="cam1", payload=20_000)
        _add(ring, keys, T0 + 20 * i + 10, camera="cam2", payload=20_000)
    newest = sorted(ring.segments("cam1") + ring.segments("cam2"), key=lambda r: r.start_ts)[-3:]
    quota = sum(r.size for r in newest)
    small = _ring(tmp_path, keys, Clock(T0), max_bytes=quota)
    deletions = small.enforce_retention()
    assert [(d.segment.camera, d.segment.sequence, d.reason) for d in deletions] == [
        ("cam1", 1, "quota"),
        ("cam2", 1, "quota"),
        ("cam1", 2, "quota"),
        ("cam2", 2, "quota"),
        ("cam1", 3, "quota"),
    ]
    assert small.total_bytes() == quota
    _check_consistent(small, keys)


def test_free_space_floor_deletes_oldest(tmp_path: Path) -> None:
    keys = make_keys()
    disk = {"capacity": 10**12}

    def disk_free(_: Path) -> int:
        """A disk of `capacity` bytes holding only the segment files really there."""
        return disk["capacity"] - sum(p.stat().st_size for p in tmp_path.glob("*/*.seg"))

    ring = RingBuffer(tmp_path, storage(tmp_path, min_free_bytes=50_000), Clock(T0), disk_free=disk_free)
    records = [_add(ring, keys, T0 + 10 * i, payload=20_000) for i in range(4)]
    # Short by a bit more than one segment: the two oldest must go. (A disk that shrinks under a
    # running ring reads as other files growing, which footage is never deleted for: start again.)
    disk["capacity"] = 50_000 - records[0].size - 10 + sum(r.size for r in records)
    ring.close()
    ring = RingBuffer(tmp_path, storage(tmp_path, min_free_bytes=50_000), Clock(T0), disk_free=disk_free)
    deletions = ring.enforce_retention()
    assert [(d.segment.sequence, d.reason) for d in deletions] == [(1, "disk-free"), (2, "disk-free")]
    assert disk_free(tmp_path) >= 50_000 and [r.sequence for r in ring.segments("cam1")] == [3, 4]


def test_a_free_space_estimate_the_disk_contradicts_is_measured_again(tmp_path: Path) -> None:
    keys = make_keys()
    disk = {"capacity": 10**12}
    pinned = tmp_path / "pinned"

    def disk_free(_: Path) -> int:
        """A disk of `capacity` bytes: each inode under the ring counted once, whatever its names."""
        files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".seg", "")]
        return disk["capacity"] - sum({p.stat().st_ino: p.stat().st_size for p in files}.values())

    ring = RingBuffer(tmp_path, storage(tmp_path, min_free_bytes=50_000), Clock(T0), disk_free=disk_free)
    records = [_add(ring, keys, T0 + 10 * i, payload=20_000) for i in range(3)]
    os.link(records[0].path, pinned)  # another name keeps the oldest file's blocks taken once unlinked
    disk["capacity"] = 50_000 - 100 + sum(r.size for r in records)
    ring.close()  # as above: the shrunken disk is the starting point of a new ring
    ring = RingBuffer(tmp_path, storage(tmp_path, min_free_bytes=50_000), Clock(T0), disk_free=disk_free)
    deletions = ring.enforce_space()
    # The plan counted #1 as enough; the disk said otherwise, so #2 went too.
    assert [(d.segment.sequence, d.reason) for d in deletions] == [(1, "disk-free"), (2, "disk-free")]
    assert disk_free(tmp_path) >= 50_000


def test_holds_survive_age_and_quota_then_expire(tmp_path: Path) -> None:
    keys = make_keys()
    clock = Clock(T0)
    ring = _ring(tmp_path, keys, clock, retention_days=1)
    for i in range(6):
        _add(ring, keys, T0 + 10 * i)
    hold = ring.add_hold("cam1", T0 + 12, T0 + 25, "PV 2024/117 TJ Lyon", expires_at=T0 + 30 * DAY)
    assert ring.holds("cam1") == [hold] and ring.holds("cam2") == []
    clock.now = T0 + 2 * DAY
    deleted = {d.segment.sequence for d in ring.enforce_retention()}
    assert deleted == {1, 4, 5, 6}
    assert [r.sequence for r in ring.segments("cam1")] == [2, 3]  # 10..20 and 20..30 overlap the hold
    quota = _ring(tmp_path, keys, clock, retention_days=1, max_bytes=1)
    assert quota.enforce_retention() == [] and len(quota.segments("cam1")) == 2
    clock.now = T0 + 31 * DAY
    assert {d.segment.sequence for d in ring.enforce_retention()} == {2, 3}
    assert ring.holds() == []


def test_release_hold_and_bad_holds(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    hold = ring.add_hold("cam1", T0, T0 + 10, "PV-1", T0 + DAY)
    assert ring.release_hold(hold.id) is True and ring.release_hold(hold.id) is False
    with pytest.raises(ValueError, match="requisition"):
        ring.add_hold("cam1", T0, T0 + 10, "  ", T0 + DAY)
    with pytest.raises(ValueError, match="must be after start_ts"):
        ring.add_hold("cam1", T0 + 10, T0, "PV-1", T0 + DAY)
    with pytest.raises(ValueError, match="not in the future"):
        ring.add_hold("cam1", T0, T0 + 10, "PV-1", T0 - 1)
    assert ring.holds() == []


def test_holds_survive_a_lost_index(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    _add(ring, keys, T0)
    hold = ring.add_hold("cam1", T0, T0 + 10, "PV-9", T0 + DAY)
    ring.close()
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    reopened = _ring(tmp_path, keys, Clock(T0))
    assert reopened.holds() == [hold]
    assert [r.sequence for r in reopened.segments("cam1")] == [1]


def test_recovery_removes_leftovers_and_indexes_unknown_files(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    records = [_add(ring, keys, T0 + 10 * i) for i in range(3)]
    ring.close()
    (tmp_path / "cam1" / ".000000000004.seg.tmp").write_bytes(b"EDGESEG1 half a segment")
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("DELETE FROM segments WHERE sequence = 3")  # as if killed between rename and index
    db.commit()
    db.close()
    reopened = _ring(tmp_path, keys, Clock(T0))
    assert any("removed unfinished segment" in line for line in reopened.recovery)
    assert [r.sha256 for r in _check_consistent(reopened, keys)] == [r.sha256 for r in records]
    assert not (tmp_path / "cam1" / ".000000000004.seg.tmp").exists()
    assert _add(reopened, keys, T0 + 30).sequence == 4


def test_recovery_keeps_a_truncated_segment_as_a_verified_partial_prefix(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    records = [_add(ring, keys, T0 + 10 * i, payload=5000) for i in range(3)]
    ring.close()
    with records[1].path.open("r+b") as handle:
        handle.truncate(records[1].size // 2)
    reopened = _ring(tmp_path, keys, Clock(T0))
    rows = reopened.segments("cam1")
    assert [r.state for r in rows] == ["complete", "partial", "complete"]
    assert rows[1].size < records[1].size // 2 and rows[1].path.stat().st_size == rows[1].size
    info = verify_segment(rows[1].path, keys.device.public_key(), allow_partial=True)
    assert info.records > 0 and info.prev_sha256 == records[0].sha256
    assert reopened.stats()["cam1"]["partial"] == 1


def test_recovery_drops_rows_of_vanished_files_and_sets_aside_foreign_ones(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    records = [_add(ring, keys, T0 + 10 * i) for i in range(4)]
    ring.close()
    records[0].path.unlink()
    records[3].path.rename(tmp_path / "cam1" / "000000000009.seg")  # a file under another's name
    reopened = _ring(tmp_path, keys, Clock(T0))
    assert [r.sequence for r in reopened.segments("cam1")] == [2, 3]
    assert any("is gone from disk" in line for line in reopened.recovery)
    assert any("holds sequence 4, stored as sequence 9" in line for line in reopened.recovery)
    assert (tmp_path / ".rejected" / "cam1-000000000009.seg").exists()


def test_a_corrupt_index_is_set_aside_and_rebuilt_from_the_files(tmp_path: Path) -> None:
    keys = make_keys()
    clock = Clock(T0)
    ring = _ring(tmp_path, keys, clock)
    records = [_add(ring, keys, T0 + 10 * i) for i in range(3)]
    ring.close()
    for name in ("index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / "index.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    reopened = _ring(tmp_path, keys, clock)
    assert [r.sha256 for r in _check_consistent(reopened, keys)] == [r.sha256 for r in records]
    assert list(tmp_path.glob("index.sqlite.corrupt-*"))
    assert _add(reopened, keys, T0 + 30).prev_sha256 == records[-1].sha256  # the chain goes on


def test_the_index_reads_and_writes_by_column_name(tmp_path: Path) -> None:
    # An index whose tables list their columns in another order, with one more: as a later layout might.
    with closing(sqlite3.connect(tmp_path / "index.sqlite")) as db:
        db.executescript(
            """
            CREATE TABLE segments (state TEXT NOT NULL, path TEXT NOT NULL, note TEXT DEFAULT '',
                camera TEXT NOT NULL, sequence INTEGER NOT NULL, size INTEGER NOT NULL, end_ts REAL NOT NULL,
                start_ts REAL NOT NULL, prev_sha256 TEXT NOT NULL, sha256 TEXT NOT NULL,
                PRIMARY KEY (camera, sequence));
            CREATE TABLE holds (expires_at REAL NOT NULL, id INTEGER PRIMARY KEY AUTOINCREMENT,
                requisition TEXT NOT NULL, camera TEXT NOT NULL, end_ts REAL NOT NULL, start_ts REAL NOT NULL,
                created_at REAL NOT NULL);
            """
        )
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    records = [_add(ring, keys, T0 + 10 * i) for i in range(2)]
    hold = ring.add_hold("cam1", T0, T0 + 5, "PV-3", T0 + DAY)
    assert ring.segments("cam1") == records and ring.holds() == [hold]
    assert ring.stats()["cam1"]["bytes"] == sum(r.size for r in records)
    ring.close()
    reopened = _ring(tmp_path, keys, Clock(T0))
    assert reopened.recovery == []  # every row read back matches its file
    assert reopened.segments("cam1") == records and reopened.holds() == [hold]
    assert _add(reopened, keys, T0 + 20).prev_sha256 == records[-1].sha256


def test_commit_refuses_a_segment_sealed_under_another_name(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    _add(ring, keys, T0)
    pending = ring.begin("cam1")
    writer = SegmentWriter(
        pending.file,
        camera="cam2",
        device="pi-01",
        sequence=pending.sequence,
        prev_sha256=pending.prev_sha256,
        stream=StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, T0),
        start_ts=T0 + 10,
        device_key=keys.device,
        csu_public_key=keys.csu.public_key(),
    )
    with pytest.raises(ValueError, match="sealed segment cam2#2 committed as cam1#2"):
        ring.commit(pending, writer.finish())
    assert not pending.tmp_path.exists() and not pending.final_path.exists()
    assert [r.sequence for r in ring.segments("cam1")] == [1] and ring.segments("cam2") == []
    assert _add(ring, keys, T0 + 10).sequence == 2  # the sequence is used again


def test_a_segment_the_index_refuses_is_kept_and_its_row_written_at_the_next_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    first = _add(ring, keys, T0)
    # Another writer holds the index (as a full disk would refuse it): the row cannot be written.
    with closing(sqlite3.connect(tmp_path / "index.sqlite", timeout=0, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with caplog.at_level(logging.ERROR, logger="edge_agent.storage.ringbuffer"):
            second = _add(ring, keys, T0 + 10)
        other.execute("ROLLBACK")
    assert "index row for cam1#2 not written" in caplog.text
    assert second.path.exists() and ring.segments("cam1") == [first]  # kept on disk, not yet listed
    third = _add(ring, keys, T0 + 20)
    assert third.prev_sha256 == second.sha256  # the chain went on from the unlisted segment
    assert _check_consistent(ring, keys) == [first, second, third]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs the test can fill (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_segment_the_full_disk_refuses_is_dropped_and_its_sequence_used_again(small_disk: Path) -> None:
    keys = make_keys()
    ring = _ring(small_disk, keys, Clock(T0))
    first = _add(ring, keys, T0)
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(bytes(4096))
    pending = ring.begin("cam1")
    stream = StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, T0 + 10)
    with pytest.raises(OSError) as refused:
        writer = SegmentWriter(
            pending.file,
            camera="cam1",
            device="pi-01",
            sequence=pending.sequence,
            prev_sha256=pending.prev_sha256,
            stream=stream,
            start_ts=T0 + 10,
            device_key=keys.device,
            csu_public_key=keys.csu.public_key(),
        )
        for index in range(100):
            writer.append(EncodedPacket(index * 100, index * 100, 100, index == 0, os.urandom(500)))
        ring.commit(pending, writer.finish())
    assert refused.value.errno == errno.ENOSPC
    ring.abort(pending)
    assert not list(small_disk.glob("cam1/.*"))  # neither the temporary file nor its journal is left
    filler.unlink()
    second = _add(ring, keys, T0 + 10)
    assert (second.sequence, second.prev_sha256) == (2, first.sha256)
    assert _check_consistent(ring, keys) == [first, second]
    ring.close()
    reopened = _ring(small_disk, keys, Clock(T0))
    assert reopened.recovery == [] and reopened.segments("cam1") == [first, second]
    reopened.close()


def test_maintenance_thread_applies_retention(tmp_path: Path) -> None:
    keys = make_keys()
    clock = Clock(T0)
    ring = RingBuffer(tmp_path, storage(tmp_path, retention_days=1), clock, maintenance_interval_s=0.05)
    record = _add(ring, keys, T0)
    clock.now = T0 + 2 * DAY
    ring.start()
    try:
        for _ in range(100):
            if not record.path.exists():
                break
            time.sleep(0.02)
    finally:
        ring.stop()
    assert not record.path.exists() and ring.total_bytes() == 0


def test_footage_past_the_cap_is_never_listed_nor_served_between_maintenance_passes(
    tmp_path: Path,
) -> None:
    """A 43 s retention and an hour between passes: at T0 + 90 nothing starting before T0 + 47 may be
    listed, counted or served, though its files wait for the next pass; a held segment stays."""
    from tests.clip_support import device_config, endpoint, running_server

    keys = make_keys()
    collector = Ed25519PrivateKey.generate()
    clock = Clock(T0)
    root = tmp_path / "ring"
    ring = RingBuffer(
        root,
        storage(root, retention_days=43 / DAY),
        clock,
        device_public_key=keys.device.public_key(),
        maintenance_interval_s=3600.0,
    )
    ring.start()  # one pass now, the next in an hour
    try:
        records = [_add(ring, keys, T0 + 10 * i) for i in range(8)]  # T0 .. T0 + 80
        ring.add_hold("cam1", T0 + 21, T0 + 22, "PV 2024/7", T0 + DAY)
        clock.now = T0 + 90
        assert all(r.path.exists() for r in records)  # no pass has run since
        assert [r.sequence for r in ring.segments("cam1")] == [3, 6, 7, 8]
        assert [r.sequence for r in ring.segments("cam1", T0, T0 + 45)] == [3]
        stats = ring.stats()["cam1"]
        assert stats["segments"] == 4 and stats["oldest_ts"] == T0 + 20 and stats["holds"] == 1
        assert stats["bytes"] == sum(records[i].size for i in (2, 5, 6, 7))
        ring.release_hold(ring.holds()[0].id)
        assert [r.sequence for r in ring.segments("cam1")] == [6, 7, 8]
        assert ring.stats()["cam1"]["oldest_ts"] == T0 + 50
        config = device_config(tmp_path, max_clip_seconds=120)
        query = [("camera", "cam1"), ("start", "2023-11-14T22:13:20Z"), ("end", "2023-11-14T22:14:50Z")]
        with running_server(config, ring, keys.device, collector) as server:
            client = endpoint(server, collector)
            listed = client.call_json("GET", "/v1/segments", query)["segments"]
            with client.request("GET", "/v1/clips", [*query, ("requisition", "PV 2024/8")]) as response:
                assert response.status_code == 200
                bundle = response.content
        assert [s["sequence"] for s in listed] == [6, 7, 8]
        with tarfile.open(fileobj=io.BytesIO(bundle)) as archive:
            manifest = json.loads(archive.extractfile(MANIFEST_NAME).read())  # type: ignore[union-attr]
            assert len(archive.getnames()) == 2 + 3
        assert [s["sequence"] for s in manifest["segments"]] == [6, 7, 8]
        assert manifest["gaps"][0]["reason"] == "retention"
        # The data of the hidden segments does not change what a later pass deletes.
        assert [d.segment.sequence for d in ring.enforce_retention()] == [1, 2, 3, 4, 5]
    finally:
        ring.close()


def test_a_failing_maintenance_pass_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    passes: list[int] = []
    done = threading.Event()

    def task() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise OSError(28, "No space left on device")
        done.set()

    maintenance = Maintenance(task, 0.01, "test-maintenance")
    maintenance.start()
    maintenance.start()  # already running: no second thread
    try:
        assert done.wait(5)
    finally:
        maintenance.stop()
    assert "test-maintenance: pass failed" in caplog.text and "No space left" in caplog.text
    assert not [t for t in threading.enumerate() if t.name == "test-maintenance"]


def test_an_unreadable_holds_mirror_is_reported_not_fatal(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    _add(ring, keys, T0)
    ring.add_hold("cam1", T0, T0 + 10, "PV-9", T0 + DAY)
    ring.close()
    (tmp_path / "index.sqlite").unlink()
    (tmp_path / "holds.json").write_text('[{"id": 1, "camera": "cam1"}]')  # fields missing
    reopened = _ring(tmp_path, keys, Clock(T0))
    assert any("holds.json" in line and "holds not restored" in line for line in reopened.recovery)
    assert reopened.holds() == [] and [r.sequence for r in reopened.segments("cam1")] == [1]


def test_recovery_ignores_files_that_are_not_named_as_segments(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    _add(ring, keys, T0)
    ring.close()
    stray = tmp_path / "cam1" / "notes.seg"
    stray.write_bytes(b"not a segment")
    reopened = _ring(tmp_path, keys, Clock(T0))
    assert reopened.recovery == [] and stray.exists()
    assert [r.sequence for r in reopened.segments("cam1")] == [1]


def test_read_only_open_changes_nothing(tmp_path: Path) -> None:
    keys = make_keys()
    ring = _ring(tmp_path, keys, Clock(T0))
    _add(ring, keys, T0)
    tmp = tmp_path / "cam1" / ".000000000002.seg.tmp"
    tmp.write_bytes(b"in flight")
    look = RingBuffer(tmp_path, storage(tmp_path), Clock(T0), recover=False)
    assert look.stats()["cam1"]["segments"] == 1 and tmp.exists()


def _site_config(path: Path, root: Path) -> Path:
    config = {
        "site_id": "ville-01",
        "device_id": "pi-a",
        "cameras": [
            {
                "id": cam,
                "source": "synthetic",
                "masks": [{"name": "w", "points": [[0, 0], [0.3, 0], [0.3, 0.3]]}],
            }
            for cam in ("cam1", "cam3")
        ],
        "storage": {"path": str(root), "retention_days": 15, "min_free_bytes": 0},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_storage_command_summarises_each_camera_without_touching_the_buffer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = make_keys()
    root = tmp_path / "ring"
    ring = _ring(root, keys, Clock(T0))
    records = [_add(ring, keys, T0 + 10 * i) for i in range(3)] + [_add(ring, keys, T0, camera="cam2")]
    hold = ring.add_hold("cam1", T0, T0 + 10, "PV 2024/117", T0 + DAY)
    ring.close()
    in_flight = root / "cam1" / ".000000000004.seg.tmp"
    in_flight.write_bytes(b"being written by the running agent")
    config = _site_config(tmp_path / "site.yaml", root)
    assert cli.main(["storage", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    cam1 = sum(r.size for r in records[:3])
    assert "retention 15 days" in text
    assert f"cam1: 3 segment(s) (0 partial), {cam1:,} bytes, oldest 2023-11-14T22:13:20Z" in text
    assert "newest 2023-11-14T22:13:50Z" in text
    assert f"hold {hold.id}: 2023-11-14T22:13:20Z..2023-11-14T22:13:30Z, requisition PV 2024/117" in text
    assert "cam2: 1 segment(s)" in text  # on disk though no longer configured
    assert "cam3: 0 segment(s)" in text  # configured, nothing recorded yet
    assert cli.main(["storage", "--config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cam1"]["segments"] == 3 and out["cam1"]["bytes"] == cam1
    assert [h["requisition"] for h in out["cam1"]["holds"]] == ["PV 2024/117"]
    assert out["cam3"] == {**dict.fromkeys(out["cam1"], 0), "oldest_ts": None, "newest_ts": None, "holds": []}
    assert in_flight.exists()  # read only: no recovery ran


def test_storage_command_on_an_empty_place_or_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _site_config(tmp_path / "site.yaml", tmp_path / "nothing")
    assert cli.main(["storage", "--config", str(config)]) == 1
    assert "no ring buffer here yet" in capsys.readouterr().out
    assert not (tmp_path / "nothing" / "index.sqlite").exists()
    config.write_text("site_id: x\n")
    assert cli.main(["storage", "--config", str(config)]) == 1
    assert "device_id" in capsys.readouterr().out
