"""The store's SQL, written once for both engines: batched writes, reads, retention, migrations.

Statements use `?` placeholders and the SQL both SQLite (3.35+) and PostgreSQL understand (`ON CONFLICT`,
`RETURNING`, partial indexes); a backend only says how to open a transaction (`Tx`).

A batch is written in phases so that collectors sharing one PostgreSQL database never deadlock: first
the batch's sites, then its devices are upserted in sorted order, which locks every device row the batch
touches before anything else; the rows of one device (its status, cameras, motion, history) are then
only ever written by the transaction holding that device's lock. The status update is conditional
(`status_ts < new ts`), so under READ COMMITTED the second of two concurrent writers re-checks it against
the first one's committed row: an older status never overwrites a newer one, whoever writes last.

The same lock orders the ends the collector writes when a device goes offline with events open (reason
`device-offline`): whichever collector stores the offline or a start, the other sees its committed rows,
the start's arrival time says whether the offline closes it, and the unique end per event keeps one.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from edge_agent.collector.store.base import (
    DEVICE_OFFLINE,
    STALE_AFTER_S,
    STALE_PERIODS,
    AvailabilityChange,
    AvailabilityRecord,
    DeviceStatus,
    EventRow,
    MalformedRecord,
    MotionRecord,
    Outcome,
    PurgeResult,
    Record,
    SchemaError,
    SiteSummary,
    StatusHistoryRow,
    StatusRecord,
    Store,
)
from edge_agent.collector.store.migrations import LATEST, VERSION_TABLE, Dialect, Migration, pending
from edge_agent.formats.times import Clock

MALFORMED_KEPT = 1000
"""The malformed table keeps the latest ones for inspection; the counters keep the totals."""
PURGE_CHUNK = 10_000
"""Rows deleted per transaction by retention, so that a purge never holds long locks."""
_COUNTER_OF: dict[str, str] = {"duplicate": "duplicates", "stale": "stale", "malformed": "malformed"}
_EVENT_COLUMNS = (
    "id, site, device, camera, event_id, phase, ts, start_ts, score, boxes, zones, stored_at, end_reason"
)
# The end the collector writes for an event still open when its device goes offline: one per event (the
# partial unique index of migration 2), at the offline time (or at the event's latest message, when the
# device's clock runs ahead), so a redelivered offline or a second collector adds nothing. `{which}`
# picks the events: parameters (at, at, stored_at, end_reason, *which).
_CLOSE_OPEN_EVENTS = """
INSERT INTO motion_events (site, device, camera, event_id, phase, ts, start_ts, score, boxes, zones,
                           stored_at, end_reason)
SELECT s.site, s.device, s.camera, s.event_id, 'end',
       CASE WHEN (SELECT MAX(u.ts) FROM motion_events u
                  WHERE u.site = s.site AND u.device = s.device AND u.event_id = s.event_id) > ?
            THEN (SELECT MAX(u.ts) FROM motion_events u
                  WHERE u.site = s.site AND u.device = s.device AND u.event_id = s.event_id)
            ELSE ? END,
       s.start_ts, s.score, '[]', s.zones, ?, ?
FROM motion_events s
WHERE s.phase = 'start' AND {which}
  AND NOT EXISTS (SELECT 1 FROM motion_events e WHERE e.site = s.site AND e.device = s.device
                  AND e.event_id = s.event_id AND e.phase = 'end')
