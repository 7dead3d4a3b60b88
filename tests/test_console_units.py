"""The console's parts without a browser: fleet judgments, the plan, roles, throttling, forms, the store
rows on both backends, and refusals over real HTTP (throttle 429, no session, wrong role, escaping)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from edge_agent.collector.console.accounts import LoginThrottle, Passwords, allows, token_hash
from edge_agent.collector.console.data import (
    Account,
    Acknowledgement,
    AlertQuery,
    DuplicateError,
    Session,
    open_console_data,
)
from edge_agent.collector.console.fleet import CRITICAL, HEALTHY_ROWS, FleetRules, fleet_view
from edge_agent.collector.console.forms import Form
from edge_agent.collector.console.server import ConsoleOptions, ConsoleServer
from edge_agent.collector.store import DeviceStatus, MotionRecord, StatusRecord, open_store
from edge_agent.formats.audit import AuditLog, AuditQuota, rotated_files
from edge_agent.formats.keys import generate_csu_keys
from edge_agent.formats.mqtt_wire import SCHEMA, MotionMessage, parse_status, parse_topic
from tests.browser_support import PASSWORD, add_users

NOW = 1_780_000_000.0


def _device(name: str, online: bool = True, **status: object) -> DeviceStatus:
    document = {"ts": NOW - 5, "uptime_s": 100.0, "cameras": [{"id": "c1", "state": "running", "fps": 10}]}
    document.update(status)
    return DeviceStatus("s1", name, online, NOW, "1.0", "", document)


def test_fleet_puts_problems_first_and_names_them() -> None:
    rows = [
        _device("fine"),
        _device("dead", online=False),
        _device("stale", ts=NOW - 200),
        _device("full", disk={"used": 95, "free": 5, "total": 100, "quota": 0}),
        _device("short", retention={"days": 7}),
        _device("backlog", outbox={"pending": 500, "dropped": 0}),
        _device("broken", cameras=[{"id": "c1", "state": "error", "fps": 0}]),
        _device("dropping", cameras=[{"id": "c1", "state": "running", "fps": 10, "drops": 200}]),
    ]
    view = fleet_view(rows, NOW, FleetRules(status_interval_s=30, legal_retention_days=15), sites=["s1"])
    assert (view.devices[0].device, view.devices[0].severity) == ("dead", CRITICAL)
    assert view.devices[-1].device == "fine" and view.devices[-1].severity == 3
    texts = {
        d.device: [p.text for p in d.problems + [p for c in d.cameras for p in c.problems]]
        for d in view.devices
    }
    assert texts["stale"] == ["status 200 s old"]
    assert texts["full"] == ["disk 95% full"]
    assert texts["short"] == ["retention set to 7 days, legal 15"]
    assert texts["backlog"] == ["outbox backlog 500"]
    assert texts["broken"] == ["camera c1 error"]
    assert texts["dropping"] == ["camera c1 dropped 200 frames"]
    assert view.counts["offline"] == 1 and view.counts["with_problems"] == 7
    assert fleet_view(rows, NOW, FleetRules(), site="s2").devices == []


def test_a_large_fleet_lists_every_problem_and_counts_the_healthy_rest() -> None:
    healthy = [_device(f"ok-{n:04d}") for n in range(HEALTHY_ROWS + 50)]
    troubled = [_device(f"down-{n}", online=False) for n in range(3)]
    view = fleet_view(healthy + troubled, NOW, FleetRules())
    assert [d.device for d in view.devices[:3]] == ["down-0", "down-1", "down-2"]
    assert len(view.devices) == 3 + HEALTHY_ROWS and view.healthy_not_listed == 50
    assert view.counts["devices"] == HEALTHY_ROWS + 53 and len(view.plan) == 0  # counts cover everyone
    site_view = fleet_view(healthy + troubled, NOW, FleetRules(), site="s1")
    assert len(site_view.devices) == HEALTHY_ROWS + 53 and site_view.healthy_not_listed == 0


def test_plan_places_located_devices_north_up() -> None:
    rows = [
        _device("north", location={"lat": 48.87, "lon": 2.35, "label": "Nord"}),
        _device("south", location={"lat": 48.85, "lon": 2.35, "label": "Sud"}),
        _device("east", location={"lat": 48.86, "lon": 2.37}),
        _device("nowhere"),
        _device("bad", location={"lat": 123, "lon": 2}),
    ]
    points = {p.device.device: p for p in fleet_view(rows, NOW, FleetRules()).plan}
    assert set(points) == {"north", "south", "east"}
    assert points["north"].y < points["south"].y and points["east"].x > points["north"].x
    assert all(0 <= p.x <= 1000 and 0 <= p.y <= 600 for p in points.values())


def test_roles_are_cumulative() -> None:
    assert allows("operator", "alerts") and not allows("operator", "clips")
    assert allows("investigator", "clips") and allows("investigator", "holds")
    assert not allows("investigator", "users") and allows("admin", "users")
    assert not allows("nobody", "fleet") and not allows("admin", "no-such-page")


def test_throttle_blocks_after_failures_and_forgets_on_success() -> None:
    throttle = LoginThrottle(failures=3, window_s=60)
    keys = ("name:bob", "addr:1.2.3.4")
    for i in range(3):
        assert throttle.wait_s(keys, 100 + i) == 0
        throttle.failed(keys, 100 + i)
    assert throttle.wait_s(keys, 103) == pytest.approx(57)
    assert throttle.wait_s(("name:bob", "addr:5.6.7.8"), 103) > 0, "the name stays blocked from elsewhere"
    assert throttle.wait_s(keys, 161) == 0, "the window slid past the failures"
    throttle.succeeded("name:bob")
    assert throttle.wait_s(("name:bob",), 103) == 0


def test_passwords_are_argon2id_and_checked() -> None:
    passwords = Passwords()
    hashed = passwords.hash("a long passphrase")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify(hashed, "a long passphrase") and not passwords.verify(hashed, "wrong")
    assert not passwords.verify("not a hash", "x")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"start": "2026-01-01T10:00:00", "end": "2026-01-01T09:00:00"}, "end", "end: must be after start"),
        ({"start": "2026-01-01T10:00:00", "end": "2026-01-01T12:00:01"}, "end", "longer than the device's"),
        ({"start": "yesterday", "end": "2026-01-01T09:00:00"}, "start", "start: 'yesterday' is not ISO 8601"),
        ({"start": "2026-01-01T10:00:00", "end": "2099-01-01T10:00:00Z"}, "end", "end: in the future"),
        ({"end": "2026-01-01T09:00:00"}, "start", "start: required"),
    ],
)
def test_clip_range_errors_name_the_field(fields: dict[str, str], field: str, message: str) -> None:
    form = Form(fields)
    form.clip_range(max_seconds=7200, now=NOW)
    assert message in form.errors[field]


def test_form_reference_and_ident_rules() -> None:
    form = Form({"requisition": "PV 2024/1", "officer": "a/../b", "camera": "Cam 1"})
    assert form.reference("requisition") == "PV 2024/1" and "requisition" not in form.errors
    form.reference("officer")
    form.ident("camera")
    assert form.errors["officer"].startswith("officer:") and form.errors["camera"].startswith("camera:")


def _motion(event_id: str, phase: str, ts: float, zones: list[str]) -> MotionRecord:
    event = MotionMessage(
        schema=SCHEMA, event_id=event_id, phase=phase, ts=ts, start_ts=NOW, score=0.5, boxes=[], zones=zones
    )
    return MotionRecord("s1", "d1", "cam0", event, ts)


def test_console_rows_on_both_backends(db: str) -> None:
    store = open_store(db)
    store.write(
        [
            _motion("e1", "start", NOW, ["door"]),
            _motion("e1", "end", NOW + 5, ["door"]),
            _motion("e2", "start", NOW + 6, ["50%_off"]),
        ],
        NOW,
    )
    store.close()
    rows = open_console_data(db)
    try:
        rows.add_user(Account("ana", "operator", "hash", NOW))
        with pytest.raises(DuplicateError, match="name: user 'ana' exists"):
            rows.add_user(Account("ana", "admin", "hash", NOW))
        assert rows.set_disabled("ana", True) and rows.user("ana").disabled  # type: ignore[union-attr]
        alerts = rows.alerts(AlertQuery(since=0))
        assert [(a.event_id, a.ended) for a in alerts] == [("e2", False), ("e1", True)], (
            "newest first, folded"
        )
        assert [a.event_id for a in rows.alerts(AlertQuery(since=0, zone="50%_off"))] == ["e2"]
        assert rows.alerts(AlertQuery(since=0, zone="50%")) == [], "a zone filter is literal, not a pattern"
        rows.acknowledge(Acknowledgement("s1", "d1", "e1", "ana", NOW + 9, "<script>"))
        with pytest.raises(DuplicateError):
            rows.acknowledge(Acknowledgement("s1", "d1", "e1", "bob", NOW + 10, ""))
        acked = next(a for a in rows.alerts(AlertQuery(since=0)) if a.event_id == "e1")
        assert acked.ack is not None and (acked.ack.user, acked.ack.comment) == ("ana", "<script>")
        assert rows.last_motion_id() == max(a.last_id for a in alerts)
    finally:
        rows.close()


# --- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def console(tmp_path: Path) -> Iterator[ConsoleServer]:
    generate_csu_keys(tmp_path / "keys")
    db = tmp_path / "collector.sqlite"
    store = open_store(db)
    add_users(db)
    raw = json.dumps(
        {
            "schema": 1,
            "site": "ville-01",
            "device": "pi-<b>1",
            "ts": "2026-01-01T00:00:00Z",
            "location": {"lat": 48.85, "lon": 2.35, "label": "<script>alert(1)</script>"},
        }
    ).encode()
    where = parse_topic("csu/v1", "csu/v1/ville-01/pi-<b>1/status")
    store.write([StatusRecord(parse_status(raw, where), raw.decode(), time.time())], time.time())
    store.close()
    options = ConsoleOptions(
        db, tmp_path / "keys", tmp_path / "keys", tmp_path / "audit.jsonl", tmp_path / "exports"
    )
    server = ConsoleServer(options, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


def _login(url: str, name: str, password: str = PASSWORD) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(url + "/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    answer = session.post(
        url + "/login",
        data={"csrf": token.group(1), "name": name, "password": password},
        allow_redirects=False,
    )
    return session, answer


def test_http_refusals_cookies_and_escaping(console: ConsoleServer) -> None:
    url = console.url
    assert requests.post(url + "/alerts/ack", data={}, allow_redirects=False).status_code == 401
    assert requests.get(url + "/fleet", allow_redirects=False).headers["Location"].startswith("/login")
    session, answer = _login(url, "ines")
    assert answer.status_code == 303
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert session.get(url + "/users").status_code == 403
    fleet = session.get(url + "/fleet")
    assert "default-src 'self'" in fleet.headers["Content-Security-Policy"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in fleet.text and "<script>alert" not in fleet.text
    assert "pi-&lt;b&gt;1" in fleet.text
    assert not re.search(r"https?://(?!127\.0\.0\.1)", fleet.text), "every asset comes from the collector"
    refused = session.post(url + "/clips", data={"camera": "x/y/z"}, allow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text


@pytest.mark.parametrize(
    ("asked", "shown"),
    [("", "24"), ("abc", "24"), ("nan", "24"), ("0", "0.1"), ("inf", "744"), ("99999", "744"), ("3", "3")],
)
def test_alert_hours_are_bounded_and_a_bad_value_falls_back(
    console: ConsoleServer, asked: str, shown: str
) -> None:
    session, _ = _login(console.url, "ines")
    page = session.get(console.url + "/alerts", params={"hours": asked} if asked else {})
    assert page.status_code == 200
    assert f'name="hours" value="{shown}"' in page.text


def _csrf(session: requests.Session, url: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', session.get(url).text)
    assert token is not None
    return token.group(1)


def test_refused_forms_answer_400_naming_the_field_and_keep_the_values(console: ConsoleServer) -> None:
    url = console.url
    admin, _ = _login(url, "adam")
    bad_user = {"csrf": _csrf(admin, url + "/users"), "name": "Bad Name!", "role": "admin", "password": "x"}
    refused = admin.post(url + "/users", data=bad_user, allow_redirects=False)
    assert refused.status_code == 400
    assert 'data-field="name"' in refused.text and 'data-field="password"' in refused.text
    assert 'value="Bad Name!"' in refused.text
    assert admin.get(url + "/users").status_code == 200, "a plain visit is not a refusal"
    investigator, _ = _login(url, "ines")
    release = {"csrf": _csrf(investigator, url + "/holds"), "device_ref": "s1/d9", "hold_id": "7"}
    unknown = investigator.post(url + "/holds/release", data=release, allow_redirects=False)
    assert unknown.status_code == 400
    assert 'data-field="hold_id"' in unknown.text and "never been heard" in unknown.text
    lines = [json.loads(line) for line in console.options.audit.read_text().splitlines()]
    assert any(e["action"] == "console-release" and e.get("outcome") == "refused" for e in lines)
    traversal = investigator.post(
        url + "/holds/release", data=release | {"hold_id": "1/../../v1/segments"}, allow_redirects=False
    )
    assert traversal.status_code == 400 and "is not a hold id" in traversal.text


def test_a_login_forgets_the_sessions_left_idle(console: ConsoleServer) -> None:
    data = open_console_data(console.options.db)
    try:
        recent = time.time()
        data.create_session(Session("abandoned", "olivia", "c1", NOW, NOW))
        data.create_session(Session("recent", "olivia", "c2", recent, recent))
        assert _login(console.url, "ines")[1].status_code == 303
        assert data.session("abandoned") is None, "idle past the limit: gone"
        assert data.session("recent") is not None, "still usable: kept"
    finally:
        data.close()


def test_a_session_last_use_is_written_at_most_once_a_minute(console: ConsoleServer) -> None:
    data = open_console_data(console.options.db)
    try:
        now = time.time()
        data.create_session(Session(token_hash("fresh"), "olivia", "c1", now - 300, now - 10))
        data.create_session(Session(token_hash("older"), "olivia", "c2", now - 300, now - 120))
        for token in ("fresh", "older"):
            page = requests.get(console.url + "/fleet", cookies={"csu_session": token}, allow_redirects=False)
            assert page.status_code == 200, token
        fresh, older = data.session(token_hash("fresh")), data.session(token_hash("older"))
        assert fresh is not None and fresh.last_seen == now - 10, "used 10 s ago: not written again"
        assert older is not None and older.last_seen >= now, "used 2 min ago: its idle time restarts"
    finally:
        data.close()


def test_http_login_throttling(console: ConsoleServer) -> None:
    codes = [_login(console.url, "olivia", "wrong password")[1].status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    assert _login(console.url, "olivia")[1].status_code == 429, "blocked even with the right password"
    assert _login(console.url, "adam")[1].status_code == 429, "the address is blocked for every name"


def test_the_console_signs_its_exports_when_the_collector_has_a_certificate(tmp_path: Path) -> None:
    from edge_agent.collector.commands.cli import main as collector_main
    from edge_agent.collector.console.devices import CsuKeys

    generate_csu_keys(tmp_path)
    assert CsuKeys.load(tmp_path).credential is None  # no PKI yet: exports are not C2PA-signed
    assert collector_main(["pki", "init", "--keys", str(tmp_path), "--org", "Ville de Test"]) == 0
    assert CsuKeys.load(tmp_path).credential is not None


def test_a_mistyped_store_path_is_an_error_not_a_new_empty_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`user` and `console` write to the collector's store: a path that names none is refused, naming
    `--db`, and no file appears there (users added to it would never reach the real console)."""
    from edge_agent.collector.commands.cli import main as collector_main

    generate_csu_keys(tmp_path / "keys")
    missing = tmp_path / "colector.sqlite"
    assert collector_main(["user", "list", "--db", str(missing), "--keys", str(tmp_path / "keys")]) == 1
    err = capsys.readouterr().err
    assert "--db:" in err and f"{missing}: no collector database" in err
    with pytest.raises(FileNotFoundError, match="check the path"):
        ConsoleServer(
            ConsoleOptions(missing, tmp_path / "keys", tmp_path / "keys", tmp_path / "a.jsonl", tmp_path)
        )
    assert not missing.exists()


def test_the_audit_page_reads_back_across_a_rotation(tmp_path: Path) -> None:
    """Just after the log was rotated, the page still shows the entries before, from the rotated file,
    newest first, and the whole chain verifies."""
    log = AuditLog(tmp_path / "audit.jsonl", quota=AuditQuota(max_bytes=1 << 20, rotate_bytes=2_000))
    for index in range(12):
        log.append(action="hold", outcome="accepted", requisition=f"PV-{index}")
    assert rotated_files(log.path), "the log must have rotated for this test"
    generate_csu_keys(tmp_path / "keys")
    open_store(tmp_path / "collector.sqlite").close()
    add_users(tmp_path / "collector.sqlite")
    options = ConsoleOptions(
        tmp_path / "collector.sqlite", tmp_path / "keys", tmp_path / "keys", log.path, tmp_path / "exports"
    )
    server = ConsoleServer(options, "127.0.0.1", 0)
    server.start()
    try:
        session, _ = _login(server.url, "adam")
        page = session.get(server.url + "/audit").text
    finally:
        server.stop()
    shown = [int(n) for n in re.findall(r"PV-(\d+)", page)]
    assert shown == list(range(11, -1, -1))
