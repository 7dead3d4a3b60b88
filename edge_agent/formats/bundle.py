"""The clip bundle: what the device streams for `GET /v1/clips`, and how the collector reads it.

Format `csu-clip-bundle` version 1 is a POSIX ustar archive (inspect it with `tar tvf`), members in
this order:

1. `manifest.json`: UTF-8 canonical JSON (sorted keys, no spaces) with `format`, `version`, `schema`,
   `bundle_id`, `site`, `device`, `camera`, `requisition`, `requested` {`start_ts`, `end_ts`} (UTC
   epoch seconds), `device_key_id`, `segments` (one row per member below: `file`, `sequence`,
   `start_ts`, `end_ts`, `size`, `sha256`, `prev_sha256`, `state`) and `gaps` ({`start_ts`,
   `end_ts`, `reason`}: `retention` before the oldest kept segment, `chain-break` where sequence
   numbers skip (a segment removed, or set aside at start for being swapped, reordered or replayed: the
   hash chain is broken there; such a gap also names the `sequences` [first, last] missing; bundles
   written before named it `missing`), `crash` after a segment the device closed at crash recovery
   (state `recovered` or `partial`: the agent was killed, what it had not written until it restarted
   is lost), `not-recorded` where the camera did not record, `not-yet-recorded` after the newest
   segment).
   Added later, so that a bundle answers one request and no other: `officer` (who asked, "" when the
   request named nobody) and `request_nonce` (the `X-CSU-Nonce` of the signed GET the bundle answers,
   or the nonce of a signed `upload_clip` command). Older bundles have neither; a collector fetching
   afresh requires both to match what it sent (`edge_agent.collector.fetch`).
2. `manifest.sig`: the device's Ed25519 signature (64 raw bytes) of `manifest.json`'s bytes.
3. `segments/<sequence, 12 digits>.seg`: each sealed segment file exactly as stored, in sequence
   order; each carries its own device signature and the SHA-256 of its predecessor (the chain).

The bytes are a pure function of the request (its nonce included) and the segment files (fixed member
metadata, Ed25519 signatures are deterministic), so the requests of one download (the later ones name
the first one's nonce, see `edge_agent.api.params`) give identical bundles while the index is
unchanged: `bundle_id` (also the HTTP ETag) changes when it is not, and a resumed download then starts
again. A bundle is planned without reading footage, and served in chunks by offset.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.formats import strictjson
from edge_agent.formats.keys import public_key_id

FORMAT = "csu-clip-bundle"
VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
BLOCK = 512
CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle that cannot be trusted or read; the message names the member at fault."""


@dataclass(frozen=True)
class BundleSegment:
    """One segment as the device's API carries it: a manifest row, or a `/v1/segments` row.

    `path` (where the device reads the file from) is never sent.
    """

    file: str
    sequence: int
    start_ts: float
    end_ts: float
    size: int
    sha256: str
    prev_sha256: str
    state: str
    path: Path | None = field(default=None, compare=False)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest row (without the local path)."""
        row = asdict(self)
        row.pop("path")
        return row

    def to_listing(self) -> dict[str, Any]:
        """The `GET /v1/segments` row: the manifest row without the archive member name."""
        row = self.to_manifest()
        row.pop("file")
        return row


CHAIN_BREAK = "chain-break"
"""The gap reason of a break in the hash chain (sequence numbers skip: segments removed or set aside)."""
GAP_REASONS = ("retention", CHAIN_BREAK, "crash", "not-recorded", "not-yet-recorded")
"""Every reason a device gives a gap (see the module docstring); reports put each in words."""


@dataclass(frozen=True)
class Gap:
    """A stretch of the requested range with no segment, and why."""

    start_ts: float
    end_ts: float
    reason: str
    sequences: tuple[int, int] | None = None
    """For a `chain-break`: the first and last sequence numbers missing."""

    def to_manifest(self) -> dict[str, Any]:
        """The manifest row (`sequences` only where known)."""
        row: dict[str, Any] = {"start_ts": self.start_ts, "end_ts": self.end_ts, "reason": self.reason}
        if self.sequences is not None:
            row["sequences"] = list(self.sequences)
        return row


def member_name(sequence: int) -> str:
    """The archive name of a segment."""
    return f"segments/{sequence:012d}.seg"


def bundle_id(
    camera: str,
    start_ts: float,
    end_ts: float,
    requisition: str,
    segments: Sequence[BundleSegment],
    officer: str = "",
    request_nonce: str = "",
) -> str:
    """A stable id of what a bundle holds: changes whenever the request, the segment list or a hash does."""
    asked = [camera, start_ts, end_ts, requisition, officer, request_nonce]
    digest = hashlib.sha256(json.dumps(asked).encode())
    for segment in segments:
        digest.update(f"\n{segment.sequence}:{segment.sha256}:{segment.size}".encode())
    return digest.hexdigest()[:32]


def build_manifest(
    *,
    site: str,
    device: str,
    camera: str,
    requisition: str,
    start_ts: float,
    end_ts: float,
    segments: Sequence[BundleSegment],
    gaps: Sequence[Gap],
    device_public_key: Ed25519PublicKey,
    officer: str = "",
    request_nonce: str = "",
) -> dict[str, Any]:
    """The manifest document of a bundle, bound to the request it answers (`officer`, `request_nonce`)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "schema": 1,
        "bundle_id": bundle_id(camera, start_ts, end_ts, requisition, segments, officer, request_nonce),
        "site": site,
        "device": device,
        "camera": camera,
        "requisition": requisition,
        "officer": officer,
        "request_nonce": request_nonce,
        "requested": {"start_ts": start_ts, "end_ts": end_ts},
        "device_key_id": public_key_id(device_public_key),
        "segments": [s.to_manifest() for s in segments],
        "gaps": [g.to_manifest() for g in gaps],
    }


