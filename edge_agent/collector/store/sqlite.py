"""The collector's registry in SQLite: sites, devices, cameras, last status, availability history, motion.

All SQL of the collector lives here, behind plain methods taking and returning dataclasses, so that a
PostgreSQL store can replace it for a large CSU without touching ingestion or the commands.

Motion rows are unique on (site, device, event_id, phase, ts): a message redelivered after a reconnect
or an agent restart (same bytes, same ts) is stored once, while the successive `update` messages of one
event (different ts) are all kept. `start` and `end` occur once per event, so for them this is the
(event_id, phase) deduplication of the issue.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.formats.mqtt_wire import MotionMessage, StatusMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    site TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    online INTEGER NOT NULL DEFAULT 0,
    availability_at REAL,
    last_seen REAL NOT NULL,
    status_json TEXT,
    status_ts REAL,
    version TEXT NOT NULL DEFAULT '',
    clip_url TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (site, device)
);
CREATE TABLE IF NOT EXISTS cameras (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    camera TEXT NOT NULL,
    state TEXT NOT NULL,
    fps REAL NOT NULL,
    drops INTEGER NOT NULL,
    resolution TEXT,
    masks INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (site, device, camera)
);
CREATE TABLE IF NOT EXISTS availability (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS motion_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    camera TEXT NOT NULL,
    event_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    ts REAL NOT NULL,
    start_ts REAL NOT NULL,
    score REAL NOT NULL,
    boxes TEXT NOT NULL,
    zones TEXT NOT NULL,
    stored_at REAL NOT NULL,
    UNIQUE (site, device, event_id, phase, ts)
);
CREATE INDEX IF NOT EXISTS motion_by_site_time ON motion_events (site, ts);
CREATE TABLE IF NOT EXISTS malformed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

MALFORMED_KEPT = 1000


@dataclass(frozen=True)
class SiteSummary:
    """One site: how many devices are online, how many cameras, when it was last heard."""

    site: str
    devices: int
    online: int
    cameras: int
    cameras_running: int
    last_seen: float


@dataclass(frozen=True)
class DeviceStatus:
    """A device's last known state; `status` is its last status document as published."""

    site: str
    device: str
    online: bool
    last_seen: float
    version: str
    clip_url: str
    status: dict[str, Any] | None


@dataclass(frozen=True)
class EventRow:
    """One stored motion message."""

    id: int
    site: str
    device: str
    camera: str
    event_id: str
    phase: str
    ts: float
    start_ts: float
    score: float
    boxes: list[list[float]]
    zones: list[str]
    stored_at: float


@dataclass(frozen=True)
class AvailabilityChange:
    """An online/offline transition."""

    site: str
    device: str
    state: str
    at: float


