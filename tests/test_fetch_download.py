"""The collector's resumable download against a real clip server, through a connection cutter."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.delivery import plan_clip
from edge_agent.api.params import parse_clip_query
from edge_agent.collector.download import DeviceEndpoint, FetchError, download_bundle
from edge_agent.collector.progress import ProgressBar
from edge_agent.formats.bundle import write_bundle
from edge_agent.formats.signing import RequestSigner
from tests.clip_support import CuttingProxy, audit_lines, device_config, random_ring, running_server
from tests.test_clip_server import CLIP, T0


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("device", "collector")}


def test_cut_download_resumes_to_the_same_bytes(tmp_path: Path, keys, capsys) -> None:
    config = device_config(tmp_path, max_clip_seconds=60)
    ring = random_ring(tmp_path / "ring", keys["device"], T0)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        signer = RequestSigner(keys["collector"])
        whole = download_bundle(DeviceEndpoint(server.local_url, signer), CLIP, tmp_path / "whole.tar")
        proxy = CuttingProxy(server.port or 0, after=150_000, cuts=2)
        try:
            bar = ProgressBar("clip", enabled=True)
            resumed = download_bundle(
                DeviceEndpoint(proxy.url, signer), CLIP, tmp_path / "resumed.tar", bar, sleep=lambda s: None
            )
        finally:
            proxy.close()
    assert resumed.attempts == 3 and resumed.restarts == 0
    # The parts fit: together they are the very bundle the device plans for the download's one nonce.
    query = parse_clip_query([*CLIP, ("request_nonce", resumed.nonce)], ["cam1"], 60, True)
    planned = io.BytesIO()
    write_bundle(plan_clip(config, ring, keys["device"], query), planned)
    assert (tmp_path / "resumed.tar").read_bytes() == planned.getvalue()
    assert resumed.bundle_id != whole.bundle_id  # another download: another request nonce
    assert not list(tmp_path.glob("*.part*"))
    assert "100%" in capsys.readouterr().err
    served = [e for e in audit_lines(config) if e["action"] == "clip" and e["outcome"] != "accepted"]
    assert [e["outcome"] for e in served] == ["served", "interrupted", "interrupted", "served"]
    assert sum(e["bytes"] for e in served[1:]) >= whole.size


def test_changed_bundle_restarts_from_zero(tmp_path: Path, keys) -> None:
    config = device_config(tmp_path, max_clip_seconds=60)
    ring = random_ring(tmp_path / "ring", keys["device"], T0)
    dest = tmp_path / "clip.tar"
    part = tmp_path / "clip.tar.part"
    part.write_bytes(b"x" * 5000)
    (tmp_path / "clip.tar.part.etag").write_text('"stale-bundle"')
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
        result = download_bundle(endpoint, CLIP, dest)
    assert result.restarts == 1
    assert dest.read_bytes()[:5000] != b"x" * 5000


def test_refusal_is_not_retried(tmp_path: Path, keys) -> None:
    config = device_config(tmp_path, max_clip_seconds=5)
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 2)
    with (
        running_server(config, ring, keys["device"], keys["collector"]) as server,
        pytest.raises(FetchError) as refused,
    ):
        download_bundle(
            DeviceEndpoint(server.local_url, RequestSigner(keys["collector"])), CLIP, tmp_path / "c.tar"
        )
    assert refused.value.status == 400 and refused.value.reason == "range-too-long"
    assert len([e for e in audit_lines(config) if e["outcome"] == "refused"]) == 1


def test_proxy_variables_and_netrc_are_not_used(tmp_path: Path, keys, monkeypatch) -> None:
    # Devices are reached directly: a proxy from the environment (here a dead one) or a ~/.netrc
    # login (which would be sent to the device) must change nothing.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login officer password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    config = device_config(tmp_path, max_clip_seconds=60)
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 2)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
        result = download_bundle(endpoint, CLIP, tmp_path / "clip.tar", sleep=lambda s: None)
        prepared = endpoint.session.prepare_request(requests.Request("GET", endpoint.url("/v1/clips", CLIP)))
    assert result.attempts == 1
    assert "Authorization" not in prepared.headers


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:8480", "scheme must be http or https"),
        ("http://127.0.0.1:port", "needs a host and a valid port"),
        ("http:///v1", "needs a host and a valid port"),
    ],
)
def test_bad_clip_url_fails_at_once_naming_it(tmp_path: Path, keys, url: str, message: str) -> None:
    waits: list[float] = []
    with pytest.raises(FetchError, match=message) as failed:
        download_bundle(
            DeviceEndpoint(url, RequestSigner(keys["collector"])),
            CLIP,
            tmp_path / "c.tar",
            sleep=waits.append,
        )
    assert repr(url) in str(failed.value)
    assert waits == []  # not retried


def test_unreachable_device_is_retried_then_fails(tmp_path: Path, keys) -> None:
    waits: list[float] = []
    endpoint = DeviceEndpoint("http://127.0.0.1:9", RequestSigner(keys["collector"]), timeout_s=2)
    with pytest.raises(FetchError, match="download failed after 3 attempts"):
        download_bundle(endpoint, CLIP, tmp_path / "c.tar", max_attempts=3, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0]


def test_a_full_collector_disk_fails_at_once_naming_the_file(tmp_path: Path, keys) -> None:
    # The device is fine: asking it again (and again) cannot free the collector's disk.
    config = device_config(tmp_path, max_clip_seconds=60)
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 2)
    (tmp_path / "c.tar.part").symlink_to("/dev/full")
    waits: list[float] = []
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
        with pytest.raises(FetchError, match="No space left on device") as failed:
            download_bundle(endpoint, CLIP, tmp_path / "c.tar", sleep=waits.append)
    assert "c.tar.part: cannot be written" in str(failed.value)
    assert waits == []  # not retried
    assert not (tmp_path / "c.tar").exists()


class _GarbledRangeDevice(BaseHTTPRequestHandler):
    """Answers every GET with a partial-content status whose Content-Range is not one."""

    def do_GET(self) -> None:
        self.send_response(206)
        self.send_header("Content-Range", "bytes 0-x/zz")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


def test_a_garbled_content_range_is_refused_at_once_naming_it(tmp_path: Path, keys) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GarbledRangeDevice)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    waits: list[float] = []
    try:
        endpoint = DeviceEndpoint(f"http://127.0.0.1:{server.server_port}", RequestSigner(keys["collector"]))
        with pytest.raises(FetchError, match="unusable Content-Range: Content-Range 'bytes 0-x/zz'"):
            download_bundle(endpoint, CLIP, tmp_path / "c.tar", sleep=waits.append)
    finally:
        server.shutdown()
        server.server_close()
    assert waits == []  # a device that says nonsense is not asked again
