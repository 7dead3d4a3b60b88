"""Console bench: the fleet page of a region-sized fleet, and a motion event's way to the browser.

- fleet page: 2,000 devices x 5 cameras in the SQLite store (online; one camera in 17 disconnected, so
  about a quarter of the devices have a problem), the page rendered by the running console over real
  HTTP for a logged-in operator; time per request (median, p99), aim < 300 ms;
- live alert: a motion row written to the store (as `serve` writes it) -> the server-sent event that
  carries it read by an HTTP client of the console's event stream; median, aim < 1 s (the browser adds
  its DOM update, a few ms).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from edge_agent.collector.console.accounts import Passwords
from edge_agent.collector.console.data import open_console_data
from edge_agent.collector.console.server import ConsoleOptions, ConsoleServer
from edge_agent.collector.store import AvailabilityRecord, MotionRecord, StatusRecord, open_store
from edge_agent.collector.store.console import Account
from edge_agent.formats.keys import generate_csu_keys
from edge_agent.formats.mqtt_wire import parse_motion, parse_status, parse_topic
from edge_agent.formats.times import iso_ms

PASSWORD = "bench-password-long-enough"
DEVICES, CAMERAS = 2_000, 5


def _status(site: str, device: str, now: float) -> StatusRecord:
    raw = json.dumps(
        {
            "schema": 1, "site": site, "device": device, "ts": iso_ms(now), "version": "0.1.0",
            "uptime_s": 3600,
            "cameras": [
                {"id": f"cam{i}", "state": "disconnected" if hash((device, i)) % 17 == 0 else "running"}
                for i in range(CAMERAS)
            ],
            "disk": {"used": 100, "free": 900, "total": 1000, "quota": 800},
            "retention": {"oldest_ts": iso_ms(now - 86400 * 15), "days": 15},
            "location": {"lat": 43.5 + (hash(device) % 1000) / 5000, "lon": 1.4 + hash(site) % 1000 / 5000},
        }
    ).encode()  # fmt: skip
    where = parse_topic("csu/v1", f"csu/v1/{site}/{device}/status")
    return StatusRecord(parse_status(raw, where), raw.decode(), now)


def _fleet(db: Path, now: float) -> None:
    store = open_store(db)
    try:
        for start in range(0, DEVICES, 500):
            names = [(f"ville-{n // 40:02d}", f"pt-{n:04d}") for n in range(start, start + 500)]
            online = [AvailabilityRecord(site, device, "online", now) for site, device in names]
            store.write([*online, *(_status(site, device, now) for site, device in names)], now)
    finally:
        store.close()
    data = open_console_data(db)
    try:
        data.add_user(Account("bench", "operator", Passwords().hash(PASSWORD), now))
    finally:
        data.close()


def _login(url: str) -> requests.Session:
    session = requests.Session()
    token = re.search(r'name="csrf" value="([^"]+)"', session.get(url + "/login").text)
    assert token is not None
    session.post(url + "/login", data={"csrf": token.group(1), "name": "bench", "password": PASSWORD})
    return session


def _page_times(session: requests.Session, url: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url + "/fleet")
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200 and "pt-1999" in answer.text, answer.status_code
    return times


def _alert_latencies(db: Path, session: requests.Session, url: str, count: int) -> list[float]:
    """Seconds from a motion row written to its event read off the console's stream."""
    seen: dict[str, float] = {}
    stream = session.get(url + "/live?motion=1", stream=True, timeout=30)

    def read() -> None:
        for line in stream.iter_lines(decode_unicode=True):
            for event_id in re.findall(r"bench-ev-\d+", line or ""):
                seen.setdefault(event_id, time.perf_counter())
            if len(seen) >= count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    store = open_store(db)
    sent: dict[str, float] = {}
    try:
        for index in range(count):
            event_id = f"bench-ev-{index}"
            now = time.time()
            raw = json.dumps({
                "schema": 1, "camera": "cam1", "event_id": event_id, "phase": "start", "ts": iso_ms(now),
                "start_ts": iso_ms(now), "score": 0.3, "boxes": [[0.1, 0.1, 0.2, 0.2]], "zones": [],
            }).encode()  # fmt: skip
            sent[event_id] = time.perf_counter()
            store.write([MotionRecord("ville-00", "pt-0001", "cam1", parse_motion(raw), now)], now)
            time.sleep(0.3)
        reader.join(timeout=10)
    finally:
        store.close()
        stream.close()
    return [seen[e] - sent[e] for e in sent if e in seen]


def run(quick: bool = False) -> dict[str, Any]:
    """The figures, as JSON."""
    with tempfile.TemporaryDirectory(prefix="bench-console-") as work:
        root = Path(work)
        generate_csu_keys(root / "keys")
        db = root / "collector.sqlite"
        _fleet(db, time.time())
        options = ConsoleOptions(db, root / "keys", root / "keys", root / "audit.jsonl", root / "exports")
        server = ConsoleServer(options, "127.0.0.1", 0)
        server.start()
        try:
            session = _login(server.url)
            _page_times(session, server.url, 2)  # warm the caches
            times = _page_times(session, server.url, 10 if quick else 40)
            latencies = _alert_latencies(db, session, server.url, 5 if quick else 20)
        finally:
            server.stop()
    ordered = sorted(times)
    return {
        "fleet_devices": DEVICES,
        "fleet_cameras": DEVICES * CAMERAS,
        "fleet_page_ms_median": round(statistics.median(times), 1),
        "fleet_page_ms_p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "alert_to_stream_s_median": round(statistics.median(latencies), 3) if latencies else None,
        "alerts_seen": f"{len(latencies)}/{5 if quick else 20}",
    }


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
