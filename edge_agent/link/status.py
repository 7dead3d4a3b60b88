"""The status document (DESIGN.md section 4), built in one place.

The agent hands over what it knows as a `DeviceReport` (its cameras' counters, the oldest footage kept);
the MQTT link adds its own counters (`LinkStats`), a health sample and the advertised clip URL
(`edge_agent.formats.clip_url`); `build_status` makes the typed `StatusMessage`, which the link publishes
as `message.wire()` and the collector parses back into the same model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent import __version__
from edge_agent.camera.pipeline import CameraState, CameraStats
from edge_agent.formats.audit import AuditUsage
from edge_agent.formats.config import AgentConfig, CameraConfig
from edge_agent.formats.mqtt_wire import (
    SCHEMA,
    AuditStatus,
    CameraStatus,
    DeletedCounts,
    DeletedStatus,
    DiskStatus,
    LocationStatus,
    MqttStatus,
    OutboxStatus,
    RecorderStatus,
    RetentionStatus,
    StatusMessage,
)
from edge_agent.link.health import Health


class RecorderCounters(Protocol):
    """What status needs of a recorder's counters (`edge_agent.storage.recorder.RecorderStats`).

    Structural, because the link layer does not import storage.
    """

    @property
    def segments(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def frames_dropped_disk(self) -> int: ...
    @property
    def encoder(self) -> str: ...
    @property
    def encoder_fallback(self) -> str: ...


class DeletedCounters(Protocol):
    """What status needs of the footage deleted for one reason (`storage.retention.DeletedFootage`)."""

    @property
    def segments(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def early(self) -> int: ...


@dataclass(frozen=True)
class CameraReport:
    """What the agent knows of one configured camera."""

    config: CameraConfig
    worker: CameraStats | None = None  # None: no worker (stopped, or a USB camera not plugged in)
    recorder: RecorderCounters | None = None
    device_node: str = ""  # the /dev node a USB camera was attached on


@dataclass(frozen=True)
class DeviceReport:
    """The agent's part of a status: its cameras, the USB cameras no config names, the oldest footage."""

    cameras: Sequence[CameraReport] = ()
    unconfigured: Mapping[str, str] = field(default_factory=dict)  # USB identity -> /dev node
    oldest_ts: float | None = None  # start of the oldest segment kept, over every camera
    deleted: Mapping[str, DeletedCounters] | None = None  # by retention reason (age, quota, disk-free)
    footage_bytes: int | None = None  # sealed footage (what counts toward the quota)
    disk_problem: str = ""  # the disk short of free space for another reason than footage
    audit: AuditUsage | None = None  # the audit log's own space


@dataclass(frozen=True)
class LinkStats:
    """The MQTT link's connection and outbox counters (in status, and read by the agent and tests)."""

    connected: bool
    connections: int
    outbox_pending: int
    outbox_dropped: int
    outbox_corrupt_files: int
    rejected: int
    commands: int
    command_errors: int
    last_error: str


def camera_status(report: CameraReport) -> CameraStatus:
    """One configured camera's entry: its worker's counters when it runs, its resting state otherwise."""
    camera = report.config
    if report.worker is None:
        state = CameraState.DISCONNECTED if camera.source.usb_id else CameraState.STOPPED
        return CameraStatus(
            id=camera.id, state=str(state), masks=len(camera.masks), recording=str(camera.recording)
        )
    stats = report.worker
    recorder = report.recorder
    return CameraStatus(
        id=camera.id,
        state=str(stats.state),
        fps=stats.fps,
        drops=stats.drops,
        resolution=stats.resolution,
        masks=len(camera.masks),
        recording=str(camera.recording),
        frames=stats.frames,
        reconnects=stats.reconnects,
        event_open=stats.event_open,
        last_error=stats.last_error or None,
        device=report.device_node or None,
        recorder=None
        if recorder is None
        else RecorderStatus(
            segments=recorder.segments,
            bytes=recorder.bytes,
            errors=recorder.errors,
            frames_dropped_disk=recorder.frames_dropped_disk,
            encoder=recorder.encoder or None,
            fallback=recorder.encoder_fallback or None,
        ),
    )


def camera_statuses(report: DeviceReport) -> list[CameraStatus]:
    """Every camera's entry: the configured ones, then the unconfigured USB cameras (never opened)."""
    entries = [camera_status(camera) for camera in report.cameras]
    entries += [
        CameraStatus(id=identity, state="unconfigured", device=node)
        for identity, node in report.unconfigured.items()
    ]
    return entries


