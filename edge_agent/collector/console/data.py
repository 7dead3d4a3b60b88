"""What the console reads and writes: one narrow interface (`ConsoleData`), and its SQLite implementation.

The console names only the queries it needs, so that any collector store backend can serve it. Fleet
rows come from the collector's registry (`edge_agent.collector.store`); the console adds three tables of
its own (users, sessions, acknowledgements) and two motion queries the registry lacks: alerts grouped by
event, newest first, and "motion rows after id N" for the live stream.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.collector.console.accounts import Account, Role, Session
from edge_agent.collector.store import DeviceStatus, EventRow, open_store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS console_acks (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    event_id TEXT NOT NULL,
    user TEXT NOT NULL,
    at REAL NOT NULL,
    comment TEXT NOT NULL,
    PRIMARY KEY (site, device, event_id)
);
"""


@dataclass(frozen=True)
class Acknowledgement:
    """An operator saw an alert: who, when, and what they noted."""

    site: str
    device: str
    event_id: str
    user: str
    at: float
    comment: str


@dataclass(frozen=True)
class AlertQuery:
    """Which alerts to list: a time floor and optional site, device, camera and zone."""

    since: float
    site: str = ""
    device: str = ""
    camera: str = ""
    zone: str = ""
    limit: int = 200


@dataclass(frozen=True)
class Alert:
    """One motion event (all its start/update/end messages folded), with its acknowledgement if any."""

    site: str
    device: str
    camera: str
    event_id: str
    start_ts: float
    last_ts: float
    ended: bool
    score: float
    zones: list[str]
    last_id: int
    ack: Acknowledgement | None = None

    @property
    def key(self) -> str:
        """One string naming the event across devices (for the page and the live stream)."""
        return f"{self.site}/{self.device}/{self.event_id}"


class DuplicateError(Exception):
    """A row that exists already (a user name taken, an alert already acknowledged)."""


class ConsoleData(Protocol):
    """Every query of the console."""

    def devices(self, site: str | None = None) -> list[DeviceStatus]: ...
    def device_status(self, site: str, device: str) -> DeviceStatus | None: ...
    def fleet_version(self) -> tuple[Any, ...]: ...
    def alerts(self, query: AlertQuery) -> list[Alert]: ...
    def motion_after(self, after_id: int, limit: int = 500) -> list[EventRow]: ...
    def last_motion_id(self) -> int: ...
    def add_user(self, account: Account) -> None: ...
    def user(self, name: str) -> Account | None: ...
    def users(self) -> list[Account]: ...
    def set_disabled(self, name: str, disabled: bool) -> bool: ...
    def create_session(self, session: Session) -> None: ...
    def session(self, token_hash: str) -> Session | None: ...
    def touch_session(self, token_hash: str, now: float) -> None: ...
    def delete_session(self, token_hash: str) -> None: ...
    def delete_sessions_of(self, user: str) -> None: ...
    def acknowledge(self, ack: Acknowledgement) -> None: ...
    def close(self) -> None: ...


