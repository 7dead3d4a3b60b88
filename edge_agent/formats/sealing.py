"""The sealed segment file: encrypted to the CSU, signed by the device, chained per camera.

Format `edge-agent-segment` version 1 (integers big-endian)::

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
`records`, `packets`. The signature is Ed25519 over `edge-agent segment v1\\n` + SHA-256 of every byte
before it; the chain hash of a segment (`sha256`) is the SHA-256 of the whole file, signature included.
Verifying needs only the device public key; opening needs the CSU X25519 private key.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent.formats.keys import public_key_id
from edge_agent.formats.media import EncodedPacket, StreamInfo

FORMAT = "edge-agent-segment"
VERSION = 1
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
SIGNATURE_SIZE = 64
TAG_SIZE = 16

_PACKET = struct.Struct(">BqqIB")
_LEN = struct.Struct(">I")
_RECORD_HEAD = struct.Struct(">BI")


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


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment file says of itself, without decrypting it.

    The one description of a segment on the format side: `SegmentWriter.finish` returns it for the file
    it has just sealed (no `path` yet: the caller owns the file), `verify_segment` for a file it reads.
    `packets` counts the packet records (every record but the end record).
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
    header: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def state(self) -> str:
        """`complete` (signed trailer present and valid) or `partial` (a verified prefix)."""
        return "complete" if self.complete else "partial"

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


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _nonce(counter: int, flags: int) -> bytes:
    return counter.to_bytes(11, "big") + bytes([flags])


def _raw(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _wrap_key(ephemeral_public: bytes, csu_public: bytes, shared: bytes) -> AESGCM:
    kek = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + csu_public, info=WRAP_INFO
    ).derive(shared)
    return AESGCM(kek)


class SegmentWriter:
    """Streams one segment into a binary file: header now, a record per packet, trailer at `finish`.

    Nothing but the current packet is held in memory. The caller owns the file (temporary name,
    fsync, rename: see `ringbuffer`); this class only produces bytes.
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
    ) -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"unknown cipher {cipher!r} (known: {', '.join(CIPHERS)})")
        self._out = out
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
        self._packets = 0
        self._size = 0
        self._finished = False
        data_key = os.urandom(32)
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = _raw(ephemeral.public_key())
        csu_raw = _raw(csu_public_key)
        wrapper = _wrap_key(ephemeral_public, csu_raw, ephemeral.exchange(csu_public_key))
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "camera": camera,
            "device": device,
            "device_key_id": public_key_id(device_key.public_key()),
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
        self._header = header
        body = _canonical(header)
        header_bytes = MAGIC + _LEN.pack(len(body)) + body
        self._aad = hashlib.sha256(header_bytes).digest()
        self._aead = CIPHERS[cipher](data_key)
        self._write(header_bytes)

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def packets(self) -> int:
        """Packets sealed so far."""
        return self._packets

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._hash.update(data)
        self._size += len(data)

    def _record(self, plaintext: bytes, flags: int) -> None:
        sealed = self._aead.encrypt(_nonce(self._counter, flags), plaintext, self._aad)
        self._counter += 1
        self._write(_RECORD_HEAD.pack(flags, len(sealed)))
        self._write(sealed)

    def append(self, packet: EncodedPacket) -> None:
        """Seal one packet as the next record."""
        if self._finished:
            raise RuntimeError("segment already finished")
        head = _PACKET.pack(
            KIND_PACKET,
            packet.pts,
            NO_DTS if packet.dts is None else packet.dts,
            packet.duration,
            1 if packet.keyframe else 0,
        )
        self._record(head + packet.data, 0)
        self._packets += 1
        end = packet.pts + packet.duration
        self._last_pts_end = end if self._last_pts_end is None else max(self._last_pts_end, end)

    def finish(self) -> SegmentInfo:
        """Write the end record and the signed trailer; return the sealed segment's description."""
        if self._finished:
            raise RuntimeError("segment already finished")
        self._finished = True
        end_ts = self._start_ts if self._last_pts_end is None else self._stream.seconds(self._last_pts_end)
        self._record(bytes([KIND_END]) + _canonical({"packets": self._packets}), FLAG_LAST)
        trailer = _canonical(
            {
                "camera": self._camera,
                "sequence": self._sequence,
                "end_ts": end_ts,
                "records": self._counter,
                "packets": self._packets,
            }
        )
        self._write(TRAILER_MAGIC + _LEN.pack(len(trailer)) + trailer)
        signature = self._device_key.sign(SIGNATURE_DOMAIN + self._hash.digest())
        self._write(signature)
        return SegmentInfo(
            camera=self._camera,
            device=self._device,
            device_key_id=str(self._header["device_key_id"]),
            sequence=self._sequence,
            start_ts=self._start_ts,
            end_ts=end_ts,
            prev_sha256=self._prev_sha256,
            sha256=self._hash.hexdigest(),
            size=self._size,
            records=self._counter,
            packets=self._packets,
            complete=True,
            valid_length=self._size,
            stream=self._stream,
            header=self._header,
        )


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
    header: dict[str, Any]
    header_bytes: bytes
    stream: StreamInfo
    records: list[tuple[int, int, int]]  # (offset of ciphertext, length, flags)
    trailer: dict[str, Any] | None
    signed_digest: bytes
    signature: bytes
    sha256: str
    size: int
    valid_length: int


