"""Check a downloaded bundle, export the clip as MP4, and seal the result in an evidence manifest.

One pass over the bundle, one segment in memory at a time: each member is verified (device signature,
hash against the device's signed manifest), decrypted with the CSU key and remuxed; the chain of the
verified segments is checked at the end. A segment that fails is named; by default it rejects the whole
clip (exit code, no MP4), with `allow_partial` the verified rest is exported and the failed segment is
reported as a `tampered` gap.

A break in the device's hash chain (sequence numbers that skip: segments removed on the device, or set
aside there for being swapped, reordered or replayed) is a `chain-break` gap, whether the device's
manifest says so or the bundle's own segments show it. The clip is then `incomplete`, and the evidence
says, in words for a report, which segments are missing and when ("incomplete: segment 5 missing ...").

An export directory holds `bundle.tar` (the sealed original, as served), `clip.mp4`, `evidence.json`
(format `csu-clip-evidence` v1: request, coverage, gaps with reasons, each segment's hash and result,
file hashes, the device key and the collector key id) and `evidence.sig` (the collector's Ed25519
signature of `evidence.json`, base64). `verify_export` re-checks all of it later, without the CSU key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.collector.mp4 import Mp4Error, Mp4Writer, PacketRef
from edge_agent.collector.provenance import SegmentRecord, segment_record
from edge_agent.formats.bundle import CHAIN_BREAK, BundleError, BundleReader, Gap
from edge_agent.formats.keys import public_key_id
from edge_agent.formats.sealing import (
    ChainBreak,
    SegmentError,
    SegmentInfo,
    iter_packets,
    verify_chain,
    verify_segment,
)
from edge_agent.formats.times import iso_ms

EVIDENCE_FORMAT = "csu-clip-evidence"
BUNDLE_FILE = "bundle.tar"
CLIP_FILE = "clip.mp4"
EVIDENCE_FILE = "evidence.json"
SIGNATURE_FILE = "evidence.sig"


@dataclass
class SegmentCheck:
    """The verdict on one segment of a bundle."""

    file: str
    sequence: int
    start_ts: float
    end_ts: float
    sha256: str
    status: str  # verified, partial, tampered, missing
    problem: str = ""


# Devices before `chain-break` named a skipped sequence `missing`.
_CHAIN_BREAK_ALIASES = (CHAIN_BREAK, "missing")


@dataclass
class BundleCheck:
    """The verdict on a whole bundle."""

    manifest: dict[str, Any]
    segments: list[SegmentCheck] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)
    removed: list[Gap] = field(default_factory=list)
    """Breaks the bundle's own segments show (sequence numbers skip between two of them)."""
    sealed: list[SegmentRecord] = field(default_factory=list)
    """Each verified segment's chain link, device signature and frame hashes (for `provenance`)."""
    samples: tuple[PacketRef, ...] = ()
    """The device packet each sample of the MP4 is, in sample order."""

    @property
    def failed(self) -> list[SegmentCheck]:
        """Segments that are tampered with or missing from the bundle."""
        return [s for s in self.segments if s.status in ("tampered", "missing")]

    @property
    def chain_breaks(self) -> list[dict[str, Any]]:
        """The gaps where the device's hash chain is broken."""
        return [g for g in self.gaps() if g["reason"] == CHAIN_BREAK]

    @property
    def result(self) -> str:
        """`verified`, `incomplete` (the device's chain breaks: segments missing there), `partial`
        (failed segments left out) or `rejected` (the bundle's segments out of order or not chained)."""
        if self.chain:
            return "rejected"
        if self.failed:
            return "partial"
        return "incomplete" if self.chain_breaks else "verified"

    def completeness(self) -> str:
        """`complete`, or what is missing in words for a report."""
        return "; ".join(chain_break_words(g) for g in self.chain_breaks) or "complete"

    def problems(self) -> list[str]:
        """Human lines naming every failed segment and chain break."""
        lines = [f"{s.file} (#{s.sequence}): {s.status}: {s.problem}" for s in self.failed]
        lines += [chain_break_words(g) for g in self.chain_breaks]
        return lines + [f"chain: {c}" for c in self.chain]

    def gaps(self) -> list[dict[str, Any]]:
        """The device's gaps (a skipped sequence named `chain-break` whatever the device called it),
        the chain breaks the device did not report, and every failed segment, sorted by time."""
        gaps = [_device_gap(g) for g in self.manifest.get("gaps", [])]
        reported = [g for g in gaps if g["reason"] == CHAIN_BREAK]
        gaps += [
            found.to_manifest()
            for found in self.removed
            if not any(_overlap(found.to_manifest(), g) for g in reported)
        ]
        gaps += [
            {
                "start_ts": s.start_ts,
                "end_ts": s.end_ts,
                "reason": "tampered" if s.status == "tampered" else "missing",
            }
            for s in self.failed
        ]
        return sorted(gaps, key=lambda g: g["start_ts"])


