"""The ring buffer: sealed segment files per camera, a SQLite index, retention, legal holds, recovery.

Layout under `root`: `<camera>/<sequence, 12 digits>.seg` (a segment being written is
`<camera>/.<sequence>.seg.tmp`), `index.sqlite` (WAL), `holds.json` (a copy of the holds, so a lost
index never loses a legal hold) and `.rejected/` (files that failed verification at start: kept for
investigation, never indexed nor served).

Write path: `begin(camera)` gives a temporary file and the chain link (next sequence, previous hash);
`commit` flushes, fsyncs, renames, fsyncs the directory and only then adds the index row. The files are
the truth and the index a cache of them: at start, leftover temporary files are removed (the in-flight
segment of a crash), files the index does not know are verified and added (a crash between rename and
index), a file without its trailer is cut back to its last whole record and marked `partial`, rows whose
file is gone are dropped, and a corrupt index is set aside and rebuilt from the files.

Retention: nothing whose footage starts before `now - retention_days` survives (a legal cap, whatever the
free space), then the oldest segments go until the quota (`max_bytes`) and the free-space floor
(`min_free_bytes`) are met. Segments overlapping an active hold of their camera are skipped by both.
Every deletion is logged with its reason and returned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.formats.config import StorageConfig
from edge_agent.formats.sealing import SealedSegment, SegmentError, SegmentInfo, verify_segment
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)

DiskFree = Callable[[Path], int]

INDEX_NAME = "index.sqlite"
HOLDS_NAME = "holds.json"
SUFFIX = ".seg"
TMP_SUFFIX = ".seg.tmp"
REJECTED_DIR = ".rejected"
DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    camera TEXT NOT NULL, sequence INTEGER NOT NULL, start_ts REAL NOT NULL, end_ts REAL NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, prev_sha256 TEXT NOT NULL, path TEXT NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY (camera, sequence));
CREATE INDEX IF NOT EXISTS segments_time ON segments (camera, start_ts);
CREATE INDEX IF NOT EXISTS segments_age ON segments (start_ts);
CREATE TABLE IF NOT EXISTS chain (camera TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL,
    last_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL,
    start_ts REAL NOT NULL, end_ts REAL NOT NULL, requisition TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class SegmentRecord:
    """One index row: a sealed segment file (`state` is `complete` or `partial`)."""

    camera: str
    sequence: int
    start_ts: float
    end_ts: float
    size: int
    sha256: str
    prev_sha256: str
    path: Path
    state: str


@dataclass(frozen=True)
class Hold:
    """A time range of one camera kept past retention for a judicial procedure, until `expires_at`."""

    id: int
    camera: str
    start_ts: float
    end_ts: float
    requisition: str
    created_at: float
    expires_at: float

    def covers(self, camera: str, start_ts: float, end_ts: float) -> bool:
        """Whether this hold protects footage of `camera` between start_ts and end_ts."""
        return camera == self.camera and start_ts < self.end_ts and end_ts > self.start_ts


@dataclass(frozen=True)
class Deletion:
    """A segment removed by retention, and why (`age`, `quota` or `disk-free`)."""

    camera: str
    sequence: int
    path: Path
    size: int
    start_ts: float
    end_ts: float
    reason: str


@dataclass(frozen=True)
class RetentionCutoffs:
    """The limits of one retention pass, computed before anything is deleted."""

    now: float
    oldest_allowed: float
    max_bytes: int
    min_free_bytes: int


@dataclass
class PendingSegment:
    """A segment being written: its temporary file and its place in the camera's chain."""

    camera: str
    sequence: int
    prev_sha256: str
    tmp_path: Path
    final_path: Path
    file: BinaryIO


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


