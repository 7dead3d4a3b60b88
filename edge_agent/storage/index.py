"""The ring buffer's SQLite index: one row per sealed segment file, each camera's chain head, the holds.

Layout under the ring's root: `<camera>/<sequence, 12 digits>.seg` (a segment being written is
`<camera>/.<sequence>.seg.tmp`) and `index.sqlite` (WAL). The files are the truth and the index a cache
of them (see `recovery`). Every statement names its columns and rows are read by name, so the table
layout can grow without breaking a query.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.formats.bundle import BundleSegment, member_name
from edge_agent.formats.sealing import SegmentInfo
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
SUFFIX = ".seg"
TMP_SUFFIX = ".seg.tmp"

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

_SELECT_SEGMENTS = (
    "SELECT camera, sequence, start_ts, end_ts, size, sha256, prev_sha256, path, state FROM segments"
)
_INSERT_SEGMENT = (
    "INSERT OR REPLACE INTO segments"
    " (camera, sequence, start_ts, end_ts, size, sha256, prev_sha256, path, state)"
    " VALUES (:camera, :sequence, :start_ts, :end_ts, :size, :sha256, :prev_sha256, :path, :state)"
)
# The chain head only moves forward: a recovered older file must not rewind it.
_ADVANCE_CHAIN = (
    "INSERT INTO chain (camera, last_sequence, last_sha256) VALUES (:camera, :sequence, :sha256)"
    " ON CONFLICT(camera) DO UPDATE SET"
    " last_sequence = excluded.last_sequence, last_sha256 = excluded.last_sha256"
    " WHERE excluded.last_sequence >= chain.last_sequence"
)


def empty_stats(holds: int = 0) -> dict[str, float | int | None]:
    """The `SegmentIndex.stats` figures of a camera without a segment counted (yet)."""
    return {"segments": 0, "partial": 0, "bytes": 0, "oldest_ts": None, "newest_ts": None, "holds": holds}


def segment_file(root: Path, camera: str, sequence: int) -> Path:
    """Where a sealed segment of `camera` lives under the ring's root."""
    return root / camera / f"{sequence:012d}{SUFFIX}"


