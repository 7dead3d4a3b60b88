"""What an encoder hands to the sealer: a description of the stream and its encoded packets.

Plain data, no codec library: the collector imports it to verify and open segments without PyAV.
Also the frame hash rule (`packet_digest`, `sample_digest`): the SHA-256 of a packet's NAL unit
payloads, the same whether the packet is framed with Annex B start codes (as the device's encoders
write it) or with length prefixes (as an MP4 stores it). `formats/sealing.py` documents the rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Plausible bounds of every number a segment header can carry (a crafted header must not get further).
MAX_DIMENSION = 16384
MAX_TIME_BASE_TERM = 2**31 - 1
MAX_FPS = 1000.0
# Epoch seconds up to the end of year 9999, the last instant a datetime (and ISO 8601) can name.
MAX_EPOCH_S = 253_402_300_799.0
MAX_EXTRADATA = 1 << 16
# Codecs whose packets are sequences of NAL units (H.264 and H.265 share the framing).
NAL_CODECS = frozenset({"h264", "hevc"})

Epoch = Annotated[float, Field(ge=0.0, le=MAX_EPOCH_S, allow_inf_nan=False)]
Label = Annotated[str, StringConstraints(max_length=64)]


class StreamModel(BaseModel):
    """The `stream` object of a segment header, checked: strict types, finite numbers, sane ranges."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    codec: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    encoder: Label
    width: int = Field(ge=1, le=MAX_DIMENSION)
    height: int = Field(ge=1, le=MAX_DIMENSION)
    pix_fmt: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    time_base: list[Annotated[int, Field(ge=1, le=MAX_TIME_BASE_TERM)]] = Field(min_length=2, max_length=2)
    fps: float = Field(gt=0.0, le=MAX_FPS, allow_inf_nan=False)
    pts_epoch: Epoch
    extradata: Annotated[str, StringConstraints(max_length=2 * MAX_EXTRADATA, pattern=r"^(?:[0-9a-f]{2})*$")]


@dataclass(frozen=True)
class StreamInfo:
    """Everything a muxer needs to rebuild a playable file from the packets of one segment.

    `pts_epoch` is the UTC epoch time of pts 0: a packet was captured at `pts_epoch + pts * time_base`.
    """

    codec: str
    encoder: str
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    fps: float
    pts_epoch: float
    extradata: bytes = b""

    def seconds(self, pts: int) -> float:
        """The capture time (UTC epoch seconds) of a packet with this pts."""
        return self.pts_epoch + float(pts * self.time_base)

    def to_json(self) -> dict[str, Any]:
        """The `stream` object of a segment header."""
        return {
            "codec": self.codec,
            "encoder": self.encoder,
            "width": self.width,
            "height": self.height,
            "pix_fmt": self.pix_fmt,
            "time_base": [self.time_base.numerator, self.time_base.denominator],
            "fps": self.fps,
            "pts_epoch": self.pts_epoch,
            "extradata": self.extradata.hex(),
        }

    @classmethod
    def from_model(cls, model: StreamModel) -> StreamInfo:
        """The stream described by a checked header object."""
        num, den = model.time_base
        return cls(
            codec=model.codec,
            encoder=model.encoder,
            width=model.width,
            height=model.height,
            pix_fmt=model.pix_fmt,
            time_base=Fraction(num, den),
            fps=model.fps,
            pts_epoch=model.pts_epoch,
            extradata=bytes.fromhex(model.extradata),
        )


@dataclass(frozen=True)
class EncodedPacket:
    """One encoded video packet. `dts` is None when the encoder gave none (intra-only codecs)."""

    pts: int
    dts: int | None
    duration: int
    keyframe: bool
    data: bytes


def annexb_units(data: bytes) -> Iterator[memoryview]:
    """The NAL units of an Annex B packet, start codes removed (views into `data`, not copies: this
    runs on every frame the device seals).

    A unit ends where the next start code `00 00 01` begins, and a zero byte just before that start
    code belongs to it (the 4-byte form `00 00 00 01`); bytes before the first start code are not a
    unit. This is how FFmpeg rewrites Annex B into an MP4 sample, so both give the same units.
    """
    view = memoryview(data)
    start = data.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        start = data.find(b"\x00\x00\x01", begin)
        end = len(data) if start == -1 else start
        if start != -1 and end > begin and data[end - 1] == 0:
            end -= 1
        if end > begin:
            yield view[begin:end]


def length_prefixed_units(data: bytes, length_size: int = 4) -> Iterator[memoryview]:
    """The NAL units of a length-prefixed sample (MP4/AVCC), as views into `data`; ValueError when the
    lengths do not fit."""
    view = memoryview(data)
    if length_size not in (1, 2, 4):
        raise ValueError(f"NAL length size {length_size} (1, 2 or 4 expected)")
    offset = 0
    while offset < len(data):
        if offset + length_size > len(data):
            raise ValueError(f"sample ends inside a NAL length at byte {offset}")
        size = int.from_bytes(data[offset : offset + length_size], "big")
        offset += length_size
        if offset + size > len(data):
            raise ValueError(f"NAL unit of {size} bytes overruns the sample at byte {offset}")
        if size:
            yield view[offset : offset + size]
        offset += size


def units_digest(units: Iterator[memoryview]) -> bytes:
    """SHA-256 over each NAL unit as 4-byte big-endian length then bytes (unambiguous concatenation)."""
    digest = hashlib.sha256()
    for unit in units:
        digest.update(len(unit).to_bytes(4, "big"))
        digest.update(unit)
    return digest.digest()


def packet_digest(stream: StreamInfo, data: bytes) -> bytes:
    """The frame hash of one packet as the device's encoder wrote it (Annex B for H.264/H.265).

    See `formats/sealing.py` for the rule; never raises (any bytes have a hash).
    """
    if stream.codec not in NAL_CODECS:
        return hashlib.sha256(data).digest()
    return units_digest(annexb_units(data))


def sample_digest(codec: str, sample: bytes, length_size: int = 4) -> bytes:
    """The frame hash of one MP4 sample (length-prefixed NAL units for H.264/H.265, else the bytes).

    `length_size` is the avcC/hvcC record's NAL length size (4 in the collector's exports).
    ValueError when the sample's lengths do not add up.
    """
    if codec not in NAL_CODECS:
        return hashlib.sha256(sample).digest()
    return units_digest(length_prefixed_units(sample, length_size))
