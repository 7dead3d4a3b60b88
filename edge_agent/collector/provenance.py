"""Frame-level provenance of an export: a C2PA manifest in the MP4, and the words that check it.

The collector's MP4 carries a C2PA manifest (c2pa-python), signed by the collector's certificate under
the CSU CA (see `pki`), with three assertions:

- the hard binding to the file (`c2pa.hash.bmff`, made by the library): any changed byte breaks it;
- `c2pa.actions`: captured by device D camera C, masked on the device, remuxed by the collector
  without re-encoding;
- ours, `fr.csu.evidence.v1` (C2PA readers list version 1 as `fr.csu.evidence`), documented in the
  README: the device and its public key, the camera, the request (requisition, officer), each segment
  with its chain link, the device's signature and the frame hash of each of its packets, the runs of
  MP4 samples each segment supplied, and the gaps with their reasons.

The device signs each segment's frame hashes when it seals it (`formats.sealing`, version 2), and
each MP4 sample hashes (`formats.media.sample_digest`) to the hash of the packet it came from; so a
frame can be traced to the device's own signature without trusting the collector: one that altered,
dropped, duplicated or reordered a frame and re-signed the manifest is still caught. The device's
signature covers the whole sealed segment, so checking it needs the sealed original, `bundle.tar` of
the export directory (encrypted: no CSU key is needed to check it, and none can read it without one).

`verify_clip` is what `csu-collector verify` runs; `scripts/verify_evidence.py` makes the same checks
with nothing of edge_agent, for a court expert, and says the same words (`Report.lines`).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import c2pa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import __version__
from edge_agent.collector.mp4 import PacketRef
from edge_agent.collector.pki import CollectorCredential
from edge_agent.formats.bundle import BundleError, BundleReader
from edge_agent.formats.keys import load_ed25519_public, public_key_id
from edge_agent.formats.media import sample_digest
from edge_agent.formats.sealing import (
    FRAME_HASH_VERSION,
    PACKET_HASH_RULE,
    SIGNATURE_DOMAIN,
    SIGNATURE_SIZE,
    SegmentError,
    SegmentInfo,
    verify_segment,
)
from edge_agent.formats.times import iso_ms

EVIDENCE_LABEL = "fr.csu.evidence.v1"
EVIDENCE_LABELS = (EVIDENCE_LABEL, "fr.csu.evidence")  # as written, as C2PA readers list version 1
ASSERTION_FORMAT = "fr.csu.evidence"
ASSERTION_VERSION = 1
MP4_MIME = "video/mp4"
GENERATOR = "csu-collector"
BUNDLE_NAME = "bundle.tar"
MAX_FRAME_PROBLEMS = 10  # a shifted timeline makes every later frame differ: name the first ones

# Gap reasons (from the device's bundle manifest, or the collector's) in a report's words.
GAP_WORDS = {
    "retention": "deleted by retention before the request",
    "missing": "footage missing on the device (segment numbers skip or a file is gone)",
    "not-recorded": "the camera did not record",
    "not-yet-recorded": "not yet recorded when requested",
    "tampered": "a segment failed verification at the CSU and was left out",
    "chain-break": "footage missing: the device's hash chain is broken here",
    "crash": "the device stopped abruptly (power cut or crash); what it had written was kept",
}


class ProvenanceError(Exception):
    """The export could not be signed (the message says why)."""


# --- building the manifest -------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRecord:
    """One verified segment of an export: chain link, format version, device signature, frame hashes.

    `signed_sha256` is the digest the device signed (SHA-256 of the file up to its signature);
    `packet_sha256` the device-signed frame hash of each packet (None before version 2, or when the
    segment was cut short before its trailer).
    """

    sequence: int
    start_ts: float
    end_ts: float
    sha256: str
    prev_sha256: str
    version: int
    state: str
    signed_sha256: str
    signature: bytes
    packet_sha256: tuple[str, ...] | None


def segment_record(info: SegmentInfo, data: bytes) -> SegmentRecord:
    """The record of a verified segment (`info` from `verify_segment` of the same `data`)."""
    signed = info.complete
    return SegmentRecord(
        sequence=info.sequence,
        start_ts=info.start_ts,
        end_ts=info.end_ts,
        sha256=info.sha256,
        prev_sha256=info.prev_sha256,
        version=info.version,
        state=info.state,
        # A view, not a slice: the digest needs no copy of the segment.
        signed_sha256=hashlib.sha256(memoryview(data)[:-SIGNATURE_SIZE]).hexdigest() if signed else "",
        signature=data[-SIGNATURE_SIZE:] if signed else b"",
        packet_sha256=info.packet_sha256,
    )


def sample_runs(samples: Sequence[PacketRef]) -> list[dict[str, int]]:
    """The MP4's samples as runs of consecutive packets of one segment, in sample order."""
    runs: list[dict[str, int]] = []
    for position, ref in enumerate(samples):
        last = runs[-1] if runs else None
        if last and last["sequence"] == ref.sequence and last["first_packet"] + last["count"] == ref.index:
            last["count"] += 1
        else:
            runs.append(
                {"sequence": ref.sequence, "first_sample": position, "first_packet": ref.index, "count": 1}
            )
    return runs


