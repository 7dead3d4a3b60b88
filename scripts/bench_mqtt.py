"""MQTT benchmark: motion latency from publication to the collector's store, and collector ingest rate.

Real parts on loopback: a mosquitto started by LocalBroker, `csu-collector serve` in its own process
(SQLite registry), and the simulated fleet of scripts/simulate_fleet.py (400 devices x 5 cameras,
status every 30 s, 100 motion messages per second by default).

- latency: for every motion message, `stored_at` (time the collector wrote the row) minus the time the
  simulator published it; p50/p99/max over the run.
- ingest rate: with the collector stopped (its persistent session keeps a queue in the broker), a
  backlog of motion messages is published; the collector is restarted and the rate is measured between
  its first and last stored row (startup excluded).
Run alone: `.venv/bin/python scripts/bench_mqtt.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from simulate_fleet import Fleet  # noqa: E402

from edge_agent.collector.store import open_store  # noqa: E402
from edge_agent.link.localbroker import LocalBroker  # noqa: E402


def _serve(broker: LocalBroker, db: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.collector.commands.cli",
            "serve",
            "--broker",
            broker.url,
            "--db",
            str(db),
            "--client-id",
            "bench-collector",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not db.exists():
        time.sleep(0.05)
    time.sleep(0.5)  # subscriptions acknowledged
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def _rows(db: Path) -> list[Any]:
    store = open_store(db, readonly=True)
    try:
        # in the order stored (rows[before:] are new), the devices' messages only: the fleet's last
        # wills make the collector write ends of its own
        rows = store.motion_after(0, limit=10_000_000)
        return [row for row in rows if row.end_reason is None]
    finally:
        store.close()


def _wait_rows(db: Path, count: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    rows = _rows(db)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = _rows(db)
    return rows


def _log(text: str) -> None:
    print(f"[bench_mqtt] {text}", file=sys.stderr, flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(
    quick: bool = False, devices: int = 400, cameras: int = 5, motion_rate: float = 100.0
) -> dict[str, Any]:
    """Both measurements; `quick` shortens the run (smoke)."""
    seconds = 10.0 if quick else 40.0
    backlog = 3000 if quick else 20000
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    db = work / "registry.sqlite"
    with LocalBroker(persistence=False) as broker:
        collector = _serve(broker, db)
        fleet = Fleet(broker.url, devices, cameras)
        fleet.connect()
        _log(f"fleet of {devices} connected")
        report = fleet.run(seconds, 30.0, motion_rate)
        acked = fleet.wait_acknowledged(60)
        _log(f"fleet run done: {report.motion_messages} motion published, {acked} acknowledged")
        # messages of one camera in the same millisecond share their dedup key: count unique ones
        rows = _wait_rows(db, min(acked, len(report.sent_at)), 30)
        sent_at = report.sent_at
        latencies_ms = [
            (row.stored_at - sent_at[key]) * 1000
            for row in rows
            if (key := (row.site, row.device, row.event_id, row.phase, row.ts)) in sent_at
        ]
        _stop(collector)

        # ingest rate: a backlog queued in the broker for the stopped collector's session
        burst = Fleet(broker.url, 20, cameras, seed=2)
        burst.connect()
        burst_report = burst.run(backlog / 5000.0, 3600.0, 5000.0)
        burst_acked = burst.wait_acknowledged(60)
        burst.disconnect()
        _log(f"backlog of {burst_acked} queued for the stopped collector")
        before = len(_rows(db))
        collector = _serve(broker, db)
        expected = min(burst_acked, len(burst_report.sent_at))
        rows = _wait_rows(db, before + expected, 120)
        _log("backlog stored")
        _stop(collector)
        fleet.disconnect()
    new_rows = sorted(r.stored_at for r in rows[before:])
    span = new_rows[-1] - new_rows[0] if len(new_rows) > 1 else 0.0
    return {
        "fleet": {"devices": devices, "cameras": devices * cameras, "status_interval_s": 30.0},
        "run_seconds": round(report.seconds, 1),
        "status_messages": report.status_messages,
        "motion_published": report.motion_messages,
        "motion_rate_per_s": round(report.motion_rate, 1),
        "motion_stored": len(latencies_ms),
        "motion_acknowledged": acked,
        "motion_lost": min(acked, len(report.sent_at)) - len(latencies_ms),
        "latency_ms": {
            "p50": round(statistics.median(latencies_ms), 2) if latencies_ms else None,
            "p99": round(_percentile(latencies_ms, 0.99), 2) if latencies_ms else None,
            "max": round(max(latencies_ms), 2) if latencies_ms else None,
        },
        "ingest": {
            "backlog_published": burst_report.motion_messages,
            "backlog_unique": expected,
            "stored": len(new_rows),
            "events_per_s": round((len(new_rows) - 1) / span, 0) if span > 0 else None,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--cameras", type=int, default=5)
    parser.add_argument("--motion-rate", type=float, default=100.0)
    cli = parser.parse_args()
    print(json.dumps(run(cli.quick, cli.devices, cli.cameras, cli.motion_rate), indent=2))