ON CONFLICT DO NOTHING
"""
# At an offline: the device's open events whose start was stored by then (a start another collector
# received after the offline is not closed by it).
_CLOSE_AT_OFFLINE = _CLOSE_OPEN_EVENTS.format(which="s.site = ? AND s.device = ? AND s.stored_at <= ?")
# One event whose start arrived before its device's offline.
_CLOSE_EVENT = _CLOSE_OPEN_EVENTS.format(which="s.site = ? AND s.device = ? AND s.event_id = ?")
_DEVICE_COLUMNS = "site, device, online, last_seen, version, clip_url, status_json, malformed"


class Tx(Protocol):
    """One transaction's statements, as each backend runs them."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return its rows."""
        ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns how many rows it changed."""
        ...

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter row (one round trip where the engine allows)."""
        ...

    def many_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Run a `... RETURNING` statement per parameter row; whether each returned a row."""
        ...


class SQLStore(Store):
    """The store's logic over a backend's transactions (store/sqlite.py, store/postgres.py)."""

    dialect: Dialect

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction, committed when the block ends (StoreUnavailable if the engine is)."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Tx]:
        """Statements for reading (no write intended)."""

    @abstractmethod
    def _has_table(self, tx: Tx, name: str) -> bool:
        """Whether the table exists."""

    @abstractmethod
    def _lock_schema(self, tx: Tx) -> None:
        """Keep other processes from migrating at the same time (until the transaction ends)."""

    # --- schema -----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The last migration applied (0 for an empty or pre-versioning database)."""
        with self._reading() as tx:
            return self._recorded_version(tx)

    def _recorded_version(self, tx: Tx) -> int:
        if not self._has_table(tx, "schema_version"):
            return 0
        [(version,)] = tx.rows("SELECT MAX(version) FROM schema_version")
        return int(version or 0)

    def check_schema(self) -> None:
        """SchemaError unless the database is at the version this collector needs."""
        version = self.schema_version()
        if version < LATEST:
            raise SchemaError(
                f"{self.description}: schema version {version}, this collector needs {LATEST}: "
                f"run `csu-collector db upgrade --db {self.description}`"
            )
        if version > LATEST:
            raise SchemaError(
                f"{self.description}: schema version {version} is newer than this collector's ({LATEST}): "
                "upgrade the collector"
            )

    def upgrade(self, clock: Clock = time.time) -> list[Migration]:
        """Apply the pending migrations, each in its own transaction; returns those applied."""
        applied: list[Migration] = []
        while True:
            with self._transaction() as tx:
                self._lock_schema(tx)
                tx.run(VERSION_TABLE.format(real=self.dialect.real))
                current = self._recorded_version(tx)
                if current > LATEST:
                    raise SchemaError(
                        f"{self.description}: schema version {current} is newer than this collector's "
                        f"({LATEST}): upgrade the collector"
                    )
                todo = pending(current)
                if not todo:
                    return applied
                migration = todo[0]
                for statement in migration.sql(self.dialect):
                    tx.run(statement)
                tx.run(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, clock()),
                )
            applied.append(migration)

    # --- writes -----------------------------------------------------------------------------------

    def write(self, records: Sequence[Record], now: float) -> list[Outcome]:
        """Store a batch in one transaction; one outcome per record, in order."""
        if not records:
            return []
        outcomes: list[Outcome] = ["stored"] * len(records)
        with self._transaction() as tx:
            _touch(tx, records)
            _write_availability(tx, records, outcomes, now)
            _write_statuses(tx, records, outcomes, now)
            _write_motion(tx, records, outcomes, now)
            _write_malformed(tx, records, outcomes)
            _count(tx, outcomes)
        return outcomes

    def purge(self, before: float) -> PurgeResult:
        """Delete the collector's own rows older than `before`, in chunks of PURGE_CHUNK rows."""
        return PurgeResult(
            motion_events=self._purge_table("motion_events", "ts", before),
            statuses=self._purge_table("status_history", "ts", before),
            availability=self._purge_table("availability", "at", before),
            malformed=self._purge_table("malformed", "at", before),
        )

    def _purge_table(self, table: str, column: str, before: float) -> int:
        total = 0
        while True:
            with self._transaction() as tx:
                deleted = tx.run(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {column} < ? LIMIT ?)",
                    (before, PURGE_CHUNK),
                )
            total += deleted
            if deleted < PURGE_CHUNK:
                return total

    # --- reads ------------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """`malformed`, `duplicates`, `stale` since the database was created."""
        with self._reading() as tx:
            return {name: int(value) for name, value in tx.rows("SELECT name, value FROM counters")}

    def malformed(self, limit: int = 20) -> list[tuple[str, str, float]]:
        """The latest malformed payloads: (topic, error, at), newest first."""
        with self._reading() as tx:
            rows = tx.rows("SELECT topic, error, at FROM malformed ORDER BY id DESC LIMIT ?", (limit,))
        return [(r[0], r[1], r[2]) for r in rows]

    def sites(self, now: float, stale_after_s: float = STALE_AFTER_S) -> list[SiteSummary]:
        """Every site with its device and camera counts; running cameras of fresh, online devices only."""
        with self._reading() as tx:
            rows = tx.rows(
                """
                SELECT s.site,
                       (SELECT COUNT(*) FROM devices d WHERE d.site = s.site),
                       (SELECT COUNT(*) FROM devices d WHERE d.site = s.site AND d.online = 1),
                       (SELECT COUNT(*) FROM cameras c WHERE c.site = s.site),
                       (SELECT COUNT(*) FROM cameras c
                        JOIN devices d ON d.site = c.site AND d.device = c.device
                        WHERE c.site = s.site AND c.state = 'running' AND d.online = 1
                          AND d.status_ts >= ? - COALESCE(? * d.heartbeat_s, ?)),
                       s.last_seen
                FROM sites s ORDER BY s.site
                """,
                (now, float(STALE_PERIODS), stale_after_s),
            )
        return [SiteSummary(*row) for row in rows]

    def devices(self, site: str | None = None) -> list[DeviceStatus]:
        """Every device (of one site), with its last status."""
        query = f"SELECT {_DEVICE_COLUMNS} FROM devices"
        params: tuple[str, ...] = ()
        if site is not None:
            query += " WHERE site = ?"
            params = (site,)
        with self._reading() as tx:
            rows = tx.rows(query + " ORDER BY site, device", params)
        return [_device(row) for row in rows]

    def device_status(self, site: str, device: str) -> DeviceStatus | None:
        """A device's last status and clip URL (what `fetch-clip` needs), or None if never heard."""
        with self._reading() as tx:
            rows = tx.rows(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE site = ? AND device = ?", (site, device)
            )
        return _device(rows[0]) if rows else None

    def availability_history(self, site: str, device: str) -> list[AvailabilityChange]:
        """The device's online/offline transitions, oldest first."""
        with self._reading() as tx:
            rows = tx.rows(
                "SELECT site, device, state, at FROM availability WHERE site = ? AND device = ? ORDER BY id",
                (site, device),
            )
        return [AvailabilityChange(*row) for row in rows]

    def status_history(self, site: str, device: str, since: float = 0.0) -> list[StatusHistoryRow]:
        """The statuses a device published with `ts >= since`, oldest first."""
        with self._reading() as tx:
            rows = tx.rows(
                "SELECT site, device, ts, version, uptime_s, cameras, cameras_running, stored_at "
                "FROM status_history WHERE site = ? AND device = ? AND ts >= ? ORDER BY ts",
                (site, device, since),
            )
        return [StatusHistoryRow(*row) for row in rows]

    def events(
        self, site: str | None = None, since: float = 0.0, device: str | None = None, limit: int = 10_000
    ) -> list[EventRow]:
        """Motion messages with `ts >= since`, newest first, at most `limit` (the newest ones)."""
        clauses = ["ts >= ?"]
        params: list[Any] = [since]
        if site is not None:
            clauses.append("site = ?")
            params.append(site)
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        with self._reading() as tx:
            where = " AND ".join(clauses)
            rows = tx.rows(
                f"SELECT {_EVENT_COLUMNS} FROM motion_events WHERE {where} ORDER BY ts DESC, id DESC LIMIT ?",
                (*params, limit),
            )
        return [_event(row) for row in rows]

    def motion_after(self, after_id: int, limit: int = 500) -> list[EventRow]:
        """Motion rows stored after row `after_id`, oldest first (what a live view shows next)."""
        with self._reading() as tx:
            rows = tx.rows(
                f"SELECT {_EVENT_COLUMNS} FROM motion_events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        return [_event(row) for row in rows]

    def last_motion_id(self) -> int:
        """The id of the newest motion row (0 when none)."""
        with self._reading() as tx:
            [(last,)] = tx.rows("SELECT MAX(id) FROM motion_events")
        return int(last or 0)


# --- the phases of a batch ------------------------------------------------------------------------


def _indexed(records: Sequence[Record], kind: type[Any]) -> Iterator[tuple[int, Any]]:
    return ((i, r) for i, r in enumerate(records) if isinstance(r, kind))


def _touch(tx: Tx, records: Sequence[Record]) -> None:
    """Upsert the batch's sites, then its devices, in sorted order (the lock order of every writer)."""
    site_seen: dict[str, float] = {}
    device_seen: dict[tuple[str, str], float] = {}
    for record in records:
        site, device = record.site, record.device
        if not device:
            continue  # a malformed topic names no device
        site_seen[site] = max(site_seen.get(site, 0.0), record.received_at)
        device_seen[(site, device)] = max(device_seen.get((site, device), 0.0), record.received_at)
    tx.many(
        "INSERT INTO sites (site, first_seen, last_seen) VALUES (?, ?, ?) ON CONFLICT (site) "
        "DO UPDATE SET last_seen = excluded.last_seen WHERE excluded.last_seen > sites.last_seen",
        [(site, seen, seen) for site, seen in sorted(site_seen.items())],
    )
    tx.many(
        "INSERT INTO devices (site, device, last_seen) VALUES (?, ?, ?) ON CONFLICT (site, device) "
        "DO UPDATE SET last_seen = excluded.last_seen WHERE excluded.last_seen > devices.last_seen",
        [(site, device, seen) for (site, device), seen in sorted(device_seen.items())],
    )


def _write_availability(tx: Tx, records: Sequence[Record], outcomes: list[Outcome], now: float) -> None:
    """Set online/offline in arrival order; a change adds a history row, a repeat is a duplicate.

    Going offline closes the device's open events stored until then (an end with reason DEVICE_OFFLINE):
    its own end may never come. Starts of this batch are written later and judged then (`_write_motion`).
    """
    items: list[tuple[int, AvailabilityRecord]] = list(_indexed(records, AvailabilityRecord))
    if not items:
        return
    changed = tx.many_returning(
        "UPDATE devices SET online = ?, availability_at = ? WHERE site = ? AND device = ? "
        "AND (availability_at IS NULL OR online <> ?) RETURNING device",
        [
            (int(r.state == "online"), r.received_at, r.site, r.device, int(r.state == "online"))
            for _, r in items
        ],
    )
    history = []
    closing = []
    for (index, record), did_change in zip(items, changed, strict=True):
        if not did_change:
            outcomes[index] = "duplicate"
            continue
        history.append((record.site, record.device, record.state, record.received_at))
        if record.state == "offline":
            at = record.received_at
            closing.append((at, at, now, DEVICE_OFFLINE, record.site, record.device, at))
    tx.many("INSERT INTO availability (site, device, state, at) VALUES (?, ?, ?, ?)", history)
    tx.many(_CLOSE_AT_OFFLINE, closing)


def _write_statuses(tx: Tx, records: Sequence[Record], outcomes: list[Outcome], now: float) -> None:
    """History row keyed by (site, device, ts), then the conditional update of the device's current one."""
    # Arrival order: a batch gives the same outcomes as its messages one by one (the device rows are
    # locked already, so the order inside the batch cannot deadlock).
    items: list[tuple[int, StatusRecord]] = list(_indexed(records, StatusRecord))
    if not items:
        return
    inserted = tx.many_returning(
        "INSERT INTO status_history (site, device, ts, version, uptime_s, cameras, cameras_running, "
        "stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        [
            (
                r.status.site,
                r.status.device,
                r.status.ts,
                r.status.version,
                r.status.uptime_s,
                len(r.status.cameras),
                sum(1 for cam in r.status.cameras if cam.state == "running"),
                now,
            )
            for _, r in items
        ],
    )
    new: list[tuple[int, StatusRecord]] = []
    for (index, record), is_new in zip(items, inserted, strict=True):
        if is_new:
            new.append((index, record))
        else:
            outcomes[index] = "duplicate"
    if not new:
        return
    applied = tx.many_returning(
        "UPDATE devices SET status_json = ?, status_ts = ?, version = ?, clip_url = ?, heartbeat_s = ? "
        "WHERE site = ? AND device = ? AND (status_ts IS NULL OR status_ts < ?) RETURNING device",
        [
            (
                r.raw_json,
                r.status.ts,
                r.status.version,
                r.status.clip_url,
                r.status.heartbeat_s,
                r.status.site,
                r.status.device,
                r.status.ts,
            )
            for _, r in new
        ],
    )
    current: dict[tuple[str, str], StatusRecord] = {}
    for (index, record), was_applied in zip(new, applied, strict=True):
        if was_applied:
            current[(record.status.site, record.status.device)] = record  # each applied one is newer
        else:
            outcomes[index] = "stale"
    tx.many("DELETE FROM cameras WHERE site = ? AND device = ?", sorted(current))
    tx.many(
        "INSERT INTO cameras (site, device, camera, state, fps, drops, resolution, masks, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                site,
                device,
                cam.id,
                cam.state,
                cam.fps,
                cam.drops,
                "x".join(map(str, cam.resolution)) if cam.resolution else None,
                cam.masks,
                now,
            )
            for (site, device), record in sorted(current.items())
            for cam in record.status.cameras
        ],
    )


