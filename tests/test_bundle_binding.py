"""A bundle answers one request (issue 13 item 2): a man in the middle on loopback, who kept the device's
earlier answers, hands the collector an older bundle of the same camera, a bundle of another camera, of
another requisition or range, or a bundle written before the binding existed; each is refused, nothing
is exported, the command exits non-zero and the collector's audit says what was refused and why."""

from __future__ import annotations

import json
import os
import socket
import threading
from contextlib import suppress
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge_agent.api.delivery import plan_clip
from edge_agent.api.params import ClipQuery
from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.download import DeviceEndpoint, download_bundle
from edge_agent.collector.evidence import ClipRejected, verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.formats.audit import AuditLog, verify_log
from edge_agent.formats.bundle import BundleReader, write_bundle
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_x25519_private,
)
from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.signing import RequestSigner
from tests.clip_support import (
    CuttingProxy,
    audit_lines,
    device_config,
    encode_segments,
    running_server,
    seal_segment,
)
from tests.relay_support import LoopbackRelay

T0 = 1_700_000_000.0
FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"


class ManInTheMiddle(LoopbackRelay):
    """A loopback TCP proxy between collector and device: it passes requests on and keeps each whole
    answer it relays; once `replay` is set it answers every request with those bytes, never asking
    the device (it cannot sign a request of its own: it only has what it saw)."""

    def __init__(self, target_port: int) -> None:
        self.answers: list[bytes] = []
        self.replay: bytes | None = None
        super().__init__(target_port)

    def relay(self, client: socket.socket) -> None:
        """Read the request and answer it on a thread of its own."""
        threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            if self.replay is not None:
                client.sendall(self.replay)
                return
            # One answer per connection, so that an answer ends where the device closes.
            head = head.replace(b"Connection: keep-alive", b"Connection: close")
            answer = b""
            with socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
                upstream.sendall(head)
                while data := upstream.recv(65536):
                    answer += data
            self.answers.append(answer)
            with suppress(OSError):
                client.sendall(answer)


