"""What an encoder hands to the sealer: a description of the stream and its encoded packets.

Plain data, no codec library: the collector imports it to verify and open segments without PyAV.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any


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
    def from_json(cls, data: dict[str, Any]) -> StreamInfo:
        """Inverse of `to_json`; KeyError/ValueError/TypeError on a malformed object."""
        num, den = data["time_base"]
        return cls(
            codec=str(data["codec"]),
            encoder=str(data["encoder"]),
            width=int(data["width"]),
            height=int(data["height"]),
            pix_fmt=str(data["pix_fmt"]),
            time_base=Fraction(int(num), int(den)),
            fps=float(data["fps"]),
            pts_epoch=float(data["pts_epoch"]),
            extradata=bytes.fromhex(data["extradata"]),
        )


@dataclass(frozen=True)
class EncodedPacket:
    """One encoded video packet. `dts` is None when the encoder gave none (intra-only codecs)."""

    pts: int
    dts: int | None
    duration: int
    keyframe: bool
    data: bytes