def _write_motion(tx: Tx, records: Sequence[Record], outcomes: list[Outcome], now: float) -> None:
    """Insert motion rows in arrival order; a row already stored is a duplicate.

    A device's own end replaces the one the collector wrote when it went offline (its outbox resends it
    after reconnecting). A start whose device went offline after it arrived is closed at once.
    """
    items: list[tuple[int, MotionRecord]] = list(_indexed(records, MotionRecord))
    if not items:
        return
    tx.many(
        "DELETE FROM motion_events WHERE site = ? AND device = ? AND event_id = ? AND phase = 'end' "
        "AND end_reason IS NOT NULL",
        [(r.site, r.device, r.event.event_id) for _, r in items if r.event.phase == "end"],
    )
    inserted = tx.many_returning(
        "INSERT INTO motion_events (site, device, camera, event_id, phase, ts, start_ts, score, boxes, "
        "zones, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        [
            (
                r.site,
                r.device,
                r.camera,
                r.event.event_id,
                r.event.phase,
                r.event.ts,
                r.event.start_ts,
                r.event.score,
                json.dumps([list(b) for b in r.event.boxes]),
                json.dumps(r.event.zones),
                now,
            )
            for _, r in items
        ],
    )
    starts: list[tuple[int, MotionRecord]] = []
    for (index, record), is_new in zip(items, inserted, strict=True):
        if not is_new:
            outcomes[index] = "duplicate"
        elif record.event.phase == "start":
            starts.append((index, record))
    _close_started_before_offline(tx, records, starts, now)


