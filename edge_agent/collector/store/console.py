"""The console's rows in the collector's store (migration 3): users, sessions, alert acknowledgements.

Plus the two reads the console needs beyond the registry's: alerts (motion events folded, newest first,
with their acknowledgement) and a fleet "version" that changes whenever a device comes, goes or
reports. The SQL is the store's shared dialect (`?` placeholders, `ON CONFLICT ... RETURNING`), so the
same statements run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_agent.collector.store.base import DeviceStatus, EventRow
from edge_agent.collector.store.sql import SQLStore

_ALERT_SQL = """
SELECT m.site, m.device, m.camera, m.event_id, MIN(m.start_ts), MAX(m.ts),
       MAX(CASE WHEN m.phase = 'end' THEN 1 ELSE 0 END), MAX(m.score), MAX(m.zones), MAX(m.id),
       a.user_name, a.at, a.comment, MAX(m.end_reason)
FROM motion_events m
LEFT JOIN console_acks a ON a.site = m.site AND a.device = m.device AND a.event_id = m.event_id
WHERE {where}
GROUP BY m.site, m.device, m.camera, m.event_id, a.user_name, a.at, a.comment
ORDER BY MAX(m.id) DESC
LIMIT ?
"""
_USER_COLUMNS = "name, role, password_hash, created_at, disabled"
_SESSION_COLUMNS = "token_hash, user_name, csrf, created_at, last_seen"


class DuplicateError(Exception):
    """A row that exists already (a user name taken, an alert already acknowledged)."""


@dataclass(frozen=True)
class Account:
    """A console user as stored (the password only as its argon2 hash; `role` by name)."""

    name: str
    role: str
    password_hash: str
    created_at: float
    disabled: bool = False


@dataclass(frozen=True)
class Session:
    """A logged-in browser: the hash of its cookie token, its user, its CSRF token, its times."""

    token_hash: str
    user: str
    csrf: str
    created_at: float
    last_seen: float


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
    """One motion event (its start/update/end messages folded), with its acknowledgement if any."""

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
    end_reason: str | None = None
    """Why the collector ended it (`device-offline`); None when the device did."""

    @property
    def state(self) -> str:
        """`open`, `ended`, or why the collector ended it in words (`ended: device offline`)."""
        if not self.ended:
            return "open"
        return f"ended: {self.end_reason.replace('-', ' ')}" if self.end_reason else "ended"

    @property
    def key(self) -> str:
        """One string naming the event across devices (for the page and the live stream)."""
        return f"{self.site}/{self.device}/{self.event_id}"


def _like(text: str) -> str:
    """A LIKE pattern matching `text` literally anywhere (with ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ConsoleRows:
    """The console's reads and writes on an open store (SQLite or PostgreSQL)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    # --- fleet --------------------------------------------------------------------------------

    def devices(self, site: str | None = None) -> list[DeviceStatus]:
        """Every device (of one site) with its last status."""
        return self.store.devices(site)

    def device_status(self, site: str, device: str) -> DeviceStatus | None:
        """One device, or None when never heard."""
        return self.store.device_status(site, device)

    def fleet_version(self) -> tuple[Any, ...]:
        """Changes whenever a device appears, goes on- or offline, or publishes a status."""
        with self.store._reading() as tx:
            [row] = tx.rows(
                "SELECT COUNT(*), SUM(online), MAX(availability_at), MAX(status_ts), SUM(status_ts)"
                " FROM devices"
            )
        return tuple(row)

    # --- motion -------------------------------------------------------------------------------

    def motion_after(self, after_id: int, limit: int = 500) -> list[EventRow]:
        """Motion rows stored after row `after_id`, oldest first."""
        return self.store.motion_after(after_id, limit)

    def last_motion_id(self) -> int:
        """The id of the newest motion row (0 when none)."""
        return self.store.last_motion_id()

    def alerts(self, query: AlertQuery) -> list[Alert]:
        """Events newest first (by their latest message), folded, with their acknowledgements."""
        clauses: list[str] = ["m.ts >= ?"]
        params: list[Any] = [query.since]
        for column, value in (("site", query.site), ("device", query.device), ("camera", query.camera)):
            if value:
                clauses.append(f"m.{column} = ?")
                params.append(value)
        if query.zone:
            clauses.append("m.zones LIKE ? ESCAPE '\\'")
            params.append(_like(json.dumps(query.zone)))
        with self.store._reading() as tx:
            rows = tx.rows(_ALERT_SQL.format(where=" AND ".join(clauses)), (*params, query.limit))
        return [_alert(row) for row in rows]

    def acknowledge(self, ack: Acknowledgement) -> None:
        """Record an acknowledgement; DuplicateError when the alert already has one."""
        with self.store._transaction() as tx:
            inserted = tx.rows(
                "INSERT INTO console_acks (site, device, event_id, user_name, at, comment)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                (ack.site, ack.device, ack.event_id, ack.user, ack.at, ack.comment),
            )
        if not inserted:
            raise DuplicateError(f"alert {ack.site}/{ack.device}/{ack.event_id} is already acknowledged")

    # --- accounts -----------------------------------------------------------------------------

    def add_user(self, account: Account) -> None:
        """Create a user; DuplicateError when the name is taken."""
        with self.store._transaction() as tx:
            inserted = tx.rows(
                f"INSERT INTO console_users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (
                    account.name,
                    account.role,
                    account.password_hash,
                    account.created_at,
                    int(account.disabled),
                ),
            )
        if not inserted:
            raise DuplicateError(f"name: user {account.name!r} exists already")

    def user(self, name: str) -> Account | None:
        """A user by name."""
        with self.store._reading() as tx:
            rows = tx.rows(f"SELECT {_USER_COLUMNS} FROM console_users WHERE name = ?", (name,))
        return _account(rows[0]) if rows else None

    def users(self) -> list[Account]:
        """Every user, by name."""
        with self.store._reading() as tx:
            rows = tx.rows(f"SELECT {_USER_COLUMNS} FROM console_users ORDER BY name")
        return [_account(row) for row in rows]

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable or re-enable a user; False when there is no such user."""
        with self.store._transaction() as tx:
            return tx.run("UPDATE console_users SET disabled = ? WHERE name = ?", (int(disabled), name)) == 1

    def create_session(self, session: Session) -> None:
        """Store a new session."""
        with self.store._transaction() as tx:
            tx.run(
                f"INSERT INTO console_sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, session.user, session.csrf, session.created_at, session.last_seen),
            )

    def session(self, token_hash: str) -> Session | None:
        """A session by the hash of its token."""
        with self.store._reading() as tx:
            rows = tx.rows(
                f"SELECT {_SESSION_COLUMNS} FROM console_sessions WHERE token_hash = ?", (token_hash,)
            )
        return Session(*rows[0]) if rows else None

    def touch_session(self, token_hash: str, now: float) -> None:
        """The session was used now (its idle time restarts)."""
        with self.store._transaction() as tx:
            tx.run("UPDATE console_sessions SET last_seen = ? WHERE token_hash = ?", (now, token_hash))

    def delete_session(self, token_hash: str) -> None:
        """Log a session out."""
        with self.store._transaction() as tx:
            tx.run("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions_of(self, user: str) -> None:
        """Log a user out everywhere (a disabled account)."""
        with self.store._transaction() as tx:
            tx.run("DELETE FROM console_sessions WHERE user_name = ?", (user,))

    def purge_sessions(self, before: float) -> int:
        """Forget sessions unused since `before` (they are expired anyway)."""
        with self.store._transaction() as tx:
            return tx.run("DELETE FROM console_sessions WHERE last_seen < ?", (before,))


def _account(row: tuple[Any, ...]) -> Account:
    return Account(name=row[0], role=row[1], password_hash=row[2], created_at=row[3], disabled=bool(row[4]))


def _alert(row: tuple[Any, ...]) -> Alert:
    ack = Acknowledgement(row[0], row[1], row[3], row[10], row[11], row[12]) if row[10] is not None else None
    return Alert(
        site=row[0],
        device=row[1],
        camera=row[2],
        event_id=row[3],
        start_ts=float(row[4]),
        last_ts=float(row[5]),
        ended=bool(row[6]),
        score=float(row[7]),
        zones=json.loads(row[8]),
        last_id=int(row[9]),
        ack=ack,
        end_reason=row[13],
    )
