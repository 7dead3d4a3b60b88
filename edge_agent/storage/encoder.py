"""Masked frames in, encoded packets out: H.264 through PyAV (any FFmpeg encoder by name), MJPEG fallback.

Timestamps are milliseconds since the encoder's first frame (`StreamInfo.pts_epoch`), so every packet
carries its capture time, whatever the real frame rate. H.264 parameter sets travel in-band on every
keyframe (no global header), so any run of packets starting at a keyframe decodes on its own. There are
no B-frames: decode order is presentation order. `force_keyframe` asks for an IDR frame at a segment
boundary; the packet for it may come out a few frames later (encoder look-ahead), which is why the
recorder cuts segments on packets, not on frames.

Which encoder: `storage.encoder: auto` (the default) tries the board's hardware H.264 encoders that
the FFmpeg build has (a Pi 4 or Zero 2's `h264_v4l2m2m`; a Jetson's `h264_nvmpi` / `h264_nvv4l2`; a
Pi 5 has none), then libx264; a named encoder is tried before libx264 too (`encoder_candidates`). The
recorder moves down that list when an encoder fails to open or fails at run time.

libx264 settings, sized for one camera per core of a Pi 5 at 1080p 10 fps and for its memory (measured
on real frames: scripts/bench_camera_path.py for time, bench_memory.py for memory):
- `threads=1`: one core per camera, and each extra frame thread holds its own frames (x264's automatic
  count is 1.5 per core).
- `rc-lookahead=1` with `sync-lookahead=0`: x264 holds a full frame with its half-pel planes (about
  10 MB at 1080p) per frame of look-ahead, and one frame still drives macroblock-tree rate control,
  which saves 10 to 40 % of the bytes on a fixed camera's static background. A look-ahead of 10 held
  about 110 MB, 2 held 60; 1 holds 48, on the same rate-distortion curve within 0.1 dB on three
  dataset clips. Without look-ahead (tune zerolatency) it would hold 42 MB, but needs a CRF 2 to 3
  points higher for the same bytes and loses 0.2 to 0.3 dB at equal size.
- `force-cfr`: rate control counts time in frames of the configured rate rather than in timestamps
  (which the packets still carry as given): the same bytes in constant-quality mode, and 5 MB less
  per 1080p encoder.
The preset comes from the config (veryfast by default).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import cv2
import numpy as np
from av.video.codeccontext import VideoCodecContext

from edge_agent.camera.frames import PixelFormat
from edge_agent.formats.config import StorageConfig
from edge_agent.formats.media import EncodedPacket, StreamInfo

TIME_BASE = Fraction(1, 1000)
AUTO = "auto"
DEFAULT_ENCODERS = {"h264": "libx264", "mjpeg": "mjpeg"}
BOARD_MODEL = Path("/proc/device-tree/model")
# The hardware H.264 encoders worth trying on a board, by the start of its device-tree model, first
# match wins. A Pi 5 has no H.264 encoder block; a Jetson's depends on the FFmpeg build it runs.
BOARD_ENCODERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Raspberry Pi 5", ()),
    ("Raspberry Pi", ("h264_v4l2m2m",)),
    ("NVIDIA Jetson", ("h264_nvmpi", "h264_nvv4l2", "h264_v4l2m2m")),
)
X264_THREADS = 1
X264_LOOKAHEAD = 1
# Bits per pixel per frame a hardware encoder gets when no bitrate is configured (about 2 Mbit/s at
# 1080p 10 fps): hardware encoders have no constant-quality mode.
HARDWARE_BITS_PER_PIXEL = 0.1
PROBE_FRAMES = 3


class EncoderError(Exception):
    """The encoder cannot be opened or refuses a frame; the message names the encoder."""


def encoder_name(storage: StorageConfig) -> str:
    """The encoder a bare `VideoEncoder` opens: the configured one, or libx264 / mjpeg by codec."""
    return DEFAULT_ENCODERS[storage.codec] if storage.encoder in ("", AUTO) else storage.encoder


def board_model(path: Path = BOARD_MODEL) -> str:
    """The board's device-tree model ("Raspberry Pi 4 Model B Rev 1.4"), "" when there is none."""
    try:
        return path.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def encoder_candidates(
    storage: StorageConfig, model: str | None = None, available: Collection[str] | None = None
) -> list[str]:
    """The encoders to try, in order: a named one then the software one; for `auto` (or empty), the
    board's hardware H.264 encoders that this FFmpeg build has, then libx264."""
    software = DEFAULT_ENCODERS[storage.codec]
    if storage.encoder not in ("", AUTO):
        return list(dict.fromkeys([storage.encoder, software]))
    if storage.codec != "h264":
        return [software]
    model = board_model() if model is None else model
    have = av.codecs_available if available is None else available
    hardware = next((names for prefix, names in BOARD_ENCODERS if model.startswith(prefix)), ())
    return [name for name in hardware if name in have] + [software]


