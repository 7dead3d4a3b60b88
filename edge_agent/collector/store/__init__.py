"""The collector's registry: one interface (`Store`), two backends chosen by the `--db` value.

    open_store("collector.sqlite")                      # SQLite, the embedded default
    open_store("postgresql://csu@db.csu/collector")     # PostgreSQL, for several collectors

The interface and its records are in store/base.py, the SQL both backends share in store/sql.py, the
versioned schema in store/migrations.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from edge_agent.collector.store.base import (
    DEVICE_OFFLINE,
    STALE_AFTER_S,
    STALE_PERIODS,
    STATUS_INTERVAL_S,
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
    StoreUnavailable,
)
from edge_agent.collector.store.migrations import LATEST, Migration
from edge_agent.collector.store.postgres import DEFAULT_POOL_SIZE, PostgresStore, is_postgres_url
from edge_agent.collector.store.sql import SQLStore
from edge_agent.collector.store.sqlite import SQLiteStore

__all__ = [
    "DB_ERRORS",
    "DEFAULT_POOL_SIZE",
    "DEVICE_OFFLINE",
    "LATEST",
    "STALE_AFTER_S",
    "STALE_PERIODS",
    "STATUS_INTERVAL_S",
    "AvailabilityChange",
    "AvailabilityRecord",
    "DeviceStatus",
    "EventRow",
    "MalformedRecord",
    "Migration",
    "MotionRecord",
    "Outcome",
    "PurgeResult",
    "Record",
    "SchemaError",
    "SiteSummary",
    "StatusHistoryRow",
    "StatusRecord",
    "Store",
    "StoreUnavailable",
    "db_exit",
    "device_clip_url",
    "is_postgres_url",
    "last_device_status",
    "open_store",
    "published_clip_url",
    "upgrade_schema",
]


DB_ERRORS = (SchemaError, StoreUnavailable, OSError)
"""What opening a `--db` raises when it cannot be used (a schema to upgrade, a server or file unreachable)."""


def db_exit(error: Exception, out: TextIO | None = None) -> int:
    """A command's answer to one of DB_ERRORS: the reason under `--db` on `out` (stdout by default), then
    the exit code: 2 for a schema to upgrade first (the message says how), 1 for a database out of reach."""
    print(f"--db: {error}", file=out or sys.stdout)
    return 2 if isinstance(error, SchemaError) else 1


def open_store(
    db: str | Path, readonly: bool = False, pool_size: int = DEFAULT_POOL_SIZE, create: bool = True
) -> Store:
    """The store at `db` (a SQLite path or a `postgresql://` URL); `readonly` for the query commands,
    `create=False` for the commands that write to a store the collector made (so that a mistyped path
    is an error, not a new empty database).

    SchemaError when the database is not at this collector's schema version (a writable SQLite file is
    upgraded instead), StoreUnavailable when PostgreSQL cannot be reached, FileNotFoundError for a missing
    file opened read-only or without `create`.
    """
    if is_postgres_url(db):
        return PostgresStore(str(db), readonly=readonly, pool_size=pool_size)
    return SQLiteStore(Path(db), readonly=readonly, create=create)


def upgrade_schema(db: str | Path) -> tuple[int, list[Migration]]:
    """Apply the pending migrations of the database at `db`: (version before, migrations applied)."""
    store: SQLStore
    if is_postgres_url(db):
        store = PostgresStore(str(db), pool_size=1, check_schema=False)
    else:
        store = SQLiteStore(Path(db), upgrade=False)
    try:
        before = store.schema_version()
        return before, store.upgrade()
    finally:
        store.close()


def last_device_status(db: str | Path, site: str, device: str) -> DeviceStatus:
    """The last status a device published, as the store at `db` holds it; LookupError when none."""
    store = open_store(db, readonly=True, pool_size=1)
    try:
        status = store.device_status(site, device)
    finally:
        store.close()
    if status is None:
        raise LookupError(
            f"device {site}/{device} has never been heard by this collector ({store.description})"
        )
    return status


def published_clip_url(status: DeviceStatus) -> str:
    """The clip API URL a device's status publishes; LookupError when it publishes none."""
    if not status.clip_url:
        raise LookupError(
            f"device {status.site}/{status.device} published no clip URL (its clip server may be disabled)"
        )
    return status.clip_url


def device_clip_url(db: str | Path, site: str, device: str) -> str:
    """The clip API URL a device last published; LookupError naming what is missing."""
    return published_clip_url(last_device_status(db, site, device))
