"""The device's persistent MQTT outbox: messages wait in SQLite until the broker acknowledges them.

A message is written (and committed) before it is handed to the MQTT client, and deleted only on its
PUBACK, so events produced while the broker is unreachable, or sent but not yet acknowledged when the
agent dies, are delivered after the restart, in the order they were produced. A redelivered message may
reach the broker twice; the collector deduplicates. The outbox is capped: beyond `max_messages` the
oldest messages are dropped, and the drops are counted persistently (they are reported in status).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message; `id` orders them."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


@dataclass(frozen=True)
class OutboxStats:
    """What status reports about the outbox."""

    pending: int
    dropped: int
    oldest_created_at: float | None


class Outbox:
    """A capped, ordered, durable queue of MQTT messages (thread-safe)."""

    def __init__(self, path: Path, max_messages: int, durable: bool = True) -> None:
        """Open (or create) the outbox; `durable` fsyncs every commit (survives a power cut too)."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        # Kept in memory: COUNT(*) on every put would scan a full outbox.
        self._pending = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, now: float = 0.0) -> int:
        """Store a message (committed on return) and return its id; drops the oldest beyond the cap."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, qos, int(retain), now),
            )
            self._pending += 1
            excess = self._pending - self.max_messages
            if excess > 0:
                self._pending -= excess
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )
            return int(cursor.lastrowid or 0)

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxMessage]:
        """Messages with an id above `after_id`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created_at FROM messages WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, message_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock, self._db:
            deleted = self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount
            self._pending -= deleted

    def contains(self, message_id: int) -> bool:
        """Whether the message is still waiting (False once acknowledged or dropped by the cap)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone()
        return row is not None

    def stats(self) -> OutboxStats:
        """Pending count, total drops since the outbox was created, age of the oldest message."""
        with self._lock:
            pending = self._pending
            dropped = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
            oldest = self._db.execute("SELECT MIN(created_at) FROM messages").fetchone()[0]
        return OutboxStats(pending, int(dropped[0]) if dropped else 0, oldest)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