def temporary_file(root: Path, camera: str, sequence: int) -> Path:
    """Where a segment is written before it is sealed and renamed."""
    return root / camera / f".{sequence:012d}{TMP_SUFFIX}"


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

    @classmethod
    def from_info(cls, info: SegmentInfo, path: Path) -> SegmentRecord:
        """The row of a segment file, from what its writer or its verification says of it."""
        return cls(
            camera=info.camera,
            sequence=info.sequence,
            start_ts=info.start_ts,
            end_ts=info.end_ts,
            size=info.size,
            sha256=info.sha256,
            prev_sha256=info.prev_sha256,
            path=path,
            state=info.state,
        )

    def to_bundle_segment(self, size: int | None = None) -> BundleSegment:
        """What the clip API carries of this segment; `size` overrides the indexed size (file stat)."""
        return BundleSegment(
            file=member_name(self.sequence),
            sequence=self.sequence,
            start_ts=self.start_ts,
            end_ts=self.end_ts,
            size=self.size if size is None else size,
            sha256=self.sha256,
            prev_sha256=self.prev_sha256,
            state=self.state,
            path=self.path,
        )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _open(path: Path, repair: bool, clock: Clock) -> sqlite3.Connection:
    """Open (creating) the index; a corrupt one is set aside and started afresh when `repair`."""
    existed = path.exists()
    try:
        db = _connect(path)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        db.executescript(_SCHEMA)
        return db
    except sqlite3.DatabaseError as error:
        if not existed or not repair:
            raise
        aside = path.with_name(f"{path.name}.corrupt-{int(clock())}")
        log.error("index %s is corrupt (%s): moved to %s, rebuilding from the files", path, error, aside)
        for suffix in ("", "-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                extra.rename(aside.with_name(aside.name + suffix))
        db = _connect(path)
        db.executescript(_SCHEMA)
        return db


class SegmentIndex:
    """The index database of one ring buffer. Thread-safe: one connection behind a lock."""

    def __init__(self, root: Path, clock: Clock, *, repair: bool) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._db = _open(root / INDEX_NAME, repair, clock)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction (rolled back if the block raises)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[sqlite3.Row]:
        """Every row of one read statement (named parameters)."""
        with self._lock:
            return self._db.execute(sql, params or {}).fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # ---- segment rows ------------------------------------------------------------------------------

    def _record(self, row: sqlite3.Row) -> SegmentRecord:
        return SegmentRecord(
            camera=row["camera"],
            sequence=row["sequence"],
            start_ts=row["start_ts"],
            end_ts=row["end_ts"],
            size=row["size"],
            sha256=row["sha256"],
            prev_sha256=row["prev_sha256"],
            path=self.root / row["path"],
            state=row["state"],
        )

    def insert(self, records: Iterable[SegmentRecord]) -> None:
        """Add (or replace) rows in one transaction and move each camera's chain head forward."""
        with self.transaction() as db:
            for record in records:
                db.execute(
                    _INSERT_SEGMENT,
                    {
                        "camera": record.camera,
                        "sequence": record.sequence,
                        "start_ts": record.start_ts,
                        "end_ts": record.end_ts,
                        "size": record.size,
                        "sha256": record.sha256,
                        "prev_sha256": record.prev_sha256,
                        "path": str(record.path.relative_to(self.root)),
                        "state": record.state,
                    },
                )
                db.execute(
                    _ADVANCE_CHAIN,
                    {"camera": record.camera, "sequence": record.sequence, "sha256": record.sha256},
                )

    def delete(self, camera: str, sequence: int) -> None:
        """Drop one row (the chain head stays: sequences are never reused)."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM segments WHERE camera = :camera AND sequence = :sequence",
                {"camera": camera, "sequence": sequence},
            )

    def segments(self, camera: str, start_ts: float, end_ts: float) -> list[SegmentRecord]:
        """Rows of `camera` overlapping [start_ts, end_ts), in sequence order."""
        rows = self.query(
            f"{_SELECT_SEGMENTS} WHERE camera = :camera AND start_ts < :end AND end_ts > :start"
            " ORDER BY sequence",
            {"camera": camera, "start": start_ts, "end": end_ts},
        )
        return [self._record(r) for r in rows]

    def all_segments(self) -> list[SegmentRecord]:
        """Every row, oldest footage first."""
        return [self._record(r) for r in self.query(f"{_SELECT_SEGMENTS} ORDER BY start_ts")]

    def segments_started_before(self, ts: float) -> list[SegmentRecord]:
        """Rows whose footage starts before `ts`, oldest first."""
        rows = self.query(f"{_SELECT_SEGMENTS} WHERE start_ts < :ts ORDER BY start_ts", {"ts": ts})
        return [self._record(r) for r in rows]

    def chain_head(self, camera: str) -> tuple[int, str]:
        """(sequence, sha256) of the last segment `camera` sealed; (0, "") before its first."""
        rows = self.query(
            "SELECT last_sequence, last_sha256 FROM chain WHERE camera = :camera", {"camera": camera}
        )
        return (rows[0]["last_sequence"], rows[0]["last_sha256"]) if rows else (0, "")

    # ---- summaries ---------------------------------------------------------------------------------

    def cameras(self) -> list[str]:
        """Cameras with at least one segment or chain entry."""
        rows = self.query("SELECT camera FROM chain UNION SELECT camera FROM segments")
        return sorted(r["camera"] for r in rows)

    def total_bytes(self) -> int:
        """Size of every indexed segment."""
        return int(self.query("SELECT COALESCE(SUM(size), 0) AS total FROM segments")[0]["total"])

    def stats(self, since: float = float("-inf")) -> dict[str, dict[str, float | int | None]]:
        """Per camera: segments, partial, bytes, oldest_ts, newest_ts, holds; of the rows whose footage
        starts at or after `since` only."""
        with self._lock:
            rows = self.query(
                "SELECT camera, COUNT(*) AS segments, SUM(state = 'partial') AS partial,"
                " SUM(size) AS bytes, MIN(start_ts) AS oldest_ts, MAX(end_ts) AS newest_ts"
                " FROM segments WHERE start_ts >= :since GROUP BY camera",
                {"since": since},
            )
            holds = self.query("SELECT camera, COUNT(*) AS holds FROM holds GROUP BY camera")
        hold_counts = {r["camera"]: r["holds"] for r in holds}
        result: dict[str, dict[str, float | int | None]] = {
            r["camera"]: {
                "segments": r["segments"],
                "partial": r["partial"] or 0,
                "bytes": r["bytes"] or 0,
                "oldest_ts": r["oldest_ts"],
                "newest_ts": r["newest_ts"],
                "holds": hold_counts.get(r["camera"], 0),
            }
            for r in rows
        }
        for camera, count in hold_counts.items():
            result.setdefault(camera, empty_stats(count))
        return result
