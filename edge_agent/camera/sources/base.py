"""What every frame source offers, and how a camera's config picks one."""

from __future__ import annotations

from typing import Protocol

from edge_agent.camera.frames import Frame


class SourceError(Exception):
    """A source that cannot be opened or used; the message says why and what to do."""


class FrameSource(Protocol):
    """A camera backend. `read` blocks until the next frame; None means the stream failed or ended.

    `paced` is True when the source produces frames only as fast as the camera does (a device or a
    stream); for files and synthetic scenes it is False and the worker paces them to the configured fps.
    """

    paced: bool

    def read(self) -> Frame | None:
        """The next raw frame, or None when the source failed or ended (the worker reconnects)."""
        ...

    def close(self) -> None:
        """Release the device or stream."""
        ...
