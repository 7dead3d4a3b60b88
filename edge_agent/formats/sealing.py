"""The sealed segment file: encrypted to the CSU, signed by the device, chained per camera.

Format `edge-agent-segment` version 2 (version 1 files still read and verify; integers big-endian)::

    segment = header record* trailer
    header  = "EDGESEG1" | u32 n | header JSON (n bytes, UTF-8, sorted keys)
    record  = u8 flags | u32 n | AEAD ciphertext with its 16-byte tag (n bytes)
    trailer = "EDGETRL1" | u32 n | trailer JSON (n bytes) | Ed25519 signature (64 bytes)

Header JSON: `format`, `version`, `camera`, `device`, `device_key_id`, `sequence`, `start_ts` (UTC epoch
seconds of the first packet), `prev_sha256` (SHA-256 of the camera's previous segment file, "" for the
first one: it is in the header so that even a truncated segment names its predecessor), `cipher`
(`AES-256-GCM` or `ChaCha20-Poly1305`), `key` {`alg`: `X25519-HKDF-SHA256-AES256GCM`, `csu_key_id`,
`ephemeral` (hex raw X25519 public key), `wrapped` (hex)} and `stream` (codec, encoder, width, height,
pix_fmt, time_base [num, den], fps, pts_epoch, extradata hex: see `media.StreamInfo`).

Readers parse the header and the trailer into typed, bounded models before using any field (strict
types, finite numbers, width and height 1..16384, time_base terms 1..2^31-1 and at most one second,
sequence 0..2^53, times within years 1970..9999, bounded strings, JSON nested at most 8 deep, no
duplicate keys): a crafted value is a SegmentFormatError naming the field, never another exception.

Key wrapping: a random 32-byte data key per segment. An ephemeral X25519 key agrees a secret with the
CSU's public key; HKDF-SHA256 (salt = ephemeral public || CSU public, info `edge-agent segment wrap v1`)
derives a one-time key that seals the data key with AES-256-GCM (zero nonce: the key is never reused).
The device keeps neither the data key nor the ephemeral private key, so it cannot read what it wrote.

Records: AEAD under the data key, nonce = 11-byte record counter | flags byte, associated data = SHA-256 of
the header bytes. So records cannot be reordered, moved to another segment, or have their header altered,
and `flags` bit 0 (last record, also visible in the clear for structure checks) cannot be forged: a
stream cut at a record boundary is detected. Plaintexts start with a kind byte:
- 1 packet: `>BqqIB` kind, pts, dts (INT64_MIN when absent), duration, flags (bit 0 keyframe), then data;
- 2 end (always the last record, and only it): kind byte, then JSON {"packets": n}.
Record lengths are visible (like any encrypted stream they show how busy the scene was, not what is in it).

Trailer JSON: `camera`, `sequence`, `end_ts` (capture time of the last packet plus its duration),
`records`, `packets`; from version 2 also `closed` (`sealed`, or `recovered`: see below),
`packet_hash` (`nal-sha256`, the rule below) and `packet_sha256` (one hex SHA-256 per packet record, in
record order). The signature is Ed25519 over `edge-agent segment v1\\n` + SHA-256 of every byte before
it; the chain hash of a segment (`sha256`) is the SHA-256 of the whole file, signature included.
Verifying needs only the device public key; opening needs the CSU X25519 private key.

Frame hash (`packet_hash` = `nal-sha256`), so that anyone holding an ordinary MP4 of the footage can
check each frame against the device's signature without the CSU key:
- H.264 and H.265 (`stream.codec` `h264`, `hevc`): split the packet into its NAL units, framing removed.
  The device's packets are Annex B: a unit starts after a start code `00 00 01` and ends where the next
  start code begins; a `00` just before that start code is part of it (4-byte start code `00 00 00 01`);
  bytes before the first start code and empty units are ignored. In an MP4 the same units are stored
  behind big-endian length prefixes (the avcC/hvcC record's lengthSizeMinusOne + 1 bytes, 4 in our
  exports). The hash is SHA-256 over every unit, in order, each preceded by its length as 4 bytes
  big-endian: for an MP4 with 4-byte lengths, simply the SHA-256 of the sample.
- any other codec (MJPEG): SHA-256 of the packet bytes, which are the MP4 sample's bytes.
(`media.packet_digest` computes it from the device's packet, `media.sample_digest` from an MP4 sample.)

Recovery after a crash (`close_recovered`): the writer flushes each record to the file as it is sealed
and appends the packet's frame hash and end time to a journal beside the temporary file. At the next
start the device keeps every whole record the journal also covers, drops any torn tail, and appends a
trailer with `closed` = `recovered`, `recovered_at` (epoch seconds) and the journal's hashes, signed
with the device key at that moment. Such a trailer follows the last packet record directly (the device
cannot write the encrypted end record: it does not hold the data key), which only a `recovered`
trailer may do. A collector opening the segment checks every decrypted packet against the signed hash.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal, TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge_agent.formats import strictjson
from edge_agent.formats.keys import public_key_id
from edge_agent.formats.media import (
    MAX_EPOCH_S,
    EncodedPacket,
    Epoch,
    StreamInfo,
    StreamModel,
    packet_digest,
)

FORMAT = "edge-agent-segment"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# The first version whose trailer signs each packet's frame hash.
FRAME_HASH_VERSION = 2
PACKET_HASH_RULE = "nal-sha256"
MAGIC = b"EDGESEG1"
TRAILER_MAGIC = b"EDGETRL1"
WRAP_ALG = "X25519-HKDF-SHA256-AES256GCM"
CIPHERS: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "AES-256-GCM": AESGCM,
    "ChaCha20-Poly1305": ChaCha20Poly1305,
}
DEFAULT_CIPHER = "AES-256-GCM"
SIGNATURE_DOMAIN = b"edge-agent segment v1\n"
WRAP_INFO = b"edge-agent segment wrap v1"
FLAG_LAST = 0x01
KIND_PACKET = 1
KIND_END = 2
NO_DTS = -(2**63)
MAX_HEADER = 1 << 20
MAX_RECORD = 1 << 26
# 300 s segments at 60 fps are 18,000 packets; a count far beyond is a crafted file, not footage.
MAX_PACKETS = 1 << 17
MAX_TRAILER = 1 << 24
MAX_JSON_DEPTH = 8
MAX_SEQUENCE = 2**53
SIGNATURE_SIZE = 64
TAG_SIZE = 16
CLOSED_SEALED = "sealed"
CLOSED_RECOVERED = "recovered"

_PACKET = struct.Struct(">BqqIB")
_LEN = struct.Struct(">I")
_RECORD_HEAD = struct.Struct(">BI")
# One journal entry per packet record written: its frame hash and its end (capture time + duration).
JOURNAL_ENTRY = struct.Struct(">32sd")


class SegmentError(Exception):
    """A segment that cannot be trusted or read; the message names camera, sequence and file."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"segment {where}: {problem}")
        self.where = where
        self.problem = problem


