"""Device health for the status message: CPU temperature, load, disk.

Reads Linux interfaces (`/sys/class/thermal`, `os.getloadavg`, `statvfs`); what a machine lacks is
reported as None rather than guessed (a container or a PC may have no thermal zone). The disk figures
are the status document's own `DiskStatus`; `edge_agent.link.status` puts the sample in the status.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_agent.formats.mqtt_wire import DiskStatus

THERMAL_ROOT = Path("/sys/class/thermal")


@dataclass(frozen=True)
class Health:
    """One health sample."""

    cpu_temp_c: float | None
    load: tuple[float, float, float]  # 1, 5 and 15 minutes
    disk: DiskStatus | None


def cpu_temperature(thermal_root: Path = THERMAL_ROOT) -> float | None:
    """The hottest `cpu`/`soc` thermal zone in °C (any zone when none is named so); None without one."""
    readings: list[tuple[bool, float]] = []
    for zone in sorted(thermal_root.glob("thermal_zone*")):
        try:
            millideg = int((zone / "temp").read_text().strip())
            kind = (zone / "type").read_text().strip().lower() if (zone / "type").exists() else ""
        except (OSError, ValueError):
            continue
        readings.append((any(k in kind for k in ("cpu", "soc", "x86_pkg")), millideg / 1000.0))
    if not readings:
        return None
    preferred = [t for is_cpu, t in readings if is_cpu] or [t for _, t in readings]
    return round(max(preferred), 1)


def disk_usage(path: Path, quota: int = 0) -> DiskStatus | None:
    """Usage of the filesystem that holds `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return None
    return DiskStatus(used=usage.used, free=usage.free, total=usage.total, quota=quota)


def sample(storage_path: Path, quota: int = 0, thermal_root: Path = THERMAL_ROOT) -> Health:
    """Read temperature, load and disk now."""
    return Health(
        cpu_temp_c=cpu_temperature(thermal_root),
        load=os.getloadavg(),
        disk=disk_usage(storage_path, quota),
    )