def _close_started_before_offline(
    tx: Tx, records: Sequence[Record], starts: list[tuple[int, MotionRecord]], now: float
) -> None:
    """Close the new starts that arrived before their device's offline: later in this batch (the
    availability phase ran before them), or already stored by another collector (the device row, locked
    by this transaction, says offline since a time at or after the start's arrival)."""
    if not starts:
        return
    later_offline: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for index, availability in _indexed(records, AvailabilityRecord):
        if availability.state == "offline":
            where = (availability.site, availability.device)
            later_offline.setdefault(where, []).append((index, availability.received_at))
    offline_since = _offline_since(tx, {(r.site, r.device) for _, r in starts})
    closing = []
    for index, record in starts:
        where = (record.site, record.device)
        after = [at for i, at in later_offline.get(where, []) if i > index]
        since = offline_since.get(where)
        at = after[0] if after else since if since is not None and since >= record.received_at else None
        if at is not None:
            closing.append((at, at, now, DEVICE_OFFLINE, *where, record.event.event_id))
    tx.many(_CLOSE_EVENT, closing)


def _offline_since(tx: Tx, devices: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Which of these devices are offline now, and since when (one query: most are online)."""
    ordered = sorted(devices)
    values = ", ".join(["(?, ?)"] * len(ordered))
    rows = tx.rows(
        "SELECT site, device, availability_at FROM devices WHERE online = 0 "
        f"AND availability_at IS NOT NULL AND (site, device) IN (VALUES {values})",
        [part for device in ordered for part in device],
    )
    return {(site, device): float(at) for site, device, at in rows}


def _write_malformed(tx: Tx, records: Sequence[Record], outcomes: list[Outcome]) -> None:
    """Keep the latest malformed messages and count them per device."""
    items: list[MalformedRecord] = []
    for index, record in _indexed(records, MalformedRecord):
        items.append(record)
        outcomes[index] = "malformed"
    if not items:
        return
    tx.many(
        "INSERT INTO malformed (topic, site, device, error, at) VALUES (?, ?, ?, ?, ?)",
        [(r.topic, r.site, r.device, r.error, r.received_at) for r in items],
    )
    per_device: dict[tuple[str, str], int] = {}
    for r in items:
        if r.device:
            per_device[(r.site, r.device)] = per_device.get((r.site, r.device), 0) + 1
    tx.many(
        "UPDATE devices SET malformed = malformed + ? WHERE site = ? AND device = ?",
        [(count, site, device) for (site, device), count in sorted(per_device.items())],
    )
    tx.run("DELETE FROM malformed WHERE id <= (SELECT MAX(id) FROM malformed) - ?", (MALFORMED_KEPT,))


def _count(tx: Tx, outcomes: list[Outcome]) -> None:
    """Add the batch's duplicates, stale statuses and malformed messages to the totals (in lock order)."""
    totals: dict[str, int] = {}
    for outcome in outcomes:
        name = _COUNTER_OF.get(outcome)
        if name:
            totals[name] = totals.get(name, 0) + 1
    tx.many(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
        sorted(totals.items()),
    )


# --- rows to dataclasses --------------------------------------------------------------------------


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
        end_reason=row[12],
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
        malformed=int(row[7]),
    )
