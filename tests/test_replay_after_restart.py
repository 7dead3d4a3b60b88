"""A signed request replayed after the device restarts is refused: the used nonces outlive the process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.formats.signing import RequestSigner
from tests.clip_support import audit_lines, device_config, random_ring, running_server

T0 = 1_700_000_000.0


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_a_hold_replayed_after_a_restart_is_refused_and_makes_no_second_hold(tmp_path: Path) -> None:
    device, collector = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    config = device_config(tmp_path, max_clip_seconds=60)
    ring = random_ring(tmp_path / "ring", device, T0, count=2)
    body = json.dumps({"camera": "cam1", "start": T0, "end": T0 + 4, "requisition": "PV 2026/31"}).encode()
    headers = RequestSigner(collector).headers("POST", "/v1/holds", (), body)
    try:
        with running_server(config, ring, device, collector) as server:
            status, _ = _post(f"{server.local_url}/v1/holds", body, headers)
        assert status == 201
        with running_server(config, ring, device, collector) as restarted:
            status, answer = _post(f"{restarted.local_url}/v1/holds", body, headers)
        assert status >= 400 and "nonce" in json.dumps(answer), answer
        assert len(ring.holds()) == 1
        assert audit_lines(config)[-1]["reason"] == "replayed-nonce"
    finally:
        ring.close()