def _joined(hashes: tuple[str, ...] | None) -> bytes | None:
    """Hex frame hashes as the concatenated bytes whose SHA-256 the assertion records."""
    return None if hashes is None else b"".join(bytes.fromhex(h) for h in hashes)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _segment_entry(record: SegmentRecord) -> dict[str, Any]:
    hashes = record.packet_sha256
    frame_hashes = _joined(hashes)
    return {
        "sequence": record.sequence,
        "start_ts": record.start_ts,
        "end_ts": record.end_ts,
        "sha256": record.sha256,
        "prev_sha256": record.prev_sha256,
        "format_version": record.version,
        "state": record.state,
        "device_signature": (
            {"signed_sha256": record.signed_sha256, "ed25519": _b64(record.signature)}
            if record.signature
            else None
        ),
        # The frame hashes themselves are in the sealed original's trailer (an hour of them would not
        # fit the 1 MiB a C2PA manifest definition may have): here, their count and SHA-256.
        "packets": None if hashes is None else len(hashes),
        "frame_hashes_sha256": None if frame_hashes is None else hashlib.sha256(frame_hashes).hexdigest(),
    }


def build_assertion(
    manifest: dict[str, Any],
    device_key: Ed25519PublicKey,
    records: Sequence[SegmentRecord],
    samples: Sequence[PacketRef],
    gaps: Sequence[dict[str, Any]],
    chain_breaks: Sequence[str],
) -> dict[str, Any]:
    """Our assertion (`fr.csu.evidence.v1`) for an export of the bundle with this device-signed `manifest`."""
    start, end = float(manifest["requested"]["start_ts"]), float(manifest["requested"]["end_ts"])
    raw_key = device_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "format": ASSERTION_FORMAT,
        "version": ASSERTION_VERSION,
        "site": manifest["site"],
        "device": manifest["device"],
        "camera": manifest["camera"],
        "device_key": {"id": public_key_id(device_key), "ed25519": raw_key.hex()},
        "requisition": manifest["requisition"],
        "officer": manifest.get("officer", ""),
        "requested": {"start": iso_ms(start), "end": iso_ms(end), "start_ts": start, "end_ts": end},
        "bundle_id": manifest.get("bundle_id", ""),
        "frame_hash": PACKET_HASH_RULE,
        "segments": [_segment_entry(r) for r in records],
        "samples": sample_runs(samples),
        "gaps": [{"start_ts": g["start_ts"], "end_ts": g["end_ts"], "reason": g["reason"]} for g in gaps],
        "chain_breaks": list(chain_breaks),
    }


def actions(assertion: dict[str, Any]) -> list[dict[str, Any]]:
    """The C2PA actions of an export: captured, masked on the device, remuxed by the collector."""
    device, camera = assertion["device"], assertion["camera"]
    return [
        {
            "action": "c2pa.created",
            "when": assertion["requested"]["start"],
            "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture",
            "softwareAgent": {"name": "edge-agent"},
            "description": f"captured by device {device} camera {camera}",
        },
        {
            "action": "c2pa.edited",
            "softwareAgent": {"name": "edge-agent"},
            "description": f"privacy masks applied on device {device} before encoding",
        },
        {
            "action": "c2pa.repackaged",
            "softwareAgent": {"name": GENERATOR},
            "description": "remuxed by the CSU collector from the device's sealed segments, not re-encoded",
        },
    ]


