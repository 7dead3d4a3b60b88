"""What every way a clip leaves the device shares: pulled (`GET /v1/clips`) or pushed (`upload_clip`).

- `request_verifier`: the one checker of collector signatures on a device, with its nonce journal beside
  the audit log. The clip server and the uploader must share it: two caches on one journal would each
  rewrite it with their own nonces only, and a request seen by one could be replayed to the other.
- `plan_clip`: the bundle answering a checked clip query, planned from the ring's index (no footage read).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.api.params import ClipQuery
from edge_agent.formats.bundle import BundlePlan, build_manifest, find_gaps, plan_bundle, sign_manifest
from edge_agent.formats.config import AgentConfig, ClipServerConfig
from edge_agent.formats.signing import NONCE_JOURNAL_NAME, NonceCache, RequestVerifier
from edge_agent.formats.times import Clock
from edge_agent.storage.index import SegmentRecord


class FootageIndex(Protocol):
    """What planning a bundle needs of the ring buffer (`edge_agent.storage.ringbuffer.RingBuffer`)."""

    def segments(self, camera: str, start_ts: float, end_ts: float) -> list[SegmentRecord]: ...

    def stats(self) -> Mapping[str, Mapping[str, Any]]: ...


def request_verifier(
    settings: ClipServerConfig, collector_keys: Sequence[Ed25519PublicKey], clock: Clock = time.time
) -> RequestVerifier:
    """The device's verifier of signed collector requests and commands (nonces journalled)."""
    seen = NonceCache(journal=settings.audit_log.with_name(NONCE_JOURNAL_NAME), now=clock())
    return RequestVerifier(collector_keys, settings.clock_skew_s, clock, seen)


def plan_clip(
    config: AgentConfig, ring: FootageIndex, device_key: Ed25519PrivateKey, query: ClipQuery
) -> BundlePlan:
    """The signed bundle of the segments overlapping `query`'s range, with its gaps and their reasons,
    bound to the request (its officer and nonce are in the manifest)."""
    # One segment length or two on each side: the neighbours tell a segment removed at an edge of
    # the range (a skipped sequence) from a stretch the camera did not record.
    margin = 2 * config.storage.segment_seconds
    around = ring.segments(query.camera, query.start_ts - margin, query.end_ts + margin)
    earlier = [r for r in around if r.end_ts <= query.start_ts]  # rows come in sequence order
    before = [r.sequence for r in earlier]
    after = [r.sequence for r in around if r.start_ts >= query.end_ts]
    segments = []
    for record in around:
        if record.end_ts <= query.start_ts or record.start_ts >= query.end_ts:
            continue
        try:
            size = record.path.stat().st_size
        except OSError:
            continue  # deleted by retention since the query: reported as a gap
        segments.append(record.to_bundle_segment(size))
    entry = (ring.stats() or {}).get(query.camera) or {}
    manifest = build_manifest(
        site=config.site_id,
        device=config.device_id,
        camera=query.camera,
        requisition=query.requisition,
        start_ts=query.start_ts,
        end_ts=query.end_ts,
        segments=segments,
        gaps=find_gaps(
            segments,
            query.start_ts,
            query.end_ts,
            entry.get("oldest_ts"),
            entry.get("newest_ts"),
            sequence_before=max(before, default=None),
            sequence_after=min(after, default=None),
            state_before=earlier[-1].state if earlier else None,
        ),
        device_public_key=device_key.public_key(),
        officer=query.officer,
        request_nonce=query.nonce,
    )
    return plan_bundle(manifest, sign_manifest(manifest, device_key), segments)
