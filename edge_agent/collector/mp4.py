"""Remux decrypted segment packets into one standard MP4 (PyAV, no re-encode).

Packets keep their capture times: pts 0 of the MP4 is the requested start, a gap in the footage is a
gap in the timeline. A clip that starts between keyframes begins at the keyframe before the start and
the pre-roll packets get negative timestamps, which the MP4 muxer turns into an edit list: players and
decoders show the clip from the requested start, and no frame is re-encoded.

Each packet may carry a reference to where it came from (segment sequence, index in the segment); the
summary lists them in the order the MP4 holds its samples, so that the export can say which of the
device's signed packets each sample is (`provenance`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from edge_agent.formats.media import EncodedPacket, StreamInfo

# Raw elementary-stream demuxers that can describe a stream from its first keyframe.
_RAW_FORMATS = {"h264": "h264", "hevc": "hevc", "mjpeg": "mjpeg"}


class Mp4Error(Exception):
    """Footage that cannot be written as one MP4 (unknown codec, stream change mid-clip)."""


@dataclass(frozen=True)
class PacketRef:
    """Where a packet of the MP4 came from: its segment's sequence and its index in that segment."""

    sequence: int
    index: int


@dataclass(frozen=True)
class Mp4Summary:
    """What was written; `samples` holds the given references in the MP4's sample order."""

    packets: int
    first_ts: float | None
    last_ts: float | None
    samples: tuple[PacketRef, ...] = ()


class Mp4Writer:
    """Feeds packets of successive segments into one MP4 file, trimmed to [start_ts, end_ts)."""

    def __init__(self, path: Path, start_ts: float, end_ts: float) -> None:
        self.path = Path(path)
        self.start_ts = start_ts
        self.end_ts = end_ts
        self._container: Any = None
        self._stream: Any = None
        self._info: StreamInfo | None = None
        self._time_base = Fraction(1, 90_000)
        self._seconds_per_tick = float(self._time_base)
        self._pending: list[tuple[StreamInfo, EncodedPacket, PacketRef | None]] = []
        self._samples: list[PacketRef] = []
        self._started = False
        self._last_dts: int | None = None
        self.packets = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def add(self, info: StreamInfo, packet: EncodedPacket, ref: PacketRef | None = None) -> None:
        """One packet in decode order; packets before the start wait for the first one inside."""
        at = info.pts_epoch + packet.pts * float(info.time_base)
        if at >= self.end_ts:
            return
        if not self._started:
            if at < self.start_ts:
                # Keep only the GOP that leads into the range: the last keyframe and what follows.
                if packet.keyframe:
                    self._pending = []
                if self._pending or packet.keyframe:
                    self._pending.append((info, packet, ref))
                return
            if not self._pending and not packet.keyframe:
                return  # cannot decode without its keyframe: a gap until the next one
            self._started = True
            for early_info, early, early_ref in self._pending:
                self._mux(early_info, early, early_ref)
            self._pending = []
        self._mux(info, packet, ref)

    def close(self) -> Mp4Summary:
        """Finish the file (no file at all when no packet fell in the range)."""
        if self._container is not None:
            self._container.close()
        return Mp4Summary(self.packets, self.first_ts, self.last_ts, tuple(self._samples))

    def _open(self, info: StreamInfo, first: EncodedPacket) -> None:
        raw_format = _RAW_FORMATS.get(info.codec)
        if raw_format is None:
            raise Mp4Error(f"codec {info.codec!r} cannot be remuxed to MP4 here")
        # PyAV opens an encoder for a stream created from a codec name; a template stream parsed
        # from the first keyframe (with the stream's parameter sets) keeps the bitstream untouched.
        probe = av.open(io.BytesIO(info.extradata + first.data), format=raw_format)
        try:
            self._container = av.open(str(self.path), "w", format="mp4")
            self._stream = self._container.add_stream_from_template(probe.streams.video[0])
        finally:
            probe.close()
        # A fine time base places the requested start exactly, whatever the stream's own time base.
        self._stream.time_base = self._time_base
        self._info = info

    def _check_same_stream(self, info: StreamInfo) -> None:
        assert self._info is not None
        before = (self._info.codec, self._info.width, self._info.height, self._info.extradata)
        if (info.codec, info.width, info.height, info.extradata) != before:
            raise Mp4Error(
                f"stream changes mid-clip ({self._info.codec} {self._info.width}x{self._info.height}"
                f" -> {info.codec} {info.width}x{info.height}): fetch the two parts separately"
            )

    def _mux(self, info: StreamInfo, packet: EncodedPacket, ref: PacketRef | None) -> None:
        if self._container is None:
            self._open(info, packet)
        else:
            self._check_same_stream(info)
        # Float arithmetic here: Fraction per packet costs more than the rest of the mux.
        scale = float(info.time_base)
        at = info.pts_epoch + packet.pts * scale
        pts = self._ticks(at)
        dts = pts if packet.dts is None else self._ticks(info.pts_epoch + packet.dts * scale)
        if self._last_dts is not None and dts <= self._last_dts:
            dts = self._last_dts + 1  # segments meet at a rounding boundary: keep dts increasing
        self._last_dts = dts
        out = av.Packet(packet.data)
        out.pts = max(pts, dts)
        out.dts = dts
        out.duration = round(packet.duration * scale / self._seconds_per_tick)
        out.time_base = self._time_base
        out.is_keyframe = packet.keyframe
        out.stream = self._stream
        self._container.mux(out)
        self.packets += 1
        if ref is not None:
            self._samples.append(ref)
        self.first_ts = at if self.first_ts is None else min(self.first_ts, at)
        self.last_ts = at if self.last_ts is None else max(self.last_ts, at)

    def _ticks(self, at: float) -> int:
        return round((at - self.start_ts) / self._seconds_per_tick)