def _context(ca_pem: str, **builder: Any) -> c2pa.Context:
    """Offline settings whose only trust anchor is the CSU CA."""
    settings: dict[str, Any] = {
        "trust": {"trust_anchors": ca_pem},
        "verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    if builder:
        settings["builder"] = builder
    return c2pa.Context.from_dict(settings)


def sign_clip(clip: Path, assertion: dict[str, Any], credential: CollectorCredential) -> int:
    """Embed the signed C2PA manifest into `clip` (replaced atomically); the manifest's size in bytes.

    The library validates its own output against the CSU CA before the file is replaced.
    """
    definition = {
        "claim_generator_info": [{"name": GENERATOR, "version": __version__}],
        "title": clip.name,
        "format": MP4_MIME,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions(assertion)}},
            {"label": EVIDENCE_LABEL, "data": assertion},
        ],
    }
    context = _context(credential.ca_pem(), thumbnail={"enabled": False})
    algorithm = getattr(c2pa.C2paSigningAlg, credential.algorithm.upper())
    signed = clip.with_name(f".{clip.name}.c2pa")
    try:
        with (
            c2pa.Signer.from_callback(credential.sign, algorithm, credential.chain_pem(), None) as signer,
            c2pa.Builder(definition, context=context) as builder,
            clip.open("rb") as source,
            signed.open("w+b") as dest,
        ):
            manifest = builder.sign(signer, MP4_MIME, source, dest)
        signed.replace(clip)
    except c2pa.C2paError as error:
        signed.unlink(missing_ok=True)
        raise ProvenanceError(f"{clip.name}: C2PA signing failed: {error}") from None
    return len(manifest)


def sign_export(
    clip: Path,
    manifest: dict[str, Any],
    device_key: Ed25519PublicKey,
    records: Sequence[SegmentRecord],
    samples: Sequence[PacketRef],
    gaps: Sequence[dict[str, Any]],
    chain_breaks: Sequence[str],
    credential: CollectorCredential,
) -> int:
    """Build our assertion for an exported clip and sign it into the MP4 (see `sign_clip`)."""
    assertion = build_assertion(manifest, device_key, records, samples, gaps, chain_breaks)
    return sign_clip(clip, assertion, credential)


# --- checking: the reading of each part -----------------------------------------------------------


@dataclass
class ManifestCheck:
    """What the C2PA library says of a file: state, failures, signer, and our assertion if present."""

    state: str  # Trusted, Valid, Invalid, or absent
    failures: list[str] = field(default_factory=list)
    signer: str = ""
    assertion: dict[str, Any] | None = None


def has_manifest(path: Path) -> bool:
    """Whether the file carries a C2PA manifest at all (valid or not)."""
    offline = {"verify": {"verify_trust": False, "remote_manifest_fetch": False, "ocsp_fetch": False}}
    try:
        with c2pa.Reader(str(path), context=c2pa.Context.from_dict(offline)):
            return True
    except c2pa.C2paError:
        return False


def read_manifest(path: Path, ca_pem: str) -> ManifestCheck:
    """Validate the file's C2PA manifest with the CSU CA as the only trust anchor."""
    try:
        with c2pa.Reader(str(path), context=_context(ca_pem)) as reader:
            state = reader.get_validation_state() or "Invalid"
            results = reader.get_validation_results() or {}
            manifest = reader.get_active_manifest() or {}
    except c2pa.C2paError as error:
        return ManifestCheck("absent", [str(error)])
    failures = [
        f"{item.get('code')}: {item.get('explanation', '')}"
        for item in (results.get("activeManifest") or {}).get("failure", [])
    ]
    info = manifest.get("signature_info") or {}
    assertion = next(
        (a.get("data") for a in manifest.get("assertions", []) if a.get("label") in EVIDENCE_LABELS), None
    )
    signer = f"{info.get('common_name', '?')} (issuer {info.get('issuer', '?')})"
    return ManifestCheck(state, failures, signer, assertion)


