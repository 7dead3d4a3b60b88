"""The fleet view: every device's problems, worst first, the counts, and a plan of their locations.

Pure functions of the registry rows and the time: what the page shows and what the benchmark measures.
A device's problems come from its last status document (fields it lacks are simply not judged).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.collector.store import STALE_PERIODS, STATUS_INTERVAL_S, DeviceStatus
from edge_agent.formats.times import TimeFormatError, parse_iso

# Severities, worst first: the page sorts by them and colours by them.
CRITICAL, WARNING, NOTICE = 0, 1, 2


@dataclass(frozen=True)
class FleetRules:
    """When a device or camera counts as a problem."""

    status_interval_s: float = STATUS_INTERVAL_S  # the devices' status period when they do not say
    legal_retention_days: float = 0.0  # the CSU's legal days; 0 judges each device by its own setting
    disk_full_fraction: float = 0.9
    outbox_backlog: int = 100
    drop_fraction: float = 0.01


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in words an operator reads."""

    severity: int
    code: str
    text: str


@dataclass(frozen=True)
class CameraView:
    """One camera of a device as the fleet page shows it."""

    id: str
    state: str
    fps: float
    drops: int
    problems: list[Problem]


@dataclass(frozen=True)
class Location:
    """Where a device stands."""

    lat: float
    lon: float
    label: str


@dataclass(frozen=True)
class DeviceView:
    """One device with its judged problems."""

    site: str
    device: str
    online: bool
    last_seen: float
    status_age_s: float | None
    version: str
    cameras: list[CameraView]
    problems: list[Problem]
    location: Location | None

    @property
    def severity(self) -> int:
        """The worst severity among the device's and its cameras' problems (3 when all is well)."""
        every = self.problems + [p for c in self.cameras for p in c.problems]
        return min((p.severity for p in every), default=3)

    @property
    def key(self) -> str:
        """`site/device`."""
        return f"{self.site}/{self.device}"


@dataclass(frozen=True)
class PlanPoint:
    """A device placed on the SVG plan (x, y in the plan's units)."""

    x: float
    y: float
    device: DeviceView


