"""The store interface: what `serve` (ingest), `sites`, `events`, the console and `fetch-clip` use.

Two backends implement it with the same SQL (store/sql.py): SQLite, the embedded default (one file, one
collector), and PostgreSQL (several collectors on a shared subscription, one database).

Writes come as a batch of typed records, already validated by ingestion, and are idempotent and ordered
whichever collector gets them: a motion message is keyed by (site, device, event_id, phase, ts) and a
start or end phase occurs once per event, a status by (site, device, ts); a redelivered message is a
`duplicate`, and a status older than the device's current one is kept in the history but never replaces
it (`stale`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent.formats.mqtt_wire import MotionMessage, StatusMessage

Outcome = Literal["stored", "duplicate", "stale", "malformed"]

DEVICE_OFFLINE = "device-offline"
"""`EventRow.end_reason` of an end the collector wrote: the device went offline with the event open."""
STATUS_INTERVAL_S = 30.0
"""The devices' status period when they declare no heartbeat (the console's FleetRules default)."""
STALE_PERIODS = 3
"""A status older than this many periods (the device's heartbeat, else the interval) is stale."""
STALE_AFTER_S = STALE_PERIODS * STATUS_INTERVAL_S


class SchemaError(RuntimeError):
    """The database schema is not the one this collector needs; the message says what to run."""


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or written right now (the same write may succeed later)."""


# --- what ingestion writes ----------------------------------------------------------------------


@dataclass(frozen=True)
class AvailabilityRecord:
    """A device's `online`/`offline` message."""

    site: str
    device: str
    state: Literal["online", "offline"]
    received_at: float


@dataclass(frozen=True)
class StatusRecord:
    """A validated status document and its raw JSON (kept as published for the console)."""

    status: StatusMessage
    raw_json: str
    received_at: float

    # Every record answers .site and .device: the batch code and the ingestor need no case for this one.
    @property
    def site(self) -> str:
        """The site the status document names."""
        return self.status.site

    @property
    def device(self) -> str:
        """The device the status document names."""
        return self.status.device


@dataclass(frozen=True)
class MotionRecord:
    """A validated motion message of one camera."""

    site: str
    device: str
    camera: str
    event: MotionMessage
    received_at: float


@dataclass(frozen=True)
class MalformedRecord:
    """A message refused before the batch; site and device are empty when its topic names none."""

    topic: str
    site: str
    device: str
    error: str
    received_at: float


Record = AvailabilityRecord | StatusRecord | MotionRecord | MalformedRecord


# --- what readers get ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteSummary:
    """One site: how many devices are online, how many cameras, when it was last heard.

    `cameras_running` counts only the cameras of devices that are online and whose last status is fresh:
    the last word of a dead or silent device says nothing of its cameras now.
    """

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
    malformed: int = 0


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
    end_reason: str | None = None
    """None for a message of the device; DEVICE_OFFLINE for an end the collector wrote when the device
    went offline with the event open (a real end the device sends later replaces it)."""


@dataclass(frozen=True)
class StatusHistoryRow:
    """One status a device published (a summary: the full document is kept for the latest only)."""

    site: str
    device: str
    ts: float
    version: str
    uptime_s: float
    cameras: int
    cameras_running: int
    stored_at: float


@dataclass(frozen=True)
class AvailabilityChange:
    """An online/offline transition."""

    site: str
    device: str
    state: str
    at: float


@dataclass(frozen=True)
class PurgeResult:
    """Rows removed by the retention of the collector's own data, per table."""

    motion_events: int = 0
    statuses: int = 0
    availability: int = 0
    malformed: int = 0


class Store(ABC):
    """The collector's registry; every method is safe to call from several threads."""

    description: str
    """Where the data lives, for logs (a path, or a PostgreSQL URL without its password)."""

    @abstractmethod
    def write(self, records: Sequence[Record], now: float) -> list[Outcome]:
        """Store a batch in one transaction (`now` stamps the rows); one outcome per record, in order.

        StoreUnavailable when the database cannot be written now (nothing of the batch is kept).
        """

    @abstractmethod
    def purge(self, before: float) -> PurgeResult:
        """Delete motion events, statuses, availability changes and malformed rows older than `before`."""

    @abstractmethod
    def schema_version(self) -> int:
        """The migration number the database is at (0 for an empty database)."""

    @abstractmethod
    def counters(self) -> dict[str, int]:
        """`malformed`, `duplicates`, `stale` since the database was created."""

    @abstractmethod
    def malformed(self, limit: int = 20) -> list[tuple[str, str, float]]:
        """The latest malformed payloads: (topic, error, at), newest first."""

    @abstractmethod
    def sites(self, now: float, stale_after_s: float = STALE_AFTER_S) -> list[SiteSummary]:
        """Every site with its device and camera counts at time `now`.

        A device's status is stale when older than STALE_PERIODS heartbeats if the device declares its
        heartbeat, else older than `stale_after_s` (the console's rule: collector/console/fleet.py).
        """

    @abstractmethod
    def devices(self, site: str | None = None) -> list[DeviceStatus]:
        """Every device (of one site), with its last status."""

    @abstractmethod
    def device_status(self, site: str, device: str) -> DeviceStatus | None:
        """A device's last status and clip URL (what `fetch-clip` needs), or None if never heard."""

    @abstractmethod
    def availability_history(self, site: str, device: str) -> list[AvailabilityChange]:
        """The device's online/offline transitions, oldest first."""

    @abstractmethod
    def status_history(self, site: str, device: str, since: float = 0.0) -> list[StatusHistoryRow]:
        """The statuses a device published with `ts >= since`, oldest first."""

    @abstractmethod
    def events(
        self, site: str | None = None, since: float = 0.0, device: str | None = None, limit: int = 10_000
    ) -> list[EventRow]:
        """Motion messages with `ts >= since`, newest first (by `ts`, then the latest stored), at most
        `limit`: the newest ones, like every event list (`motion_after` reads in the order stored)."""

    @abstractmethod
    def motion_after(self, after_id: int, limit: int = 500) -> list[EventRow]:
        """Motion rows stored after row `after_id`, oldest first (what a live view shows next)."""

    @abstractmethod
    def last_motion_id(self) -> int:
        """The id of the newest motion row (0 when none)."""

    @abstractmethod
    def close(self) -> None:
        """Release the database (file or connection pool)."""