def _gap_problem(manifest: dict[str, Any]) -> str:
    """What is wrong with the manifest's gap rows ("" if nothing): each is read before any footage."""
    gaps = manifest.get("gaps", [])
    if not isinstance(gaps, list):
        return "gaps: not a list"
    for number, row in enumerate(gaps):
        times = [row.get(name) for name in ("start_ts", "end_ts")] if isinstance(row, dict) else []
        if len(times) != 2 or not all(isinstance(t, int | float) and math.isfinite(t) for t in times):
            return f"gaps[{number}]: start_ts and end_ts must be finite numbers"
        if not isinstance(row.get("reason"), str):
            return f"gaps[{number}]: reason must be text"
    return ""


def _device_gap(row: dict[str, Any]) -> dict[str, Any]:
    gap = dict(row)
    if gap.get("reason") in _CHAIN_BREAK_ALIASES:
        gap["reason"] = CHAIN_BREAK
    return gap


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["start_ts"] < b["end_ts"] and b["start_ts"] < a["end_ts"])


def chain_break_words(gap: dict[str, Any]) -> str:
    """A chain-break gap as an investigator can write it in a report."""
    sequences = gap.get("sequences")
    if isinstance(sequences, list) and len(sequences) == 2 and all(isinstance(n, int) for n in sequences):
        first, last = sequences
        what = f"segment {first} missing" if first == last else f"segments {first} to {last} missing"
    else:
        what = "footage missing"
    when = f"from {iso_ms(float(gap['start_ts']))} to {iso_ms(float(gap['end_ts']))}"
    return f"incomplete: {what} {when} (the device's hash chain is broken there)"


def _removed(infos: list[SegmentInfo], breaks: list[ChainBreak], listed: set[int]) -> list[Gap]:
    """The stretches between two verified segments whose sequence numbers skip, where the manifest
    lists no segment either (one it lists but that failed here is a `tampered` or `missing` gap)."""
    gaps = []
    for found in breaks:
        if found.kind != "removed":
            continue
        before = max((i for i in infos if i.sequence < found.sequence), key=lambda i: i.sequence)
        after = min((i for i in infos if i.sequence > found.sequence), key=lambda i: i.sequence)
        unlisted = [n for n in range(found.sequence, after.sequence) if n not in listed]
        if unlisted:
            gaps.append(Gap(before.end_ts, after.start_ts, CHAIN_BREAK, (unlisted[0], unlisted[-1])))
    return gaps