class SegmentFormatError(SegmentError):
    """Not a segment of a known format, or a malformed header, record or trailer."""


class SegmentTruncatedError(SegmentError):
    """The file ends before its trailer (the writer stopped, or bytes were cut off)."""


class SegmentSignatureError(SegmentError):
    """The device signature does not match the bytes: altered, or signed by another device."""


class SegmentDecryptError(SegmentError):
    """The data key cannot be unwrapped (another CSU key) or a record fails authentication."""


# ---- the typed header and trailer -------------------------------------------------------------------

_Text = Annotated[str, StringConstraints(max_length=128)]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Sequence = Annotated[int, Field(ge=0, le=MAX_SEQUENCE)]
_Count = Annotated[int, Field(ge=0, le=MAX_PACKETS + 1)]


class _Checked(BaseModel):
    # Unknown fields are ignored: later versions may only add fields (DESIGN section 4).
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class KeyWrap(_Checked):
    """The header's `key` object: the data key wrapped to the CSU's X25519 key."""

    alg: _Text
    csu_key_id: _Text
    ephemeral: _Hex64
    wrapped: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{2,256}$")]


class SegmentHeader(_Checked):
    """A segment header, checked before any field is used."""

    format: Literal["edge-agent-segment"]
    version: int = Field(ge=1, le=255)
    camera: _Name
    device: _Text = ""
    device_key_id: _Text = ""
    sequence: _Sequence
    start_ts: Epoch
    prev_sha256: Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{64})?$")]
    cipher: _Text
    key: KeyWrap
    stream: StreamModel


class SegmentTrailer(_Checked):
    """A segment trailer, checked before any field is used (`packet_sha256` from version 2)."""

    camera: _Name
    sequence: _Sequence
    end_ts: Epoch
    records: _Count
    packets: _Count
    closed: Literal["sealed", "recovered"] = "sealed"
    recovered_at: Epoch | None = None
    packet_hash: _Text | None = None
    packet_sha256: list[_Hex64] | None = Field(None, max_length=MAX_PACKETS)


_M = TypeVar("_M", bound=_Checked)


