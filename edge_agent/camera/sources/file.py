"""A video file decoded by PyAV straight to I420, looped at its end.

OpenCV's capture hands out BGR (6 MB per 1080p frame) made from the decoder's I420 by a conversion it
keeps buffers for; decoding to I420 gives frames of half that size, which the mask, the motion detector
and the encoder take as they are. A file whose width or height is odd has no I420 layout: its frames
come as BGR.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream

from edge_agent.camera.frames import Frame, PixelFormat
from edge_agent.camera.sources.base import SourceError
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)


def _open_video(camera_id: str, path: str) -> tuple[InputContainer, VideoStream]:
    """The file's container and its first video stream; SourceError naming the camera and file."""
    if not Path(path).is_file():
        raise SourceError(f"camera {camera_id!r}: video file {path!r} does not exist")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as error:
        raise SourceError(f"camera {camera_id!r}: cannot open {path!r} as a video file ({error})") from None
    if not container.streams.video or container.streams.video[0].codec_context is None:
        container.close()
        raise SourceError(f"camera {camera_id!r}: {path!r} has no video stream this build can decode")
    stream = container.streams.video[0]
    # One decoding thread: a camera's budget is one core, and each frame thread of a decoder holds
    # frames of its own (FFmpeg's default starts one per core, plus one).
    stream.codec_context.thread_count = 1
    return container, stream


def frame_pixels(decoded: av.VideoFrame) -> tuple[np.ndarray, PixelFormat]:
    """A contiguous copy of a decoded frame's pixels that owns its memory: I420, or BGR when a side is odd.

    Shared by the PyAV sources (files and network streams).
    """
    if decoded.width % 2 or decoded.height % 2:
        # PyAV's BGR array is a view into a frame buffer, with the row padding of its planes: copy it.
        return np.array(decoded.to_ndarray(format="bgr24"), order="C"), PixelFormat.BGR
    # PyAV stacks the three planes into a new array, which holds no reference to the decoded frame.
    return np.ascontiguousarray(decoded.to_ndarray(format="yuv420p")), PixelFormat.I420


class FileSource:
    """Frames of a video file at the rate the worker paces them; at the end, the start again when looping.

    `read` returns None when the data cannot be decoded (the worker then reopens the file with backoff)
    or, without looping, at the end of the file.
    """

    paced = False

    def __init__(self, camera_id: str, path: str, clock: Clock, loop: bool = True) -> None:
        self.camera_id = camera_id
        self.path = path
        self._clock = clock
        self._loop = loop
        self._seq = 0
        self._container, self._stream = _open_video(camera_id, path)
        self._packets: Iterator[av.Packet] = self._container.demux(self._stream)
        # Frames the decoder gave for one packet beyond the first (several only when it drains at the end).
        self._pending: deque[av.VideoFrame] = deque()

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> FileSource:
        """The source a camera config names."""
        return cls(camera.id, camera.source.uri, clock, camera.source.loop)

    @property
    def native_fps(self) -> float:
        """The rate the file declares (0 when unknown)."""
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 0.0

    def read(self) -> Frame | None:
        """The next frame; at the file's end, the first frame again when looping, else None."""
        try:
            decoded = self._next_decoded()
            if decoded is None and self._loop:
                self._rewind()
                decoded = self._next_decoded()
            if decoded is None:
                return None
            image, pixel_format = frame_pixels(decoded)
        except (av.FFmpegError, OSError) as error:
            log.warning("camera %s: cannot decode %s: %s", self.camera_id, self.path, error)
            return None
        seq = self._seq
        self._seq += 1
        return Frame(self.camera_id, seq, self._clock(), image, pixel_format)

    def close(self) -> None:
        """Close the file and drop the decoder's frames."""
        self._pending.clear()
        self._container.close()

    def _next_decoded(self) -> av.VideoFrame | None:
        """The next decoded frame, or None at the end of the file (after the decoder was drained)."""
        while not self._pending:
            packet = next(self._packets, None)
            if packet is None:
                return None
            # The demuxer's last packet is empty: decoding it drains the frames the decoder held back.
            self._pending.extend(self._stream.decode(packet))
        return self._pending.popleft()

    def _rewind(self) -> None:
        """Back to the first frame: seeking flushes the decoder, so the demuxer restarts from a keyframe."""
        self._pending.clear()
        self._container.seek(self._stream.start_time or 0, stream=self._stream)
        self._packets = self._container.demux(self._stream)
