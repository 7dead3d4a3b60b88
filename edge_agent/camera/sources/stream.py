"""A network stream (RTSP, HTTP, UDP, TCP) decoded by PyAV straight to I420.

Decoded as files are (`sources.decoding`): OpenCV's capture of a stream hands out BGR and holds more
decoder memory. The stream is opened with options for cameras on a network: RTSP interleaved over its TCP
connection, and a socket timeout so that a dead camera ends `read` (the worker then reopens the stream
with backoff) instead of blocking it forever.
"""

from __future__ import annotations

import logging

import av

from edge_agent.camera.frames import Frame
from edge_agent.camera.sources.base import SourceError
from edge_agent.camera.sources.decoding import DecodedFrames
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


def _open_stream(camera_id: str, url: str, timeout_s: float, clock: Clock) -> DecodedFrames:
    """The stream's frames; SourceError naming the camera and the URL (its credentials masked)."""
    where = masked_url(url)
    try:
        container = av.open(url, container_options=stream_options(url, timeout_s))
    except (av.FFmpegError, OSError) as error:
        raise SourceError(
            f"camera {camera_id!r}: cannot open stream {where!r} ({_reason(error)}):"
            " camera unreachable, wrong URL or credentials?"
        ) from None
    return DecodedFrames(camera_id, container, repr(where), clock)


class StreamSource:
    """Frames of a network stream as the camera sends them.

    `read` returns None when the stream ends, fails or stays silent for the timeout; the worker then
    reopens it with backoff. There is no looping: a live stream has no start to go back to.
    """

    paced = True

    def __init__(self, camera_id: str, url: str, clock: Clock, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.camera_id = camera_id
        self.url = url
        self._frames = _open_stream(camera_id, url, timeout_s, clock)

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> StreamSource:
        """The source a camera config names."""
        return cls(camera.id, camera.source.uri, clock)

    @property
    def native_fps(self) -> float:
        """The rate the stream declares (0 when unknown)."""
        return self._frames.native_fps

    def read(self) -> Frame | None:
        """The next frame, or None when the stream ended, failed or stayed silent for the timeout."""
        try:
            return self._frames.next()
        except (av.FFmpegError, OSError) as error:
            log.warning("camera %s: stream %s lost: %s", self.camera_id, masked_url(self.url), _reason(error))
            return None

    def close(self) -> None:
        """Close the connection and drop the decoder's frames."""
        self._frames.close()