def _field_problem(error: ValidationError, what: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or what
    return f"{what} field {where}: {first['msg']}"


def _claimed_where(raw: dict[str, Any], path: Path | None) -> str:
    """`camera#sequence (file)` from an unchecked header, for naming it in the error that refuses it."""
    camera, sequence = raw.get("camera"), raw.get("sequence")
    return _where(
        camera if isinstance(camera, str) and 0 < len(camera) <= 128 else None,
        sequence if type(sequence) is int and 0 <= sequence <= MAX_SEQUENCE else None,
        path,
    )


def _load_object(body: bytes, what: str, where: str) -> dict[str, Any]:
    """The JSON object of a header or trailer body, parsed within the limits."""
    try:
        raw = strictjson.load(body, max_depth=MAX_JSON_DEPTH)
    except ValueError as error:
        raise SegmentFormatError(where, f"unreadable {what} ({error})") from None
    if not isinstance(raw, dict):
        raise SegmentFormatError(where, f"unreadable {what} (not a JSON object)")
    return raw


def _checked(model: type[_M], raw: dict[str, Any], what: str, where: str) -> _M:
    """`raw` as a checked model; SegmentFormatError naming the first field at fault."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise SegmentFormatError(where, _field_problem(error, what)) from None


# ---- the segment's description ----------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment file says of itself, without decrypting it.

    The one description of a segment on the format side: `SegmentWriter.finish` returns it for the file
    it has just sealed (no `path` yet: the caller owns the file), `verify_segment` for a file it reads.
    `packets` counts the packet records (every record but the end record). `packet_sha256` is the
    device-signed frame hash of each packet (None before version 2, or without a trailer).
    """

    camera: str
    device: str
    device_key_id: str
    sequence: int
    start_ts: float
    end_ts: float
    prev_sha256: str
    sha256: str
    size: int
    records: int
    packets: int
    complete: bool
    valid_length: int
    stream: StreamInfo
    path: Path | None = None
    version: int = VERSION
    closed: str = CLOSED_SEALED
    packet_sha256: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        """`complete` (sealed by its writer), `recovered` (closed after a crash) or `partial`."""
        if not self.complete:
            return "partial"
        return "recovered" if self.closed == CLOSED_RECOVERED else "complete"

    @property
    def name(self) -> str:
        """`camera#sequence (file)`, how errors and chain breaks name this segment."""
        return _where(self.camera, self.sequence, self.path)


@dataclass(frozen=True)
class OpenedSegment:
    """A decrypted segment: its verified info, stream description and packets in order."""

    info: SegmentInfo
    stream: StreamInfo
    packets: list[EncodedPacket]


def _where(camera: str | None, sequence: int | None, path: Path | str | None) -> str:
    who = f"{camera or '?'}#{sequence if sequence is not None else '?'}"
    return f"{who} ({path})" if path else who


def _nonce(counter: int, flags: int) -> bytes:
    return counter.to_bytes(11, "big") + bytes([flags])


def _raw(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _wrap_key(ephemeral_public: bytes, csu_public: bytes, shared: bytes) -> AESGCM:
    kek = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + csu_public, info=WRAP_INFO
    ).derive(shared)
    return AESGCM(kek)


# ---- writing ----------------------------------------------------------------------------------------


class SegmentWriter:
    """Streams one segment into a binary file: header now, a record per packet, trailer at `finish`.

    Nothing but the current packet is held in memory. Each record is flushed to the file as soon as it
    is sealed, and, when a `journal` is given, its frame hash and end time appended to it, so that a
    killed writer loses only the packets it had not been handed yet (see `close_recovered`). The
    caller owns both files (temporary name, fsync, rename: see `ringbuffer`); this class only produces
    bytes.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        camera: str,
        device: str,
        sequence: int,
        prev_sha256: str,
        stream: StreamInfo,
        start_ts: float,
        device_key: Ed25519PrivateKey,
        csu_public_key: X25519PublicKey,
        cipher: str = DEFAULT_CIPHER,
        journal: BinaryIO | None = None,
    ) -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"unknown cipher {cipher!r} (known: {', '.join(CIPHERS)})")
        self._out = out
        self._journal = journal
        self._hash = hashlib.sha256()
        self._device_key = device_key
        self._camera = camera
        self._device = device
        self._sequence = sequence
        self._prev_sha256 = prev_sha256
        self._stream = stream
        self._start_ts = start_ts
        self._last_pts_end: int | None = None
        self._counter = 0
        self._digests: list[str] = []
        self._size = 0
        self._finished = False
        data_key = os.urandom(32)
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = _raw(ephemeral.public_key())
        csu_raw = _raw(csu_public_key)
        wrapper = _wrap_key(ephemeral_public, csu_raw, ephemeral.exchange(csu_public_key))
        self._device_key_id = public_key_id(device_key.public_key())
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "camera": camera,
            "device": device,
            "device_key_id": self._device_key_id,
            "sequence": sequence,
            "start_ts": start_ts,
            "prev_sha256": prev_sha256,
            "cipher": cipher,
            "key": {
                "alg": WRAP_ALG,
                "csu_key_id": public_key_id(csu_public_key),
                "ephemeral": ephemeral_public.hex(),
                "wrapped": wrapper.encrypt(bytes(12), data_key, WRAP_INFO).hex(),
            },
            "stream": stream.to_json(),
        }
        body = strictjson.canonical(header)
        header_bytes = MAGIC + _LEN.pack(len(body)) + body
        self._aad = hashlib.sha256(header_bytes).digest()
        self._aead = CIPHERS[cipher](data_key)
        self._write(header_bytes)
        self._out.flush()

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def packets(self) -> int:
        """Packets sealed so far."""
        return len(self._digests)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._hash.update(data)
        self._size += len(data)

    def _record(self, plaintext: bytes, flags: int) -> None:
        sealed = self._aead.encrypt(_nonce(self._counter, flags), plaintext, self._aad)
        self._counter += 1
        # Head and ciphertext written apart: joining them would copy the whole frame once more.
        self._write(_RECORD_HEAD.pack(flags, len(sealed)))
        self._write(sealed)
        self._out.flush()

    def append(self, packet: EncodedPacket) -> None:
        """Seal one packet as the next record (flushed to the file, then journaled)."""
        if self._finished:
            raise RuntimeError("segment already finished")
        head = _PACKET.pack(
            KIND_PACKET,
            packet.pts,
            NO_DTS if packet.dts is None else packet.dts,
            packet.duration,
            1 if packet.keyframe else 0,
        )
        digest = packet_digest(self._stream, packet.data)
        self._record(head + packet.data, 0)
        self._digests.append(digest.hex())
        end = packet.pts + packet.duration
        self._last_pts_end = end if self._last_pts_end is None else max(self._last_pts_end, end)
        if self._journal is not None:
            self._journal.write(JOURNAL_ENTRY.pack(digest, self._stream.seconds(end)))
            self._journal.flush()

    def finish(self) -> SegmentInfo:
        """Write the end record and the signed trailer; return the sealed segment's description."""
        if self._finished:
            raise RuntimeError("segment already finished")
        self._finished = True
        end_ts = self._start_ts if self._last_pts_end is None else self._stream.seconds(self._last_pts_end)
        packets = len(self._digests)
        self._record(bytes([KIND_END]) + strictjson.canonical({"packets": packets}), FLAG_LAST)
        trailer = strictjson.canonical(
            {
                "camera": self._camera,
                "sequence": self._sequence,
                "end_ts": end_ts,
                "records": self._counter,
                "packets": packets,
                "closed": CLOSED_SEALED,
                "packet_hash": PACKET_HASH_RULE,
                "packet_sha256": self._digests,
            }
        )
        self._write(TRAILER_MAGIC + _LEN.pack(len(trailer)) + trailer)
        signature = self._device_key.sign(SIGNATURE_DOMAIN + self._hash.digest())
        self._write(signature)
        self._out.flush()
        return SegmentInfo(
            camera=self._camera,
            device=self._device,
            device_key_id=self._device_key_id,
            sequence=self._sequence,
            start_ts=self._start_ts,
            end_ts=end_ts,
            prev_sha256=self._prev_sha256,
            sha256=self._hash.hexdigest(),
            size=self._size,
            records=self._counter,
            packets=packets,
            complete=True,
            valid_length=self._size,
            stream=self._stream,
            packet_sha256=tuple(self._digests),
        )


# ---- reading ----------------------------------------------------------------------------------------

Source = Path | str | bytes | BinaryIO


def _open_source(source: Source) -> tuple[BinaryIO, Path | None, bool]:
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source), None, True
    if isinstance(source, Path | str):
        path = Path(source)
        try:
            return path.open("rb"), path, True
        except OSError as error:
            raise SegmentFormatError(_where(None, None, path), f"cannot read ({error.strerror})") from None
    return source, None, False