class SqliteConsoleData:
    """`ConsoleData` on the collector's SQLite registry file (the console's tables live beside it)."""

    def __init__(self, path: Path) -> None:
        self.registry = open_store(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close both connections."""
        with self._lock:
            self._db.close()
        self.registry.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount

    # --- fleet ----------------------------------------------------------------------------------

    def devices(self, site: str | None = None) -> list[DeviceStatus]:
        """Every device (of one site) with its last status."""
        return self.registry.devices(site)

    def device_status(self, site: str, device: str) -> DeviceStatus | None:
        """One device, or None when never heard."""
        return self.registry.device_status(site, device)

    def fleet_version(self) -> tuple[Any, ...]:
        """Changes whenever a device appears, goes on- or offline, or publishes a status."""
        row = self._rows(
            "SELECT COUNT(*), SUM(online), MAX(availability_at), MAX(status_ts), SUM(status_ts) FROM devices"
        )[0]
        return tuple(row)

    # --- motion ---------------------------------------------------------------------------------

    def alerts(self, query: AlertQuery) -> list[Alert]:
        """Events newest first (by their latest message), folded, with their acknowledgements."""
        clauses: list[str] = ["m.ts >= ?"]
        params: list[Any] = [query.since]
        for column, value in (("site", query.site), ("device", query.device), ("camera", query.camera)):
            if value:
                clauses.append(f"m.{column} = ?")
                params.append(value)
        if query.zone:
            clauses.append("instr(m.zones, ?) > 0")
            params.append(json.dumps(query.zone))
        rows = self._rows(
            "SELECT m.site, m.device, m.camera, m.event_id, MIN(m.start_ts), MAX(m.ts),"
            " MAX(m.phase = 'end'), MAX(m.score), MAX(m.zones), MAX(m.id),"
            " a.user, a.at, a.comment"
            " FROM motion_events m LEFT JOIN console_acks a"
            " ON a.site = m.site AND a.device = m.device AND a.event_id = m.event_id"
            f" WHERE {' AND '.join(clauses)}"
            " GROUP BY m.site, m.device, m.event_id ORDER BY MAX(m.id) DESC LIMIT ?",
            (*params, query.limit),
        )
        return [_alert(row) for row in rows]

    def motion_after(self, after_id: int, limit: int = 500) -> list[EventRow]:
        """Motion rows stored after row `after_id`, oldest first (what the live stream sends next)."""
        rows = self._rows(
            "SELECT id, site, device, camera, event_id, phase, ts, start_ts, score, boxes, zones, stored_at"
            " FROM motion_events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [
            EventRow(
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
            for row in rows
        ]

    def last_motion_id(self) -> int:
        """The id of the newest motion row (0 when none)."""
        return int(self._rows("SELECT COALESCE(MAX(id), 0) FROM motion_events")[0][0])

    def acknowledge(self, ack: Acknowledgement) -> None:
        """Record an acknowledgement; DuplicateError when the alert already has one."""
        try:
            self._write(
                "INSERT INTO console_acks (site, device, event_id, user, at, comment)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (ack.site, ack.device, ack.event_id, ack.user, ack.at, ack.comment),
            )
        except sqlite3.IntegrityError:
            raise DuplicateError(
                f"alert {ack.site}/{ack.device}/{ack.event_id} is already acknowledged"
            ) from None

    # --- accounts -------------------------------------------------------------------------------

    def add_user(self, account: Account) -> None:
        """Create a user; DuplicateError when the name is taken."""
        try:
            self._write(
                "INSERT INTO console_users (name, role, password_hash, created_at, disabled)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    account.name,
                    account.role.value,
                    account.password_hash,
                    account.created_at,
                    int(account.disabled),
                ),
            )
        except sqlite3.IntegrityError:
            raise DuplicateError(f"name: user {account.name!r} exists already") from None

    def user(self, name: str) -> Account | None:
        """A user by name."""
        rows = self._rows(
            "SELECT name, role, password_hash, created_at, disabled FROM console_users WHERE name = ?",
            (name,),
        )
        return _account(rows[0]) if rows else None

    def users(self) -> list[Account]:
        """Every user, by name."""
        rows = self._rows(
            "SELECT name, role, password_hash, created_at, disabled FROM console_users ORDER BY name"
        )
        return [_account(row) for row in rows]

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable or re-enable a user; False when there is no such user."""
        return self._write("UPDATE console_users SET disabled = ? WHERE name = ?", (int(disabled), name)) == 1

    def create_session(self, session: Session) -> None:
        """Store a new session."""
        self._write(
            "INSERT INTO console_sessions (token_hash, user, csrf, created_at, last_seen)"
            " VALUES (?, ?, ?, ?, ?)",
            (session.token_hash, session.user, session.csrf, session.created_at, session.last_seen),
        )

    def session(self, token_hash: str) -> Session | None:
        """A session by the hash of its token."""
        rows = self._rows(
            "SELECT token_hash, user, csrf, created_at, last_seen FROM console_sessions WHERE token_hash = ?",
            (token_hash,),
        )
        return Session(*rows[0]) if rows else None

    def touch_session(self, token_hash: str, now: float) -> None:
        """The session was used now (its idle time restarts)."""
        self._write("UPDATE console_sessions SET last_seen = ? WHERE token_hash = ?", (now, token_hash))

    def delete_session(self, token_hash: str) -> None:
        """Log a session out."""
        self._write("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions_of(self, user: str) -> None:
        """Log a user out everywhere (disabled accounts)."""
        self._write("DELETE FROM console_sessions WHERE user = ?", (user,))


def _account(row: tuple[Any, ...]) -> Account:
    return Account(
        name=row[0], role=Role(row[1]), password_hash=row[2], created_at=row[3], disabled=bool(row[4])
    )


def _alert(row: tuple[Any, ...]) -> Alert:
    ack = Acknowledgement(row[0], row[1], row[3], row[10], row[11], row[12]) if row[10] is not None else None
    return Alert(
        site=row[0],
        device=row[1],
        camera=row[2],
        event_id=row[3],
        start_ts=row[4],
        last_ts=row[5],
        ended=bool(row[6]),
        score=row[7],
        zones=json.loads(row[8]),
        last_id=row[9],
        ack=ack,
    )