# Tolerance between a segment's end and the next one's start (frame timing jitter).
GAP_TOLERANCE_S = 0.5
# Segment states that say the device was killed while writing it (see `sealing`, `storage/recovery`).
CRASH_STATES = ("recovered", "partial")


def find_gaps(
    segments: Sequence[BundleSegment],
    start_ts: float,
    end_ts: float,
    oldest_kept_ts: float | None,
    newest_end_ts: float | None,
    sequence_before: int | None = None,
    sequence_after: int | None = None,
    state_before: str | None = None,
) -> list[Gap]:
    """Stretches of [start_ts, end_ts) that no segment covers, each with the likeliest reason.

    `oldest_kept_ts` / `newest_end_ts` are the camera's oldest retained segment start and newest
    segment end (None when it has none): before the first is `retention`, after the last is
    `not-yet-recorded`. A skipped sequence number is a `chain-break` (naming the sequences missing); a
    stretch after a segment closed by crash recovery (state in `CRASH_STATES`) is a `crash`; else
    `not-recorded`. At the edges of the range the skip is seen against `sequence_before` /
    `sequence_after`, the sequences of the nearest segments just outside the range (None when unknown),
    and `state_before` is the state of the former.
    """
    gaps: list[Gap] = []

    def reason(at: float, inside: bool) -> str:
        if inside or oldest_kept_ts is None or newest_end_ts is None:
            return "not-recorded"
        if at < oldest_kept_ts:
            return "retention"
        if at >= newest_end_ts - GAP_TOLERANCE_S:
            return "not-yet-recorded"
        return "not-recorded"

    def gap(lo: float, hi: float, previous: int | None, following: int | None, inside: bool) -> Gap:
        if previous is not None and following is not None and following > previous + 1:
            return Gap(lo, hi, CHAIN_BREAK, (previous + 1, following - 1))
        if previous_state in CRASH_STATES:
            return Gap(lo, hi, "crash")
        return Gap(lo, hi, reason(lo, inside))

    cursor = start_ts
    previous = sequence_before
    previous_state = state_before
    inside = False  # a segment of the range lies before the cursor
    for segment in sorted(segments, key=lambda s: s.sequence):
        if segment.start_ts > cursor + GAP_TOLERANCE_S:
            gaps.append(gap(cursor, min(segment.start_ts, end_ts), previous, segment.sequence, inside))
        cursor = max(cursor, segment.end_ts)
        previous = segment.sequence
        previous_state = segment.state
        inside = True
    if cursor < end_ts - GAP_TOLERANCE_S:
        gaps.append(gap(cursor, end_ts, previous, sequence_after, False))
    return gaps


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> int:
    return -size % BLOCK


@dataclass(frozen=True)
class Part:
    """A contiguous stretch of the bundle: literal bytes, or `length` bytes of a file from its start."""

    offset: int
    length: int
    data: bytes = b""
    path: Path | None = None


@dataclass(frozen=True)
class BundlePlan:
    """The layout of a bundle: its parts in order and its total size; no footage read yet."""

    bundle_id: str
    manifest: dict[str, Any]
    parts: tuple[Part, ...]
    size: int

    def chunks(self, start: int, end: int, chunk: int = CHUNK) -> Iterator[tuple[Part, int, int]]:
        """(part, offset in part, length) pieces covering bytes [start, end), at most `chunk` long."""
        for part in self.parts:
            lo = max(start, part.offset)
            hi = min(end, part.offset + part.length)
            while lo < hi:
                length = min(chunk, hi - lo)
                yield part, lo - part.offset, length
                lo += length