def deleted_status(by_reason: Mapping[str, DeletedCounters]) -> DeletedStatus:
    """The `deleted` entry: the retention reasons' counts (`disk-free` is `disk_free` on the wire)."""

    def counts(reason: str) -> DeletedCounts:
        found = by_reason.get(reason)
        if found is None:
            return DeletedCounts()
        return DeletedCounts(
            segments=found.segments, bytes=found.bytes, seconds=round(found.seconds, 1), early=found.early
        )

    return DeletedStatus(age=counts("age"), quota=counts("quota"), disk_free=counts("disk-free"))


def build_status(
    config: AgentConfig,
    report: DeviceReport,
    *,
    now: float,
    started_at: float,
    health: Health,
    link: LinkStats,
    clip_url: str,
    error: str = "",
) -> StatusMessage:
    """The status document at `now`; `error` says why the agent's part is missing, when it is."""
    return StatusMessage(
        schema=SCHEMA,
        site=config.site_id,
        device=config.device_id,
        ts=now,
        version=__version__,
        uptime_s=round(now - started_at, 1),
        cameras=camera_statuses(report),
        cpu_temp_c=health.cpu_temp_c,
        load=(round(health.load[0], 2), round(health.load[1], 2), round(health.load[2], 2)),
        disk=_disk(health.disk, report),
        retention=RetentionStatus(oldest_ts=report.oldest_ts, days=config.storage.retention_days),
        clip_url=clip_url,
        outbox=OutboxStatus(
            pending=link.outbox_pending,
            dropped=link.outbox_dropped,
            corrupt_files=link.outbox_corrupt_files,
        ),
        mqtt=MqttStatus(
            connections=link.connections,
            rejected=link.rejected,
            commands=link.commands,
            command_errors=link.command_errors,
        ),
        status_error=error or None,
        deleted=None if report.deleted is None else deleted_status(report.deleted),
        audit=_audit(report.audit),
        # A device the CSU cannot reach (no clip URL) but that may push to a collector says so.
        delivery="push" if not clip_url and config.clip_server.collector_urls else None,
        heartbeat_s=config.mqtt.status_heartbeat_s,
        location=_location(config),
        max_clip_seconds=config.clip_server.max_clip_seconds,
    )


def _disk(disk: DiskStatus | None, report: DeviceReport) -> DiskStatus | None:
    """The filesystem's figures with what the agent adds: its footage, and a problem when there is one."""
    if disk is None:
        return None
    return disk.model_copy(update={"footage": report.footage_bytes, "problem": report.disk_problem or None})


def _audit(usage: AuditUsage | None) -> AuditStatus | None:
    return (
        None
        if usage is None
        else AuditStatus(bytes=usage.bytes, quota=usage.max_bytes, withheld=usage.withheld)
    )


def _location(config: AgentConfig) -> LocationStatus | None:
    where = config.location
    return None if where is None else LocationStatus(lat=where.lat, lon=where.lon, label=where.label)


def change_key(message: StatusMessage) -> tuple[object, ...]:
    """What of a status the CSU must see at once when it changes; the rest waits for the heartbeat.

    Camera states and set-up, errors and losses (footage deleted younger than the retention), the clip
    URL: yes. Figures that move all the time
    (uptime, fps, frames, drops, bytes, load, disk, pending events) would make every status "changed"
    and cost a metered link 700 bytes each: they ride on the heartbeat.
    """
    cameras = tuple(
        (
            c.id,
            c.state,
            c.resolution,
            c.masks,
            c.recording,
            c.last_error,
            c.device,
            c.recorder.errors if c.recorder else None,
            c.recorder.encoder if c.recorder else None,
            bool(c.recorder and c.recorder.frames_dropped_disk),
        )
        for c in message.cameras
    )
    outbox = (message.outbox.dropped, message.outbox.corrupt_files) if message.outbox else None
    rejected = message.mqtt.rejected if message.mqtt else None
    days = message.retention.days if message.retention else None
    deleted = message.deleted
    early = bool(deleted and (deleted.quota.early or deleted.disk_free.early))
    disk_problem = bool(message.disk and message.disk.problem)
    return (
        cameras,
        message.clip_url,
        message.delivery,
        message.status_error,
        outbox,
        rejected,
        days,
        early,
        disk_problem,
    )