@dataclass
class FleetView:
    """The whole page: devices problems first, counts, the sites to filter by, the plan."""

    devices: list[DeviceView]
    sites: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    plan: list[PlanPoint] = field(default_factory=list)
    healthy_not_listed: int = 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _time(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except TimeFormatError:
            return None
    return None


def camera_view(entry: Mapping[str, Any], uptime_s: float | None, rules: FleetRules) -> CameraView:
    """A camera entry of a status document, judged."""
    state = str(entry.get("state", "unknown"))
    fps = _number(entry.get("fps")) or 0.0
    drops = int(_number(entry.get("drops")) or 0)
    problems = []
    if state != "running":
        problems.append(Problem(WARNING, "camera", f"camera {entry.get('id')} {state}"))
    frames = fps * uptime_s if uptime_s else 0.0
    if drops and frames and drops / (frames + drops) > rules.drop_fraction:
        problems.append(Problem(NOTICE, "drops", f"camera {entry.get('id')} dropped {drops} frames"))
    return CameraView(str(entry.get("id", "?")), state, fps, drops, problems)


def _disk_problem(disk: Any, rules: FleetRules) -> Problem | None:
    if not isinstance(disk, Mapping):
        return None
    used, free, quota = (_number(disk.get(k)) for k in ("used", "free", "quota"))
    total = _number(disk.get("total")) or ((used or 0) + (free or 0))
    fractions = []
    if used is not None and total:
        fractions.append(used / total)
    if quota and used is not None:
        fractions.append(used / quota)
    if fractions and max(fractions) >= rules.disk_full_fraction:
        return Problem(WARNING, "disk", f"disk {max(fractions):.0%} full")
    return None


def _retention_problem(status: Mapping[str, Any], now: float, rules: FleetRules) -> Problem | None:
    retention = status.get("retention")
    if not isinstance(retention, Mapping):
        return None
    days = _number(retention.get("days"))
    legal = rules.legal_retention_days or days
    if days is not None and legal and days < legal:
        return Problem(WARNING, "retention", f"retention set to {days:g} days, legal {legal:g}")
    oldest = _time(retention.get("oldest_ts"))
    uptime = _number(status.get("uptime_s")) or 0.0
    # Footage younger than the legal days on a device up for longer: it is deleting early (space).
    if legal and oldest is not None and uptime > legal * 86400 and now - oldest < legal * 86400 * 0.98:
        kept = (now - oldest) / 86400
        return Problem(WARNING, "retention", f"keeps {kept:.1f} days of footage, legal {legal:g}")
    return None


def _outbox_problem(outbox: Any, rules: FleetRules) -> Problem | None:
    if not isinstance(outbox, Mapping):
        return None
    pending = int(_number(outbox.get("pending")) or 0)
    dropped = int(_number(outbox.get("dropped")) or 0)
    if dropped:
        return Problem(WARNING, "outbox", f"outbox dropped {dropped} messages")
    if pending >= rules.outbox_backlog:
        return Problem(NOTICE, "outbox", f"outbox backlog {pending}")
    return None


def _location(value: Any) -> Location | None:
    if not isinstance(value, Mapping):
        return None
    lat, lon = _number(value.get("lat")), _number(value.get("lon"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return Location(lat, lon, str(value.get("label") or ""))


def device_view(row: DeviceStatus, now: float, rules: FleetRules) -> DeviceView:
    """A registry row, judged: offline, stale, then what its last status says."""
    status: Mapping[str, Any] = row.status or {}
    problems: list[Problem] = []
    status_ts = _time(status.get("ts"))
    age = now - status_ts if status_ts is not None else None
    if not row.online:
        problems.append(Problem(CRITICAL, "offline", "offline"))
    elif age is None:
        problems.append(Problem(WARNING, "stale", "no status yet"))
    elif age > STALE_PERIODS * (_number(status.get("heartbeat_s")) or rules.status_interval_s):
        # A device that publishes on change plus a heartbeat says how long its silences may last
        # (`csu-collector sites` applies the same rule: SQLStore.sites).
        problems.append(Problem(WARNING, "stale", f"status {age:.0f} s old"))
    for judged in (
        _disk_problem(status.get("disk"), rules),
        _retention_problem(status, now, rules),
        _outbox_problem(status.get("outbox"), rules),
    ):
        if judged is not None:
            problems.append(judged)
    uptime = _number(status.get("uptime_s"))
    cameras = [
        camera_view(entry, uptime, rules)
        for entry in status.get("cameras") or []
        if isinstance(entry, Mapping)
    ]
    return DeviceView(
        site=row.site,
        device=row.device,
        online=row.online,
        last_seen=row.last_seen,
        status_age_s=age,
        version=row.version,
        cameras=cameras,
        problems=problems,
        location=_location(status.get("location")),
    )


def plan(devices: Iterable[DeviceView], width: float = 1000.0, height: float = 600.0) -> list[PlanPoint]:
    """Place located devices on a `width` x `height` plan, north up, keeping distances true.

    An equirectangular projection around the fleet's mean latitude: at a town's scale its error is
    far below a pixel, and it needs no map data (none can be fetched from a closed network).
    """
    located = [d for d in devices if d.location is not None]
    if not located:
        return []
    lats = [d.location.lat for d in located if d.location]
    lons = [d.location.lon for d in located if d.location]
    scale_x = math.cos(math.radians(sum(lats) / len(lats)))
    span_x = (max(lons) - min(lons)) * scale_x
    span_y = max(lats) - min(lats)
    margin = 0.08
    unit = min(
        width * (1 - 2 * margin) / span_x if span_x else math.inf,
        height * (1 - 2 * margin) / span_y if span_y else math.inf,
    )
    unit = unit if math.isfinite(unit) else 0.0
    centre_lon, centre_lat = (max(lons) + min(lons)) / 2, (max(lats) + min(lats)) / 2
    points = []
    for device in located:
        assert device.location is not None
        x = width / 2 + (device.location.lon - centre_lon) * scale_x * unit
        y = height / 2 - (device.location.lat - centre_lat) * unit
        points.append(PlanPoint(round(x, 1), round(y, 1), device))
    return points


HEALTHY_ROWS = 100
"""Healthy devices listed on the whole-fleet page; the rest are counted (a site filter lists them all).

A region of 2,000 devices made a 2.4 MB page that took 0.4 s to render: an operator looks for what is
wrong, which is always listed in full, and reaches a healthy device through its site."""


def fleet_view(
    rows: Iterable[DeviceStatus], now: float, rules: FleetRules, site: str = "", sites: Iterable[str] = ()
) -> FleetView:
    """Judge every device, problems first (then by site and name), with the counts of the page."""
    views = [device_view(row, now, rules) for row in rows if not site or row.site == site]
    views.sort(key=lambda d: (d.severity, d.site, d.device))
    cameras = [c for d in views for c in d.cameras]
    codes = Counter(p.code for d in views for p in d.problems + [p for c in d.cameras for p in c.problems])
    counts = {
        "devices": len(views),
        "online": sum(d.online for d in views),
        "offline": sum(not d.online for d in views),
        "with_problems": sum(d.severity < 3 for d in views),
        "cameras": len(cameras),
        "cameras_running": sum(c.state == "running" for c in cameras),
        **{f"problem_{code}": count for code, count in codes.items()},
    }
    listed = views
    if not site:
        troubled = [d for d in views if d.severity < 3]
        listed = troubled + [d for d in views if d.severity >= 3][:HEALTHY_ROWS]
    return FleetView(listed, sorted(set(sites)), counts, plan(views), len(views) - len(listed))
