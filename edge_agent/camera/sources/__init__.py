"""Frame sources, one module per backend; `open_source` picks one from a camera's config."""

from __future__ import annotations

import time

from edge_agent.camera.sources.base import FrameSource, SourceError
from edge_agent.formats.config import CameraConfig, SourceKind
from edge_agent.formats.times import Clock

__all__ = ["FrameSource", "SourceError", "open_source"]


def open_source(camera: CameraConfig, clock: Clock = time.time) -> FrameSource:
    """Open the backend the camera's `source` names; SourceError with the fix when it cannot."""
    kind = camera.source.kind
    if kind is SourceKind.SYNTHETIC:
        from edge_agent.camera.sources.synthetic import SyntheticSource

        return SyntheticSource.from_camera(camera, clock)
    if kind is SourceKind.OPENCV:
        from edge_agent.camera.sources.opencv import OpenCVSource

        return OpenCVSource.from_camera(camera, clock)
    if kind is SourceKind.FILE:
        from edge_agent.camera.sources.file import FileSource

        return FileSource.from_camera(camera, clock)
    if kind is SourceKind.STREAM:
        from edge_agent.camera.sources.stream import StreamSource

        return StreamSource.from_camera(camera, clock)
    from edge_agent.camera.sources.picamera import PicameraSource

    return PicameraSource.from_camera(camera, clock)