class RingBuffer:
    """Sealed segments of every camera of a device, their index, retention and holds. Thread-safe."""

    def __init__(
        self,
        root: Path,
        storage: StorageConfig,
        clock: Clock = time.time,
        *,
        device_public_key: Ed25519PublicKey | None = None,
        disk_free: DiskFree = _disk_free,
        maintenance_interval_s: float = 30.0,
        recover: bool = True,
    ) -> None:
        self.root = Path(root)
        self.storage = storage
        self._clock = clock
        self._device_public_key = device_public_key
        self._disk_free = disk_free
        self._interval = maintenance_interval_s
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._chain: dict[str, tuple[int, str]] = {}
        self._unindexed: list[SegmentRecord] = []
        self._db = self._open_index(repair=recover)
        # Without recovery (a read-only look while the agent runs) nothing on disk is changed.
        self.recovery = self._recover() if recover else []

    # ---- index -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / INDEX_NAME, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _open_index(self, repair: bool) -> sqlite3.Connection:
        path = self.root / INDEX_NAME
        existed = path.exists()
        try:
            db = self._connect()
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            db.executescript(_SCHEMA)
            return db
        except sqlite3.DatabaseError as error:
            if not existed or not repair:
                raise
            aside = path.with_name(f"{INDEX_NAME}.corrupt-{int(self._clock())}")
            log.error("index %s is corrupt (%s): moved to %s, rebuilding from the files", path, error, aside)
            for suffix in ("", "-wal", "-shm"):
                extra = path.with_name(INDEX_NAME + suffix)
                if extra.exists():
                    extra.rename(aside.with_name(aside.name + suffix))
            db = self._connect()
            db.executescript(_SCHEMA)
            return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _row(self, row: tuple) -> SegmentRecord:
        camera, sequence, start_ts, end_ts, size, sha256, prev, path, state = row
        return SegmentRecord(camera, sequence, start_ts, end_ts, size, sha256, prev, self.root / path, state)

    def _insert(
        self,
        db: sqlite3.Connection,
        info: SegmentInfo | SealedSegment | SegmentRecord,
        camera: str,
        path: Path,
        state: str,
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                camera,
                info.sequence,
                info.start_ts,
                info.end_ts,
                info.size,
                info.sha256,
                info.prev_sha256,
                str(path.relative_to(self.root)),
                state,
            ),
        )
        db.execute(
            "INSERT INTO chain VALUES (?, ?, ?) ON CONFLICT(camera) DO UPDATE SET"
            " last_sequence = excluded.last_sequence, last_sha256 = excluded.last_sha256"
            " WHERE excluded.last_sequence >= chain.last_sequence",
            (camera, info.sequence, info.sha256),
        )

    # ---- recovery ----------------------------------------------------------------------------------

    def _camera_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _recover(self) -> list[str]:
        """Make the index match the files; returns one line per repair (also logged)."""
        repairs: list[str] = []
        with self._lock:
            known = {
                (row[0], row[1]): (row[4], row[7])
                for row in self._db.execute("SELECT * FROM segments").fetchall()
            }
            on_disk: set[tuple[str, int]] = set()
            for directory in self._camera_dirs():
                for tmp in directory.glob(f".*{TMP_SUFFIX}"):
                    tmp.unlink()
                    repairs.append(f"removed unfinished segment {tmp} (writer stopped while writing it)")
                for path in sorted(directory.glob(f"*{SUFFIX}")):
                    try:
                        sequence = int(path.stem)
                    except ValueError:
                        continue
                    key = (directory.name, sequence)
                    on_disk.add(key)
                    indexed = known.get(key)
                    if indexed is not None and indexed[0] == path.stat().st_size:
                        continue
                    repairs.extend(self._recover_file(directory.name, sequence, path))
            for camera, sequence in sorted(set(known) - on_disk):
                with self._transaction() as db:
                    db.execute("DELETE FROM segments WHERE camera = ? AND sequence = ?", (camera, sequence))
                repairs.append(
                    f"segment {camera}#{sequence} ({known[(camera, sequence)][1]}) is gone from disk:"
                    " index row dropped"
                )
            if self._db.execute("SELECT COUNT(*) FROM holds").fetchone()[0] == 0:
                repairs.extend(self._restore_holds())
        for line in repairs:
            log.warning("recovery: %s", line)
        return repairs

    def _recover_file(self, camera: str, sequence: int, path: Path) -> list[str]:
        try:
            info = verify_segment(
                path,
                self._device_public_key,
                allow_partial=True,
                expect_camera=camera,
                expect_sequence=sequence,
            )
        except SegmentError as error:
            # Never delete what may be evidence of tampering: set it aside, out of the index and of clips.
            rejected = self.root / REJECTED_DIR / f"{camera}-{path.name}"
            rejected.parent.mkdir(exist_ok=True)
            path.rename(rejected)
            with self._transaction() as db:
                db.execute("DELETE FROM segments WHERE camera = ? AND sequence = ?", (camera, sequence))
            return [f"rejected {path} (moved to {rejected}): {error}"]
        lines = []
        if not info.complete:
            if info.valid_length < info.size:
                with path.open("r+b") as handle:
                    handle.truncate(info.valid_length)
                    os.fsync(handle.fileno())
            info = verify_segment(path, self._device_public_key, allow_partial=True)
            lines.append(f"{info.name} has no signed trailer: kept {info.records} whole record(s) as partial")
        with self._transaction() as db:
            self._insert(db, info, camera, path, info.state)
        lines.append(f"indexed {info.name} ({info.state})")
        return lines

    def _restore_holds(self) -> list[str]:
        path = self.root / HOLDS_NAME
        if not path.exists():
            return []
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            holds = [Hold(**row) for row in rows]
        except (OSError, ValueError, TypeError) as error:
            return [f"cannot read {path} ({error}): holds not restored"]
        with self._transaction() as db:
            for hold in holds:
                db.execute("INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(asdict(hold).values()))
        return [f"restored {len(holds)} hold(s) from {path}"] if holds else []

    # ---- write path --------------------------------------------------------------------------------

    def begin(self, camera: str) -> PendingSegment:
        """Open the temporary file of `camera`'s next segment (OSError when the disk refuses)."""
        sequence, prev = self._next_link(camera)
        directory = self.root / camera
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{sequence:012d}{TMP_SUFFIX}"
        handle = tmp.open("wb")
        return PendingSegment(camera, sequence, prev, tmp, directory / f"{sequence:012d}{SUFFIX}", handle)

    def _next_link(self, camera: str) -> tuple[int, str]:
        with self._lock:
            if camera not in self._chain:
                row = self._db.execute(
                    "SELECT last_sequence, last_sha256 FROM chain WHERE camera = ?", (camera,)
                ).fetchone()
                self._chain[camera] = (row[0], row[1]) if row else (0, "")
            last_sequence, last_sha256 = self._chain[camera]
        return last_sequence + 1, last_sha256

    def commit(self, pending: PendingSegment, sealed: SealedSegment) -> SegmentRecord:
        """Make a finished segment durable and visible: fsync, rename, fsync directory, index row.

        Once renamed, the segment is kept whatever happens to the index: a row that cannot be written
        (disk full) is retried at the next commit, and recovery at start would add it anyway.
        """
        try:
            pending.file.flush()
            os.fsync(pending.file.fileno())
        finally:
            pending.file.close()
        os.replace(pending.tmp_path, pending.final_path)
        _fsync_dir(pending.final_path.parent)
        record = SegmentRecord(
            pending.camera,
            sealed.sequence,
            sealed.start_ts,
            sealed.end_ts,
            sealed.size,
            sealed.sha256,
            sealed.prev_sha256,
            pending.final_path,
            "complete",
        )
        with self._lock:
            self._chain[pending.camera] = (sealed.sequence, sealed.sha256)
            self._unindexed.append(record)
            try:
                with self._transaction() as db:
                    for row in self._unindexed:
                        self._insert(db, row, row.camera, row.path, row.state)
                self._unindexed.clear()
            except sqlite3.Error as error:
                log.error(
                    "index row for %s#%d not written (%s): retried at the next commit",
                    pending.camera,
                    sealed.sequence,
                    error,
                )
        try:
            self.enforce_space()
        except (OSError, sqlite3.Error) as error:
            log.error("making room after %s#%d failed: %s", pending.camera, sealed.sequence, error)
        return record

    def abort(self, pending: PendingSegment) -> None:
        """Drop an unfinished segment (write error): its temporary file goes, the sequence is reused."""
        try:
            pending.file.close()
        except OSError as error:
            log.debug("closing %s: %s", pending.tmp_path, error)
        pending.tmp_path.unlink(missing_ok=True)

    # ---- queries -----------------------------------------------------------------------------------

    def segments(
        self, camera: str, start_ts: float | None = None, end_ts: float | None = None
    ) -> list[SegmentRecord]:
        """Index rows of `camera` overlapping [start_ts, end_ts) (None = unbounded), in sequence order."""
        lo = float("-inf") if start_ts is None else start_ts
        hi = float("inf") if end_ts is None else end_ts
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM segments WHERE camera = ? AND start_ts < ? AND end_ts > ? ORDER BY sequence",
                (camera, hi, lo),
            ).fetchall()
        return [self._row(r) for r in rows]

    def cameras(self) -> list[str]:
        """Cameras with at least one segment or chain entry."""
        with self._lock:
            rows = self._db.execute("SELECT camera FROM chain UNION SELECT camera FROM segments").fetchall()
        return sorted(r[0] for r in rows)

    def stats(self) -> dict[str, dict[str, float | int | None]]:
        """Per camera: segments, partial, bytes, oldest_ts, newest_ts, holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT camera, COUNT(*), SUM(state = 'partial'), SUM(size), MIN(start_ts), MAX(end_ts)"
                " FROM segments GROUP BY camera"
            ).fetchall()
            hold_counts = dict(
                self._db.execute("SELECT camera, COUNT(*) FROM holds GROUP BY camera").fetchall()
            )
        result: dict[str, dict[str, float | int | None]] = {}
        for camera, count, partial, size, oldest, newest in rows:
            result[camera] = {
                "segments": count,
                "partial": partial or 0,
                "bytes": size or 0,
                "oldest_ts": oldest,
                "newest_ts": newest,
                "holds": hold_counts.get(camera, 0),
            }
        for camera, holds in hold_counts.items():
            result.setdefault(
                camera,
                {
                    "segments": 0,
                    "partial": 0,
                    "bytes": 0,
                    "oldest_ts": None,
                    "newest_ts": None,
                    "holds": holds,
                },
            )
        return result

    def total_bytes(self) -> int:
        """Size of every indexed segment."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM segments").fetchone()[0])

    # ---- holds -------------------------------------------------------------------------------------

    def add_hold(
        self, camera: str, start_ts: float, end_ts: float, requisition: str, expires_at: float
    ) -> Hold:
        """Keep `camera`'s footage in [start_ts, end_ts) until `expires_at`; ValueError on a bad range."""
        now = self._clock()
        if not requisition.strip():
            raise ValueError("requisition: a hold needs the reference of its judicial requisition")
        if not end_ts > start_ts:
            raise ValueError(f"end_ts ({end_ts}) must be after start_ts ({start_ts})")
        if not expires_at > now:
            raise ValueError(f"expires_at ({expires_at}) is not in the future (now {now})")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO holds (camera, start_ts, end_ts, requisition, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (camera, start_ts, end_ts, requisition, now, expires_at),
            )
            hold = Hold(int(cursor.lastrowid or 0), camera, start_ts, end_ts, requisition, now, expires_at)
        self._save_holds()
        log.info(
            "hold %d added: %s %.3f..%.3f, requisition %s, until %.0f",
            hold.id,
            camera,
            start_ts,
            end_ts,
            requisition,
            expires_at,
        )
        return hold

    def release_hold(self, hold_id: int) -> bool:
        """Remove a hold; False if there was none with this id."""
        with self._transaction() as db:
            removed = db.execute("DELETE FROM holds WHERE id = ?", (hold_id,)).rowcount > 0
        if removed:
            self._save_holds()
            log.info("hold %d released", hold_id)
        return removed

    def holds(self, camera: str | None = None) -> list[Hold]:
        """Active (unexpired, unreleased) holds, of one camera or all."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM holds ORDER BY id").fetchall()
        return [Hold(*r) for r in rows if camera is None or r[1] == camera]

    def _save_holds(self) -> None:
        data = json.dumps([asdict(h) for h in self.holds()], indent=1)
        tmp = self.root / f".{HOLDS_NAME}.tmp"
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / HOLDS_NAME)

    # ---- retention ---------------------------------------------------------------------------------

    def cutoffs(self, now: float) -> RetentionCutoffs:
        """The limits a retention pass at `now` applies."""
        return RetentionCutoffs(
            now=now,
            oldest_allowed=now - self.storage.retention_days * DAY,
            max_bytes=self.storage.max_bytes,
            min_free_bytes=self.storage.min_free_bytes,
        )

    def enforce_retention(self, now: float | None = None) -> list[Deletion]:
        """Expire holds, then delete by age, quota and free space; every deletion returned and logged."""
        cut = self.cutoffs(self._clock() if now is None else now)
        self._expire_holds(cut.now)
        holds = self.holds()
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM segments WHERE start_ts < ? ORDER BY start_ts", (cut.oldest_allowed,)
            ).fetchall()
        deletions = [
            self._delete(record, "age")
            for record in map(self._row, rows)
            if not any(h.covers(record.camera, record.start_ts, record.end_ts) for h in holds)
        ]
        return deletions + self._enforce_space(cut, holds)

    def enforce_space(self) -> list[Deletion]:
        """Only the quota and free-space limits (after each commit; age is the maintenance pass's job)."""
        if not self.storage.max_bytes and not self.storage.min_free_bytes:
            return []
        return self._enforce_space(self.cutoffs(self._clock()), self.holds())

    def _enforce_space(self, cut: RetentionCutoffs, holds: list[Hold]) -> list[Deletion]:
        deletions: list[Deletion] = []
        total = self.total_bytes()
        over_quota = bool(cut.max_bytes) and total > cut.max_bytes
        short = bool(cut.min_free_bytes) and self._disk_free(self.root) < cut.min_free_bytes
        if not over_quota and not short:
            return deletions
        with self._lock:
            rows = self._db.execute("SELECT * FROM segments ORDER BY start_ts").fetchall()
        for record in map(self._row, rows):
            if any(h.covers(record.camera, record.start_ts, record.end_ts) for h in holds):
                continue
            deletions.append(self._delete(record, "quota" if over_quota else "disk-free"))
            total -= record.size
            over_quota = bool(cut.max_bytes) and total > cut.max_bytes
            short = bool(cut.min_free_bytes) and self._disk_free(self.root) < cut.min_free_bytes
            if not over_quota and not short:
                return deletions
        log.error("retention: quota or free-space floor not met; every segment left is held")
        return deletions

    def _expire_holds(self, now: float) -> None:
        expired = [h for h in self.holds() if h.expires_at <= now]
        if not expired:
            return
        with self._transaction() as db:
            db.executemany("DELETE FROM holds WHERE id = ?", [(h.id,) for h in expired])
        self._save_holds()
        for hold in expired:
            log.info("hold %d (%s, requisition %s) expired", hold.id, hold.camera, hold.requisition)

    def _delete(self, record: SegmentRecord, reason: str) -> Deletion:
        record.path.unlink(missing_ok=True)
        with self._transaction() as db:
            db.execute(
                "DELETE FROM segments WHERE camera = ? AND sequence = ?", (record.camera, record.sequence)
            )
        deletion = Deletion(
            record.camera, record.sequence, record.path, record.size, record.start_ts, record.end_ts, reason
        )
        self._log_deletion(deletion)
        return deletion

    @staticmethod
    def _log_deletion(deletion: Deletion) -> None:
        log.info(
            "deleted segment %s#%d (%s, %d bytes, %.3f..%.3f): %s",
            deletion.camera,
            deletion.sequence,
            deletion.path,
            deletion.size,
            deletion.start_ts,
            deletion.end_ts,
            deletion.reason,
        )

    # ---- maintenance thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run retention now and then every `maintenance_interval_s` in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._maintain, name="ringbuffer-maintenance", daemon=True)
        self._thread.start()

    def _maintain(self) -> None:
        while True:
            try:
                self.enforce_retention(self._clock())
            except (OSError, sqlite3.Error):
                log.exception("retention pass failed; retrying in %.0f s", self._interval)
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        """Stop the maintenance thread (waits for a pass in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop maintenance and close the index."""
        self.stop()
        with self._lock:
            self._db.close()
