"""The SQLite backend: the embedded default, one file, one collector process.

It upgrades its own schema when opened for writing (an embedded database has no administrator to run
`csu-collector db upgrade`); opened read-only (the query commands, `fetch-clip`) it refuses a file that
is not at the current version, and never creates one. One connection serves every thread, behind a lock;
writes take the file's write lock at BEGIN (IMMEDIATE) so a reader never blocks a batch half-way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent.collector.store.base import SchemaError, StoreUnavailable
from edge_agent.collector.store.migrations import SQLITE
from edge_agent.collector.store.sql import SQLStore, Tx


class _SQLiteTx:
    """`Tx` over the shared connection (statements run where they are, no round trips to save)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._db.executemany(sql, rows)

    def many_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        # executemany() cannot return rows; one execute per row costs nothing in-process.
        return [bool(self._db.execute(sql, row).fetchall()) for row in rows]


class SQLiteStore(SQLStore):
    """The registry in one SQLite file (thread-safe)."""

    dialect = SQLITE

    def __init__(self, path: Path, readonly: bool = False, upgrade: bool = True, create: bool = True) -> None:
        """Open the file; writable opens apply pending migrations unless `upgrade` is off, and create the
        file unless `create` is off (then, like a read-only open, a missing file is FileNotFoundError)."""
        self.path = Path(path)
        self.description = str(self.path)
        if (readonly or not create) and not self.path.exists():
            raise FileNotFoundError(
                f"{self.path}: no collector database (check the path; `csu-collector serve` or"
                " `csu-collector db upgrade --db` creates one)"
            )
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with _unavailable(self.description):
            self._db = _connect(self.path, readonly)
        self._lock = threading.RLock()
        try:
            if readonly:
                self.check_schema()
            elif upgrade:
                self.upgrade()
        except sqlite3.DatabaseError as error:
            self._db.close()
            if isinstance(error, sqlite3.OperationalError):
                raise StoreUnavailable(f"{self.description}: {error}") from error
            raise SchemaError(f"{self.description}: not a collector database ({error})") from None
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        with self._lock, _unavailable(self.description):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _reading(self) -> Iterator[Tx]:
        with self._lock, _unavailable(self.description):
            yield _SQLiteTx(self._db)

    def _has_table(self, tx: Tx, name: str) -> bool:
        return bool(tx.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def _lock_schema(self, tx: Tx) -> None:
        """BEGIN IMMEDIATE already holds the file's write lock."""

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        # as_uri() escapes '#', '?' and '%': a raw path would lose `mode=ro` to them and create a stray file.
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    else:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


@contextmanager
def _unavailable(description: str) -> Iterator[None]:
    """A locked, full or unwritable file is a condition to retry, not a bad record."""
    try:
        yield
    except sqlite3.OperationalError as error:
        raise StoreUnavailable(f"{description}: {error}") from error
