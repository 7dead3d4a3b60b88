"""What the PyAV sources (files and network streams) share: the frames of a container's first video
stream, decoded one at a time into frames that own their pixels.

Decoding gives the decoder's I420 as it is, where OpenCV's capture hands out BGR (6 MB per 1080p frame)
made by a conversion it keeps buffers for: half the bytes, taken as they are by the mask, the motion
detector and the encoder. A video whose width or height is odd has no I420 layout: its frames come as
BGR.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import av
import numpy as np
from av.container import InputContainer

from edge_agent.camera.frames import Frame, PixelFormat
from edge_agent.camera.sources.base import SourceError
from edge_agent.formats.times import Clock


def frame_pixels(decoded: av.VideoFrame) -> tuple[np.ndarray, PixelFormat]:
    """A contiguous copy of a decoded frame's pixels that owns its memory: I420, or BGR when a side is odd."""
    if decoded.width % 2 or decoded.height % 2:
        # PyAV's BGR array is a view into a frame buffer, with the row padding of its planes: copy it.
        return np.array(decoded.to_ndarray(format="bgr24"), order="C"), PixelFormat.BGR
    # PyAV stacks the three planes into a new array, which holds no reference to the decoded frame.
    return np.ascontiguousarray(decoded.to_ndarray(format="yuv420p")), PixelFormat.I420


class DecodedFrames:
    """The frames of `container`'s first video stream, numbered from 0 and timed by `clock` when taken.

    Takes ownership of the container (closed here when it has no video stream to decode, SourceError
    naming the camera and `where`). `next` lets FFmpeg's and the socket's errors through: the source
    decides what a failure means.
    """

    def __init__(self, camera_id: str, container: InputContainer, where: str, clock: Clock) -> None:
        if not container.streams.video or container.streams.video[0].codec_context is None:
            container.close()
            raise SourceError(f"camera {camera_id!r}: {where} has no video stream this build can decode")
        self.camera_id = camera_id
        self._container = container
        self._stream = container.streams.video[0]
        # One decoding thread: a camera's budget is one core, and each frame thread of a decoder holds
        # frames of its own (FFmpeg's default starts one per core, plus one).
        self._stream.codec_context.thread_count = 1
        self._clock = clock
        self._seq = 0
        self._packets: Iterator[av.Packet] = container.demux(self._stream)
        # Frames the decoder gave for one packet beyond the first (several only when it drains at the end).
        self._pending: deque[av.VideoFrame] = deque()

    @property
    def native_fps(self) -> float:
        """The rate the container declares (0 when unknown)."""
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 0.0

    def next(self) -> Frame | None:
        """The next frame, or None at the end of the input (after the decoder was drained)."""
        while not self._pending:
            packet = next(self._packets, None)
            if packet is None:
                return None
            # The demuxer's last packet is empty: decoding it drains the frames the decoder held back.
            self._pending.extend(self._stream.decode(packet))
        image, pixel_format = frame_pixels(self._pending.popleft())
        seq = self._seq
        self._seq += 1
        return Frame(self.camera_id, seq, self._clock(), image, pixel_format)

    def rewind(self) -> None:
        """Back to the first frame: seeking flushes the decoder, so the demuxer restarts from a keyframe."""
        self._pending.clear()
        self._container.seek(self._stream.start_time or 0, stream=self._stream)
        self._packets = self._container.demux(self._stream)

    def close(self) -> None:
        """Close the input and drop the decoder's frames."""
        self._pending.clear()
        self._container.close()
