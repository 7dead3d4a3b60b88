"""What the console reads and writes: one narrow interface (`ConsoleData`), served by the collector store.

The console names only the queries it needs; `edge_agent.collector.store.console.ConsoleRows` implements
them on either backend (SQLite or PostgreSQL), with the console's tables from the store's migration 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from edge_agent.collector.store import DeviceStatus, EventRow, SQLStore, open_store
from edge_agent.collector.store.console import (
    Account,
    Acknowledgement,
    Alert,
    AlertQuery,
    ConsoleRows,
    DuplicateError,
    Session,
)

__all__ = [
    "Account",
    "Acknowledgement",
    "Alert",
    "AlertQuery",
    "ConsoleData",
    "DuplicateError",
    "Session",
    "open_console_data",
]


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
    def purge_sessions(self, before: float) -> int: ...
    def acknowledge(self, ack: Acknowledgement) -> None: ...
    def close(self) -> None: ...


def open_console_data(db: str | Path) -> ConsoleRows:
    """The console's rows in the store at `db` (a SQLite path or a `postgresql://` URL), which the
    collector made: FileNotFoundError for a SQLite file that does not exist."""
    store = open_store(db, create=False)
    if not isinstance(store, SQLStore):
        store.close()
        raise TypeError(f"{db}: the console needs an SQL store")
    return ConsoleRows(store)
