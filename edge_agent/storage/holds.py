"""Legal holds, storage side: the hold rows of the index and their `holds.json` mirror.

A hold keeps a time range of one camera past retention for a judicial procedure. The rows live in the
index; `holds.json` (under the ring's root) is rewritten after every change, so that an index lost or
rebuilt from the files never loses a hold (recovery restores them from it). The API side (validation
of requests, audit) is `edge_agent.api.holds`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.formats.durable import fsync_dir
from edge_agent.formats.times import Clock
from edge_agent.storage.index import SegmentIndex

log = logging.getLogger(__name__)

HOLDS_NAME = "holds.json"

_SELECT_HOLDS = "SELECT id, camera, start_ts, end_ts, requisition, created_at, expires_at FROM holds"
_INSERT_HOLD = (
    "INSERT INTO holds (camera, start_ts, end_ts, requisition, created_at, expires_at)"
    " VALUES (:camera, :start_ts, :end_ts, :requisition, :created_at, :expires_at)"
)
_RESTORE_HOLD = (
    "INSERT INTO holds (id, camera, start_ts, end_ts, requisition, created_at, expires_at)"
    " VALUES (:id, :camera, :start_ts, :end_ts, :requisition, :created_at, :expires_at)"
)


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

    def active(self, now: float) -> bool:
        """Whether the hold still applies at `now` (it lapses at `expires_at`)."""
        return self.expires_at > now


class HoldBook:
    """The holds of one ring buffer: rows in its index, mirrored to `holds.json` after each change."""

    def __init__(self, index: SegmentIndex, root: Path, clock: Clock) -> None:
        self._index = index
        self._mirror = root / HOLDS_NAME
        self._clock = clock

    def add(self, camera: str, start_ts: float, end_ts: float, requisition: str, expires_at: float) -> Hold:
        """Keep `camera`'s footage in [start_ts, end_ts) until `expires_at`; ValueError on a bad range."""
        now = self._clock()
        if not requisition.strip():
            raise ValueError("requisition: a hold needs the reference of its judicial requisition")
        if not end_ts > start_ts:
            raise ValueError(f"end_ts ({end_ts}) must be after start_ts ({start_ts})")
        if not expires_at > now:
            raise ValueError(f"expires_at ({expires_at}) is not in the future (now {now})")
        row = {
            "camera": camera,
            "start_ts": start_ts,
            "end_ts": end_ts,
            "requisition": requisition,
            "created_at": now,
            "expires_at": expires_at,
        }
        with self._index.transaction() as db:
            hold_id = int(db.execute(_INSERT_HOLD, row).lastrowid or 0)
        hold = Hold(hold_id, camera, start_ts, end_ts, requisition, now, expires_at)
        self._save()
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

    def release(self, hold_id: int) -> bool:
        """Remove a hold; False if there was none with this id."""
        with self._index.transaction() as db:
            removed = db.execute("DELETE FROM holds WHERE id = :id", {"id": hold_id}).rowcount > 0
        if removed:
            self._save()
            log.info("hold %d released", hold_id)
        return removed

    def rows(self, camera: str | None = None) -> list[Hold]:
        """Every hold row (expired ones stay until `expire` removes them), of one camera or all."""
        rows = self._index.query(f"{_SELECT_HOLDS} ORDER BY id")
        holds = [_hold(row) for row in rows]
        return [h for h in holds if camera is None or h.camera == camera]

    def expire(self, now: float) -> list[Hold]:
        """Remove the holds lapsed at `now`; returns them (each logged)."""
        expired = [h for h in self.rows() if not h.active(now)]
        if not expired:
            return []
        with self._index.transaction() as db:
            db.executemany("DELETE FROM holds WHERE id = :id", [{"id": h.id} for h in expired])
        self._save()
        for hold in expired:
            log.info("hold %d (%s, requisition %s) expired", hold.id, hold.camera, hold.requisition)
        return expired

    def restore(self) -> list[str]:
        """Put back the holds of `holds.json` when the index has none (a lost or rebuilt index).

        Returns what was done, one line (empty when there was nothing to restore).
        """
        if self._index.query("SELECT COUNT(*) AS n FROM holds")[0]["n"] or not self._mirror.exists():
            return []
        try:
            rows = json.loads(self._mirror.read_text(encoding="utf-8"))
            holds = [Hold(**row) for row in rows]
        except (OSError, ValueError, TypeError) as error:
            return [f"cannot read {self._mirror} ({error}): holds not restored"]
        with self._index.transaction() as db:
            db.executemany(_RESTORE_HOLD, [asdict(h) for h in holds])
        return [f"restored {len(holds)} hold(s) from {self._mirror}"] if holds else []

    def _save(self) -> None:
        data = json.dumps([asdict(h) for h in self.rows()], indent=1)
        tmp = self._mirror.with_name(f".{self._mirror.name}.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._mirror)
        fsync_dir(self._mirror.parent)  # else a power cut may bring the previous mirror back


def _hold(row: sqlite3.Row) -> Hold:
    """A hold from an index row read by column name."""
    return Hold(
        id=row["id"],
        camera=row["camera"],
        start_ts=row["start_ts"],
        end_ts=row["end_ts"],
        requisition=row["requisition"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )
