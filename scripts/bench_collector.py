"""Collector at scale: 20,000 simulated cameras into 1, 2 and 4 collectors on PostgreSQL, and 1 on SQLite.

Real parts on this machine: mosquitto (LocalBroker), PostgreSQL from Debian's binaries in a throw-away
cluster with its default durability (fsync and synchronous commit on; tests/pg_support.py), N
`csu-collector serve` processes on one shared subscription, and the fleet simulator of
scripts/simulate_fleet.py (4,000 devices x 5 cameras, one MQTT connection each, a status every 30 s,
500 motion messages per second overall, for 60 s).

Per configuration:
- load: what the fleet published and what was stored (motion rows by their key, status history rows);
  lost = acknowledged by the broker but not stored; duplicated = stored rows beyond one per key.
- latency: publish -> row for every motion message (`stored_at`, stamped when the collector hands the
  batch to the database, minus the publication time), p50/p99; the collectors' mean and max transaction
  time is reported beside it (the commit comes after `stored_at`).
- capacity: the collectors are stopped, a backlog of motion messages is queued in their broker sessions,
  the collectors are started again and the drain rate (messages/s, first to last row) is measured.
- cost: CPU seconds of the collectors, the broker and the database server per 1,000 messages over the
  load phase, the collectors' peak RSS, the database size.
It uses every core of the machine (bench.py pins other areas to one).

Run alone: `.venv/bin/python scripts/bench_collector.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import psycopg  # noqa: E402
from simulate_fleet import Fleet, FleetReport  # noqa: E402

from edge_agent.collector.store import upgrade_schema  # noqa: E402
from edge_agent.link.localbroker import LocalBroker  # noqa: E402
from tests.pg_support import LocalPostgres  # noqa: E402

ALL_CORES = True
"""bench.py: this area runs on every core (broker, database, collectors and fleet are separate processes)."""
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    """The fleet and its traffic."""

    devices: int
    cameras: int
    seconds: float
    motion_rate: float
    status_interval_s: float
    backlog: int


FULL = Load(devices=4000, cameras=5, seconds=60.0, motion_rate=500.0, status_interval_s=30.0, backlog=30000)
QUICK = Load(devices=400, cameras=5, seconds=10.0, motion_rate=100.0, status_interval_s=30.0, backlog=3000)
CONFIGS: tuple[tuple[str, int], ...] = (
    ("postgresql", 1),
    ("postgresql", 2),
    ("postgresql", 4),
    ("sqlite", 1),
)


def _log(text: str) -> None:
    print(f"[bench_collector] {text}", file=sys.stderr, flush=True)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (+ its reaped children's when asked), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def _tree_cpu_seconds(root_pid: int) -> float:
    """A server and its worker processes (PostgreSQL: the postmaster, its backends, reaped ones too)."""
    total = _cpu_seconds(root_pid, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class _Serve:
    """One `csu-collector serve` process and its log."""

    broker: LocalBroker
    db: str
    client_id: str
    pool_size: int
    lines: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.lines = []
        command = [sys.executable, "-m", "edge_agent.collector.commands.cli", "serve", "--broker"]
        command += [self.broker.url, "--db", self.db, "--share-group", "bench", "--client-id", self.client_id]
        command += ["--pool-size", str(self.pool_size), "--stats-every", "3600", "--retention-days", "0"]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)

    def wait_subscribed(self) -> None:
        _until(lambda: any("collector subscribed" in line for line in self.lines), 30, "".join(self.lines))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> dict[str, Any]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        time.sleep(0.2)
        finals = [line for line in self.lines if "collector stopped:" in line]
        if not finals:
            raise RuntimeError(
                f"collector {self.client_id} ended without its counters:\n{''.join(self.lines)}"
            )
        counters: dict[str, Any] = json.loads(finals[-1].split("collector stopped:", 1)[1])
        return counters


def _until(predicate: Callable[[], bool], timeout_s: float, why: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout_s}s {why[-2000:]}")
        time.sleep(0.1)


class _Reader:
    """Counts and rows straight from the database (SQLite file or PostgreSQL URL)."""

    def __init__(self, db: str) -> None:
        self.db = db

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.db.startswith("postgresql://"):
            with psycopg.connect(self.db) as conn:
                return conn.execute(sql).fetchall()
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table}")[0][0])

    def size_mb(self) -> float:
        if self.db.startswith("postgresql://"):
            return int(self.query("SELECT pg_database_size(current_database())")[0][0]) / 2**20
        return sum(p.stat().st_size for p in Path(self.db).parent.glob(Path(self.db).name + "*")) / 2**20


def _wait_stored(reader: _Reader, motion: int, statuses: int, timeout_s: float, poll_s: float = 0.5) -> None:
    """Until the rows are there, or no progress for 15 s (then the shortfall is reported as lost)."""
    deadline = time.monotonic() + timeout_s
    last, last_change = (-1, -1), time.monotonic()
    while time.monotonic() < deadline:
        now = (reader.count("motion_events"), reader.count("status_history"))
        if now[0] >= motion and now[1] >= statuses:
            return
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > 15:
            return
        time.sleep(poll_s)


def _configuration(
    engine: str, collectors: int, load: Load, pg: LocalPostgres | None, work: Path
) -> dict[str, Any]:
    name = f"{engine}_x{collectors}"
    if pg is not None:
        db = pg.create_database(f"bench_{name}_{int(time.time())}")
    else:
        db = str(work / f"{name}.sqlite")
    upgrade_schema(db)
    reader = _Reader(db)
    with LocalBroker(persistence=False) as broker:
        serves = [_Serve(broker, db, f"bench-{name}-{i}", pool_size=2) for i in range(collectors)]
        for serve in serves:
            serve.start()
        for serve in serves:
            serve.wait_subscribed()
        fleet = Fleet(broker.url, load.devices, load.cameras, seed=collectors)
        started = time.monotonic()
        fleet.connect(timeout_s=300)
        _log(f"{name}: {load.devices} devices connected in {time.monotonic() - started:.1f}s")
        assert broker._process is not None
        pids = {"broker": broker._process.pid, "database": pg.postmaster_pid() if pg else 0}
        cpu_before = _cpu_snapshot(serves, pids)
        report = fleet.run(load.seconds, load.status_interval_s, load.motion_rate)
        acked = fleet.wait_acknowledged(120)
        expected_motion = len(report.sent_at)
        _wait_stored(reader, expected_motion, report.status_messages, 300)
        cpu_after = _cpu_snapshot(serves, pids)
        rss = [_peak_rss_mb(s.pid) for s in serves]
        _log(f"{name}: run done, {report.motion_messages} motion and {report.status_messages} statuses")
        load_result = _load_result(reader, report, acked, cpu_before, cpu_after, rss)
        counters = [s.stop() for s in serves]
        load_result["collector_transactions"] = _transactions(counters)

        capacity = _capacity(broker, serves, reader, load, collectors)
        fleet.disconnect()
    load_result["capacity"] = capacity
    load_result["database_mb"] = round(reader.size_mb(), 1)
    if pg is not None:
        pg.drop_database(db.rsplit("/", 1)[1])
    return load_result


def _cpu_snapshot(serves: list[_Serve], pids: dict[str, int]) -> dict[str, float]:
    snapshot = {
        "collectors": sum(_cpu_seconds(s.pid) for s in serves),
        "broker": _cpu_seconds(pids["broker"]),
    }
    snapshot["database"] = _tree_cpu_seconds(pids["database"]) if pids["database"] else 0.0
    return snapshot


def _load_result(
    reader: _Reader,
    report: FleetReport,
    acked: int,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    rss: list[float],
) -> dict[str, Any]:
    rows = reader.query("SELECT site, device, event_id, phase, ts, stored_at FROM motion_events")
    keys = [(r[0], r[1], r[2], r[3], round(r[4], 3)) for r in rows]
    sent = {(k[0], k[1], k[2], k[3], round(k[4], 3)): at for k, at in report.sent_at.items()}
    latencies = [(r[5] - sent[k]) * 1000 for r, k in zip(rows, keys, strict=True) if k in sent]
    stored_times = sorted(r[5] for r in rows)
    statuses = reader.count("status_history")
    messages = len(rows) + statuses
    span = stored_times[-1] - stored_times[0] if len(stored_times) > 1 else 0.0
    cpu = {part: round(cpu_after[part] - cpu_before[part], 2) for part in cpu_after}
    return {
        "run_seconds": round(report.seconds, 1),
        "published": {
            "motion": report.motion_messages,
            "status": report.status_messages,
            "motion_acked": acked,
        },
        "offered_msgs_per_s": round((report.motion_messages + report.status_messages) / report.seconds, 1),
        "ingested_msgs_per_s": round(messages / span, 1) if span else None,
        "stored": {"motion": len(rows), "status": statuses},
        "lost": {
            "motion": len(sent) - len(set(keys) & set(sent)),
            "status": max(0, report.status_messages - statuses),
        },
        "duplicated": len(keys) - len(set(keys)),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1) if latencies else None,
            "p99": round(_percentile(latencies, 0.99), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "cpu_s": cpu,
        "cpu_ms_per_message": {part: round(1000 * s / max(1, messages), 3) for part, s in cpu.items()},
        "collector_peak_rss_mb": {"max": round(max(rss), 1), "sum": round(sum(rss), 1)},
    }


def _transactions(counters: list[dict[str, Any]]) -> dict[str, Any]:
    batches = sum(c["batches"] for c in counters)
    write_s = sum(c["write_s"] for c in counters)
    return {
        "batches": batches,
        "messages_per_batch": round(sum(c["received"] for c in counters) / max(1, batches), 1),
        "mean_ms": round(1000 * write_s / max(1, batches), 2),
        "max_ms": round(1000 * max(c["write_max_s"] for c in counters), 1),
        "redelivered": sum(c["duplicate"] for c in counters),
        "store_retries": sum(c["store_retries"] for c in counters),
    }


def _capacity(
    broker: LocalBroker, serves: list[_Serve], reader: _Reader, load: Load, collectors: int
) -> dict[str, Any]:
    """A backlog queued in the stopped collectors' sessions, then drained by all of them at once; the rate
    is taken between the 10th and the 90th percentile of the rows' store times, so that the collectors'
    staggered start-ups and the last stragglers do not count."""
    last_id = int(reader.query("SELECT COALESCE(MAX(id), 0) FROM motion_events")[0][0])
    burst = Fleet(broker.url, 50, load.cameras, seed=100 + collectors)
    burst.connect()
    report = burst.run(load.backlog / 5000.0, 3600.0, 5000.0)
    burst.wait_acknowledged(120)
    burst.disconnect()
    _log(f"backlog of {len(report.sent_at)} queued for {collectors} stopped collector(s)")
    for serve in serves:
        serve.start()
    _wait_stored(reader, reader.count("motion_events") + len(report.sent_at), 0, 600)
    for serve in serves:
        serve.stop()
    times = sorted(r[0] for r in reader.query(f"SELECT stored_at FROM motion_events WHERE id > {last_id}"))
    low, high = _percentile(times, 0.1), _percentile(times, 0.9)
    middle = sum(1 for t in times if low <= t <= high)
    return {
        "backlog": len(report.sent_at),
        "stored": len(times),
        "drain_msgs_per_s": round(middle / (high - low)) if high > low else None,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Every configuration on the same fleet; `quick` shrinks the fleet and the run (smoke)."""
    load = QUICK if quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    result: dict[str, Any] = {
        "fleet": {
            "devices": load.devices,
            "cameras": load.devices * load.cameras,
            "status_interval_s": load.status_interval_s,
            "motion_per_s": load.motion_rate,
            "seconds": load.seconds,
        },
        "cores": len(os.sched_getaffinity(0)),
        "database": "PostgreSQL (Debian, default durability), SQLite WAL synchronous=NORMAL",
    }
    with LocalPostgres(settings=()) as pg:
        for engine, collectors in CONFIGS:
            result[f"{engine}_x{collectors}"] = _configuration(
                engine, collectors, load, pg if engine == "postgresql" else None, work
            )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    cli = parser.parse_args()
    print(json.dumps(run(cli.quick), indent=2))
