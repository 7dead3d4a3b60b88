"""`edge-agent demo`, the README's first command, runs the whole chain and ends on a verified clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.link.localbroker import MOSQUITTO


def test_demo_records_publishes_and_fetches_a_verified_clip(tmp_path: Path) -> None:
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} missing: install the mosquitto Debian package (scripts/bootstrap.sh)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.commands.cli", "demo", "--duration", "12", "--dir", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified: " in result.stdout and "intact (verified)" in result.stdout
    assert "entrance: running" in result.stderr
    evidence = json.loads((site / "csu" / "exports" / "entrance-demo" / "evidence.json").read_text())
    assert evidence["verification"]["result"] == "verified"
    assert (site / "csu" / "collector.sqlite").exists()


def test_demo_refuses_to_wipe_a_foreign_folder(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "report.txt").write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.commands.cli", "demo", "--duration", "1", "--dir", str(precious)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "not a demo folder" in result.stderr
    assert (precious / "report.txt").read_text() == "keep me"
