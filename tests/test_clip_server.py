"""The clip API over real HTTP on loopback: signed access, refusals with audit lines, Range."""

from __future__ import annotations

import io
import json
import logging
import socket
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.clip_server import ClipServer, ClipServerThread, StatsProviders
from edge_agent.api.connections import FD_RESERVE, ServerLimits, connection_cap
from edge_agent.collector.download import DeviceEndpoint, FetchError, download_bundle
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.bundle import MANIFEST_NAME, SIGNATURE_NAME
from edge_agent.formats.mqtt_wire import CameraStatus
from edge_agent.formats.signing import RequestSigner, new_nonce
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import audit_lines, device_config, endpoint, random_ring, running_server

T0 = 1_700_000_000.0
CLIP = [
    ("camera", "cam1"),
    ("start", "2023-11-14T22:13:24Z"),
    ("end", "2023-11-14T22:13:40Z"),
    ("requisition", "PV 2024/118-B"),
]


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("device", "collector", "other")}


@pytest.fixture
def served(tmp_path: Path, keys) -> Iterator[tuple[ClipServer, RingBuffer]]:
    config = device_config(tmp_path, max_clip_seconds=60, requests_per_minute=1000)
    ring = random_ring(tmp_path / "ring", keys["device"], T0)
    cam1 = CameraStatus(id="cam1", state="running", fps=9.8, drops=3)
    stats = StatsProviders(cameras=lambda: {"cam1": cam1}, outbox_depth=lambda: 7)
    with running_server(config, ring, keys["device"], keys["collector"], stats) as server:
        yield server, ring
    ring.close()


def _get(ep: DeviceEndpoint, path: str, query, headers=None) -> tuple[int, dict, bytes]:
    with ep.request("GET", path, query, extra_headers=headers) as response:
        return response.status_code, dict(response.headers), response.content


def _last_audit(server: ClipServer) -> dict:
    return audit_lines(server.config)[-1]


def test_healthz_needs_no_signature(served) -> None:
    server, _ = served
    import urllib.request

    with urllib.request.urlopen(f"{server.local_url}/healthz") as response:
        assert json.load(response) == {"status": "ok"}


def test_signed_clip_is_a_tar_bundle_with_signed_manifest(served, keys) -> None:
    server, ring = served
    status, headers, body = _get(endpoint(server, keys["collector"]), "/v1/clips", CLIP)
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        names = archive.getnames()
        manifest_bytes = archive.extractfile(MANIFEST_NAME).read()
        signature = archive.extractfile(SIGNATURE_NAME).read()
        first = archive.extractfile(names[2]).read()
    keys["device"].public_key().verify(signature, manifest_bytes)
    manifest = json.loads(manifest_bytes)
    # 22:13:24Z = T0 + 4 s: segments 3..10 (from T0 + 4 to T0 + 20) overlap [T0+4, T0+20)
    assert [s["sequence"] for s in manifest["segments"]] == list(range(3, 11))
    assert first == ring.segments("cam1")[2].path.read_bytes()
    assert headers["ETag"] == f'"{manifest["bundle_id"]}"'
    # The server writes its `served` line once the last byte has left, which may be just after the
    # client has read it: give it a moment on a loaded machine.
    deadline = time.monotonic() + 5
    while True:
        entries = [e for e in audit_lines(server.config) if e["action"] == "clip"]
        if len(entries) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert [e["outcome"] for e in entries] == ["accepted", "served"]
    assert entries[1]["bytes"] == len(body) and entries[1]["requisition"] == "PV 2024/118-B"


def test_same_request_gives_same_bytes_and_ranges_resume(served, keys) -> None:
    server, _ = served
    ep = endpoint(server, keys["collector"])
    # The later requests of one download name the nonce the bundle answers (issue 13 item 2).
    same = [*CLIP, ("request_nonce", "first-request-nonce-0001")]
    _, headers, whole = _get(ep, "/v1/clips", same)
    _, _, again = _get(ep, "/v1/clips", same)
    assert again == whole
    _, _, other = _get(ep, "/v1/clips", CLIP)
    assert other != whole and len(other) == len(whole)  # bound to that request's own nonce
    etag = headers["ETag"]
    status, part_headers, tail = _get(ep, "/v1/clips", same, {"Range": "bytes=70000-", "If-Range": etag})
    assert status == 206 and tail == whole[70000:]
    assert part_headers["Content-Range"] == f"bytes 70000-{len(whole) - 1}/{len(whole)}"
    status, _, middle = _get(ep, "/v1/clips", same, {"Range": "bytes=600-1700"})
    assert status == 206 and middle == whole[600:1701]
    status, _, changed = _get(ep, "/v1/clips", same, {"Range": "bytes=10-", "If-Range": '"other"'})
    assert status == 200 and changed == whole
    status, _, _ = _get(ep, "/v1/clips", same, {"Range": f"bytes={len(whole)}-"})
    assert status == 416