class Store:
    """The SQLite registry (thread-safe; writes can be grouped with `batch()`)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open or create the database; `readonly` for the query commands (they never create one)."""
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no collector database (run `csu-collector serve`)")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes inside into one transaction (one commit for many messages)."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # --- writes ---------------------------------------------------------------------------------

    def _touch(self, site: str, device: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO sites (site, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT(site) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
            (site, now, now),
        )
        self._db.execute(
            "INSERT INTO devices (site, device, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT(site, device) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
            (site, device, now),
        )

    def record_availability(self, site: str, device: str, state: str, now: float) -> bool:
        """Set a device online or offline; returns True (and adds a history row) when it changed."""
        with self.batch():
            self._touch(site, device, now)
            row = self._db.execute(
                "SELECT online, availability_at FROM devices WHERE site = ? AND device = ?", (site, device)
            ).fetchone()
            online = state == "online"
            changed = row[1] is None or bool(row[0]) != online
            self._db.execute(
                "UPDATE devices SET online = ?, availability_at = ? WHERE site = ? AND device = ?",
                (int(online), now, site, device),
            )
            if changed:
                self._db.execute(
                    "INSERT INTO availability (site, device, state, at) VALUES (?, ?, ?, ?)",
                    (site, device, state, now),
                )
            return changed

    def record_status(self, status: StatusMessage, raw_json: str, now: float) -> bool:
        """Keep a device's status and its cameras; an older status than the stored one is ignored."""
        with self.batch():
            self._touch(status.site, status.device, now)
            stored = self._db.execute(
                "SELECT status_ts FROM devices WHERE site = ? AND device = ?", (status.site, status.device)
            ).fetchone()
            if stored[0] is not None and stored[0] > status.ts:
                return False
            self._db.execute(
                "UPDATE devices SET status_json = ?, status_ts = ?, version = ?, clip_url = ? "
                "WHERE site = ? AND device = ?",
                (raw_json, status.ts, status.version, status.clip_url, status.site, status.device),
            )
            self._db.execute(
                "DELETE FROM cameras WHERE site = ? AND device = ?", (status.site, status.device)
            )
            self._db.executemany(
                "INSERT INTO cameras (site, device, camera, state, fps, drops, resolution, masks, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        status.site,
                        status.device,
                        cam.id,
                        cam.state,
                        cam.fps,
                        cam.drops,
                        "x".join(map(str, cam.resolution)) if cam.resolution else None,
                        cam.masks,
                        now,
                    )
                    for cam in status.cameras
                ],
            )
            return True

    def record_motion(self, site: str, device: str, camera: str, event: MotionMessage, now: float) -> bool:
        """Store a motion message; False when it is a duplicate (already stored)."""
        with self.batch():
            self._touch(site, device, now)
            cursor = self._db.execute(
                "INSERT INTO motion_events (site, device, camera, event_id, phase, ts, start_ts, score, "
                "boxes, zones, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (site, device, event_id, phase, ts) DO NOTHING",
                (
                    site,
                    device,
                    camera,
                    event.event_id,
                    event.phase,
                    event.ts,
                    event.start_ts,
                    event.score,
                    json.dumps([list(b) for b in event.boxes]),
                    json.dumps(event.zones),
                    now,
                ),
            )
            inserted = cursor.rowcount == 1
            if not inserted:
                self._count("duplicates")
            return inserted

    def record_malformed(self, topic: str, error: str, now: float) -> None:
        """Count a payload that did not parse, keeping the latest ones for inspection."""
        with self.batch():
            self._count("malformed")
            self._db.execute("INSERT INTO malformed (topic, error, at) VALUES (?, ?, ?)", (topic, error, now))
            self._db.execute(
                "DELETE FROM malformed WHERE id <= (SELECT MAX(id) FROM malformed) - ?", (MALFORMED_KEPT,)
            )

    def _count(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    # --- reads ----------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """`malformed`, `duplicates`, ... since the database was created."""
        with self._lock:
            return {name: int(value) for name, value in self._db.execute("SELECT name, value FROM counters")}

    def malformed(self, limit: int = 20) -> list[tuple[str, str, float]]:
        """The latest malformed payloads: (topic, error, at)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT topic, error, at FROM malformed ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def sites(self) -> list[SiteSummary]:
        """Every site with its device and camera counts."""
        with self._lock:
            rows = self._db.execute(
                """
                SELECT s.site,
                       (SELECT COUNT(*) FROM devices d WHERE d.site = s.site),
                       (SELECT COUNT(*) FROM devices d WHERE d.site = s.site AND d.online = 1),
                       (SELECT COUNT(*) FROM cameras c WHERE c.site = s.site),
                       (SELECT COUNT(*) FROM cameras c WHERE c.site = s.site AND c.state = 'running'),
                       s.last_seen
                FROM sites s ORDER BY s.site
                """
            ).fetchall()
        return [SiteSummary(*row) for row in rows]

    def devices(self, site: str | None = None) -> list[DeviceStatus]:
        """Every device (of one site), with its last status."""
        query = "SELECT site, device, online, last_seen, version, clip_url, status_json FROM devices"
        params: tuple[str, ...] = ()
        if site is not None:
            query += " WHERE site = ?"
            params = (site,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY site, device", params).fetchall()
        return [_device(row) for row in rows]

    def device_status(self, site: str, device: str) -> DeviceStatus | None:
        """A device's last status and clip URL (what `fetch-clip` needs), or None if never heard."""
        with self._lock:
            row = self._db.execute(
                "SELECT site, device, online, last_seen, version, clip_url, status_json FROM devices "
                "WHERE site = ? AND device = ?",
                (site, device),
            ).fetchone()
        return _device(row) if row else None

    def availability_history(self, site: str, device: str) -> list[AvailabilityChange]:
        """The device's online/offline transitions, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT site, device, state, at FROM availability WHERE site = ? AND device = ? ORDER BY id",
                (site, device),
            ).fetchall()
        return [AvailabilityChange(*row) for row in rows]

    def events(
        self, site: str | None = None, since: float = 0.0, device: str | None = None, limit: int = 10_000
    ) -> list[EventRow]:
        """Motion messages with `ts >= since`, in the order they were stored."""
        clauses: list[str] = ["ts >= ?"]
        params: list[Any] = [since]
        if site is not None:
            clauses.append("site = ?")
            params.append(site)
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, site, device, camera, event_id, phase, ts, start_ts, score, boxes, zones, "
                f"stored_at FROM motion_events WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_event(row) for row in rows]


def _event(row: tuple[Any, ...]) -> EventRow:
    return EventRow(
        id=row[0],
        site=row[1],
        device=row[2],
        camera=row[3],
        event_id=row[4],
        phase=row[5],
        ts=row[6],
        start_ts=row[7],
        score=row[8],
        boxes=json.loads(row[9]),
        zones=json.loads(row[10]),
        stored_at=row[11],
    )


def _device(row: tuple[Any, ...]) -> DeviceStatus:
    return DeviceStatus(
        site=row[0],
        device=row[1],
        online=bool(row[2]),
        last_seen=row[3],
        version=row[4],
        clip_url=row[5],
        status=json.loads(row[6]) if row[6] else None,
    )


def device_clip_url(db_path: Path, site: str, device: str) -> str:
    """The clip API URL a device last published; LookupError naming what is missing."""
    store = Store(db_path, readonly=True)
    try:
        status = store.device_status(site, device)
    finally:
        store.close()
    if status is None:
        raise LookupError(f"device {site}/{device} has never been heard by this collector ({db_path})")
    if not status.clip_url:
        raise LookupError(f"device {site}/{device} published no clip URL (its clip server may be disabled)")
    return status.clip_url
