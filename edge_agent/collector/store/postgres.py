"""The PostgreSQL backend: one database shared by several `serve` processes, through a connection pool.

The schema is the administrator's: `csu-collector db upgrade --db URL` applies the migrations (under an
advisory lock, so two upgrades never race); a collector refuses to start on a database that is not at its
version rather than altering a shared database on its own. A batch is one transaction whose statements
go out together (psycopg's `executemany` uses libpq's pipeline mode), so a batch costs a few round trips
whatever its size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from edge_agent.collector.store.base import StoreUnavailable
from edge_agent.collector.store.migrations import POSTGRES
from edge_agent.collector.store.sql import SQLStore, Tx

DEFAULT_POOL_SIZE = 4
SCHEMA_LOCK_KEY = 0x6373755F7363  # "csu_sc": the advisory lock every migration takes
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def is_postgres_url(db: object) -> bool:
    """Whether a `--db` value names a PostgreSQL database rather than a SQLite file."""
    return str(db).startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared SQL's `?` placeholders in psycopg's style (the statements hold no other `?` or `%`)."""
    return sql.replace("?", "%s")


class _PgTx:
    """`Tx` over one pooled connection's cursor."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cur = cursor

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(_pg(sql), params)
        return self._cur.fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(_pg(sql), params)
        return self._cur.rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(_pg(sql), rows)

    def many_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        if not rows:
            return []
        self._cur.executemany(_pg(sql), rows, returning=True)
        found = [self._cur.fetchone() is not None]
        while self._cur.nextset():
            found.append(self._cur.fetchone() is not None)
        return found


class PostgresStore(SQLStore):
    """The registry in a PostgreSQL database (thread-safe: each call takes a pooled connection)."""

    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        readonly: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
        check_schema: bool = True,
        timeout_s: float = 10.0,
    ) -> None:
        """Connect (StoreUnavailable naming the reason when it cannot) and check the schema version."""
        if pool_size < 1:
            raise ValueError(f"pool size {pool_size}: must be at least 1")
        self.description = redact(url)
        # One direct connection first: its error says why (refused, authentication, no such database),
        # where the pool would only time out.
        try:
            psycopg.connect(url, connect_timeout=max(1, round(timeout_s))).close()
        except psycopg.Error as error:
            raise StoreUnavailable(f"{self.description}: {str(error).strip()}") from None
        options = {"application_name": "csu-collector"}
        if readonly:
            options["options"] = "-c default_transaction_read_only=on"
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=options,
            timeout=timeout_s,
            open=False,
            name="csu-store",
        )
        try:
            self._pool.open(wait=True, timeout=timeout_s)
            if check_schema:
                self.check_schema()
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                yield _PgTx(cursor)
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"{self.description}: {str(error).strip()}") from error

    def _reading(self) -> AbstractContextManager[Tx]:
        return self._transaction()  # a transaction too: every statement gets a pooled connection

    def _has_table(self, tx: Tx, name: str) -> bool:
        [(found,)] = tx.rows("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(found)

    def _lock_schema(self, tx: Tx) -> None:
        tx.rows("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()