def plan_bundle(manifest: dict[str, Any], signature: bytes, segments: Sequence[BundleSegment]) -> BundlePlan:
    """Lay out manifest, signature and segment files; sizes are the files' sizes on disk now.

    ValueError when a segment has no `path` (a row read from a manifest, not from the device's disk).
    """
    parts: list[Part] = []
    offset = 0

    def add_bytes(data: bytes) -> None:
        nonlocal offset
        if data:
            parts.append(Part(offset, len(data), data=data))
            offset += len(data)

    manifest_bytes = strictjson.canonical(manifest)
    add_bytes(_tar_header(MANIFEST_NAME, len(manifest_bytes), 0) + manifest_bytes)
    add_bytes(b"\0" * _padding(len(manifest_bytes)))
    add_bytes(_tar_header(SIGNATURE_NAME, len(signature), 0) + signature)
    add_bytes(b"\0" * _padding(len(signature)))
    for segment in segments:
        if segment.path is None:
            raise ValueError(f"segment {segment.file}: no file to read it from (path is None)")
        add_bytes(_tar_header(segment.file, segment.size, int(segment.start_ts)))
        parts.append(Part(offset, segment.size, path=segment.path))
        offset += segment.size
        add_bytes(b"\0" * _padding(segment.size))
    add_bytes(b"\0" * (2 * BLOCK))
    return BundlePlan(str(manifest["bundle_id"]), manifest, tuple(parts), offset)


def sign_manifest(manifest: dict[str, Any], device_key: Ed25519PrivateKey) -> bytes:
    """The device's signature of the manifest bytes."""
    return device_key.sign(strictjson.canonical(manifest))


def read_part(part: Part, offset: int, length: int) -> bytes:
    """`length` bytes of a part from `offset`; OSError when a file shrank or vanished meanwhile."""
    if part.path is None:
        return part.data[offset : offset + length]
    with part.path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise OSError(f"{part.path.name}: changed while being served ({len(data)} of {length} bytes)")
    return data


@dataclass(frozen=True)
class BundleReader:
    """The collector's view of a downloaded bundle: the verified manifest, then segments one by one."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path, device_public_key: Ed25519PublicKey) -> BundleReader:
        """Read and check the manifest against the device key; BundleError says what is wrong."""
        with _open_tar(path) as archive:
            manifest_bytes = _member_bytes(archive, MANIFEST_NAME, 0)
            signature = _member_bytes(archive, SIGNATURE_NAME, 1)
        try:
            device_public_key.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise BundleError(
                f"{MANIFEST_NAME}: device signature does not verify (altered, or another device)"
            ) from None
        # Signed, yet parsed within limits: a device key is no proof that its manifest is well formed.
        try:
            manifest = strictjson.load(manifest_bytes)
        except ValueError as error:
            raise BundleError(f"{MANIFEST_NAME}: unreadable ({error})") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{MANIFEST_NAME}: not a JSON object")
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise BundleError(f"{MANIFEST_NAME}: not a {FORMAT} v{VERSION} bundle")
        return cls(Path(path), manifest)

    def segments(self) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """Each manifest row with its member's bytes (None when absent), in manifest order."""
        rows = {row["file"]: row for row in self.manifest["segments"]}
        seen: set[str] = set()
        with _open_tar(self.path) as archive:
            for info in archive:
                if info.name in (MANIFEST_NAME, SIGNATURE_NAME):
                    continue
                row = rows.get(info.name)
                if row is None or info.name in seen:
                    raise BundleError(f"{info.name}: not listed in the manifest (bundle altered)")
                seen.add(info.name)
                handle = archive.extractfile(info)
                yield row, handle.read() if handle is not None else None
        for name, row in rows.items():
            if name not in seen:
                yield row, None


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as error:
        raise BundleError(f"{Path(path).name}: not a readable bundle ({error})") from None


def _member_bytes(archive: tarfile.TarFile, name: str, index: int) -> bytes:
    try:
        info = archive.getmembers()[index]
    except (IndexError, tarfile.TarError) as error:
        raise BundleError(f"{name}: missing from the bundle ({error})") from None
    if info.name != name:
        raise BundleError(f"{name}: expected as member {index + 1}, found {info.name!r}")
    handle = archive.extractfile(info)
    if handle is None:
        raise BundleError(f"{name}: not a regular file")
    return handle.read()


def write_bundle(plan: BundlePlan, out: BinaryIO | io.BytesIO) -> None:
    """Write a whole planned bundle to a file (tests and tools; the server streams by range)."""
    for part, offset, length in plan.chunks(0, plan.size):
        out.write(read_part(part, offset, length))