def _random_segments(ring: Any, device_key: Ed25519PrivateKey, camera: str, start_ts: float) -> None:
    """Five sealed 2 s segments of `camera` whose packets are random bytes (never decoded here)."""
    stream = StreamInfo("h264", "random", 160, 120, "yuv420p", Fraction(1, 10), 10, start_ts)
    csu = X25519PrivateKey.generate().public_key()
    for index in range(5):
        packets = [
            EncodedPacket(pts, pts, 1, pts % 20 == 0, os.urandom(500))
            for pts in range(index * 20, index * 20 + 20)
        ]
        seal_segment(ring, stream, packets, device_key, csu, camera=camera)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A device ring with 20 s of real footage on cam1 and 10 s on cam2, and the keys around it."""
    root = tmp_path_factory.mktemp("binding")
    device_files = generate_device_key(root / "device-keys")
    csu_files = generate_csu_keys(root / "csu-keys")
    keys = {
        "device": load_ed25519_private(device_files.private),
        "collector": load_ed25519_private(csu_files.signing.private),
        "csu": load_x25519_private(csu_files.sealing.private),
        "device_pub_file": device_files.public,
        "csu_dir": csu_files.signing.private.parent,
    }
    ring = encode_segments(root / "ring", keys["device"], keys["csu"].public_key(), T0, 20.0)
    _random_segments(ring, keys["device"], "cam2", T0)
    yield root, keys, ring
    ring.close()


def _request(camera: str = "cam1", start: float = T0 + 2, end: float = T0 + 8, **kw: Any) -> ClipRequest:
    return ClipRequest("ville-01", "pi-01", camera, start, end, kw.pop("requisition", "PV 2024/118"), **kw)


def _keys(site) -> CollectorKeys:
    keys = site[1]
    return CollectorKeys(keys["collector"], keys["csu"], keys["device"].public_key())


def _fetch(url: str, site, request: ClipRequest, export: Path, audit: AuditLog):
    endpoint = DeviceEndpoint(url, RequestSigner(site[1]["collector"]))
    with endpoint:
        return fetch_clip(endpoint, request, _keys(site), export, audit)


def _last(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
    return entry


@pytest.mark.parametrize(
    ("earlier", "mismatch"),
    [
        # The same camera, range, requisition and officer, asked before: only the nonce tells.
        (_request(officer="lt-martin"), "request_nonce"),
        (_request("cam2", officer="lt-martin"), "camera"),
        (_request(requisition="PV 2023/001", officer="lt-martin"), "requisition"),
        (_request(start=T0 + 4, end=T0 + 10, officer="lt-martin"), "requested.start_ts"),
        (_request(officer="cpt-durand"), "officer"),
    ],
    ids=["older-bundle-of-A", "bundle-of-B", "other-requisition", "other-range", "other-officer"],
)
def test_a_kept_answer_replayed_by_a_man_in_the_middle_is_refused(
    tmp_path: Path, site, earlier: ClipRequest, mismatch: str
) -> None:
    _, keys, ring = site
    config = device_config(tmp_path, cameras=("cam1", "cam2"), max_clip_seconds=60)
    audit_path = tmp_path / "collector-audit.jsonl"
    audit = AuditLog(audit_path)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        proxy = ManInTheMiddle(server.port or 0)
        try:
            # The earlier answer crosses the proxy, which keeps it.
            download_bundle(
                DeviceEndpoint(proxy.url, RequestSigner(keys["collector"])),
                earlier.query(),
                tmp_path / "earlier.tar",
            )
            assert len(proxy.answers) == 1 and proxy.answers[0].startswith(b"HTTP/1.1 200")
            proxy.replay = proxy.answers[0]
            asked = _request(officer="lt-martin")
            with pytest.raises(ClipRejected) as rejected:
                _fetch(proxy.url, site, asked, tmp_path / "export", audit)
        finally:
            proxy.close()
    assert "does not answer the request" in str(rejected.value)
    assert f"{mismatch} " in str(rejected.value)
    export = tmp_path / "export"
    assert not (export / "clip.mp4").exists() and not (export / "evidence.json").exists()
    entry = _last(audit_path)
    assert (entry["outcome"], entry["reason"], entry["mismatch"]) == ("rejected", "mismatch", mismatch)
    # The audit names the request as asked, and the bundle that came instead.
    assert (entry["camera"], entry["requisition"], entry["officer"]) == ("cam1", "PV 2024/118", "lt-martin")
    assert len(entry["request_nonce"]) == 24
    assert entry["bundle_id"] == json.loads(_manifest_bytes(tmp_path / "earlier.tar"))["bundle_id"]
    assert verify_log(audit_path).ok


def _manifest_bytes(bundle: Path) -> bytes:
    import tarfile

    with tarfile.open(bundle) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None
        return member.read()


def test_the_cli_exits_non_zero_on_a_bundle_of_another_camera(tmp_path: Path, site, capsys) -> None:
    _, keys, ring = site
    config = device_config(tmp_path, cameras=("cam1", "cam2"), max_clip_seconds=60)
    audit_path = tmp_path / "collector-audit.jsonl"
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        proxy = ManInTheMiddle(server.port or 0)
        try:
            download_bundle(
                DeviceEndpoint(proxy.url, RequestSigner(keys["collector"])),
                _request("cam2").query(),
                tmp_path / "b.tar",
            )
            proxy.replay = proxy.answers[0]
            code = collector_main(
                [
                    "fetch-clip",
                    "--site", "ville-01", "--device", "pi-01", "--camera", "cam1",
                    "--start", str(T0 + 2), "--end", str(T0 + 8), "--requisition", "PV 2024/118",
                    "--url", proxy.url, "--keys", str(keys["csu_dir"]),
                    "--device-key", str(keys["device_pub_file"]),
                    "--audit", str(audit_path), "-o", str(tmp_path / "export"), "--no-progress",
                ]
            )  # fmt: skip
        finally:
            proxy.close()
    assert code == 1
    assert "does not answer the request: camera 'cam2', asked 'cam1'" in capsys.readouterr().err
    entry = _last(audit_path)
    assert (entry["outcome"], entry["reason"], entry["mismatch"], entry["received"]) == (
        "rejected",
        "mismatch",
        "camera",
        "'cam2'",
    )


def test_a_bundle_from_before_the_binding_verifies_but_is_no_answer(tmp_path: Path) -> None:
    # tests/fixtures/format_v1: an export made by the first landing's code. Re-verification still
    # holds; the same bundle handed over as the answer to a fresh fetch is refused (it names no nonce).
    device = load_pem_private_key((FIXTURE / "device_ed25519.pem").read_bytes(), None)
    csu = load_pem_private_key((FIXTURE / "csu_x25519.pem").read_bytes(), None)
    collector = load_pem_private_key((FIXTURE / "collector_ed25519.pem").read_bytes(), None)
    assert isinstance(device, Ed25519PrivateKey) and isinstance(collector, Ed25519PrivateKey)
    assert isinstance(csu, X25519PrivateKey)
    assert verify_export(FIXTURE / "export", [collector.public_key()])[1] == []
    manifest = json.loads(_manifest_bytes(FIXTURE / "export" / "bundle.tar"))
    body = (FIXTURE / "export" / "bundle.tar").read_bytes()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n"
    answer = (head + f'ETag: "{manifest["bundle_id"]}"\r\n\r\n').encode() + body
    proxy = ManInTheMiddle(9)  # never asked: it answers from what it kept
    proxy.replay = answer
    request = ClipRequest(
        manifest.get("site", "ville-01"),
        manifest["device"],
        manifest["camera"],
        manifest["requested"]["start_ts"],
        manifest["requested"]["end_ts"],
        manifest["requisition"],
    )
    keys = CollectorKeys(collector, csu, device.public_key())
    audit = AuditLog(tmp_path / "audit.jsonl")
    try:
        with (
            pytest.raises(ClipRejected) as rejected,
            DeviceEndpoint(proxy.url, RequestSigner(collector)) as ep,
        ):
            fetch_clip(ep, request, keys, tmp_path / "export", audit)
    finally:
        proxy.close()
    assert "does not answer the request" in str(rejected.value)
    assert _last(tmp_path / "audit.jsonl")["reason"] == "mismatch"


def test_the_answer_names_officer_and_nonce_and_a_cut_download_keeps_the_same_bytes(
    tmp_path: Path, site
) -> None:
    _, keys, ring = site
    config = device_config(tmp_path, cameras=("cam1", "cam2"), max_clip_seconds=60)
    audit = AuditLog(tmp_path / "collector-audit.jsonl")
    request = _request(officer="lt-martin")
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        proxy = CuttingProxy(server.port or 0, after=8_000, cuts=2)  # a bundle of ~21 kB
        try:
            outcome = _fetch(proxy.url, site, request, tmp_path / "export", audit)
        finally:
            proxy.close()
    assert proxy.connections == 3  # cut twice, resumed twice
    manifest = BundleReader.open(tmp_path / "export" / "bundle.tar", keys["device"].public_key()).manifest
    nonce = manifest["request_nonce"]
    assert manifest["officer"] == "lt-martin" and len(nonce) == 24
    evidence = outcome.evidence
    assert (evidence["officer"], evidence["request_nonce"]) == ("lt-martin", nonce)
    assert evidence["verification"]["result"] == "verified"
    # The three parts are exactly the bundle the device plans for that one request nonce.
    query = ClipQuery("cam1", request.start_ts, request.end_ts, request.requisition, "lt-martin", nonce)
    plan = plan_clip(config, ring, keys["device"], query)
    with (tmp_path / "planned.tar").open("wb") as out:
        write_bundle(plan, out)
    assert (tmp_path / "export" / "bundle.tar").read_bytes() == (tmp_path / "planned.tar").read_bytes()
    # The device's audit names the nonce on every request of the download.
    clips = [e for e in audit_lines(config) if e["action"] == "clip" and e["outcome"] == "accepted"]
    assert len(clips) == 3 and {e["request_nonce"] for e in clips} == {nonce}


def test_a_bad_request_nonce_is_refused_naming_it(tmp_path: Path, site) -> None:
    _, keys, ring = site
    config = device_config(tmp_path, max_clip_seconds=60)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
        query = [*_request().query(), ("request_nonce", "short")]
        with endpoint, endpoint.request("GET", "/v1/clips", query) as response:
            assert response.status_code == 400
            assert response.json() == {
                "error": "bad-request-nonce",
                "message": "request_nonce: 16 to 64 characters of [A-Za-z0-9_-]",
            }
    refused = [e for e in audit_lines(config) if e["outcome"] == "refused"]
    assert [e["reason"] for e in refused] == ["bad-request-nonce"]
