"""Device health for the status message: CPU temperature, load, disk.

Reads Linux interfaces (`/sys/class/thermal`, `os.getloadavg`, `statvfs`); what a machine lacks is
reported as None rather than guessed (a container or a PC may have no thermal zone).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

THERMAL_ROOT = Path("/sys/class/thermal")


@dataclass(frozen=True)
class DiskUsage:
    """Bytes on the filesystem holding the recordings, and the configured quota (0 = none)."""

    used: int
    free: int
    total: int
    quota: int


@dataclass(frozen=True)
class Health:
    """One health sample."""

    cpu_temp_c: float | None
    load: tuple[float, float, float]
    disk: DiskUsage | None

    def to_status(self) -> dict[str, Any]:
        """The status fields: `cpu_temp_c`, `load` [1, 5, 15 min], `disk` {used, free, total, quota}."""
        return {
            "cpu_temp_c": self.cpu_temp_c,
            "load": [round(v, 2) for v in self.load],
            "disk": asdict(self.disk) if self.disk is not None else None,
        }


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


def disk_usage(path: Path, quota: int = 0) -> DiskUsage | None:
    """Usage of the filesystem that holds `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return None
    return DiskUsage(used=usage.used, free=usage.free, total=usage.total, quota=quota)


def sample(storage_path: Path, quota: int = 0, thermal_root: Path = THERMAL_ROOT) -> Health:
    """Read temperature, load and disk now."""
    return Health(
        cpu_temp_c=cpu_temperature(thermal_root),
        load=os.getloadavg(),
        disk=disk_usage(storage_path, quota),
    )
