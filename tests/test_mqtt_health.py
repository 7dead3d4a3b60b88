"""Health sample for status: thermal zones read from sysfs-like files, disk of the nearest existing dir."""

from __future__ import annotations

from pathlib import Path

from edge_agent.link.health import cpu_temperature, disk_usage, sample


def _zone(root: Path, index: int, kind: str, millideg: str) -> None:
    zone = root / f"thermal_zone{index}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millideg + "\n")


def test_cpu_zone_preferred_and_unreadable_skipped(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "battery", "80000")
    _zone(tmp_path, 1, "cpu-thermal", "61234")
    _zone(tmp_path, 2, "soc", "garbage")
    assert cpu_temperature(tmp_path) == 61.2


def test_no_thermal_zone_is_none_not_a_guess(tmp_path: Path) -> None:
    assert cpu_temperature(tmp_path) is None
    _zone(tmp_path, 0, "acpitz", "45000")
    assert cpu_temperature(tmp_path) == 45.0


def test_disk_of_a_path_not_created_yet(tmp_path: Path) -> None:
    usage = disk_usage(tmp_path / "segments" / "not-yet", quota=123)
    assert usage is not None and usage.free > 0 and usage.total >= usage.used and usage.quota == 123
    health = sample(tmp_path, 0, thermal_root=tmp_path / "none")
    assert health.cpu_temp_c is None and len(health.load) == 3
    assert health.disk is not None and health.disk.free > 0 and health.disk.quota == 0
