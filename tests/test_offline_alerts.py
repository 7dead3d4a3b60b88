"""The console's alert list says when the collector ended an event because its device went offline
(issue 14 item 6), on both store engines, over real HTTP: ingestion, the store, the rows, the page."""

from __future__ import annotations

import re
import time
from pathlib import Path

import requests

from edge_agent.collector.console.data import AlertQuery, open_console_data
from edge_agent.collector.console.server import ConsoleOptions, ConsoleServer
from edge_agent.collector.ingest import Ingestor
from edge_agent.collector.store import open_store
from edge_agent.formats.keys import generate_csu_keys
from edge_agent.formats.times import iso_ms
from tests.browser_support import PASSWORD, add_users

ROOT = "csu/v1"


def _motion(event_id: str, phase: str, ts: float, start_ts: float) -> bytes:
    return (
        f'{{"schema": 1, "event_id": "{event_id}", "phase": "{phase}", "ts": "{iso_ms(ts)}", '
        f'"start_ts": "{iso_ms(start_ts)}", "score": 0.5, "boxes": [], "zones": ["door"]}}'
    ).encode()


def _alert_states(page: str) -> dict[str, str]:
    """event key -> the text of its state cell, from the alert list's HTML."""
    rows = re.findall(r'data-key="([^"]+)".*?<td class="state">([^<]*)</td>', page, re.S)
    return dict(rows)


def test_the_alert_list_says_ended_device_offline(db: str, tmp_path: Path) -> None:
    now = time.time()
    store = open_store(db)
    ingest = Ingestor(store, ROOT)
    ingest.handle(f"{ROOT}/s1/d1/availability", b'"online"')
    ingest.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("cut", "start", now - 20, now - 20))
    ingest.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("done", "start", now - 30, now - 30))
    ingest.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("done", "end", now - 25, now - 30))
    ingest.handle(f"{ROOT}/s1/d2/cam0/motion", _motion("live", "start", now - 10, now - 10))
    ingest.handle(f"{ROOT}/s1/d1/availability", b'"offline"')
    store.close()

    rows = open_console_data(db)
    try:
        alerts = {a.event_id: a for a in rows.alerts(AlertQuery(since=now - 3600))}
    finally:
        rows.close()
    assert {k: (a.ended, a.end_reason, a.state) for k, a in alerts.items()} == {
        "cut": (True, "device-offline", "ended: device offline"),
        "done": (True, None, "ended"),
        "live": (False, None, "open"),
    }

    generate_csu_keys(tmp_path / "keys")
    add_users(db)  # a URL for PostgreSQL: the helper only hands it to open_console_data
    keys = tmp_path / "keys"
    server = ConsoleServer(
        ConsoleOptions(db, keys, keys, tmp_path / "audit.jsonl", tmp_path / "exports"), "127.0.0.1", 0
    )
    server.start()
    try:
        session = requests.Session()
        login = session.get(server.url + "/login")
        token = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert token is not None
        session.post(
            server.url + "/login",
            data={"csrf": token.group(1), "name": "olivia", "password": PASSWORD},
            allow_redirects=False,
        )
        page = session.get(server.url + "/alerts")
    finally:
        server.stop()
    assert page.status_code == 200
    assert _alert_states(page.text) == {
        "s1/d1/cut": "ended: device offline",
        "s1/d1/done": "ended",
        "s1/d2/live": "open",
    }
