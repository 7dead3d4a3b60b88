"""Masked frames in, encoded packets out: H.264 through PyAV (any FFmpeg encoder by name), MJPEG fallback.

Timestamps are milliseconds since the encoder's first frame (`StreamInfo.pts_epoch`), so every packet
carries its capture time, whatever the real frame rate. H.264 parameter sets travel in-band on every
keyframe (no global header), so any run of packets starting at a keyframe decodes on its own. There are
no B-frames: decode order is presentation order. `force_keyframe` asks for an IDR frame at a segment
boundary; the packet for it may come out a few frames later (encoder look-ahead), which is why the
recorder cuts segments on packets, not on frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import cast

import av
import cv2
import numpy as np
from av.video.codeccontext import VideoCodecContext

from edge_agent.formats.config import StorageConfig
from edge_agent.formats.media import EncodedPacket, StreamInfo

TIME_BASE = Fraction(1, 1000)
DEFAULT_ENCODERS = {"h264": "libx264", "mjpeg": "mjpeg"}


class EncoderError(Exception):
    """The encoder cannot be opened or refuses a frame; the message names the encoder."""


def encoder_name(storage: StorageConfig) -> str:
    """The FFmpeg encoder to use: the configured one, or libx264 / mjpeg by codec."""
    return storage.encoder or DEFAULT_ENCODERS[storage.codec]


def _options(storage: StorageConfig, name: str, fps: float) -> dict[str, str]:
    gop = max(1, round(storage.gop_seconds * fps))
    options = {"g": str(gop), "bf": "0"}
    if name == "libx264":
        options.update({"preset": storage.preset, "forced-idr": "1"})
        if storage.bitrate_kbps:
            options.update(
                {
                    "b": f"{storage.bitrate_kbps}k",
                    "maxrate": f"{storage.bitrate_kbps}k",
                    "bufsize": f"{2 * storage.bitrate_kbps}k",
                }
            )
        else:
            options["crf"] = str(storage.crf)
    elif storage.codec == "mjpeg":
        options = {"qmin": str(storage.mjpeg_qscale), "qmax": str(storage.mjpeg_qscale)}
    elif storage.bitrate_kbps:
        options["b"] = f"{storage.bitrate_kbps}k"
    return options


class VideoEncoder:
    """One open encoder for one resolution; not thread-safe (one camera thread uses it)."""

    def __init__(self, storage: StorageConfig, size: tuple[int, int], fps: float, epoch: float) -> None:
        name = encoder_name(storage)
        width, height = size
        pix_fmt = "yuvj420p" if storage.codec == "mjpeg" else "yuv420p"
        try:
            context = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
            context.width, context.height = width, height
            context.pix_fmt = pix_fmt
            context.time_base = TIME_BASE
            context.framerate = Fraction(fps).limit_denominator(1001)
            context.options = _options(storage, name, fps)
            context.open()
        except (av.FFmpegError, ValueError) as error:
            raise EncoderError(f"encoder {name!r} ({storage.codec} {width}x{height}): {error}") from None
        self._context = context
        self._duration = max(1, round(1000 / fps))
        self._last_pts = -1
        self.stream = StreamInfo(
            codec=storage.codec,
            encoder=name,
            width=width,
            height=height,
            pix_fmt=pix_fmt,
            time_base=TIME_BASE,
            fps=fps,
            pts_epoch=epoch,
            extradata=bytes(context.extradata or b""),
        )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) this encoder takes."""
        return self.stream.width, self.stream.height

    def encode(
        self, image: np.ndarray, captured_at: float, force_keyframe: bool = False
    ) -> list[EncodedPacket]:
        """Encode one BGR image captured at `captured_at`; returns the packets that came out."""
        # A clock stepped backwards must not make pts go backwards: encoders and muxers refuse that.
        pts = max(self._last_pts + 1, round((captured_at - self.stream.pts_epoch) * 1000))
        self._last_pts = pts
        frame = self._frame(image)
        frame.pts = pts
        frame.time_base = TIME_BASE
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        try:
            return self._packets(self._context.encode(frame))
        except av.FFmpegError as error:
            raise EncoderError(f"encoder {self.stream.encoder!r}: {error}") from None

    def _frame(self, image: np.ndarray) -> av.VideoFrame:
        """The image as an encoder input, without copying the caller's pixels.

        For yuv420p, OpenCV's SIMD BGR->I420 (the same BT.601 limited-range matrix as swscale) takes about
        1 ms at 1080p where swscale's BGR path takes 6, a third of the whole H.264 encode. yuvj420p (MJPEG,
        full range) has no OpenCV equivalent: swscale converts it from the wrapped BGR buffer.
        """
        if self.stream.pix_fmt == "yuv420p":
            i420: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
            return av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")
        return av.VideoFrame.from_numpy_buffer(image, format="bgr24")

    def flush(self) -> list[EncodedPacket]:
        """Drain the packets still inside the encoder; the encoder is finished afterwards."""
        try:
            return self._packets(self._context.encode(None))
        except av.FFmpegError as error:
            raise EncoderError(f"encoder {self.stream.encoder!r}: {error}") from None

    def _packets(self, packets: Iterable[av.Packet]) -> list[EncodedPacket]:
        return [
            EncodedPacket(
                pts=int(p.pts),
                dts=None if p.dts is None else int(p.dts),
                duration=int(p.duration or 0) or self._duration,
                keyframe=bool(p.is_keyframe),
                data=bytes(p),
            )
            for p in packets
            if p.pts is not None
        ]


def decode_packets(stream: StreamInfo, packets: Iterable[EncodedPacket]) -> Iterator[np.ndarray]:
    """Decode packets (from a keyframe on) back to BGR images: for tests and checks, not for export."""
    context = cast(VideoCodecContext, av.CodecContext.create(stream.codec, "r"))
    if stream.extradata:
        context.extradata = stream.extradata
    for packet in packets:
        av_packet = av.Packet(packet.data)
        av_packet.pts = packet.pts
        av_packet.dts = packet.dts
        av_packet.time_base = stream.time_base
        for frame in context.decode(av_packet):
            yield frame.to_ndarray(format="bgr24")
    for frame in context.decode(None):
        yield frame.to_ndarray(format="bgr24")
