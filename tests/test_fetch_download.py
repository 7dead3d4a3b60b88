"""The collector's resumable download against a real clip server, through a connection cutter."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.collector.download import DeviceEndpoint, FetchError, download_bundle
from edge_agent.collector.progress import ProgressBar
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
        whole = download_bundle(DeviceEndpoint(server.url, signer), CLIP, tmp_path / "whole.tar")
        proxy = CuttingProxy(server.port or 0, after=150_000, cuts=2)
        try:
            bar = ProgressBar("clip", enabled=True)
            resumed = download_bundle(
                DeviceEndpoint(proxy.url, signer), CLIP, tmp_path / "resumed.tar", bar, sleep=lambda s: None
            )
        finally:
            proxy.close()
    assert resumed.attempts == 3 and resumed.restarts == 0
    assert (tmp_path / "resumed.tar").read_bytes() == (tmp_path / "whole.tar").read_bytes()
    assert resumed.bundle_id == whole.bundle_id
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
        result = download_bundle(DeviceEndpoint(server.url, RequestSigner(keys["collector"])), CLIP, dest)
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
            DeviceEndpoint(server.url, RequestSigner(keys["collector"])), CLIP, tmp_path / "c.tar"
        )
    assert refused.value.status == 400 and refused.value.reason == "range-too-long"
    assert len([e for e in audit_lines(config) if e["outcome"] == "refused"]) == 1
