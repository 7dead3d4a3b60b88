"""upload_clip is checked as strictly as GET /v1/clips; the upload endpoint refuses what is not its own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.uploader import upload_url_allowed
from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread
from edge_agent.formats.audit import AuditLog, AuditQuota
from edge_agent.formats.config import ConfigError, parse_config
from edge_agent.formats.signing import RequestSigner, signed_command
from edge_agent.formats.times import iso_ms
from edge_agent.formats.upload import UploadAck, parse_content_range
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import random_ring
from tests.push_support import (
    DeviceSide,
    audit_entries,
    device_side,
    upload_command,
    upload_endpoint,
    uploader_config,
)

T0 = time.time() - 3600
TOKEN = "t0k3n-" + "x" * 30
UPLOAD_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {"device": Ed25519PrivateKey.generate(), "collector": Ed25519PrivateKey.generate()}


@pytest.fixture
def ring(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> Iterator[RingBuffer]:
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 10)  # 20 s, ~0.5 MB
    yield ring
    ring.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[UploadEndpoint]:
    with upload_endpoint(tmp_path / "spool", UPLOAD_ID, TOKEN) as running:
        yield running


def _base(endpoint: UploadEndpoint) -> str:
    return f"http://127.0.0.1:{endpoint.port}"


def _url(endpoint: UploadEndpoint) -> str:
    return f"{_base(endpoint)}/v1/uploads/{UPLOAD_ID}"


def _side(tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], urls: list[str], **clip: Any) -> DeviceSide:
    return device_side(uploader_config(tmp_path, urls, **clip), ring, keys["device"], keys["collector"])


def _refusals(tmp_path: Path) -> list[str]:
    return [e["reason"] for e in audit_entries(tmp_path / "audit.jsonl") if e["outcome"] == "refused"]


def test_unsigned_stale_replayed_or_tampered_commands_are_refused_and_audited(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], endpoint: UploadEndpoint
) -> None:
    side = _side(tmp_path, ring, keys, [_base(endpoint)])
    signer = RequestSigner(keys["collector"])
    good = upload_command(signer, T0 + 2, T0 + 12, _url(endpoint), TOKEN)
    unsigned = {k: v for k, v in good.items() if k not in ("key", "ts", "nonce", "sig")}
    stale = upload_command(
        RequestSigner(keys["collector"], clock=lambda: time.time() - 3600), T0, T0 + 10, _url(endpoint), TOKEN
    )
    tampered = {**upload_command(signer, T0, T0 + 10, _url(endpoint), TOKEN), "camera": "cam2"}
    redirected = {**upload_command(signer, T0, T0 + 10, _url(endpoint), TOKEN), "end": iso_ms(T0 + 600)}
    forged = upload_command(RequestSigner(Ed25519PrivateKey.generate()), T0, T0 + 10, _url(endpoint), TOKEN)
    replies = [side.uploader.handle_command(p) for p in (unsigned, stale, tampered, redirected, forged)]
    assert [(r["ok"], r["error"]) for r in replies] == [
        (False, "missing-signature"),
        (False, "stale-timestamp"),
        (False, "bad-signature"),
        (False, "bad-signature"),
        (False, "unknown-key"),
    ]
    assert endpoint.held(UPLOAD_ID) == 0, "a refused command must send nothing"

    accepted = side.uploader.handle_command(good)
    assert accepted["ok"] and accepted["phase"] == "accepted"
    assert side.uploader.wait(30)
    assert endpoint.is_complete(UPLOAD_ID)
    assert side.uploader.handle_command(good)["error"] == "replayed-nonce"
    # The nonce journal outlives the agent: a replay after a restart is refused too.
    restarted = _side(tmp_path, ring, keys, [_base(endpoint)])
    assert restarted.uploader.handle_command(good)["error"] == "replayed-nonce"
    lines = audit_entries(tmp_path / "audit.jsonl")
    assert [(e["action"], e["outcome"]) for e in lines] == [
        *[("mqtt-upload_clip", "refused")] * 5,
        ("upload_clip", "accepted"),
        ("upload_clip", "delivered"),
        *[("mqtt-upload_clip", "refused")] * 2,
    ]
    assert _refusals(tmp_path)[-2:] == ["replayed-nonce", "replayed-nonce"]
    assert lines[5]["officer"] == "OPJ Martin" and lines[5]["requisition"] == "PV 2024/118"
    assert all(TOKEN not in json.dumps(line) for line in lines)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/v1/uploads-elsewhere/" + UPLOAD_ID, "upload-url-not-allowed"),
        ("http://127.0.0.1:{other}/v1/uploads/" + UPLOAD_ID, "upload-url-not-allowed"),
        ("https://127.0.0.1:{port}/v1/uploads/" + UPLOAD_ID, "upload-url-not-allowed"),
        ("http://127.0.0.2:{port}/v1/uploads/" + UPLOAD_ID, "upload-url-not-allowed"),
        ("http://127.0.0.1.evil.example:{port}/v1/uploads/" + UPLOAD_ID, "upload-url-not-allowed"),
        ("http://127.0.0.1:{port}/v1/uploads/../../admin", "upload-url-not-allowed"),
        ("http://127.0.0.1:{port}/v1/uploads/%2e%2e/admin", "upload-url-not-allowed"),
        ("http://collector@127.0.0.1:{port}/v1/uploads/" + UPLOAD_ID, "bad-upload-url"),
        ("ftp://127.0.0.1:{port}/v1/uploads/" + UPLOAD_ID, "bad-upload-url"),
        ("http://127.0.0.1:{port}/v1/uploads/x?y=1", "bad-upload-url"),
    ],
)
def test_an_upload_url_outside_the_configured_collectors_is_refused(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], endpoint: UploadEndpoint, url: str, reason: str
) -> None:
    side = _side(tmp_path, ring, keys, [f"{_base(endpoint)}/v1/uploads"])
    target = url.format(port=endpoint.port, other=endpoint.port + 1)
    reply = side.uploader.handle_command(
        upload_command(RequestSigner(keys["collector"]), T0, T0 + 10, target, TOKEN)
    )
    assert (reply["ok"], reply["error"]) == (False, reason)
    assert _refusals(tmp_path) == [reason]
    assert endpoint.held(UPLOAD_ID) == 0


def test_no_collector_urls_means_no_push(tmp_path: Path, ring: RingBuffer, keys: dict[str, Any]) -> None:
    side = _side(tmp_path, ring, keys, [])
    command = upload_command(RequestSigner(keys["collector"]), T0, T0 + 10, "http://127.0.0.1:9/x", TOKEN)
    assert side.uploader.handle_command(command)["error"] == "push-disabled"


def test_the_prefix_rule() -> None:
    bases = ["https://csu.example/collector/", "http://10.0.0.5:8490"]
    assert upload_url_allowed("https://csu.example/collector/v1/uploads/ab", bases)
    assert upload_url_allowed("https://csu.example:443/collector/v1/uploads/ab", bases)
    assert upload_url_allowed("https://CSU.example/collector/x", bases)
    assert upload_url_allowed("http://10.0.0.5:8490/v1/uploads/ab", bases)
    assert not upload_url_allowed("https://csu.example/collector-evil/x", bases)
    assert not upload_url_allowed("https://csu.example/x", bases)
    assert not upload_url_allowed("http://csu.example/collector/x", bases)
    assert not upload_url_allowed("http://10.0.0.5/v1/uploads/ab", bases)
    assert not upload_url_allowed("http://10.0.0.5:8490/v1/./uploads", bases)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"camera": "cam9"}, "unknown-camera"),
        ({"camera": "../etc"}, "bad-camera-id"),
        ({"end": iso_ms(T0 + 3600)}, "range-too-long"),
        ({"end": iso_ms(T0 - 10)}, "inverted-range"),
        ({"requisition": ""}, "missing-parameter"),
        ({"requisition": "../../x"}, "bad-requisition"),
        ({"token": "short"}, "bad-token"),
        ({"expires": iso_ms(time.time() - 5)}, "expired"),
        ({"expires": iso_ms(time.time() + 30 * 86400)}, "bad-expiry"),
        ({"expires": "tomorrow"}, "malformed-time"),
        ({"priority": "high"}, "unknown-parameter"),
        ({"request_id": "a b"}, "bad-request-id"),
    ],
)
def test_bad_command_fields_are_refused_by_name(
    tmp_path: Path,
    ring: RingBuffer,
    keys: dict[str, Any],
    endpoint: UploadEndpoint,
    change: dict,
    reason: str,
) -> None:
    side = _side(tmp_path, ring, keys, [_base(endpoint)], max_clip_seconds=600)
    fields = {
        "camera": "cam1",
        "start": iso_ms(T0),
        "end": iso_ms(T0 + 10),
        "requisition": "PV-1",
        "upload_url": _url(endpoint),
        "token": TOKEN,
        "expires": iso_ms(time.time() + 600),
        **change,
    }
    reply = side.uploader.handle_command(
        signed_command("upload_clip", fields, RequestSigner(keys["collector"]))
    )
    assert (reply["ok"], reply["error"]) == (False, reason)
    assert _refusals(tmp_path) == [reason]


def test_a_non_string_field_is_refused(tmp_path: Path, ring: RingBuffer, keys: dict[str, Any]) -> None:
    side = _side(tmp_path, ring, keys, ["http://127.0.0.1:9"])
    fields = {"camera": "cam1", "start": T0, "end": T0 + 10, "requisition": "PV-1"}
    fields |= {"upload_url": "http://127.0.0.1:9/u", "token": TOKEN, "expires": iso_ms(time.time() + 60)}
    reply = side.uploader.handle_command(
        signed_command("upload_clip", fields, RequestSigner(keys["collector"]))
    )
    assert reply["error"] == "malformed-body" and "end, start" in reply["message"]


def test_collector_urls_are_checked_on_load(tmp_path: Path) -> None:
    for bad, words in [
        ("collector.csu", "scheme"),
        ("https://", "host"),
        ("https://u:p@csu.example", "credentials"),
        ("https://csu.example/?x=1", "query"),
        ("https://csu.example:0", "port"),
    ]:
        with pytest.raises(ConfigError) as raised:
            parse_config(
                {
                    "site_id": "s",
                    "device_id": "d",
                    "clip_server": {"collector_urls": ["https://ok.example", bad]},
                }
            )
        assert "clip_server.collector_urls" in str(raised.value) and words in str(raised.value)
    with pytest.raises(ConfigError, match="upload_kbps"):
        parse_config({"site_id": "s", "device_id": "d", "clip_server": {"upload_kbps": -1}})


def _put(
    endpoint: UploadEndpoint, token: str, content_range: str, body: bytes = b"", upload_id: str = UPLOAD_ID
):
    return requests.put(
        f"{_base(endpoint)}/v1/uploads/{upload_id}",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Range": content_range},
        timeout=10,
    )


def test_the_upload_endpoint_refuses_what_is_not_its_own(tmp_path: Path, endpoint: UploadEndpoint) -> None:
    assert _put(endpoint, TOKEN, "bytes */100").json() == {"held": 0, "size": 100, "complete": False}
    refusals = [
        (_put(endpoint, "w" * 40, "bytes */100"), 401, "bad-token"),
        (_put(endpoint, TOKEN, "bytes */100", upload_id="f" * 32), 404, "unknown-upload"),
        (_put(endpoint, TOKEN, "bytes 0-9"), 400, "bad-range"),
        (_put(endpoint, TOKEN, "bytes 0-9/200", b"0123456789"), 400, "size-changed"),
        (_put(endpoint, TOKEN, "bytes 0-9/100", b"012345678"), 400, "bad-length"),
    ]
    assert [(r.status_code, r.json()["error"]) for r, *_ in refusals] == [(s, e) for _, s, e in refusals]
    # Out of order: nothing is appended, the reply says where to go on from.
    skipped = _put(endpoint, TOKEN, "bytes 10-19/100", b"x" * 10)
    assert skipped.status_code == 409 and skipped.json()["held"] == 0
    first = _put(endpoint, TOKEN, "bytes 0-49/100", b"a" * 50)
    assert first.status_code == 200 and first.json() == {"held": 50, "size": 100, "complete": False}
    again = _put(endpoint, TOKEN, "bytes 0-49/100", b"b" * 50)
    assert again.status_code == 409 and again.json()["held"] == 50
    last = _put(endpoint, TOKEN, "bytes 50-99/100", b"c" * 50)
    assert last.json() == {"held": 100, "size": 100, "complete": True} and endpoint.is_complete(UPLOAD_ID)
    assert endpoint.part_path(UPLOAD_ID).read_bytes() == b"a" * 50 + b"c" * 50
    assert not any(TOKEN in p.read_text() for p in endpoint.spool.glob("*.json")), "the token is never stored"


def test_expired_and_oversized_uploads_are_refused(tmp_path: Path, endpoint: UploadEndpoint) -> None:
    expired, small = "a" * 32, "b" * 32
    endpoint.register(expired, TOKEN, time.time() - 1, 1000)
    endpoint.register(small, TOKEN, time.time() + 60, 1000)
    assert _put(endpoint, TOKEN, "bytes */10", upload_id=expired).status_code == 410
    too_large = _put(endpoint, TOKEN, "bytes */1001", upload_id=small)
    assert (too_large.status_code, too_large.json()["error"]) == (413, "too-large")
    with pytest.raises(ValueError, match="already registered"):
        endpoint.register(small, TOKEN, time.time() + 60, 1000)
    with pytest.raises(ValueError, match="hex"):
        endpoint.register("../x", TOKEN, time.time() + 60, 1000)


def test_a_put_without_content_range_is_refused_and_a_forgotten_upload_is_gone(
    tmp_path: Path, endpoint: UploadEndpoint
) -> None:
    bare = requests.put(_url(endpoint), data=b"x", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert (bare.status_code, bare.json()["error"]) == (400, "missing-range")
    assert _put(endpoint, TOKEN, "bytes 0-9/100", b"0123456789").json()["held"] == 10
    endpoint.forget(UPLOAD_ID)
    assert list(endpoint.spool.iterdir()) == []
    assert _put(endpoint, TOKEN, "bytes */100").status_code == 404


def test_refusals_of_the_upload_endpoint_stop_at_the_audit_quota(tmp_path: Path) -> None:
    audit = AuditLog(
        tmp_path / "collector-audit.jsonl", quota=AuditQuota(max_bytes=4_000, rotate_bytes=4_000)
    )
    endpoint = UploadEndpoint(tmp_path / "spool", audit=audit)
    thread = UploadEndpointThread(endpoint)
    thread.start()
    try:
        endpoint.register(UPLOAD_ID, TOKEN, time.time() + 600, 1000)
        statuses = {_put(endpoint, "w" * 40, "bytes */100").status_code for _ in range(40)}
    finally:
        thread.stop()
    usage = audit.usage()
    assert statuses == {401} and usage.withheld > 0 and usage.bytes < 4_000 + 500
    assert audit_entries(audit.path)[0]["reason"] == "bad-token"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("bytes 0-9", "expected 'bytes FIRST-LAST/TOTAL'"),
        ("bytes 9-0/100", "empty or runs past the total"),
        ("bytes 0-100/100", "empty or runs past the total"),
        ("items 0-9/100", "expected"),
        ("bytes -1-9/100", "expected"),
    ],
)
def test_a_bad_content_range_is_named(header: str, words: str) -> None:
    with pytest.raises(ValueError, match="Content-Range") as raised:
        parse_content_range(header)
    assert words in str(raised.value)


def test_content_range_reads_a_range_and_a_query() -> None:
    ranged = parse_content_range(" bytes 0-9/100 ")  # surrounding blanks are not the client's error
    assert (ranged.first, ranged.end, ranged.total, ranged.is_query) == (0, 10, 100, False)
    query = parse_content_range("bytes */100")
    assert (query.first, query.end, query.total, query.is_query) == (None, None, 100, True)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"held": 1, "size": 2}', "missing or mistyped"),
        (b'{"held": "1", "size": 2, "complete": false}', "missing or mistyped"),
        (b'{"held": 3, "size": 2, "complete": false}', "outside 0..2"),
        (b'{"held": -1, "size": 2, "complete": false}', "outside 0..2"),
    ],
)
def test_a_bad_upload_reply_is_named(body: bytes, words: str) -> None:
    with pytest.raises(ValueError, match="upload reply") as raised:
        UploadAck.parse(body)
    assert words in str(raised.value)


def test_one_upload_at_a_time_and_stop_ends_it(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], endpoint: UploadEndpoint
) -> None:
    side = _side(tmp_path, ring, keys, [_base(endpoint)], upload_kbps=800)  # 100 kB/s: seconds of work
    signer = RequestSigner(keys["collector"])
    assert side.uploader.handle_command(upload_command(signer, T0, T0 + 20, _url(endpoint), TOKEN))["ok"]
    second = side.uploader.handle_command(upload_command(signer, T0, T0 + 20, _url(endpoint), TOKEN))
    assert (second["ok"], second["error"]) == (False, "busy")
    side.uploader.stop()
    assert side.uploader.wait(5)
    assert [r["error"] for r in side.published("failed")] == ["stopped"]
    assert 0 < endpoint.held(UPLOAD_ID) < 500_000
    outcomes = [(e["action"], e["outcome"]) for e in audit_entries(tmp_path / "audit.jsonl")]
    assert outcomes == [
        ("upload_clip", "accepted"),
        ("mqtt-upload_clip", "refused"),
        ("upload_clip", "failed"),
    ]