class _Reader:
    """Reads exactly, hashing every byte; tracks the offset."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()
        self.offset = 0

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.hash.update(data)
        self.offset += len(data)
        return data


@dataclass
class _Parsed:
    header: SegmentHeader
    header_bytes: bytes
    stream: StreamInfo
    records: list[tuple[int, int, int]]  # (offset of ciphertext, length, flags)
    trailer: SegmentTrailer | None
    signed_digest: bytes
    signature: bytes
    sha256: str
    size: int
    valid_length: int
    where: str


def _parse(stream: BinaryIO, path: Path | None, *, torn_tail: bool = False) -> _Parsed:
    """Structure of a segment file; `torn_tail` stops at a malformed record instead of refusing it
    (crash recovery: after a power cut the tail of an unfinished file may be garbage)."""
    reader = _Reader(stream)
    where = _where(None, None, path)
    if reader.read(len(MAGIC)) != MAGIC:
        raise SegmentFormatError(where, "not a segment file (bad magic)")
    raw_len = reader.read(_LEN.size)
    if len(raw_len) < _LEN.size:
        raise SegmentTruncatedError(where, "file ends inside the header")
    (header_len,) = _LEN.unpack(raw_len)
    if header_len > MAX_HEADER:
        raise SegmentFormatError(where, f"header length {header_len} is implausible")
    body = reader.read(header_len)
    if len(body) < header_len:
        raise SegmentTruncatedError(where, "file ends inside the header")
    header = _load_header(body, path)
    where = _where(header.camera, header.sequence, path)
    records: list[tuple[int, int, int]] = []
    valid_length = reader.offset
    trailer: SegmentTrailer | None = None
    signed_digest = b""
    signature = b""
    while True:
        head = reader.read(_RECORD_HEAD.size)
        if head == TRAILER_MAGIC[: _RECORD_HEAD.size] and not torn_tail:
            # A trailer straight after a packet record: only a recovered segment ends so.
            trailer, signed_digest, signature = _parse_trailer(reader, where, head)
            if trailer is not None and trailer.closed != CLOSED_RECOVERED:
                raise SegmentFormatError(where, "trailer without the end record, yet not `recovered`")
            break
        if len(head) < _RECORD_HEAD.size:
            break
        flags, length = _RECORD_HEAD.unpack(head)
        if flags & ~FLAG_LAST or length < TAG_SIZE or length > MAX_RECORD or len(records) > MAX_PACKETS:
            if torn_tail:
                break
            raise SegmentFormatError(where, f"malformed record {len(records)} at byte {reader.offset - 5}")
        start = reader.offset
        if len(reader.read(length)) < length:
            break
        records.append((start, length, flags))
        valid_length = reader.offset
        if flags & FLAG_LAST:
            if not torn_tail:
                trailer, signed_digest, signature = _parse_trailer(reader, where, b"")
            break
    if not torn_tail and reader.read(1):
        raise SegmentFormatError(where, f"unexpected bytes after the trailer at byte {reader.offset - 1}")
    return _Parsed(
        header=header,
        header_bytes=MAGIC + raw_len + body,
        stream=StreamInfo.from_model(header.stream),
        records=records,
        trailer=trailer,
        signed_digest=signed_digest,
        signature=signature,
        sha256=reader.hash.hexdigest(),
        size=reader.offset,
        valid_length=valid_length if trailer is None else reader.offset,
        where=where,
    )


def _load_header(body: bytes, path: Path | None) -> SegmentHeader:
    raw = _load_object(body, "header", _where(None, None, path))
    header = _checked(SegmentHeader, raw, "header", _claimed_where(raw, path))
    where = _where(header.camera, header.sequence, path)
    if header.version not in READABLE_VERSIONS:
        raise SegmentFormatError(where, f"unsupported format {header.format} v{header.version}")
    num, den = header.stream.time_base
    if num > den:
        raise SegmentFormatError(where, f"header field stream.time_base: {num}/{den} s is over a second")
    return header


def _parse_trailer(reader: _Reader, where: str, already: bytes) -> tuple[SegmentTrailer | None, bytes, bytes]:
    """Trailer, digest of the signed bytes and signature; (None, ...) if the file ends early.

    `already` holds the first bytes of the trailer magic when the caller has read them.
    """
    magic = already + reader.read(len(TRAILER_MAGIC) - len(already))
    if len(magic) < len(TRAILER_MAGIC):
        return None, b"", b""
    if magic != TRAILER_MAGIC:
        raise SegmentFormatError(where, "bad trailer magic after the last record")
    raw_len = reader.read(_LEN.size)
    if len(raw_len) < _LEN.size:
        return None, b"", b""
    (length,) = _LEN.unpack(raw_len)
    if length > MAX_TRAILER:
        raise SegmentFormatError(where, f"trailer length {length} is implausible")
    body = reader.read(length)
    if len(body) < length:
        return None, b"", b""
    digest = reader.hash.copy().digest()
    signature = reader.read(SIGNATURE_SIZE)
    if len(signature) < SIGNATURE_SIZE:
        return None, b"", b""
    trailer = _checked(SegmentTrailer, _load_object(body, "trailer", where), "trailer", where)
    return trailer, digest, signature


def _info(parsed: _Parsed, path: Path | None, device_public_key: Ed25519PublicKey | None) -> SegmentInfo:
    header = parsed.header
    where = parsed.where
    if device_public_key is not None and header.device_key_id != public_key_id(device_public_key):
        raise SegmentSignatureError(
            where,
            f"signed by device key {header.device_key_id}, expected {public_key_id(device_public_key)}",
        )
    trailer = parsed.trailer
    stream = parsed.stream
    packets = sum(1 for _, _, flags in parsed.records if not flags & FLAG_LAST)
    hashes: tuple[str, ...] | None = None
    if trailer is not None:
        if device_public_key is not None:
            try:
                device_public_key.verify(parsed.signature, SIGNATURE_DOMAIN + parsed.signed_digest)
            except InvalidSignature:
                raise SegmentSignatureError(
                    where, "device signature does not match the content (altered or damaged)"
                ) from None
        if trailer.camera != header.camera or trailer.sequence != header.sequence:
            raise SegmentFormatError(where, "trailer names another segment")
        if trailer.records != len(parsed.records) or trailer.packets != packets:
            raise SegmentFormatError(where, "trailer record count does not match the records")
        if header.version >= FRAME_HASH_VERSION:
            if trailer.packet_hash != PACKET_HASH_RULE or trailer.packet_sha256 is None:
                raise SegmentFormatError(where, f"trailer lacks the {PACKET_HASH_RULE} frame hashes")
            if len(trailer.packet_sha256) != packets:
                raise SegmentFormatError(where, "trailer frame hash count does not match the packets")
            hashes = tuple(trailer.packet_sha256)
        end_ts = trailer.end_ts
    else:
        # No trailer: the end is estimated from the packet count (decrypting gives the exact times).
        end_ts = min(header.start_ts + len(parsed.records) / stream.fps, MAX_EPOCH_S)
    return SegmentInfo(
        camera=header.camera,
        device=header.device,
        device_key_id=header.device_key_id,
        sequence=header.sequence,
        start_ts=header.start_ts,
        end_ts=end_ts,
        prev_sha256=header.prev_sha256,
        sha256=parsed.sha256,
        size=parsed.size,
        records=len(parsed.records),
        packets=packets,
        complete=trailer is not None,
        valid_length=parsed.valid_length,
        stream=stream,
        path=path,
        version=header.version,
        closed=CLOSED_SEALED if trailer is None else trailer.closed,
        packet_sha256=hashes,
    )


@contextmanager
def _parsed_source(source: Source) -> Iterator[tuple[BinaryIO, _Parsed, Path | None]]:
    """The source open (closed after the block when opened here), its structure and its path."""
    stream, path, owned = _open_source(source)
    try:
        yield stream, _parse(stream, path), path
    finally:
        if owned:
            stream.close()


def _verified(
    parsed: _Parsed,
    path: Path | None,
    device_public_key: Ed25519PublicKey | None,
    *,
    allow_partial: bool,
    expect_camera: str | None = None,
    expect_sequence: int | None = None,
) -> SegmentInfo:
    """`verify_segment` on a file already parsed."""
    info = _info(parsed, path, device_public_key)
    if not info.complete and not allow_partial:
        raise SegmentTruncatedError(info.name, "truncated: the signed trailer is missing")
    if expect_camera is not None and info.camera != expect_camera:
        raise SegmentFormatError(info.name, f"belongs to camera {info.camera}, stored under {expect_camera}")
    if expect_sequence is not None and info.sequence != expect_sequence:
        raise SegmentFormatError(
            info.name, f"holds sequence {info.sequence}, stored as sequence {expect_sequence} (swapped?)"
        )
    return info


def verify_segment(
    source: Source,
    device_public_key: Ed25519PublicKey | None,
    *,
    allow_partial: bool = False,
    expect_camera: str | None = None,
    expect_sequence: int | None = None,
) -> SegmentInfo:
    """Check structure and device signature without any CSU key; return the segment's info.

    A file without its trailer raises SegmentTruncatedError, unless `allow_partial`, which returns an
    info with `complete=False` and `valid_length` = the end of the last whole record. `expect_*` catch
    a file stored under another segment's name (swapped or replayed). `device_public_key=None` checks
    structure only (the ring buffer's crash recovery on a device without its key).
    """
    with _parsed_source(source) as (_, parsed, path):
        return _verified(
            parsed,
            path,
            device_public_key,
            allow_partial=allow_partial,
            expect_camera=expect_camera,
            expect_sequence=expect_sequence,
        )


def signed_packet_hashes(source: Source, device_public_key: Ed25519PublicKey) -> tuple[bytes, ...] | None:
    """The device-signed frame hash of each packet of a whole segment, in order (see the module doc).

    Verifies the segment first (SegmentError otherwise). None for a segment written before version
    `FRAME_HASH_VERSION`: it has no frame-level signature. Compare with `media.sample_digest` of the
    MP4 samples.
    """
    info = verify_segment(source, device_public_key)
    if info.packet_sha256 is None:
        return None
    return tuple(bytes.fromhex(h) for h in info.packet_sha256)


# ---- crash recovery ---------------------------------------------------------------------------------


def read_journal(data: bytes) -> list[tuple[bytes, float]]:
    """The whole entries of a writer's journal (frame hash, end time); stops at a torn or odd entry."""
    entries = []
    for offset in range(0, len(data) - JOURNAL_ENTRY.size + 1, JOURNAL_ENTRY.size):
        digest, end = JOURNAL_ENTRY.unpack_from(data, offset)
        if not (math.isfinite(end) and 0.0 <= end <= MAX_EPOCH_S):
            break
        entries.append((digest, end))
    return entries


def close_unfinished(
    handle: BinaryIO,
    journal: bytes,
    device_key: Ed25519PrivateKey | None,
    recovered_at: float,
    *,
    expect_camera: str,
    expect_sequence: int,
) -> SegmentInfo | None:
    """Close a segment whose writer was killed: keep what was sealed and journaled, sign a trailer.

    `handle` is the unfinished file opened `r+b`, `journal` the bytes of its writer's journal. Keeps
    every whole packet record that the journal also covers, cuts off the rest (a torn record, the end
    record of a writer killed inside `finish`) and appends a `recovered` trailer signed with
    `device_key`. Without a key, or for a version 1 file (its writer kept no journal), the file is only
    cut back to its last whole record and described as `partial` (unsigned). Returns None when no
    packet can be kept; the caller fsyncs and renames. A file that already has a valid trailer (killed
    between `finish` and the rename: inside the fsync, which takes most of a commit) was never committed
    either: when the journal covers every packet, as the writer's does by then, it is closed again as
    `recovered`, all packets kept, so that the stretch the crash left after it reads `crash` and not
    `not-recorded`; otherwise (no key, a version 1 file, no journal) it is described as it is.
    SegmentSignatureError when the header
    names another device key, SegmentFormatError when it names another segment than `expect_*` (the
    name the file was found under) or does not parse: nothing is signed then.
    """
    handle.seek(0)
    parsed = _parse(handle, None, torn_tail=True)
    header = parsed.header
    if (header.camera, header.sequence) != (expect_camera, expect_sequence):
        raise SegmentFormatError(parsed.where, f"found as {expect_camera}#{expect_sequence}")
    public = None if device_key is None else device_key.public_key()
    if public is not None and header.device_key_id != public_key_id(public):
        raise SegmentSignatureError(
            parsed.where, f"names device key {header.device_key_id}, not this device's"
        )
    handle.seek(0)
    try:
        finished: SegmentInfo | None = _info(_parse(handle, None), None, public)
    except SegmentError:
        finished = None  # no valid trailer: close it below
    packet_records = [r for r in parsed.records if not r[2] & FLAG_LAST]
    journaled = read_journal(journal) if device_key is not None else []
    resignable = device_key is not None and header.version >= FRAME_HASH_VERSION
    if (
        finished is not None
        and finished.complete
        and not (resignable and len(journaled) >= len(packet_records))
    ):
        return finished
    if device_key is None or header.version < FRAME_HASH_VERSION:
        if not packet_records:
            return None
        handle.truncate(parsed.valid_length)
        handle.seek(0)
        return _info(_parse(handle, None), None, None)
    entries = journaled[: len(packet_records)]
    kept = packet_records[: len(entries)]
    if not kept:
        return None
    offset, length, _ = kept[-1]
    cut = offset + length
    handle.seek(0)
    digest = hashlib.sha256()
    remaining = cut
    while remaining:
        chunk = handle.read(min(remaining, 1 << 20))
        digest.update(chunk)
        remaining -= len(chunk)
    handle.truncate(cut)
    handle.seek(cut)
    end_ts = max(end for _, end in entries)
    hashes = [d.hex() for d, _ in entries]
    body = strictjson.canonical(
        {
            "camera": header.camera,
            "sequence": header.sequence,
            "end_ts": end_ts,
            "records": len(kept),
            "packets": len(kept),
            "closed": CLOSED_RECOVERED,
            "recovered_at": recovered_at,
            "packet_hash": PACKET_HASH_RULE,
            "packet_sha256": hashes,
        }
    )
    trailer = TRAILER_MAGIC + _LEN.pack(len(body)) + body
    digest.update(trailer)
    signature = device_key.sign(SIGNATURE_DOMAIN + digest.digest())
    handle.write(trailer + signature)
    handle.flush()
    handle.seek(0)
    return _info(_parse(handle, None), None, public)


# ---- opening (the CSU side) -------------------------------------------------------------------------


def _unwrap(header: SegmentHeader, csu_private_key: X25519PrivateKey, where: str) -> bytes:
    key = header.key
    if key.alg != WRAP_ALG:
        raise SegmentFormatError(where, f"unknown key wrapping {key.alg!r}")
    mine = public_key_id(csu_private_key.public_key())
    try:
        ephemeral = bytes.fromhex(key.ephemeral)
        wrapped = bytes.fromhex(key.wrapped)
        shared = csu_private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        wrapper = _wrap_key(ephemeral, _raw(csu_private_key.public_key()), shared)
        return wrapper.decrypt(bytes(12), wrapped, WRAP_INFO)
    except (InvalidTag, ValueError) as error:
        raise SegmentDecryptError(
            where,
            f"cannot unwrap the data key: sealed to CSU key {key.csu_key_id}, this key is {mine}"
            f" ({type(error).__name__})",
        ) from None


def _decode_record(plaintext: bytes, index: int, where: str) -> EncodedPacket | None:
    kind = plaintext[:1]
    if kind == bytes([KIND_END]):
        return None
    if kind != bytes([KIND_PACKET]) or len(plaintext) < _PACKET.size:
        raise SegmentFormatError(where, f"record {index}: unknown kind")
    _, pts, dts, duration, flags = _PACKET.unpack_from(plaintext)
    return EncodedPacket(
        pts=pts,
        dts=None if dts == NO_DTS else dts,
        duration=duration,
        keyframe=bool(flags & 1),
        data=plaintext[_PACKET.size :],
    )


def _decrypt(
    stream: BinaryIO, parsed: _Parsed, info: SegmentInfo, csu_private_key: X25519PrivateKey
) -> Iterator[EncodedPacket]:
    """The packets of a verified segment, decrypted record by record from its open `stream`.

    From version 2 each packet is also checked against its device-signed frame hash.
    """
    key = _unwrap(parsed.header, csu_private_key, info.name)
    cipher = parsed.header.cipher
    if cipher not in CIPHERS:
        raise SegmentFormatError(info.name, f"unknown cipher {cipher!r}")
    aead = CIPHERS[cipher](key)
    aad = hashlib.sha256(parsed.header_bytes).digest()
    for index, (offset, length, flags) in enumerate(parsed.records):
        stream.seek(offset)
        try:
            plaintext = aead.decrypt(_nonce(index, flags), stream.read(length), aad)
        except InvalidTag:
            raise SegmentDecryptError(info.name, f"record {index} fails authentication") from None
        packet = _decode_record(plaintext, index, info.name)
        if packet is None:
            if not flags & FLAG_LAST:
                raise SegmentFormatError(info.name, f"end record {index} is not the last")
            return
        signed = info.packet_sha256
        if signed is not None and packet_digest(info.stream, packet.data).hex() != signed[index]:
            raise SegmentFormatError(
                info.name, f"record {index}: the packet differs from its device-signed frame hash"
            )
        yield packet


def _seekable(source: Source) -> Path | str | bytes:
    """A caller's stream read whole: records are read back by their offset from the file's start."""
    return source if isinstance(source, Path | str | bytes | bytearray) else source.read()


def iter_packets(
    source: Source,
    csu_private_key: X25519PrivateKey,
    device_public_key: Ed25519PublicKey,
    *,
    allow_partial: bool = False,
) -> Iterator[EncodedPacket]:
    """Verify, then decrypt record by record (a truncated segment yields its verified prefix only).

    The file is read and verified once, then decrypted from the same open file (a file replaced on
    disk in between cannot slip in). From version 2 each packet is also checked against its
    device-signed frame hash.
    """
    with _parsed_source(_seekable(source)) as (stream, parsed, path):
        info = _verified(parsed, path, device_public_key, allow_partial=allow_partial)
        yield from _decrypt(stream, parsed, info, csu_private_key)


def open_segment(
    source: Source,
    csu_private_key: X25519PrivateKey,
    device_public_key: Ed25519PublicKey,
    *,
    allow_partial: bool = False,
) -> OpenedSegment:
    """Verify and decrypt a whole segment (the collector's view; the device cannot do this)."""
    with _parsed_source(_seekable(source)) as (stream, parsed, path):
        info = _verified(parsed, path, device_public_key, allow_partial=allow_partial)
        packets = list(_decrypt(stream, parsed, info, csu_private_key))
    return OpenedSegment(info=info, stream=info.stream, packets=packets)


@dataclass(frozen=True)
class ChainBreak:
    """One break in a camera's chain of segments."""

    kind: str  # removed, swapped, replayed, broken, camera
    camera: str
    sequence: int
    message: str


def verify_chain(segments: Sequence[SegmentInfo], previous_sha256: str | None = None) -> list[ChainBreak]:
    """Every break in `segments` taken in the order given (as stored or as bundled); [] if whole.

    Checks, in order: a segment repeated (same file hash or same sequence: replayed), a sequence lower
    than the one before it (swapped), a sequence gap (removed), and a segment whose `prev_sha256` is
    not the hash of the one before it (broken: replaced or altered). `previous_sha256` anchors the first
    segment when its predecessor is known.
    """
    breaks: list[ChainBreak] = []
    seen_hash: dict[str, SegmentInfo] = {}
    seen_seq: dict[tuple[str, int], SegmentInfo] = {}
    kept: list[SegmentInfo] = []
    for info in segments:
        earlier = seen_hash.get(info.sha256) or seen_seq.get((info.camera, info.sequence))
        if earlier is not None:
            breaks.append(
                ChainBreak("replayed", info.camera, info.sequence, f"{info.name} repeats {earlier.name}")
            )
            continue
        seen_hash[info.sha256] = info
        seen_seq[(info.camera, info.sequence)] = info
        if kept and info.camera != kept[0].camera:
            breaks.append(
                ChainBreak("camera", info.camera, info.sequence, f"{info.name} is not from {kept[0].camera}")
            )
            continue
        if kept and info.sequence < kept[-1].sequence:
            breaks.append(
                ChainBreak(
                    "swapped",
                    info.camera,
                    info.sequence,
                    f"{info.name} comes after {kept[-1].name} (out of order)",
                )
            )
        kept.append(info)
    ordered = sorted(kept, key=lambda s: s.sequence)
    for before, after in itertools.pairwise(ordered):
        if after.sequence > before.sequence + 1:
            missing = (
                f"#{before.sequence + 1}"
                if after.sequence == before.sequence + 2
                else f"#{before.sequence + 1}..#{after.sequence - 1}"
            )
            breaks.append(
                ChainBreak(
                    "removed",
                    after.camera,
                    before.sequence + 1,
                    f"{after.camera}{missing} missing between {before.name} and {after.name}",
                )
            )
        elif after.prev_sha256 != before.sha256:
            breaks.append(
                ChainBreak(
                    "broken", after.camera, after.sequence, f"{after.name} does not chain to {before.name}"
                )
            )
    if ordered and previous_sha256 is not None and ordered[0].prev_sha256 != previous_sha256:
        first = ordered[0]
        breaks.append(
            ChainBreak(
                "broken", first.camera, first.sequence, f"{first.name} does not chain to its predecessor"
            )
        )
    return breaks
