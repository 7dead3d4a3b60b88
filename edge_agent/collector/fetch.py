"""Fetch a clip from a device: download, verify, decrypt, export, sign the evidence, audit.

The pieces live in `download` (signed resumable HTTP), `evidence` (verification, MP4 export, evidence
manifest) and `mp4` (remux); this module strings them together for `csu-collector fetch-clip`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent.collector.download import DeviceEndpoint, FetchError, download_bundle
from edge_agent.collector.evidence import (
    BUNDLE_FILE,
    CLIP_FILE,
    ClipRejected,
    build_evidence,
    process_bundle,
    write_evidence,
)
from edge_agent.collector.progress import ProgressBar
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.times import Clock, iso_ms


@dataclass(frozen=True)
class ClipRequest:
    """What the investigator asked for."""

    site: str
    device: str
    camera: str
    start_ts: float
    end_ts: float
    requisition: str
    officer: str = ""

    def query(self) -> list[tuple[str, str]]:
        """The clip API query (`officer` only when known: older devices refuse unknown parameters)."""
        query = [
            ("camera", self.camera),
            ("start", iso_ms(self.start_ts)),
            ("end", iso_ms(self.end_ts)),
            ("requisition", self.requisition),
        ]
        return [*query, ("officer", self.officer)] if self.officer else query


@dataclass(frozen=True)
class CollectorKeys:
    """The CSU keys a fetch needs, and the device's identity it checks against."""

    signing: Ed25519PrivateKey
    sealing: X25519PrivateKey
    device: Ed25519PublicKey


@dataclass(frozen=True)
class FetchOutcome:
    """The result of a fetch: the evidence written and whether the clip was complete."""

    evidence: dict[str, Any]
    export_dir: Path
    download_s: float
    verify_export_s: float


def fetch_clip(
    endpoint: DeviceEndpoint,
    request: ClipRequest,
    keys: CollectorKeys,
    export_dir: Path,
    audit: AuditLog,
    progress: ProgressBar | None = None,
    allow_partial: bool = False,
    clock: Clock = time.time,
) -> FetchOutcome:
    """Download the bundle into `export_dir`, verify and export it; ClipRejected or FetchError on failure.

    Every outcome (exported, rejected, failed) leaves a line in the collector's audit log.
    """
    export_dir.mkdir(parents=True, exist_ok=True)
    who = {
        "site": request.site,
        "device": request.device,
        "camera": request.camera,
        "start_ts": request.start_ts,
        "end_ts": request.end_ts,
        "requisition": request.requisition,
        "source": endpoint.base_url,
    }
    if request.officer:
        who["officer"] = request.officer
    try:
        started = time.perf_counter()
        result = download_bundle(endpoint, request.query(), export_dir / BUNDLE_FILE, progress)
        downloaded = time.perf_counter()
        check = process_bundle(result.path, keys.device, keys.sealing, export_dir / CLIP_FILE, allow_partial)
    except FetchError as error:
        audit.append(
            action="fetch-clip", outcome="failed", reason=error.reason or "fetch", detail=str(error), **who
        )
        raise
    except ClipRejected as error:
        audit.append(action="fetch-clip", outcome="rejected", reason="verification", detail=str(error), **who)
        raise
    evidence = build_evidence(check, export_dir, keys.device, keys.signing, clock(), endpoint.base_url)
    write_evidence(export_dir, evidence, keys.signing)
    finished = time.perf_counter()
    audit.append(
        action="fetch-clip",
        outcome="exported",
        result=check.result,
        bundle_id=evidence["bundle"]["bundle_id"],
        bytes=evidence["bundle"]["size"],
        clip_sha256=(evidence["clip"] or {}).get("sha256", ""),
        gaps=len(evidence["gaps"]),
        **who,
    )
    return FetchOutcome(evidence, export_dir, downloaded - started, finished - downloaded)
