"""A pushed upload survives its endpoint being killed and restarted, and keeps to the rate cap."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.collector.evidence import process_bundle
from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread
from edge_agent.formats.signing import RequestSigner
from edge_agent.link.localbroker import free_port
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import random_ring
from tests.push_support import EndpointProcess, audit_entries, device_side, upload_command, uploader_config

T0 = time.time() - 3600
TOKEN = "resume-" + "r" * 30
UPLOAD_ID = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {"device": Ed25519PrivateKey.generate(), "collector": Ed25519PrivateKey.generate()}


@pytest.fixture
def ring(tmp_path: Path, keys: dict[str, Any]) -> Iterator[RingBuffer]:
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 60)  # 120 s in 2 s segments, ~3.1 MB
    yield ring
    ring.close()


def _wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_the_endpoint_killed_mid_upload_and_restarted_resumes_without_resending(
    tmp_path: Path, keys: dict[str, Any], ring: RingBuffer
) -> None:
    spool = tmp_path / "spool"
    UploadEndpoint(spool).register(UPLOAD_ID, TOKEN, time.time() + 600, 1 << 30)
    endpoint = EndpointProcess(spool, free_port()).start()
    base = f"http://127.0.0.1:{endpoint.port}"
    # 8 Mbit/s: the 3 MB bundle takes about 3 s, long enough to be cut in the middle.
    side = device_side(
        uploader_config(tmp_path, [base], upload_kbps=8000), ring, keys["device"], keys["collector"]
    )
    part = spool / f"{UPLOAD_ID}.part"
    command = upload_command(
        RequestSigner(keys["collector"]), T0, T0 + 120, f"{base}/v1/uploads/{UPLOAD_ID}", TOKEN
    )
    try:
        accepted = side.uploader.handle_command(command)
        assert accepted["ok"], accepted
        size = accepted["size"]
        assert _wait_for(lambda: part.stat().st_size > 1_200_000, 20)
        endpoint.kill()
        held_at_kill = part.stat().st_size
        assert held_at_kill < size
        time.sleep(1.5)  # the device finds nobody listening, and retries
        endpoint.start()
        assert side.uploader.wait(60), "the upload did not resume"
    finally:
        endpoint.kill()
    counters = side.uploader.last_counters
    assert counters is not None
    assert side.published("delivered") and not side.published("failed")
    assert counters.retries >= 1
    # Nothing the collector had acknowledged was sent again; what was lost is at most what was in flight
    # when the endpoint died (it keeps every byte it received, acknowledged or not).
    assert counters.resent == 0
    assert size <= counters.sent < size + 1_048_576
    # The progress reports count up and the bundle is whole and verifies (signatures, hashes, chain).
    held = [r["held"] for r in side.published("progress")]
    assert held == sorted(held) and held
    assert part.stat().st_size == size
    bundle = tmp_path / "bundle.tar"
    shutil.copy(part, bundle)
    check = process_bundle(bundle, keys["device"].public_key(), None, None)
    assert check.result == "verified" and len(check.segments) == 60
    delivered = [e for e in audit_entries(tmp_path / "audit.jsonl") if e["outcome"] == "delivered"]
    assert delivered[0]["retries"] == counters.retries and delivered[0]["resent"] == 0


def test_the_rate_cap_holds(tmp_path: Path, keys: dict[str, Any], ring: RingBuffer) -> None:
    endpoint = UploadEndpoint(tmp_path / "spool")
    thread = UploadEndpointThread(endpoint)
    thread.start()
    endpoint.register(UPLOAD_ID, TOKEN, time.time() + 600, 1 << 30)
    base = f"http://127.0.0.1:{endpoint.port}"
    kbps = 6000  # 750 kB/s: the ~1.5 MB of a minute takes about 2 s
    side = device_side(
        uploader_config(tmp_path, [base], upload_kbps=kbps), ring, keys["device"], keys["collector"]
    )
    command = upload_command(
        RequestSigner(keys["collector"]), T0, T0 + 60, f"{base}/v1/uploads/{UPLOAD_ID}", TOKEN
    )
    try:
        started = time.monotonic()
        assert side.uploader.handle_command(command)["ok"]
        assert side.uploader.wait(30)
        seconds = time.monotonic() - started
    finally:
        thread.stop()
    size = endpoint.held(UPLOAD_ID)
    assert endpoint.is_complete(UPLOAD_ID)
    rate_kbps = size * 8 / 1000 / seconds
    # The first 16 kB go out at once (the bucket's burst), everything after at the cap.
    assert kbps * 0.9 <= rate_kbps <= kbps * 1.1, f"{rate_kbps:.0f} kbit/s for a cap of {kbps}"
