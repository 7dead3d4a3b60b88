"""The device's persistent MQTT outbox: messages wait in SQLite until the broker acknowledges them.

A message is written (and committed) before it is handed to the MQTT client, and deleted only on its
PUBACK, so events produced while the broker is unreachable, or sent but not yet acknowledged when the
agent dies, are delivered after the restart, in the order they were produced. A redelivered message may
reach the broker twice; the collector deduplicates. The outbox is capped: beyond `max_messages` the
oldest messages are dropped, and the drops are counted persistently (they are reported in status).
A file that is not a readable SQLite database at start (a power cut on a worn SD card) is moved aside,
kept for inspection, and counted: the device starts with an empty outbox rather than not at all.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
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

_CORRUPT = ("SQLITE_NOTADB", "SQLITE_CORRUPT")

log = logging.getLogger(__name__)


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
    corrupt_files: int = 0


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
        try:
            self._db, self._pending = self._open(durable)
        except sqlite3.DatabaseError as error:
            if error.sqlite_errorname not in _CORRUPT:
                raise  # disk full, permission denied...: not the file's fault, keep it
            self._move_aside(error)
            self._db, self._pending = self._open(durable)
            self._add_counter("corrupt_files", 1)

    def _open(self, durable: bool) -> tuple[sqlite3.Connection, int]:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.executescript(_SCHEMA)
            # Kept in memory: COUNT(*) on every put would scan a full outbox.
            return db, int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.Error:
            db.close()
            raise

    def _move_aside(self, error: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            if part.exists():
                part.rename(aside.with_name(aside.name + suffix))
        log.error("outbox %s is unreadable (%s): moved to %s, starting empty", self.path, error, aside)

    def _add_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, value),
        )

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, now: float = 0.0) -> int:
        """Store a message (committed on return) and return its id; drops the oldest beyond the cap.

        One transaction: when a write fails (a full disk), nothing of it is kept and the error is raised.
        """
        with self._lock:
            excess = max(0, self._pending + 1 - self.max_messages)
            with self._db:
                # The connection autocommits each statement: without BEGIN, a full disk could keep the
                # insert and fail the cap's delete, leaving the outbox over its cap and miscounted.
                self._db.execute("BEGIN")
                cursor = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, qos, int(retain), now),
                )
                if excess:
                    self._db.execute(
                        "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    self._add_counter("dropped", excess)
            self._pending += 1 - excess  # counted once committed
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
        """Pending count, drops since the outbox was created, age of the oldest message, files set aside."""
        with self._lock:
            pending = self._pending
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            oldest = self._db.execute("SELECT MIN(created_at) FROM messages").fetchone()[0]
        return OutboxStats(pending, counters.get("dropped", 0), oldest, counters.get("corrupt_files", 0))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
