"""A video file decoded by PyAV straight to I420 (`sources.decoding`), looped at its end."""

from __future__ import annotations

import logging
from pathlib import Path

import av

from edge_agent.camera.frames import Frame
from edge_agent.camera.sources.base import SourceError
from edge_agent.camera.sources.decoding import DecodedFrames
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)


def _open_video(camera_id: str, path: str, clock: Clock) -> DecodedFrames:
    """The file's frames; SourceError naming the camera and file."""
    if not Path(path).is_file():
        raise SourceError(f"camera {camera_id!r}: video file {path!r} does not exist")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as error:
        raise SourceError(f"camera {camera_id!r}: cannot open {path!r} as a video file ({error})") from None
    return DecodedFrames(camera_id, container, repr(path), clock)


class FileSource:
    """Frames of a video file at the rate the worker paces them; at the end, the start again when looping.

    `read` returns None when the data cannot be decoded (the worker then reopens the file with backoff)
    or, without looping, at the end of the file.
    """

    paced = False

    def __init__(self, camera_id: str, path: str, clock: Clock, loop: bool = True) -> None:
        self.camera_id = camera_id
        self.path = path
        self._loop = loop
        self._frames = _open_video(camera_id, path, clock)

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> FileSource:
        """The source a camera config names."""
        return cls(camera.id, camera.source.uri, clock, camera.source.loop)

    @property
    def native_fps(self) -> float:
        """The rate the file declares (0 when unknown)."""
        return self._frames.native_fps

    def read(self) -> Frame | None:
        """The next frame; at the file's end, the first frame again when looping, else None."""
        try:
            frame = self._frames.next()
            if frame is None and self._loop:
                self._frames.rewind()
                frame = self._frames.next()
        except (av.FFmpegError, OSError) as error:
            log.warning("camera %s: cannot decode %s: %s", self.camera_id, self.path, error)
            return None
        return frame

    def close(self) -> None:
        """Close the file and drop the decoder's frames."""
        self._frames.close()