def _parse(stream: BinaryIO, path: Path | None) -> _Parsed:
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
    try:
        header = json.loads(body)
        camera, sequence = str(header["camera"]), int(header["sequence"])
    except (ValueError, KeyError, TypeError) as error:
        raise SegmentFormatError(where, f"unreadable header ({error})") from None
    where = _where(camera, sequence, path)
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise SegmentFormatError(where, f"unsupported format {header.get('format')} v{header.get('version')}")
    try:
        stream_info = StreamInfo.from_json(header["stream"])
        float(header["start_ts"])
        str(header["prev_sha256"])
    except (ValueError, KeyError, TypeError) as error:
        raise SegmentFormatError(where, f"unreadable header field ({error})") from None
    header_bytes = MAGIC + raw_len + body
    records: list[tuple[int, int, int]] = []
    valid_length = reader.offset
    trailer: dict[str, Any] | None = None
    signed_digest = b""
    signature = b""
    while True:
        head = reader.read(_RECORD_HEAD.size)
        if len(head) < _RECORD_HEAD.size:
            break
        flags, length = _RECORD_HEAD.unpack(head)
        if flags & ~FLAG_LAST or length < TAG_SIZE or length > MAX_RECORD:
            raise SegmentFormatError(where, f"malformed record {len(records)} at byte {reader.offset - 5}")
        start = reader.offset
        if len(reader.read(length)) < length:
            break
        records.append((start, length, flags))
        valid_length = reader.offset
        if flags & FLAG_LAST:
            trailer, signed_digest, signature = _parse_trailer(reader, where)
            break
    if reader.read(1):
        raise SegmentFormatError(where, f"unexpected bytes after the trailer at byte {reader.offset - 1}")
    return _Parsed(
        header=header,
        header_bytes=header_bytes,
        stream=stream_info,
        records=records,
        trailer=trailer,
        signed_digest=signed_digest,
        signature=signature,
        sha256=reader.hash.hexdigest(),
        size=reader.offset,
        valid_length=valid_length if trailer is None else reader.offset,
    )


def _parse_trailer(reader: _Reader, where: str) -> tuple[dict[str, Any] | None, bytes, bytes]:
    """Trailer JSON, digest of the signed bytes and signature; (None, ...) if the file ends early."""
    magic = reader.read(len(TRAILER_MAGIC))
    if len(magic) < len(TRAILER_MAGIC):
        return None, b"", b""
    if magic != TRAILER_MAGIC:
        raise SegmentFormatError(where, "bad trailer magic after the last record")
    raw_len = reader.read(_LEN.size)
    if len(raw_len) < _LEN.size:
        return None, b"", b""
    (length,) = _LEN.unpack(raw_len)
    if length > MAX_HEADER:
        raise SegmentFormatError(where, f"trailer length {length} is implausible")
    body = reader.read(length)
    if len(body) < length:
        return None, b"", b""
    digest = reader.hash.copy().digest()
    signature = reader.read(SIGNATURE_SIZE)
    if len(signature) < SIGNATURE_SIZE:
        return None, b"", b""
    try:
        trailer = json.loads(body)
        if not isinstance(trailer, dict):
            raise ValueError("not an object")
    except ValueError as error:
        raise SegmentFormatError(where, f"unreadable trailer ({error})") from None
    return trailer, digest, signature


