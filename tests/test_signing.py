"""The request signature scheme: what the device accepts and why it refuses the rest."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.formats.signing import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NonceCache,
    RequestSigner,
    RequestVerifier,
    SignatureError,
    canonical_query,
)

NOW = 1_700_000_000.0
QUERY = [("camera", "cam1"), ("start", "2024-01-01T00:00:00Z"), ("end", "2024-01-01T00:00:20Z")]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def verifier(key: Ed25519PrivateKey, clock: FakeClock) -> RequestVerifier:
    return RequestVerifier([key.public_key()], skew_s=60, clock=clock)


def _refusal(verifier: RequestVerifier, headers: dict[str, str], **kw: object) -> SignatureError:
    args: dict = {"method": "GET", "path": "/v1/clips", "query": QUERY, "headers": headers}
    args.update(kw)
    with pytest.raises(SignatureError) as caught:
        verifier.verify(**args)
    return caught.value


def test_signed_request_is_accepted_whatever_the_query_order(key, clock, verifier) -> None:
    signer = RequestSigner(key, clock)
    headers = signer.headers("GET", "/v1/clips", QUERY)
    assert verifier.verify("GET", "/v1/clips", list(reversed(QUERY)), headers) == signer.key_id


def test_canonical_query_encodes_reserved_characters() -> None:
    assert canonical_query([("b", "x y/z"), ("a", "1&2")]) == "a=1%262&b=x%20y%2Fz"


def test_missing_and_malformed_headers(verifier) -> None:
    assert _refusal(verifier, {}).reason == "missing-signature"
    error = _refusal(verifier, {HEADER_NONCE: "a" * 20})
    assert error.reason == "malformed-signature" and "X-CSU-Signature" in str(error)


def test_tampered_query_method_path_or_body_fail(key, clock, verifier) -> None:
    signer = RequestSigner(key, clock)
    for kw in (
        {"query": [*QUERY[:2], ("end", "2024-01-02T00:00:00Z")]},
        {"method": "DELETE"},
        {"path": "/v1/segments"},
        {"body": b"{}"},
    ):
        headers = signer.headers("GET", "/v1/clips", QUERY)
        assert _refusal(verifier, headers, **kw).reason == "bad-signature"


def test_garbage_signature(key, clock, verifier) -> None:
    headers = RequestSigner(key, clock).headers("GET", "/v1/clips", QUERY)
    headers[HEADER_SIGNATURE] = "!!notbase64"
    assert _refusal(verifier, headers).reason == "malformed-signature"


def test_another_collectors_key_is_forbidden(clock, verifier) -> None:
    other = RequestSigner(Ed25519PrivateKey.generate(), clock)
    error = _refusal(verifier, other.headers("GET", "/v1/clips", QUERY))
    assert (error.reason, error.status) == ("unknown-key", 403)


def test_stale_and_future_timestamps(key, clock, verifier) -> None:
    for offset in (-61, +61):
        signer = RequestSigner(key, FakeClock(NOW + offset))
        error = _refusal(verifier, signer.headers("GET", "/v1/clips", QUERY))
        assert error.reason == "stale-timestamp"
    inside = RequestSigner(key, FakeClock(NOW - 59))
    verifier.verify("GET", "/v1/clips", QUERY, inside.headers("GET", "/v1/clips", QUERY))


def test_replayed_nonce_refused_until_it_would_be_stale_anyway(key, clock, verifier) -> None:
    signer = RequestSigner(key, clock)
    headers = signer.headers("GET", "/v1/clips", QUERY)
    verifier.verify("GET", "/v1/clips", QUERY, headers)
    assert _refusal(verifier, headers).reason == "replayed-nonce"
    clock.now += 120
    assert _refusal(verifier, headers).reason == "stale-timestamp"


def test_timestamp_header_is_signed(key, clock, verifier) -> None:
    headers = RequestSigner(key, clock).headers("GET", "/v1/clips", QUERY)
    headers[HEADER_TIMESTAMP] = str(int(NOW) + 1)
    assert _refusal(verifier, headers).reason == "bad-signature"


def test_nonce_cache_fails_closed_when_full() -> None:
    cache = NonceCache(max_entries=2)
    cache.add("a", expires_at=10, now=0)
    cache.add("b", expires_at=10, now=0)
    with pytest.raises(SignatureError) as caught:
        cache.add("c", expires_at=10, now=0)
    assert caught.value.status == 503
    cache.add("c", expires_at=30, now=11)
    assert len(cache) == 1


def test_a_journal_keeps_nonces_across_restarts(tmp_path) -> None:
    journal = tmp_path / "state" / "seen-nonces.log"
    first = NonceCache(journal=journal, now=NOW)
    first.add("k:used-before-restart", NOW + 61, NOW)
    first.add("k:soon-stale", NOW + 5, NOW)
    with journal.open("a") as out:
        out.write("17000000")  # torn by a crash mid-line: that request was never acted on
    after_restart = NonceCache(journal=journal, now=NOW + 10)
    with pytest.raises(SignatureError) as caught:
        after_restart.add("k:used-before-restart", NOW + 71, NOW + 10)
    assert caught.value.reason == "replayed-nonce"
    after_restart.add("k:soon-stale", NOW + 71, NOW + 10)  # expired at load: a fresh request may reuse it
    assert len(after_restart) == 2
    assert journal.read_text().splitlines()[0] == f"{NOW + 61:.0f} k:used-before-restart"


def test_the_journal_is_compacted_as_nonces_expire(tmp_path) -> None:
    journal = tmp_path / "seen-nonces.log"
    cache = NonceCache(journal=journal, now=NOW)
    for index in range(3_000):
        cache.add(f"k:nonce-{index:05d}", NOW + index + 2, NOW + index)
    lines = journal.read_text().splitlines()
    assert len(lines) < 1_100  # rewritten with the live entries only, not 3,000 lines
    assert NonceCache(journal=journal, now=NOW + 3_000).__len__() == 1


def test_a_full_disk_leaves_no_torn_journal_line_to_swallow_the_next_nonce(tmp_path) -> None:
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        journal = mount / "seen-nonces.log"
        cache = NonceCache(journal=journal, now=NOW)
        cache.add("k:first", NOW + 61, NOW)  # the journal has a page of its own; the filler takes the rest
        filler = mount / "filler"
        with filler.open("wb", buffering=0) as out, pytest.raises(OSError):
            while True:
                out.write(b"\0" * 4096)
        with pytest.raises(OSError):  # the journal's page fills: a line comes to straddle its end
            for index in range(1_000):
                cache.add(f"k:nonce-{index:04d}", NOW + 61, NOW)
        assert journal.read_bytes().endswith(b"\n"), "a refused line was left torn"
        filler.unlink()
        cache.add("k:after-the-disk-freed", NOW + 61, NOW)
        after_restart = NonceCache(journal=journal, now=NOW)
        with pytest.raises(SignatureError) as caught:
            after_restart.add("k:after-the-disk-freed", NOW + 61, NOW)
        assert caught.value.reason == "replayed-nonce"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