@dataclass(frozen=True)
class Sample:
    """One MP4 sample: its time on the clip's timeline and its frame hash (None if unreadable)."""

    time_s: float
    digest: bytes | None


def read_samples(path: Path) -> list[Sample]:
    """Every sample of the MP4's video track, in the file's order, with its frame hash."""
    samples: list[Sample] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        extradata = bytes(stream.codec_context.extradata or b"")
        length_size = _nal_length_size(codec, extradata)
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            try:
                digest: bytes | None = sample_digest(codec, bytes(packet), length_size)
            except ValueError:
                digest = None
            samples.append(Sample(float(packet.pts * packet.time_base), digest))
    return samples


def _nal_length_size(codec: str, extradata: bytes) -> int:
    """The NAL length size of the avcC (byte 4) or hvcC (byte 21) record; 4 when absent."""
    offset = {"h264": 4, "hevc": 21}.get(codec)
    if offset is None or len(extradata) <= offset or extradata[0] != 1:
        return 4
    return (extradata[offset] & 3) + 1


@dataclass(frozen=True)
class SealedSegment:
    """What the sealed original says of one segment, checked with the device key."""

    verified: bool
    sha256: str = ""
    signed_sha256: str = ""
    prev_sha256: str = ""
    packet_hashes: bytes | None = None  # the device-signed frame hashes, concatenated


def read_bundle(path: Path, device_key: Ed25519PublicKey) -> tuple[dict[str, Any], dict[int, SealedSegment]]:
    """The device-signed manifest and each segment of a bundle, by sequence; ValueError when the
    bundle cannot be read or its manifest is not the device's."""
    try:
        reader = BundleReader.open(path, device_key)
        sealed: dict[int, SealedSegment] = {}
        for row, data in reader.segments():
            if data is None:
                continue
            sequence = int(row["sequence"])
            try:
                info = verify_segment(data, device_key, allow_partial=True, expect_sequence=sequence)
            except SegmentError:
                sealed[sequence] = SealedSegment(False)
                continue
            sealed[sequence] = SealedSegment(
                True,
                info.sha256,
                segment_record(info, data).signed_sha256,
                info.prev_sha256,
                _joined(info.packet_sha256),
            )
    except (BundleError, OSError) as error:
        raise ValueError(str(error)) from None
    return reader.manifest, sealed


def load_device_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    """The CSU's device public keys: files, or every `*.pub` under directories (`devices/<site>/<device>.pub`
    in the CSU key directory); KeyFileError names a file that is not an Ed25519 public key."""
    files = [f for p in paths for f in (sorted(Path(p).rglob("*.pub")) if Path(p).is_dir() else [Path(p)])]
    return [load_ed25519_public(f) for f in files]


def registered_device_keys(directory: Path) -> list[Ed25519PublicKey] | None:
    """The device keys the CSU provisioned under `directory` (`devices/<site>/<device>.pub` in the key
    directory, where the console finds them too); None when there is no such directory, so that a report
    says the clip's device key was not compared rather than that the CSU does not know it."""
    return load_device_keys([directory]) if directory.is_dir() else None


def verify_export_clip(
    clip: Path, ca_pem: str, known_device_keys: Iterable[Ed25519PublicKey] | None = None
) -> Report:
    """`verify_clip` of an export directory's MP4, with the sealed original beside it (`bundle.tar`)
    when it is there: `csu-collector verify` and the console's clip jobs check an export alike."""
    bundle = clip.with_name(BUNDLE_NAME)
    return verify_clip(clip, ca_pem, bundle if bundle.exists() else None, known_device_keys)


# --- checking: the words ----------------------------------------------------------------------------


