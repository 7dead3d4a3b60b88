"""OpenCV capture: a V4L2/USB device (index or path), an RTSP/HTTP stream, or a video file."""

from __future__ import annotations

from pathlib import Path

import cv2

from edge_agent.camera.frames import Frame
from edge_agent.camera.sources.base import SourceError
from edge_agent.formats.config import CameraConfig, is_device, is_stream, masked_url
from edge_agent.formats.times import Clock


class OpenCVSource:
    """Reads frames through cv2.VideoCapture; files may loop, devices and streams are paced by the camera."""

    def __init__(
        self,
        camera_id: str,
        uri: str,
        clock: Clock,
        resolution: tuple[int, int] | None = None,
        fps: float | None = None,
        loop: bool = True,
    ) -> None:
        self.camera_id = camera_id
        self.uri = uri
        self.paced = is_device(uri) or is_stream(uri)
        self._clock = clock
        self._loop = loop and not self.paced
        self._seq = 0
        if not self.paced and not Path(uri).is_file():
            raise SourceError(f"camera {camera_id!r}: video file {uri!r} does not exist")
        target: int | str = int(uri) if uri.isdigit() else uri
        backend = cv2.CAP_V4L2 if is_device(uri) else cv2.CAP_ANY
        # One decoding thread for a file or stream: a camera's budget is one core, and each extra frame
        # thread holds frames of its own (about 7 MB per 1080p stream and core, measured).
        params = [] if is_device(uri) else [cv2.CAP_PROP_N_THREADS, 1]
        self._capture = cv2.VideoCapture(target, backend, params)
        if not self._capture.isOpened():
            where = masked_url(uri)
            raise SourceError(f"camera {camera_id!r}: cannot open {where!r} (unplugged, wrong URL or codec?)")
        if is_device(uri) and resolution is not None:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, resolution[0])
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, resolution[1])
        if is_device(uri) and fps is not None:
            self._capture.set(cv2.CAP_PROP_FPS, fps)

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> OpenCVSource:
        """The source a camera config names."""
        return cls(camera.id, camera.source.uri, clock, camera.resolution, camera.fps, camera.source.loop)

    @property
    def native_fps(self) -> float:
        """The rate the file or device reports (0 when unknown)."""
        return float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> Frame | None:
        """The next frame; at a file's end, the first frame again when looping, else None."""
        ok, image = self._capture.read()
        if not ok and self._loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._capture.read()
        if not ok or image is None:
            return None
        seq = self._seq
        self._seq += 1
        return Frame(self.camera_id, seq, self._clock(), image)

    def close(self) -> None:
        """Release the device, stream or file."""
        self._capture.release()
