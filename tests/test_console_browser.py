"""The console in a real browser (headless Chromium), against a real broker, device agent and collector.

One site and one browser for the whole module (starting them costs seconds); the test that kills the
device runs last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import struct
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.console.app import ConsoleSettings
from edge_agent.collector.console.clips import NOT_SIGNED, check_provenance
from edge_agent.collector.console.server import ConsoleOptions, ConsoleServer
from edge_agent.collector.pki import load_credential
from edge_agent.commands.demo import DEVICE, SITE
from edge_agent.formats.times import iso_ms
from tests.browser_support import ConsoleSite, chromium, login, need_browser, start_site, wait_until

pytestmark = pytest.mark.timeout(300)
DEVICE_KEY = f"{SITE}/{DEVICE}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    need_browser()
    running = start_site(tmp_path_factory.mktemp("console-site"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(site: ConsoleSite) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def _by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def _text(driver: Any, css: str) -> str:
    """The text of the element, once the page shows it (a form's answer may still be loading)."""

    def read() -> tuple[str] | None:
        found = driver.find_elements(_by("CSS_SELECTOR"), css)
        return (str(found[0].text),) if found else None  # a tuple: an empty text is still an answer

    return str(wait_until(read)[0])


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _payload(mp4: bytes, kind: bytes) -> int:
    """Where the payload of the file's top-level box `kind` starts."""
    offset = 0
    while offset + 8 <= len(mp4):
        size, name = struct.unpack(">I4s", mp4[offset : offset + 8])
        if name == kind:
            return offset + 8
        offset += size
    raise AssertionError(f"no {kind!r} box")


def _publish_motion(site: ConsoleSite, event_id: str, phase: str = "start") -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fake-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", site.broker.port)
    client.loop_start()
    now = time.time()
    payload = {
        "schema": 1,
        "event_id": event_id,
        "camera": "entrance",
        "phase": phase,
        "ts": iso_ms(now),
        "start_ts": iso_ms(now),
        "score": 0.42,
        "boxes": [[0.1, 0.5, 0.2, 0.3]],
        "zones": ["street"],
    }
    client.publish(f"csu/v1/{SITE}/{DEVICE}/entrance/motion", json.dumps(payload), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_wrong_password_is_refused_and_the_right_one_logs_in(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "olivia", "not-the-password")
    assert "Wrong user name or password" in _text(browser, "#login-error")
    assert browser.current_url.endswith("/login")
    login(browser, site, "olivia")
    wait_until(lambda: browser.current_url.endswith("/fleet"))
    assert _text(browser, "#who") == "olivia · operator"


def test_fleet_shows_the_device_online_with_its_cameras(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "olivia")
    row = f'tr[data-device="{DEVICE_KEY}"]'

    def online() -> bool:
        rows = browser.find_elements(_by("CSS_SELECTOR"), row)
        return bool(rows) and rows[0].get_attribute("data-online") == "yes"

    wait_until(online, timeout=30)  # live: no reload needed
    wait_until(lambda: "entrance" in _text(browser, row), timeout=15)
    assert _text(browser, "#count-online") == "1"


def test_a_motion_event_appears_without_reloading(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "olivia")
    browser.get(site.url + "/alerts")
    wait_until(lambda: _text(browser, "#live-state") == "live")
    browser.execute_script("window.__sameDocument = true;")
    event_id = f"console-test-{uuid.uuid4().hex[:8]}"
    published = time.monotonic()
    _publish_motion(site, event_id)
    selector = f'tr[data-key="{DEVICE_KEY}/{event_id}"]'
    wait_until(lambda: browser.find_elements(_by("CSS_SELECTOR"), selector), timeout=5)
    assert time.monotonic() - published < 5
    assert browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
    assert "street" in _text(browser, selector)


def test_an_operator_cannot_open_clips_and_an_investigator_can(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "olivia")
    browser.get(site.url + "/clips")
    wait_until(lambda: _text(browser, "h1") == "403")
    assert "operator" in _text(browser, "#error-message")
    login(browser, site, "ines")
    browser.get(site.url + "/clips")
    assert browser.find_element(_by("ID"), "clip-form").is_displayed()


def _request_clip(site: ConsoleSite, browser: Any, requisition: str) -> tuple[float, float]:
    """Ask for the 6 s of the entrance camera that ended 7 s ago, through the form; (start, end)."""

    def entrance_segments() -> int:
        return sum("entrance" in str(p) for p in (site.root / "device" / "segments").rglob("*.seg"))

    # 5 s segments: with 4 sealed, the 6 s that ended 7 s ago are recorded and sealed.
    wait_until(lambda: entrance_segments() >= 4, timeout=60)
    end = time.time() - 7
    start = end - 6
    browser.get(site.url + "/clips")
    browser.execute_script(
        "document.getElementById('clip-start').value = arguments[0];"
        "document.getElementById('clip-end').value = arguments[1];",
        _utc(start),
        _utc(end),
    )
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(_by("ID"), "clip-camera")).select_by_value(f"{DEVICE_KEY}/entrance")
    browser.find_element(_by("ID"), "clip-requisition").send_keys(requisition)
    browser.find_element(_by("ID"), "clip-submit").click()
    wait_until(lambda: "/clips/" in browser.current_url)
    wait_until(lambda: browser.find_elements(_by("ID"), "clip-video"), timeout=60)
    return start, end


def test_a_clip_request_ends_in_a_playing_verified_video(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "ines")
    start, end = _request_clip(site, browser, "PV 2026/42-B")
    assert _text(browser, "#evidence-result") == "verified"
    # The collector has no certificate: the card says so in one line, and it is no failure.
    assert _text(browser, "#provenance-unsigned") == NOT_SIGNED
    card = browser.find_element(_by("ID"), "provenance")
    assert card.get_attribute("data-outcome") == "not-signed" and "bad" not in card.get_attribute("class")
    state = wait_until(
        lambda: browser.execute_script(
            "const v = document.getElementById('clip-video');"
            "return v.readyState >= 2 ? {ready: v.readyState, duration: v.duration} : null;"
        ),
        timeout=20,
    )
    assert abs(state["duration"] - (int(end) - int(start))) <= 1.0, state
    audit = (site.root / "device" / "audit.jsonl").read_text()
    assert '"officer":"ines"' in audit and "PV 2026/42-B" in audit


def test_with_a_pki_the_provenance_card_says_what_verify_says(site: ConsoleSite, browser: Any) -> None:
    """The same collector after `csu-collector pki init` (a second console on its store and a copy of its
    keys): exports are C2PA-signed, and the clip page shows `csu-collector verify`'s words; an altered
    copy of the same export is named bad by the same check."""
    root = site.root / "csu-pki"
    keys = root / "keys"
    shutil.copytree(site.root / "csu" / "keys", keys)
    assert collector_main(["pki", "init", "--keys", str(keys), "--org", "Ville de Test"]) == 0
    options = ConsoleOptions(
        db=site.db,
        keys=keys,
        device_keys=keys / "devices",
        audit=root / "csu-audit.jsonl",
        exports=root / "exports",
        settings=ConsoleSettings(poll_s=0.2),
    )
    console = ConsoleServer(options, "127.0.0.1", 0)
    console.start()
    try:
        pki_site = dataclasses.replace(site, console=console)
        login(browser, pki_site, "ines")
        _request_clip(pki_site, browser, "PV 2026/43-C")
        card = browser.find_element(_by("ID"), "provenance")
        assert card.get_attribute("data-outcome") == "verified" and "bad" not in card.get_attribute("class")
        statements = _text(browser, "#provenance-statements")
        assert "valid, trusted: issued under the CSU CA" in statements
        assert f"signed by device {DEVICE}" in statements and "one the CSU knows" in statements
        assert _text(browser, "#provenance-result") == "result: VERIFIED"
        assert not browser.find_elements(_by("ID"), "provenance-problems")
        job = browser.current_url.rsplit("/", 1)[-1]
    finally:
        console.stop()
    audited = [json.loads(line) for line in options.audit.read_text().splitlines()]
    line = next(e for e in audited if e["action"] == "console-clip" and e["job"] == job)
    assert (line["outcome"], line["provenance"], line["provenance_problems"]) == ("verified", "verified", [])
    # One byte of a frame changed in a copy of the export: the same check names it, the card turns bad.
    altered = root / "altered"
    shutil.copytree(options.exports / job, altered)
    data = bytearray((altered / "clip.mp4").read_bytes())
    data[_payload(bytes(data), b"mdat") + 400] ^= 0xFF
    (altered / "clip.mp4").write_bytes(bytes(data))
    check = check_provenance(altered / "clip.mp4", load_credential(keys), keys / "devices")
    assert check.outcome == "not-verified" and check.summary.startswith("result: NOT VERIFIED")
    assert any(p.startswith("C2PA: ") for p in check.report.problems), check.report.problems


def test_bad_form_fields_are_named(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "ines")
    browser.get(site.url + "/clips")
    browser.execute_script(
        "document.getElementById('clip-start').value = arguments[0];"
        "document.getElementById('clip-end').value = arguments[1];",
        _utc(time.time() + 3600),
        _utc(time.time() + 3660),
    )
    browser.find_element(_by("ID"), "clip-requisition").send_keys("../etc/passwd")
    browser.find_element(_by("ID"), "clip-submit").click()
    errors = wait_until(lambda: browser.find_elements(_by("CSS_SELECTOR"), ".form-error"))
    fields = {e.get_attribute("data-field"): e.text for e in errors}
    assert fields["requisition"].startswith("requisition:")
    assert fields["end"] == "end: in the future (nothing recorded yet)"
    assert not list((site.root / "csu" / "exports").glob("*")) or "/clips/" not in browser.current_url


def test_a_comment_with_script_is_shown_as_text(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "olivia")
    event_id = f"xss-{uuid.uuid4().hex[:8]}"
    _publish_motion(site, event_id)
    browser.get(site.url + "/alerts")
    row = f'tr[data-key="{DEVICE_KEY}/{event_id}"]'
    wait_until(lambda: browser.find_elements(_by("CSS_SELECTOR"), row), timeout=5)
    comment = "<script>window.__xss = 1</script><b>bold</b>"
    browser.find_element(_by("CSS_SELECTOR"), f"{row} .comment-input").send_keys(comment)
    browser.find_element(_by("CSS_SELECTOR"), f"{row} .ack-form button").click()
    wait_until(lambda: browser.find_elements(_by("CSS_SELECTOR"), f"{row} .comment"))
    assert _text(browser, f"{row} .comment") == comment
    assert "olivia" in _text(browser, f"{row} .acked-by")
    assert browser.execute_script("return window.__xss === undefined;")
    assert not browser.find_elements(_by("CSS_SELECTOR"), f"{row} .comment b")


def test_missing_csrf_token_and_expired_session_are_refused(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "ines")
    browser.get(site.url + "/clips")
    browser.execute_script("document.querySelector('#clip-form input[name=csrf]').remove();")
    browser.find_element(_by("ID"), "clip-requisition").send_keys("PV-1")
    browser.find_element(_by("ID"), "clip-submit").click()
    wait_until(lambda: _text(browser, "h1") == "403")
    assert "CSRF" in _text(browser, "#error-message")
    with sqlite3.connect(site.db) as db:
        db.execute("UPDATE console_sessions SET last_seen = 0")
    browser.get(site.url + "/clips")
    wait_until(lambda: "/login" in browser.current_url)
    assert "session has ended" in _text(browser, "#expired")


def test_a_killed_device_turns_offline_on_the_fleet_page(site: ConsoleSite, browser: Any) -> None:
    login(browser, site, "olivia")
    row = f'tr[data-device="{DEVICE_KEY}"]'
    wait_until(lambda: browser.find_element(_by("CSS_SELECTOR"), row).get_attribute("data-online") == "yes")
    killed = time.monotonic()
    os.kill(site.agent.pid, signal.SIGKILL)
    wait_until(
        lambda: browser.find_element(_by("CSS_SELECTOR"), row).get_attribute("data-online") == "no",
        timeout=10,
    )
    assert time.monotonic() - killed < 10
    assert "offline" in _text(browser, f"{row} .problems")


def test_the_console_writes_every_action_with_the_user_in_the_audit_log(site: ConsoleSite) -> None:
    lines = [
        json.loads(line) for line in Path(site.root / "csu" / "csu-audit.jsonl").read_text().splitlines()
    ]
    seen = {(e["action"], e.get("user"), e.get("outcome")) for e in lines}
    assert ("console-login", "olivia", "refused") in seen
    assert ("console-login", "ines", "accepted") in seen
    assert ("console-denied", "olivia", None) in seen
    assert ("console-clip-request", "ines", "accepted") in seen
    assert any(e["action"] == "console-clip" and e.get("provenance") == "not-signed" for e in lines)
    assert ("console-ack", "olivia", None) in seen
    assert ("console-csrf-refused", "ines", None) in seen
    assert any(e["action"] == "fetch-clip" and e.get("officer") == "ines" for e in lines)