REFUSALS = [
    # (name, how to build the request, status, reason)
    ("range malformed", [("start", "yesterday")], 400, "malformed-time"),
    ("range without zone", [("start", "2023-11-14T22:13:24")], 400, "malformed-time"),
    ("range inverted", [("end", "2023-11-14T22:13:00Z")], 400, "inverted-range"),
    ("range over maximum", [("end", "2023-11-14T22:15:00Z")], 400, "range-too-long"),
    ("unknown camera", [("camera", "cam7")], 404, "unknown-camera"),
    ("path-like camera", [("camera", "../../etc/passwd")], 400, "bad-camera-id"),
    ("encoded path camera", [("camera", "..%2Fcam1")], 400, "bad-camera-id"),
    ("path-like requisition", [("requisition", "../../../root")], 400, "bad-requisition"),
    ("absolute requisition", [("requisition", "/etc/shadow")], 400, "bad-requisition"),
]


@pytest.mark.parametrize(("name", "change", "status", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_parameters_are_refused_and_audited(served, keys, name, change, status, reason) -> None:
    server, _ = served
    query = dict(CLIP)
    query.update(change)
    code, _, body = _get(endpoint(server, keys["collector"]), "/v1/clips", list(query.items()))
    assert (code, json.loads(body)["error"]) == (status, reason)
    line = _last_audit(server)
    assert (line["outcome"], line["status"], line["reason"]) == ("refused", status, reason)
    assert line["client"] == RequestSigner(keys["collector"]).key_id


def test_authentication_refusals_are_audited(served, keys) -> None:
    server, _ = served
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    def expect(status: int, reason: str) -> None:
        # The last refusal: a served clip's closing line comes once the client acknowledged its last
        # byte, which may be after the next request.
        line = [e for e in audit_lines(server.config) if e["outcome"] == "refused"][-1]
        assert (line["outcome"], line["status"], line["reason"]) == ("refused", status, reason)

    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{server.local_url}/v1/clips?{urlencode(CLIP)}")
    assert unsigned.value.code == 401
    expect(401, "missing-signature")

    good = endpoint(server, keys["collector"])
    headers = good.signer.headers("GET", "/v1/clips", CLIP)
    tampered = dict(
        headers,
        **{
            "X-CSU-Signature": RequestSigner(keys["other"]).headers("GET", "/v1/clips", CLIP)[
                "X-CSU-Signature"
            ]
        },
    )
    status, _, _ = _raw(server, CLIP, tampered)
    assert status == 401
    expect(401, "bad-signature")

    status, _, _ = _get(endpoint(server, keys["other"]), "/v1/clips", CLIP)
    assert status == 403
    expect(403, "unknown-key")

    stale = endpoint(server, keys["collector"], clock=lambda: server.clock() - 3600)
    status, _, _ = _get(stale, "/v1/clips", CLIP)
    assert status == 401
    expect(401, "stale-timestamp")

    assert _raw(server, CLIP, headers)[0] == 200
    status, _, _ = _raw(server, CLIP, headers)
    assert status == 401
    expect(401, "replayed-nonce")


def _raw(server: ClipServer, query, headers) -> tuple[int, dict, bytes]:
    import http.client
    from urllib.parse import urlencode

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", f"/v1/clips?{urlencode(query)}", headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_segment_listing_has_no_paths(served, keys) -> None:
    server, ring = served
    rows = endpoint(server, keys["collector"]).call_json("GET", "/v1/segments", CLIP[:3])["segments"]
    assert [r["sequence"] for r in rows] == list(range(3, 11))
    assert all("path" not in r for r in rows)
    assert rows[3]["sha256"] == ring.segments("cam1")[5].sha256


def test_holds_add_list_release_and_bad_ids(served, keys) -> None:
    server, ring = served
    ep = endpoint(server, keys["collector"])
    body = json.dumps({"camera": "cam1", "start": T0, "end": T0 + 600, "requisition": "PV-1"}).encode()
    hold = ep.call_json("POST", "/v1/holds", body=body)
    assert [(h.id, h.requisition) for h in ring.holds()] == [(hold["id"], "PV-1")]
    assert ep.call_json("GET", "/v1/holds")["holds"][0]["id"] == hold["id"]
    assert ep.call_json("DELETE", f"/v1/holds/{hold['id']}") == {"id": str(hold["id"]), "released": True}
    with pytest.raises(FetchError) as unknown:
        ep.call_json("DELETE", "/v1/holds/999")
    assert unknown.value.status == 404
    with pytest.raises(FetchError) as bad:
        ep.call_json("POST", "/v1/holds", body=b'{"camera": "cam1"}')
    assert bad.value.reason == "missing-parameter"
    actions = [(e["action"], e["outcome"]) for e in audit_lines(server.config)]
    assert ("hold", "accepted") in actions and ("release", "accepted") in actions
    assert actions[-2:] == [("release", "refused"), ("hold", "refused")]


def test_metrics_signed_with_pipeline_and_request_counts(served, keys) -> None:
    server, _ = served
    ep = endpoint(server, keys["collector"])
    _get(ep, "/v1/clips", [("camera", "nope")])
    status, _, body = _get(ep, "/metrics", [])
    text = body.decode()
    assert status == 200
    assert 'camera_fps{camera="cam1"} 9.8' in text
    assert "mqtt_outbox_depth 7.0" in text
    assert 'ring_segments{camera="cam1"} 10.0' in text
    assert 'ring_oldest_segment_age_seconds{camera="cam1"}' in text
    assert 'clip_api_requests_total{endpoint="clip",outcome="refused",reason="missing-parameter"} 1.0' in text
    # What a flood would cost shows too: connections, tallied refusals, the audit log's space.
    assert "clip_api_connections_open 1.0" in text and "clip_api_refusals_tallied_total 0.0" in text
    assert "audit_lines_withheld_total 0.0" in text and "audit_log_quota_bytes 6.7108864e+07" in text
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{server.local_url}/metrics")
    assert unsigned.value.code == 401


def test_request_rate_limit_per_client(tmp_path: Path, keys) -> None:
    config = device_config(tmp_path, requests_per_minute=3)
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 2)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        ep = endpoint(server, keys["collector"])
        statuses = [_get(ep, "/v1/segments", CLIP[:3])[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert audit_lines(config)[-1]["reason"] == "rate-limited"


def test_mqtt_hold_and_release_commands_must_be_signed(tmp_path: Path, keys) -> None:
    from edge_agent.api.holds import HoldService, signed_command
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.signing import RequestVerifier

    ring = random_ring(tmp_path / "ring", keys["device"], T0, 1)
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = HoldService(ring, audit, ["cam1"])
    verifier = RequestVerifier([keys["collector"].public_key()], skew_s=60)
    signer = RequestSigner(keys["collector"])
    fields = {"camera": "cam1", "start": str(T0), "end": str(T0 + 60), "requisition": "PV-9"}

    reply = service.handle_command("hold", signed_command("hold", fields, signer), verifier)
    assert reply["ok"] and [h.requisition for h in ring.holds()] == ["PV-9"]
    unsigned = service.handle_command("release", {"id": reply["hold"]["id"]}, verifier)
    assert (unsigned["ok"], unsigned["error"]) == (False, "missing-signature")
    forged = signed_command("release", {"id": reply["hold"]["id"]}, RequestSigner(keys["other"]))
    assert service.handle_command("release", forged, verifier)["error"] == "unknown-key"
    edited = signed_command("hold", fields, signer) | {"requisition": "PV-10"}
    assert service.handle_command("hold", edited, verifier)["error"] == "bad-signature"
    release = signed_command("release", {"id": reply["hold"]["id"]}, signer)
    assert service.handle_command("release", release, verifier) == {
        "ok": True,
        "id": str(reply["hold"]["id"]),
        "released": True,
    }
    assert ring.holds() == []
    outcomes = [(e["action"], e["outcome"]) for e in audit_lines_of(audit.path)]
    assert outcomes == [
        ("hold", "accepted"),
        ("mqtt-release", "refused"),
        ("mqtt-release", "refused"),
        ("mqtt-hold", "refused"),
        ("release", "accepted"),
    ]


def audit_lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_open_streams_per_client_are_capped_and_freed_when_a_fetch_is_cut(tmp_path: Path, keys) -> None:
    # Paced at 100 kB/s after a 1 MiB burst, a 60 s bundle (~1.6 MB) stays open for seconds.
    config = device_config(
        tmp_path, max_clip_seconds=60, max_streams_per_client=1, rate_limit_bytes_s=100_000
    )
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 30)
    query = [("camera", "cam1"), ("start", str(T0)), ("end", str(T0 + 60)), ("requisition", "PV-3")]
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        ep = endpoint(server, keys["collector"])
        first = ep.request("GET", "/v1/clips", query, stream=True)
        assert first.status_code == 200 and len(first.raw.read(1000)) == 1000
        status, _, body = _get(ep, "/v1/clips", query)
        assert (status, json.loads(body)["error"]) == (429, "too-many-streams")
        first.close()  # the collector gives up mid-stream: its slot must come back
        deadline = time.monotonic() + 10
        while not any(e.get("outcome") == "interrupted" for e in audit_lines(config)):
            assert time.monotonic() < deadline, "the cut stream was never audited"
            time.sleep(0.05)
        with ep.request("GET", "/v1/clips", query, stream=True) as again:
            assert again.status_code == 200
    ring.close()
    refused = [e for e in audit_lines(config) if e["outcome"] == "refused"]
    assert [(e["status"], e["reason"]) for e in refused] == [(429, "too-many-streams")]


# --- connections: cap, timeouts, delivery (issue 13 item 3, issue 14 item 12) ------------------------


@contextmanager
def limited_server(tmp_path: Path, keys, limits: ServerLimits, **clip) -> Iterator[ClipServer]:
    """A served device whose connection limits are `limits`."""
    config = device_config(tmp_path, max_clip_seconds=60, **clip)
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 4)
    audit = AuditLog(config.clip_server.audit_log)
    server = ClipServer(config, ring, audit, keys["device"], [keys["collector"].public_key()], limits=limits)
    thread = ClipServerThread(server)
    thread.start()
    try:
        yield server
    finally:
        thread.stop()
        ring.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_by_server(sock: socket.socket, within_s: float) -> tuple[bool, bytes]:
    """Whether the server closes `sock` within `within_s`, and what it sent before."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
        return True, received
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received


def test_connections_over_the_cap_get_503_and_one_log_line(tmp_path: Path, keys, caplog) -> None:
    limits = ServerLimits(max_connections=40, idle_timeout_s=1.5)
    with limited_server(tmp_path, keys, limits) as server, caplog.at_level(logging.WARNING):
        idle = [_connect(server.port) for _ in range(40)]
        deadline = time.monotonic() + 5
        while server.gate.open < 40:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        over: list[socket.socket] = []
        answers: list[tuple[bool, bytes]] = []
        for _ in range(15):  # in bursts of 20, within the listen backlog: each one is accepted
            burst = [_connect(server.port) for _ in range(20)]
            answers += [_closed_by_server(s, 5) for s in burst]
            over += burst
        assert [a for a in answers if not (a[0] and a[1].startswith(b"HTTP/1.1 503"))] == []
        assert server.gate.open == 40 and server.gate.turned_away == 300
        # The idle ones are dropped after the idle timeout; then the API answers again.
        assert all(_closed_by_server(s, 5)[0] for s in idle)
        status, _, _ = _get(endpoint(server, keys["collector"]), "/v1/segments", CLIP[:3])
        assert status == 200
        for sock in idle + over:
            sock.close()
    cap_lines = [r for r in caplog.records if "connection(s) open, the cap" in r.getMessage()]
    assert len(cap_lines) == 1
    # 300 turned away: a few audit lines of their own, the rest tallied in one line for the address.
    lines = audit_lines(server.config)
    own = [e for e in lines if e["action"] == "connection"]
    tallies = [e for e in lines if e["action"] == "refusals"]
    assert 0 < len(own) <= 10
    assert [(t["remote"], t["count"]) for t in tallies] == [("127.0.0.1", 300 - len(own))]


def test_a_silent_or_slow_client_is_cut_at_the_idle_timeout(tmp_path: Path, keys) -> None:
    limits = ServerLimits(idle_timeout_s=1.0)
    with limited_server(tmp_path, keys, limits) as server:
        silent = _connect(server.port)
        slowloris = _connect(server.port)
        slowloris.sendall(b"GET /v1/segments HTTP/1.1\r\nHost: x\r\n")  # never ends its head
        started = time.monotonic()
        assert _closed_by_server(silent, 5)[0] and _closed_by_server(slowloris, 5)[0]
        assert time.monotonic() - started < 3
        # A body announced and never sent: 408 once the idle timeout passes, audited.
        ep = endpoint(server, keys["collector"])
        headers = ep.signer.headers("POST", "/v1/holds", [], b"{}")
        slow_body = _connect(server.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        slow_body.sendall(
            f"POST /v1/holds HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 100\r\n\r\n{{".encode()
        )
        _, answer = _closed_by_server(slow_body, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        silent.close(), slowloris.close(), slow_body.close()
    line = _last_audit(server)
    assert (line["action"], line["status"], line["reason"]) == ("hold", 408, "body-timeout")


def test_connection_cap_leaves_descriptors_for_recording() -> None:
    assert connection_cap(256, 1024) == 256
    assert connection_cap(256, 400) == 400 - FD_RESERVE
    assert connection_cap(256, 100) == 8  # never none at all


def test_unsatisfiable_range_names_the_size_and_a_whole_part_completes(served, keys, tmp_path) -> None:
    server, _ = served
    ep = endpoint(server, keys["collector"])
    nonce = new_nonce()
    answering = [*CLIP, ("request_nonce", nonce)]
    _, headers, whole = _get(ep, "/v1/clips", answering)
    status, refused_headers, _ = _get(ep, "/v1/clips", answering, {"Range": f"bytes={len(whole)}-"})
    assert (status, refused_headers["Content-Range"]) == (416, f"bytes */{len(whole)}")
    # A download cut after its last byte arrived: the .part is whole; the resume must finish it.
    dest = tmp_path / "clip.tar"
    dest.with_name("clip.tar.part").write_bytes(whole)
    dest.with_name("clip.tar.part.etag").write_text(headers["ETag"])
    result = download_bundle(ep, CLIP, dest, max_attempts=2, sleep=lambda s: None, nonce=nonce)
    assert (result.attempts, dest.read_bytes()) == (1, whole)


def test_a_client_that_reads_everything_and_closes_at_once_was_served(served, keys) -> None:
    server, _ = served
    for _ in range(5):
        ep = endpoint(server, keys["collector"])
        status, _, body = _get(ep, "/v1/clips", CLIP)
        ep.close()  # at once: the server may see the close before it looks at the acknowledgements
        assert status == 200
    deadline = time.monotonic() + 5
    while (
        len([e for e in audit_lines(server.config) if e.get("event") is None and e["action"] == "clip"]) < 5
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ends = [e for e in audit_lines(server.config) if e["action"] == "clip" and e["outcome"] != "accepted"]
    assert [e["outcome"] for e in ends] == ["served"] * 5 and all(e["bytes"] == len(body) for e in ends)


# --- values nothing handled: 400 naming the parameter, audited (issue 13 item 6) ----------------------


def test_unhandled_values_are_refused_by_name_and_audited(served, keys) -> None:
    server, _ = served
    ep = endpoint(server, keys["collector"])

    def refused(status: int, reason: str, named: str, answer: tuple[int, dict, bytes]) -> None:
        code, _, body = answer
        assert (code, json.loads(body)["error"]) == (status, reason), body[:200]
        assert named in json.loads(body)["message"]
        line = _last_audit(server)
        assert (line["outcome"], line["status"], line["reason"]) == ("refused", status, reason)

    refused(400, "bad-range", "Range", _get(ep, "/v1/clips", CLIP, {"Range": "bytes=" + "9" * 5000 + "-"}))
    year_one = dict(CLIP, start="0001-01-01T00:00:00+01:00")
    refused(400, "malformed-time", "start", _get(ep, "/v1/clips", list(year_one.items())))
    year_9999 = dict(CLIP, end="9999-12-31T23:59:59-05:00")
    refused(400, "malformed-time", "end", _get(ep, "/v1/clips", list(year_9999.items())))
    # 60,000 levels deep (within the 64 KiB body limit, unclosed) and 30,000 (closed): both too deep.
    refused(400, "malformed-body", "body", _send(ep, "POST", "/v1/holds", b"[" * 60_000))
    refused(400, "malformed-body", "body", _send(ep, "POST", "/v1/holds", b"[" * 30_000 + b"]" * 30_000))
    nested = json.dumps({"camera": [[["cam1"]]], "start": T0, "end": T0 + 60, "requisition": "PV-1"}).encode()
    refused(400, "bad-field-type", "camera", _send(ep, "POST", "/v1/holds", nested))
    refused(400, "bad-hold-id", "hold id", _send(ep, "DELETE", "/v1/holds/" + "9" * 30))
    refused(413, "body-too-large", "", _send(ep, "POST", "/v1/holds", b" " * 70_000))


def _send(ep: DeviceEndpoint, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    with ep.request(method, path, body=body) as response:
        return response.status_code, dict(response.headers), response.content


def test_framework_refusals_are_audited(served, keys) -> None:
    import http.client

    server, _ = served

    def raw(method: str, target: str, headers: dict[str, str] | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request(method, target, headers=headers or {})
            return connection.getresponse().status
        finally:
            connection.close()

    def last(action: str) -> dict:
        return [e for e in audit_lines(server.config) if e["action"] == action][-1]

    assert raw("GET", "/v1/nothing") == 404
    assert (last("http")["status"], last("http")["reason"], last("http")["path"]) == (
        404,
        "unknown-path",
        "/v1/nothing",
    )
    assert raw("PUT", "/v1/clips") == 405
    assert (last("http")["status"], last("http")["reason"]) == (405, "method-not-allowed")
    assert raw("GET", "/v1/clips?camera=" + "a" * 6000) == 400
    assert (last("http")["status"], last("http")["reason"]) == (400, "request-too-large")
    assert raw("GET", "/v1/clips", {"X-Long": "b" * 10_000}) in (400, 431)
    assert last("http")["reason"] == "request-too-large" and len(audit_lines(server.config)) == 4


def test_mqtt_hold_and_release_name_the_bad_value(tmp_path: Path, keys) -> None:
    from edge_agent.api.holds import HoldService, signed_command
    from edge_agent.formats.signing import RequestVerifier

    ring = random_ring(tmp_path / "ring", keys["device"], T0, 1)
    service = HoldService(ring, AuditLog(tmp_path / "audit.jsonl"), ["cam1"])
    verifier = RequestVerifier([keys["collector"].public_key()], skew_s=60)
    signer = RequestSigner(keys["collector"])
    fields = {"camera": "cam1", "start": str(T0), "end": str(T0 + 60), "requisition": "PV-9"}

    def reply(name: str, payload: dict) -> tuple[bool, str, str]:
        answer = service.handle_command(name, signed_command(name, payload, signer), verifier)
        return answer["ok"], answer.get("error", ""), answer.get("message", "")

    ok, error, message = reply("hold", fields | {"start": "0001-01-01T00:00:00+01:00"})
    assert (ok, error) == (False, "malformed-time") and message.startswith("start:")
    ok, error, message = reply("hold", fields | {"expires": "9999-01-01T00:00:00-03:00"})
    assert (ok, error) == (False, "malformed-time") and message.startswith("expires:")
    ok, error, message = reply("release", {"id": 10**20})
    assert (ok, error) == (False, "bad-hold-id") and message.startswith("hold id:")
    ok, error, message = reply("release", {"id": {"nested": [1]}})
    assert (ok, error) == (False, "bad-field-type") and message.startswith("id:")
    assert ring.holds() == []
    ring.close()


def test_refusal_budget_per_address_and_overall_then_tallies() -> None:
    from edge_agent.api.ratelimit import RefusalBudget

    now = [0.0]
    budget = RefusalBudget(per_client=3, overall=5, window_s=60, max_tallies=2, clock=lambda: now[0])
    admitted = [budget.admit("10.0.0.1", "missing-signature") for _ in range(5)]
    assert admitted == [True, True, True, False, False]  # three lines for one address
    assert [budget.admit(f"10.0.1.{i}", "bad-signature") for i in range(4)] == [True, True, False, False]
    assert budget.drain() == []  # the window is not over
    now[0] = 61.0
    tallies = {t.remote: (t.count, t.reasons) for t in budget.drain()}
    assert tallies == {
        "10.0.0.1": (2, {"missing-signature": 2}),
        "10.0.1.2": (1, {"bad-signature": 1}),
        "*": (1, {"bad-signature": 1}),  # past two addresses, one tally for the rest
    }
    assert (budget.audited, budget.tallied) == (5, 4) and budget.drain() == []


def test_log_throttle_says_what_it_held_back(caplog) -> None:
    from edge_agent.api.ratelimit import LogThrottle

    now = [0.0]
    throttle = LogThrottle(logging.getLogger("throttled"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="throttled"):
        for _ in range(1000):
            throttle.warning("accept", "accept failed")
        throttle.warning("other", "another condition")
        now[0] = 61.0
        throttle.warning("accept", "accept failed")
    assert [r.getMessage() for r in caplog.records] == [
        "accept failed",
        "another condition",
        "accept failed (999 more held back in the last 60 s)",
    ]
