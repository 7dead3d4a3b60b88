"""A network stream (RTSP, HTTP, UDP, TCP) decoded by PyAV straight to I420.

OpenCV's capture of a stream hands out BGR (6 MB per 1080p frame, converted back to I420 by the privacy
stage) and holds more decoder memory; PyAV gives the decoder's I420 as it is, as FileSource does for
files. The stream is opened with options for cameras on a network: RTSP interleaved over its TCP
connection, and a socket timeout so that a dead camera ends `read` (the worker then reopens the stream
with backoff) instead of blocking it forever.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

import av
from av.container import InputContainer
from av.video.stream import VideoStream

from edge_agent.camera.frames import Frame
from edge_agent.camera.sources.base import SourceError
from edge_agent.camera.sources.file import frame_pixels
from edge_agent.formats.config import CameraConfig, masked_url
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)

# Seconds without data before a stream counts as lost: a camera sends frames many times a second, and
# the worker's backoff starts after this, so a short wait reconnects sooner without false alarms.
DEFAULT_TIMEOUT_S = 5.0


def stream_options(url: str, timeout_s: float) -> dict[str, str]:
    """FFmpeg's options (names as of FFmpeg 5 and later) for a camera stream at `url`.

    `timeout` is each protocol's socket I/O timeout in microseconds (tcp, http, udp, and the RTSP
    demuxer, where it was `stimeout` before FFmpeg 5); without it a silent peer blocks a read forever.
    RTSP: the media is interleaved in the RTSP TCP connection (`rtsp_transport=tcp`) instead of UDP,
    whose packets get lost or blocked through NAT and firewalls, and only video is set up.
    """
    options = {"timeout": str(round(timeout_s * 1_000_000))}
    if url.lower().startswith(("rtsp://", "rtsps://")):
        options["rtsp_transport"] = "tcp"
        options["allowed_media_types"] = "video"
    return options


def _reason(error: Exception) -> str:
    """Why FFmpeg failed, without the URL (and its credentials) that PyAV puts in the error's text."""
    reason = getattr(error, "strerror", None)
    return str(reason) if reason else type(error).__name__


def _open_stream(camera_id: str, url: str, timeout_s: float) -> tuple[InputContainer, VideoStream]:
    """The stream's container and its first video stream; SourceError naming the camera and URL."""
    where = masked_url(url)
    try:
        container = av.open(url, container_options=stream_options(url, timeout_s))
    except (av.FFmpegError, OSError) as error:
        raise SourceError(
            f"camera {camera_id!r}: cannot open stream {where!r} ({_reason(error)}):"
            " camera unreachable, wrong URL or credentials?"
        ) from None
    if not container.streams.video or container.streams.video[0].codec_context is None:
        container.close()
        raise SourceError(f"camera {camera_id!r}: {where!r} has no video stream this build can decode")
    stream = container.streams.video[0]
    # One decoding thread: a camera's budget is one core, and each frame thread of a decoder holds
    # frames of its own (FFmpeg's default starts one per core, plus one).
    stream.codec_context.thread_count = 1
    return container, stream


class StreamSource:
    """Frames of a network stream as the camera sends them.

    `read` returns None when the stream ends, fails or stays silent for the timeout; the worker then
    reopens it with backoff. There is no looping: a live stream has no start to go back to.
    """

    paced = True

    def __init__(self, camera_id: str, url: str, clock: Clock, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.camera_id = camera_id
        self.url = url
        self._clock = clock
        self._seq = 0
        self._container, self._stream = _open_stream(camera_id, url, timeout_s)
        self._packets: Iterator[av.Packet] = self._container.demux(self._stream)
        # Frames the decoder gave for one packet beyond the first (several only when it drains at the end).
        self._pending: deque[av.VideoFrame] = deque()

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> StreamSource:
        """The source a camera config names."""
        return cls(camera.id, camera.source.uri, clock)

    @property
    def native_fps(self) -> float:
        """The rate the stream declares (0 when unknown)."""
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 0.0

    def read(self) -> Frame | None:
        """The next frame, or None when the stream ended, failed or stayed silent for the timeout."""
        try:
            decoded = self._next_decoded()
            if decoded is None:
                return None
            image, pixel_format = frame_pixels(decoded)
        except (av.FFmpegError, OSError) as error:
            log.warning("camera %s: stream %s lost: %s", self.camera_id, masked_url(self.url), _reason(error))
            return None
        seq = self._seq
        self._seq += 1
        return Frame(self.camera_id, seq, self._clock(), image, pixel_format)

    def close(self) -> None:
        """Close the connection and drop the decoder's frames."""
        self._pending.clear()
        self._container.close()

    def _next_decoded(self) -> av.VideoFrame | None:
        """The next decoded frame, or None when the stream ended (after the decoder was drained)."""
        while not self._pending:
            packet = next(self._packets, None)
            if packet is None:
                return None
            self._pending.extend(self._stream.decode(packet))
        return self._pending.popleft()
