"""Fetch a clip from a device: download, verify, decrypt, export, sign the evidence, audit.

The pieces live in `download` (signed resumable HTTP), `evidence` (verification, MP4 export, evidence
manifest) and `mp4` (remux); this module strings them together for `csu-collector fetch-clip`.
`export_bundle` is the tail a pushed bundle shares (`edge_agent.collector.push`): whichever way a bundle
came, it is verified, checked to answer the request, exported and audited alike.

Answering the request means that the device's signed manifest names exactly what was asked: site,
device, camera, range, requisition, officer, and the request's nonce (the `X-CSU-Nonce` of the GET that
started the download, or the nonce of the `upload_clip` command). An older bundle of the same camera,
a bundle of another camera, anything a man in the middle kept from an earlier answer, is refused.
"""

from __future__ import annotations

import dataclasses
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
    BundleCheck,
    ClipRejected,
    build_evidence,
    process_bundle,
    write_evidence,
)
from edge_agent.collector.pki import CollectorCredential
from edge_agent.collector.progress import ProgressBar
from edge_agent.collector.provenance import ProvenanceError, sign_export
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.bundle import BundleError, BundleReader
from edge_agent.formats.signing import new_nonce
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
    nonce: str = ""
    """The request nonce the answer must name: a pull draws a fresh one (`fetch_clip`); a push uses the
    nonce of its signed command."""

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
    credential: CollectorCredential | None = None
    """The collector's certificate and key (`pki`): when set, the MP4 carries a signed C2PA manifest."""


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
    request = dataclasses.replace(request, nonce=new_nonce())
    started = time.perf_counter()
    try:
        download_bundle(endpoint, request.query(), export_dir / BUNDLE_FILE, progress, nonce=request.nonce)
    except FetchError as error:
        audit_failure(audit, request, endpoint.base_url, error)
        raise
    download_s = time.perf_counter() - started
    return export_bundle(
        request, keys, export_dir, audit, endpoint.base_url, allow_partial, clock, download_s
    )


def audit_failure(
    audit: AuditLog, request: ClipRequest, source: str, error: FetchError, via: str = ""
) -> None:
    """The collector's audit line of a clip that never arrived (refused, unreachable, out of time)."""
    audit.append(
        action="fetch-clip",
        outcome="failed",
        reason=error.reason or "fetch",
        detail=str(error),
        **_who(request, source, via),
    )


def export_bundle(
    request: ClipRequest,
    keys: CollectorKeys,
    export_dir: Path,
    audit: AuditLog,
    source: str,
    allow_partial: bool = False,
    clock: Clock = time.time,
    transfer_s: float = 0.0,
    via: str = "",
) -> FetchOutcome:
    """Verify the bundle received in `export_dir` (pulled or pushed: the same checks), export the MP4,
    write the signed evidence, audit; ClipRejected when it cannot be trusted or does not answer `request`.

    `source` is where the bundle came from (the device's clip URL, or the upload URL of a push) and `via`
    says how when it was not a pull.
    """
    who = _who(request, source, via)
    started = time.perf_counter()
    try:
        # Whether it answers the request is read first: footage that does not is never decrypted.
        _check_answers(export_dir, keys.device, request)
        check = process_bundle(
            export_dir / BUNDLE_FILE, keys.device, keys.sealing, export_dir / CLIP_FILE, allow_partial
        )
        _sign_clip(export_dir / CLIP_FILE, check, keys)
    except ClipRejected as error:
        audit.append(
            action="fetch-clip",
            outcome="rejected",
            reason=error.reason,
            detail=str(error),
            **error.details,
            **who,
        )
        raise
    evidence = build_evidence(check, export_dir, keys.device, keys.signing, clock(), source)
    write_evidence(export_dir, evidence, keys.signing)
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
    return FetchOutcome(evidence, export_dir, transfer_s, time.perf_counter() - started)


def _check_answers(export_dir: Path, device_key: Ed25519PublicKey, request: ClipRequest) -> None:
    """ClipRejected unless the bundle's device-signed manifest answers `request` (then no MP4 is left
    in `export_dir`: one from an earlier request would pass for this one's)."""
    try:
        manifest = BundleReader.open(export_dir / BUNDLE_FILE, device_key).manifest
    except BundleError as error:
        raise ClipRejected(None, str(error)) from None
    mismatch = answer_mismatch(manifest, request)
    if mismatch is not None:
        (export_dir / CLIP_FILE).unlink(missing_ok=True)
        raise ClipRejected(
            None,
            f"the bundle does not answer the request: {mismatch}",
            reason="mismatch",
            details={**mismatch.audit_fields(), "bundle_id": manifest.get("bundle_id", "")},
        )


def _sign_clip(clip: Path, check: BundleCheck, keys: CollectorKeys) -> None:
    """Embed the C2PA manifest (`provenance`) when the collector has a certificate; ClipRejected if
    it cannot be done."""
    if keys.credential is None or not clip.exists():
        return
    try:
        sign_export(
            clip,
            check.manifest,
            keys.device,
            check.sealed,
            check.samples,
            check.gaps(),
            check.chain,
            keys.credential,
        )
    except ProvenanceError as error:
        clip.unlink(missing_ok=True)
        raise ClipRejected(check, str(error), reason="provenance") from None


def _who(request: ClipRequest, source: str, via: str) -> dict[str, Any]:
    """What every audit line of a fetch names."""
    who: dict[str, Any] = {
        "site": request.site,
        "device": request.device,
        "camera": request.camera,
        "start_ts": request.start_ts,
        "end_ts": request.end_ts,
        "requisition": request.requisition,
        "source": source,
    }
    if request.officer:
        who["officer"] = request.officer
    if request.nonce:
        who["request_nonce"] = request.nonce
    if via:
        who["via"] = via
    return who


# The device writes the requested times as it parsed them from ISO 8601 with milliseconds.
_TIME_TOLERANCE_S = 0.0015


@dataclass(frozen=True)
class Mismatch:
    """What a bundle names that the request did not ask: the manifest field, what was asked, what came."""

    field: str
    asked: Any
    received: Any

    def __str__(self) -> str:
        return f"{self.field} {_shown(self.received)}, asked {_shown(self.asked)}"

    def audit_fields(self) -> dict[str, Any]:
        """The refusal as the collector's audit line records it."""
        return {"mismatch": self.field, "asked": self.asked, "received": _shown(self.received)}


def _shown(value: Any) -> str:
    """A manifest value as text of bounded length (it came from the device, or from whoever stood between)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def answer_mismatch(manifest: dict[str, Any], request: ClipRequest) -> Mismatch | None:
    """The first field in which a (device-signed) manifest is not the answer to `request`, or None:
    another site, device, camera, requisition, officer or range, else another request nonce (an older
    answer to the same question)."""
    for name, wanted in (
        ("site", request.site),
        ("device", request.device),
        ("camera", request.camera),
        ("requisition", request.requisition),
        ("officer", request.officer),
    ):
        got = manifest.get(name, "") if name == "officer" else manifest.get(name)
        if got != wanted:
            return Mismatch(name, wanted, got)
    requested = manifest.get("requested") or {}
    for name, wanted_ts in (("start_ts", request.start_ts), ("end_ts", request.end_ts)):
        got = requested.get(name) if isinstance(requested, dict) else None
        if not isinstance(got, int | float) or abs(float(got) - wanted_ts) > _TIME_TOLERANCE_S:
            return Mismatch(f"requested.{name}", wanted_ts, got)
    got = manifest.get("request_nonce", "")
    if got != request.nonce:
        return Mismatch("request_nonce", request.nonce, got)
    return None