def _options(storage: StorageConfig, name: str, size: tuple[int, int], fps: float) -> dict[str, str]:
    gop = max(1, round(storage.gop_seconds * fps))
    options = {"g": str(gop), "bf": "0"}
    if name == "libx264":
        options.update(
            {
                "preset": storage.preset,
                "forced-idr": "1",
                "threads": str(X264_THREADS),
                "rc-lookahead": str(X264_LOOKAHEAD),
                "sync-lookahead": "0",
                "x264-params": "force-cfr=1",
            }
        )
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
    else:
        width, height = size
        kbps = storage.bitrate_kbps or round(width * height * fps * HARDWARE_BITS_PER_PIXEL / 1000)
        options["b"] = f"{kbps}k"
    return options


class VideoEncoder:
    """One open encoder for one resolution; not thread-safe (one camera thread uses it)."""

    def __init__(
        self, storage: StorageConfig, size: tuple[int, int], fps: float, epoch: float, name: str = ""
    ) -> None:
        name = name or encoder_name(storage)
        width, height = size
        pix_fmt = "yuvj420p" if storage.codec == "mjpeg" else "yuv420p"
        if name not in av.codecs_available:
            raise EncoderError(f"encoder {name!r}: not in this FFmpeg build")
        try:
            context = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
            context.width, context.height = width, height
            context.pix_fmt = pix_fmt
            context.time_base = TIME_BASE
            context.framerate = Fraction(fps).limit_denominator(1001)
            context.options = _options(storage, name, size, fps)
            # One thread: a camera's budget is one core, and FFmpeg's automatic count starts one per
            # core, each with frames of its own (MJPEG at 1080p held 49 MB, 20 with one; measured).
            context.thread_count = 1
            context.open()
        except (av.FFmpegError, ValueError, OSError) as error:
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
        self,
        image: np.ndarray,
        captured_at: float,
        force_keyframe: bool = False,
        pixel_format: PixelFormat = PixelFormat.BGR,
    ) -> list[EncodedPacket]:
        """Encode one image (BGR or I420, as `pixel_format` says) captured at `captured_at`; returns the
        packets that came out."""
        # A clock stepped backwards must not make pts go backwards: encoders and muxers refuse that.
        pts = max(self._last_pts + 1, round((captured_at - self.stream.pts_epoch) * 1000))
        self._last_pts = pts
        frame = self._frame(image, pixel_format)
        frame.pts = pts
        frame.time_base = TIME_BASE
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        try:
            return self._packets(self._context.encode(frame))
        except av.FFmpegError as error:
            raise EncoderError(f"encoder {self.stream.encoder!r}: {error}") from None

    def _frame(self, image: np.ndarray, pixel_format: PixelFormat) -> av.VideoFrame:
        """The image as an encoder input, without copying the caller's pixels (PyAV converts a format or
        size the encoder does not take: yuvj420p for MJPEG, full range, has no OpenCV equivalent).

        For a BGR image and a yuv420p encoder, OpenCV's SIMD BGR->I420 (the same BT.601 limited-range
        matrix as swscale) takes about 1 ms at 1080p where swscale's BGR path takes 6, a third of the
        whole H.264 encode.
        """
        if pixel_format is PixelFormat.I420:
            return av.VideoFrame.from_numpy_buffer(image, format="yuv420p")
        if self.stream.pix_fmt == "yuv420p" and image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0:
            planes: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
            return av.VideoFrame.from_numpy_buffer(planes, format="yuv420p")
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


EncoderFactory = Callable[[StorageConfig, tuple[int, int], float, float, str], VideoEncoder]
"""Opens an encoder: (storage, size, fps, epoch, name) -> VideoEncoder (EncoderError when it cannot)."""


def probe_encoder(
    storage: StorageConfig,
    name: str,
    size: tuple[int, int],
    fps: float,
    open_encoder: EncoderFactory = VideoEncoder,
) -> str:
    """Open `name` for real and encode a few grey frames at `size`: "" when packets come out, else why
    not. A hardware encoder can open and still fail at the first frame (no device, no memory)."""
    try:
        encoder = open_encoder(storage, size, fps, 0.0, name)
        image = np.full((size[1], size[0], 3), 128, np.uint8)
        packets = []
        for index in range(PROBE_FRAMES):
            packets += encoder.encode(image, index / fps, force_keyframe=index == 0)
        packets += encoder.flush()
    except EncoderError as error:
        return str(error)
    return "" if packets else f"encoder {name!r} gave no packet for {PROBE_FRAMES} frames"


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