class ClipRejected(Exception):
    """The bundle cannot be trusted, or does not answer the request; the message names what is at fault.

    `reason` is the short code of the collector's audit line (`verification`, `mismatch`), `details`
    the fields it adds.
    """

    def __init__(
        self,
        check: BundleCheck | None,
        message: str,
        reason: str = "verification",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.check = check
        self.reason = reason
        self.details = details or {}


def check_segment(
    row: dict[str, Any], data: bytes | None, device_key: Ed25519PublicKey
) -> tuple[SegmentCheck, SegmentInfo | None]:
    """Verify one member against its manifest row and the device key."""
    check = SegmentCheck(
        row["file"],
        int(row["sequence"]),
        float(row["start_ts"]),
        float(row["end_ts"]),
        row["sha256"],
        "missing",
    )
    if data is None:
        check.problem = "listed in the manifest but absent from the bundle"
        return check, None
    try:
        info = verify_segment(data, device_key, allow_partial=True, expect_sequence=check.sequence)
    except SegmentError as error:
        check.status = "tampered"
        check.problem = str(error)
        return check, None
    if info.sha256 != row["sha256"]:
        check.status = "tampered"
        check.problem = (
            f"sha256 {info.sha256[:16]}... differs from the device's index {row['sha256'][:16]}..."
        )
        return check, None
    check.status = "verified" if info.complete else "partial"
    return check, info


def process_bundle(
    bundle_path: Path,
    device_key: Ed25519PublicKey,
    csu_key: X25519PrivateKey | None,
    clip_path: Path | None,
    allow_partial: bool = False,
) -> BundleCheck:
    """Verify every segment (and write the MP4 when a CSU key and a path are given)."""
    try:
        reader = BundleReader.open(bundle_path, device_key)
    except BundleError as error:
        raise ClipRejected(None, str(error)) from None
    manifest = reader.manifest
    bad_gap = _gap_problem(manifest)
    if bad_gap:
        raise ClipRejected(None, f"manifest.json: {bad_gap}")
    check = BundleCheck(manifest)
    writer = None
    if csu_key is not None and clip_path is not None:
        requested = manifest["requested"]
        writer = Mp4Writer(clip_path, float(requested["start_ts"]), float(requested["end_ts"]))
    infos: list[SegmentInfo] = []
    rejection: ClipRejected | None = None
    try:
        try:
            for row, data in reader.segments():
                segment, info = check_segment(row, data, device_key)
                check.segments.append(segment)
                if info is None or data is None:
                    continue
                if info.camera != manifest["camera"]:
                    segment.status, segment.problem = "tampered", f"from camera {info.camera}"
                    continue
                infos.append(info)
                check.sealed.append(segment_record(info, data))
                if writer is not None:
                    packets = iter_packets(data, csu_key, device_key, allow_partial=True)  # type: ignore[arg-type]
                    for index, packet in enumerate(packets):
                        writer.add(info.stream, packet, PacketRef(info.sequence, index))
        finally:
            if writer is not None:
                check.samples = writer.close().samples
    except (BundleError, SegmentError, Mp4Error) as error:
        rejection = ClipRejected(check, str(error))
    else:
        breaks = verify_chain(infos)
        check.chain = [b.message for b in breaks if b.kind != "removed"]
        check.removed = _removed(infos, breaks, {s.sequence for s in check.segments})
        if check.chain or (check.failed and not allow_partial):
            rejection = ClipRejected(check, "bundle rejected: " + "; ".join(check.problems()))
    if rejection is not None:
        # Whatever was remuxed before the failure came from a bundle that cannot be trusted.
        if clip_path is not None:
            clip_path.unlink(missing_ok=True)
        raise rejection
    return check


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def probe_clip(path: Path) -> dict[str, Any]:
    """Frames shown and duration of an MP4, from its packets (the edit list's pre-roll excluded).

    Demuxing only: decoding an hour of 720p would cost more than the whole fetch.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = 0
        for packet in container.demux(stream):
            if packet.size and not packet.is_discard:
                frames += 1
        duration = (container.duration or 0) / 1_000_000
        codec = stream.codec_context
        return {
            "frames": frames,
            "duration_s": round(duration, 3),
            "codec": codec.name,
            "width": codec.width,
            "height": codec.height,
        }


def _covered(segments: Iterable[SegmentCheck], start: float, end: float) -> list[dict[str, float]]:
    spans: list[dict[str, float]] = []
    for s in sorted(segments, key=lambda s: s.start_ts):
        if s.status not in ("verified", "partial"):
            continue
        lo, hi = max(start, s.start_ts), min(end, s.end_ts)
        if hi <= lo:
            continue
        if spans and lo - spans[-1]["end_ts"] <= 0.5:
            spans[-1]["end_ts"] = max(spans[-1]["end_ts"], hi)
        else:
            spans.append({"start_ts": lo, "end_ts": hi})
    return spans


def build_evidence(
    check: BundleCheck,
    export_dir: Path,
    device_key: Ed25519PublicKey,
    collector_key: Ed25519PrivateKey,
    fetched_at: float,
    source_url: str,
) -> dict[str, Any]:
    """The evidence document of an export directory (clip and bundle already written)."""
    manifest = check.manifest
    start, end = float(manifest["requested"]["start_ts"]), float(manifest["requested"]["end_ts"])
    bundle = export_dir / BUNDLE_FILE
    clip = export_dir / CLIP_FILE
    raw_device = device_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "format": EVIDENCE_FORMAT,
        "version": 1,
        "schema": 1,
        "site": manifest["site"],
        "device": manifest["device"],
        "camera": manifest["camera"],
        "requisition": manifest["requisition"],
        "officer": manifest.get("officer", ""),
        "request_nonce": manifest.get("request_nonce", ""),
        "requested": {"start": iso_ms(start), "end": iso_ms(end), "start_ts": start, "end_ts": end},
        "covered": _covered(check.segments, start, end),
        "gaps": check.gaps(),
        "segments": [asdict(s) for s in check.segments],
        "verification": {"result": check.result, "problems": check.problems()},
        "completeness": check.completeness(),
        "device_key": {"id": public_key_id(device_key), "ed25519_hex": raw_device.hex()},
        "bundle": {
            "file": BUNDLE_FILE,
            "bundle_id": manifest["bundle_id"],
            "size": bundle.stat().st_size,
            "sha256": file_sha256(bundle),
        },
        "clip": (
            {"file": CLIP_FILE, "size": clip.stat().st_size, "sha256": file_sha256(clip), **probe_clip(clip)}
            if clip.exists()
            else None
        ),
        "fetched_at": iso_ms(fetched_at),
        "source": source_url,
        "collector_key_id": public_key_id(collector_key.public_key()),
    }


def write_evidence(export_dir: Path, evidence: dict[str, Any], collector_key: Ed25519PrivateKey) -> None:
    """Write `evidence.json` and its signature."""
    data = (json.dumps(evidence, indent=2, sort_keys=True) + "\n").encode()
    (export_dir / EVIDENCE_FILE).write_bytes(data)
    (export_dir / SIGNATURE_FILE).write_text(base64.b64encode(collector_key.sign(data)).decode() + "\n")


class _ExportedFile(BaseModel):
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # a name inside the export, never a path out of it
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _DeviceKeyEntry(BaseModel):
    ed25519_hex: str = Field(pattern=r"^[0-9a-f]{64}$")


class _SegmentEntry(BaseModel):
    file: str
    status: str


class _EvidenceFields(BaseModel):
    """What re-verification reads of `evidence.json`, typed: an edited file is named, not a crash."""

    model_config = ConfigDict(extra="allow")

    collector_key_id: str
    device_key: _DeviceKeyEntry
    bundle: _ExportedFile | None = None
    clip: _ExportedFile | None = None
    segments: list[_SegmentEntry]


def _read_evidence(export_dir: Path) -> tuple[dict[str, Any], _EvidenceFields, bytes, bytes]:
    """Raw evidence, typed fields, bytes and collector signature; ValueError names what is wrong."""
    data = (export_dir / EVIDENCE_FILE).read_bytes()
    signature = base64.b64decode((export_dir / SIGNATURE_FILE).read_text().strip(), validate=True)
    evidence = json.loads(data)
    if not isinstance(evidence, dict):
        raise ValueError(f"{EVIDENCE_FILE} is not a JSON object")
    try:
        fields = _EvidenceFields.model_validate(evidence)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{EVIDENCE_FILE}: {where}: {first['msg']}") from None
    return evidence, fields, data, signature


def verify_export(
    export_dir: Path, collector_public_keys: Iterable[Ed25519PublicKey]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Re-check an export directory: (evidence, problems); no problems means intact."""
    try:
        evidence, fields, data, signature = _read_evidence(export_dir)
    except (OSError, ValueError) as error:
        return None, [f"{export_dir}: not a readable export ({error})"]
    keys = {public_key_id(k): k for k in collector_public_keys}
    signer = keys.get(fields.collector_key_id)
    problems: list[str] = []
    if signer is None:
        problems.append(f"{EVIDENCE_FILE}: signed by collector key {fields.collector_key_id}, not one given")
    else:
        try:
            signer.verify(signature, data)
        except InvalidSignature:
            problems.append(f"{EVIDENCE_FILE}: collector signature does not verify (edited)")
    for entry in (fields.bundle, fields.clip):
        if entry is None:
            continue
        path = export_dir / entry.file
        if not path.exists():
            problems.append(f"{entry.file}: missing")
        elif file_sha256(path) != entry.sha256:
            problems.append(f"{entry.file}: sha256 differs from the evidence manifest (altered)")
    device_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(fields.device_key.ed25519_hex))
    try:
        check = process_bundle(export_dir / BUNDLE_FILE, device_key, None, None, allow_partial=True)
    except ClipRejected as error:
        problems.append(f"{BUNDLE_FILE}: {error}")
    else:
        recorded = {(s.file, s.status) for s in fields.segments}
        now = {(s.file, s.status) for s in check.segments}
        if recorded != now:
            problems.append(
                f"{BUNDLE_FILE}: segment results differ from the evidence manifest: {sorted(recorded ^ now)}"
            )
    return evidence, problems