def clock(seconds: float, millis: bool = False) -> str:
    """`HH:MM:SS` (or `HH:MM:SS.mmm`) of a time on the clip's timeline."""
    sign = "-" if seconds < 0 else ""
    total_ms = round(abs(seconds) * 1000) if millis else int(abs(seconds)) * 1000
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{sign}{hours:02d}:{minutes:02d}:{rest // 1000:02d}"
    return f"{text}.{rest % 1000:03d}" if millis else text


@dataclass
class Report:
    """The verdict on an exported clip: statements and problems, in the words both verifiers print."""

    statements: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def lines(self) -> list[str]:
        """What a verifier prints: statements, each problem, and the result."""
        result = "result: VERIFIED" if self.ok else f"result: NOT VERIFIED ({len(self.problems)} problem(s))"
        return [*self.statements, *(f"problem: {p}" for p in self.problems), result]


@dataclass(frozen=True)
class _Expected:
    """The device packet an MP4 sample should be."""

    sequence: int
    index: int
    digest: bytes | None  # None: no frame-level signature to compare with
    unchecked: str  # why there is none ("" when there is one)


def _signed_hashes(
    segment: dict[str, Any], sealed: dict[int, SealedSegment] | None
) -> tuple[bytes | None, str]:
    """The device-signed frame hashes of a segment the manifest lists, or why there are none."""
    if segment["format_version"] < FRAME_HASH_VERSION:
        return None, f"no frame-level signature (segments before version {FRAME_HASH_VERSION})"
    if segment["frame_hashes_sha256"] is None:
        return None, "no frame-level signature (segment cut short before the device signed it)"
    found = None if sealed is None else sealed.get(segment["sequence"])
    hashes = None if found is None else found.packet_hashes
    if hashes is None or hashlib.sha256(hashes).hexdigest() != segment["frame_hashes_sha256"]:
        return None, "not checked against the device's signature (see the problems)"
    return hashes, ""


def _expected(assertion: dict[str, Any], sealed: dict[int, SealedSegment] | None) -> list[_Expected]:
    """The device packet each MP4 sample should be, from the manifest's runs of samples."""
    segments = {s["sequence"]: s for s in assertion["segments"]}
    expected: list[_Expected] = []
    for run in assertion["samples"]:
        hashes, unchecked = _signed_hashes(segments[run["sequence"]], sealed)
        for index in range(run["first_packet"], run["first_packet"] + run["count"]):
            digest = None if hashes is None else hashes[32 * index : 32 * index + 32]
            expected.append(_Expected(run["sequence"], index, digest, unchecked))
    return expected


def _frame_problems(samples: list[Sample], expected: list[_Expected], camera: str) -> list[str]:
    """Each sample that is not the device packet the manifest says, named by its time on the clip."""
    problems: list[str] = []
    signed = {e.digest for e in expected if e.digest is not None}
    i = j = 0

    def same(sample: Sample, want: _Expected) -> bool:
        return want.digest is None or sample.digest == want.digest

    def packet(want: _Expected) -> str:
        return f"{camera}#{want.sequence} packet {want.index}"

    while i < len(samples) and j < len(expected):
        sample, want, at = samples[i], expected[j], clock(samples[i].time_s, millis=True)
        after = expected[j + 1] if j + 1 < len(expected) else None
        if same(sample, want):
            i, j = i + 1, j + 1
        elif after and i + 1 < len(samples) and same(sample, after) and same(samples[i + 1], want):
            problems.append(f"frames {at} and {clock(samples[i + 1].time_s, True)}: swapped (out of order)")
            i, j = i + 2, j + 2
        elif after and same(sample, after):
            problems.append(f"frame before {at}: removed (the device's {packet(want)} is not in the MP4)")
            j += 1
        elif i > 0 and sample.digest == samples[i - 1].digest:
            problems.append(f"frame {at}: duplicate of the frame before it")
            i += 1
        elif sample.digest in signed:
            problems.append(f"frame {at}: out of order (it is not the device's {packet(want)})")
            i, j = i + 1, j + 1
        else:
            problems.append(f"frame {at}: altered: does not match the device's signature ({packet(want)})")
            i, j = i + 1, j + 1
    if i < len(samples):
        problems.append(
            f"frames from {clock(samples[i].time_s, True)}: {len(samples) - i} not in the manifest"
        )
    if j < len(expected):
        problems.append(
            f"{len(expected) - j} of the device's frames listed in the manifest are not in the MP4"
        )
    if len(problems) > MAX_FRAME_PROBLEMS:
        more = len(problems) - MAX_FRAME_PROBLEMS
        problems = [*problems[:MAX_FRAME_PROBLEMS], f"and {more} more frame problem(s)"]
    return problems


def _runs(samples: list[Sample], expected: list[_Expected], signed_by: str) -> list[str]:
    """`frames A-B signed by ...` (or why not) for each stretch of samples saying the same."""
    lines: list[tuple[str, float, float]] = []
    for sample, want in zip(samples, expected, strict=False):
        time_s = max(sample.time_s, 0.0)  # pre-roll frames (decoded, not shown) count from 00:00:00
        if lines and lines[-1][0] == want.unchecked:
            lines[-1] = (want.unchecked, lines[-1][1], time_s)
        else:
            lines.append((want.unchecked, time_s, time_s))
    return [
        f"frames {clock(a)}-{clock(b)}: {unchecked}"
        if unchecked
        else f"frames {clock(a)}-{clock(b)} {signed_by}"
        for unchecked, a, b in lines
    ]


def _chain(assertion: dict[str, Any], camera: str) -> tuple[list[str], list[str]]:
    """(statements, problems) of the chain of segments the manifest lists."""
    segments = assertion["segments"]
    problems = [f"chain: {b}" for b in assertion.get("chain_breaks", [])]
    statements: list[str] = []
    for before, after in itertools.pairwise(segments):
        if after["sequence"] != before["sequence"] + 1:
            first, last = before["sequence"] + 1, after["sequence"] - 1
            absent = f"#{first}" if first == last else f"#{first}..#{last}"
            statements.append(
                f"chain: {camera}{absent} absent between {camera}#{before['sequence']}"
                f" and {camera}#{after['sequence']}"
            )
        elif after["prev_sha256"] != before["sha256"]:
            problems.append(
                f"chain: {camera}#{after['sequence']} does not chain to {camera}#{before['sequence']}"
            )
    if segments and not problems:
        first, last = segments[0]["sequence"], segments[-1]["sequence"]
        statements.insert(0, f"chain: segments {camera}#{first} to {camera}#{last} linked by their hashes")
    return statements, problems


def _device_checks(
    assertion: dict[str, Any],
    device_key: Ed25519PublicKey,
    bundle: tuple[dict[str, Any], dict[int, SealedSegment]] | None,
    camera: str,
) -> list[str]:
    """Problems with the device's signatures: over each segment, and against the sealed original."""
    problems: list[str] = []
    for segment in assertion["segments"]:
        name = f"{camera}#{segment['sequence']}"
        signature = segment["device_signature"]
        if signature is not None:
            try:
                device_key.verify(
                    base64.b64decode(signature["ed25519"]),
                    SIGNATURE_DOMAIN + bytes.fromhex(signature["signed_sha256"]),
                )
            except (InvalidSignature, ValueError):
                problems.append(f"segment {name}: the device signature does not verify")
        if bundle is None:
            continue
        sealed = bundle[1].get(segment["sequence"])
        hashes = segment["frame_hashes_sha256"]
        if sealed is None:
            problems.append(f"segment {name}: not in the sealed original")
        elif not sealed.verified:
            problems.append(f"segment {name}: fails verification in the sealed original")
        elif (sealed.sha256, sealed.prev_sha256) != (segment["sha256"], segment["prev_sha256"]):
            problems.append(f"segment {name}: differs from the sealed original")
        elif signature is not None and sealed.signed_sha256 != signature["signed_sha256"]:
            problems.append(f"segment {name}: the device signature is not the sealed original's")
        elif (
            None if sealed.packet_hashes is None else hashlib.sha256(sealed.packet_hashes).hexdigest()
        ) != hashes:
            problems.append(f"segment {name}: frame hashes differ from those the device signed")
    if bundle is None:
        return problems
    manifest = bundle[0]
    for name in ("site", "device", "camera", "requisition", "officer", "bundle_id"):
        if manifest.get(name, "") != assertion.get(name, ""):
            problems.append(
                f"{name} {assertion.get(name)!r}: the device's bundle says {manifest.get(name)!r}"
            )
    for name in ("start_ts", "end_ts"):
        if manifest["requested"][name] != assertion["requested"][name]:
            problems.append(f"requested {name}: not the range of the device's bundle")
    return problems


def verify_clip(
    clip: Path,
    ca_pem: str,
    bundle_path: Path | None,
    known_device_keys: Iterable[Ed25519PublicKey] | None = None,
) -> Report:
    """Check an exported MP4: its C2PA manifest under the CSU CA, then each frame against the device's
    signatures (in `bundle_path`, the sealed original) and the chain; the report in words."""
    report = Report()
    manifest = read_manifest(clip, ca_pem)
    if manifest.state == "absent":
        report.problems.append("no C2PA manifest (stripped, or the file was never signed)")
        return report
    verdict = {
        "Trusted": "valid, trusted: issued under the CSU CA",
        "Valid": "valid, but NOT issued under the CSU CA",
    }.get(manifest.state, "INVALID")
    report.statements.append(f"C2PA manifest: signed by {manifest.signer}, {verdict}")
    report.problems += [f"C2PA: {failure}" for failure in manifest.failures]
    if manifest.state != "Trusted" and not manifest.failures:
        report.problems.append("C2PA: the signer is not trusted under the CSU CA")
    assertion = manifest.assertion
    if assertion is None or assertion.get("format") != ASSERTION_FORMAT:
        report.problems.append(f"no {EVIDENCE_LABEL} assertion: nothing ties the frames to a device")
        return report
    try:
        found = _check_assertion(clip, assertion, bundle_path, known_device_keys)
    except (KeyError, TypeError, ValueError) as error:
        # Signed by a trusted collector yet not our format: a bug or a forgery, named, never a traceback.
        report.problems.append(
            f"the {EVIDENCE_LABEL} assertion is malformed ({type(error).__name__}: {error})"
        )
        return report
    report.statements += found.statements
    report.problems += found.problems
    return report


def _check_assertion(
    clip: Path,
    assertion: dict[str, Any],
    bundle_path: Path | None,
    known_device_keys: Iterable[Ed25519PublicKey] | None,
) -> Report:
    """What our assertion says, checked: the device, its signatures, each frame, the gaps, the chain."""
    report = Report()
    device, camera = assertion["device"], assertion["camera"]
    report.statements += [
        f"camera {camera} of device {device} (site {assertion['site']}), from"
        f" {assertion['requested']['start']} to {assertion['requested']['end']}",
        "clip time 00:00:00 is the first frame shown at or after the start",
        f"requisition {assertion['requisition']}, officer {assertion['officer'] or 'not named'}",
    ]
    key_id = assertion["device_key"]["id"]
    device_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(assertion["device_key"]["ed25519"]))
    if public_key_id(device_key) != key_id:
        report.problems.append(f"device key {key_id}: the manifest's key id does not match its key")
    if known_device_keys is None:
        report.statements.append(f"device key {key_id}: not compared with the CSU's device keys (none given)")
    elif key_id not in {public_key_id(k) for k in known_device_keys}:
        report.problems.append(f"device key {key_id} of {device} is not one the CSU knows")
    else:
        report.statements.append(f"device key {key_id}: one the CSU knows")
    bundle = None
    if bundle_path is None:
        report.problems.append(
            f"no {BUNDLE_NAME} (the sealed original): the device's signatures cannot be checked"
        )
    else:
        try:
            bundle = read_bundle(bundle_path, device_key)
        except ValueError:
            report.problems.append(
                f"{BUNDLE_NAME}: unreadable, or its manifest is not signed by device {device}"
            )
    report.problems += _device_checks(assertion, device_key, bundle, camera)
    samples = read_samples(clip)
    expected = _expected(assertion, None if bundle is None else bundle[1])
    report.statements += _runs(samples, expected, f"signed by device {device} (key {key_id})")
    start = float(assertion["requested"]["start_ts"])
    report.statements += [
        f"gap {clock(max(g['start_ts'] - start, 0))}-{clock(max(g['end_ts'] - start, 0))}:"
        f" {GAP_WORDS.get(g['reason'], g['reason'])}"
        for g in assertion["gaps"]
    ]
    statements, problems = _chain(assertion, camera)
    report.statements += statements
    report.problems += problems + _frame_problems(samples, expected, camera)
    return report