def _info(parsed: _Parsed, path: Path | None, device_public_key: Ed25519PublicKey | None) -> SegmentInfo:
    header = parsed.header
    camera, sequence = str(header["camera"]), int(header["sequence"])
    where = _where(camera, sequence, path)
    if device_public_key is not None and header.get("device_key_id") != public_key_id(device_public_key):
        raise SegmentSignatureError(
            where,
            f"signed by device key {header.get('device_key_id')},"
            f" expected {public_key_id(device_public_key)}",
        )
    trailer = parsed.trailer
    stream = parsed.stream
    if trailer is not None:
        if device_public_key is not None:
            try:
                device_public_key.verify(parsed.signature, SIGNATURE_DOMAIN + parsed.signed_digest)
            except InvalidSignature:
                raise SegmentSignatureError(
                    where, "device signature does not match the content (altered or damaged)"
                ) from None
        if trailer.get("camera") != camera or trailer.get("sequence") != sequence:
            raise SegmentFormatError(where, "trailer names another segment")
        if trailer.get("records") != len(parsed.records):
            raise SegmentFormatError(where, "trailer record count does not match the records")
        end_ts = float(trailer["end_ts"])
    else:
        # No trailer: the end is estimated from the packet count (decrypting gives the exact times).
        end_ts = float(header["start_ts"]) + len(parsed.records) / max(stream.fps, 1e-3)
    return SegmentInfo(
        camera=camera,
        device=str(header.get("device", "")),
        device_key_id=str(header.get("device_key_id", "")),
        sequence=sequence,
        start_ts=float(header["start_ts"]),
        end_ts=end_ts,
        prev_sha256=str(header["prev_sha256"]),
        sha256=parsed.sha256,
        size=parsed.size,
        records=len(parsed.records),
        packets=sum(1 for _, _, flags in parsed.records if not flags & FLAG_LAST),
        complete=trailer is not None,
        valid_length=parsed.valid_length,
        stream=stream,
        path=path,
        header=header,
    )


def _read_and_parse(source: Source) -> tuple[_Parsed, Path | None, BinaryIO]:
    stream, path, owned = _open_source(source)
    try:
        return _parse(stream, path), path, stream
    finally:
        if owned:
            stream.close()


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
    parsed, path, _ = _read_and_parse(source)
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


def _unwrap(header: dict[str, Any], csu_private_key: X25519PrivateKey, where: str) -> bytes:
    key = header.get("key", {})
    if key.get("alg") != WRAP_ALG:
        raise SegmentFormatError(where, f"unknown key wrapping {key.get('alg')!r}")
    mine = public_key_id(csu_private_key.public_key())
    try:
        ephemeral = bytes.fromhex(key["ephemeral"])
        wrapped = bytes.fromhex(key["wrapped"])
        shared = csu_private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        wrapper = _wrap_key(ephemeral, _raw(csu_private_key.public_key()), shared)
        return wrapper.decrypt(bytes(12), wrapped, WRAP_INFO)
    except (InvalidTag, ValueError, KeyError) as error:
        raise SegmentDecryptError(
            where,
            f"cannot unwrap the data key: sealed to CSU key {key.get('csu_key_id')}, this key is {mine}"
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


def iter_packets(
    source: Source,
    csu_private_key: X25519PrivateKey,
    device_public_key: Ed25519PublicKey,
    *,
    allow_partial: bool = False,
) -> Iterator[EncodedPacket]:
    """Verify, then decrypt record by record (a truncated segment yields its verified prefix only)."""
    if isinstance(source, Path | str | bytes | bytearray):
        data_source: Source = source
    else:
        data_source = source.read()  # a stream cannot be read twice
    info = verify_segment(data_source, device_public_key, allow_partial=allow_partial)
    stream, _, owned = _open_source(data_source)
    try:
        parsed = _parse(stream, info.path)
        key = _unwrap(parsed.header, csu_private_key, info.name)
        cipher = parsed.header.get("cipher")
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
            yield packet
    finally:
        if owned:
            stream.close()


def open_segment(
    source: Source,
    csu_private_key: X25519PrivateKey,
    device_public_key: Ed25519PublicKey,
    *,
    allow_partial: bool = False,
) -> OpenedSegment:
    """Verify and decrypt a whole segment (the collector's view; the device cannot do this)."""
    if not isinstance(source, Path | str | bytes | bytearray):
        source = source.read()
    info = verify_segment(source, device_public_key, allow_partial=allow_partial)
    packets = list(iter_packets(source, csu_private_key, device_public_key, allow_partial=allow_partial))
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
