"""The frame types that travel through a camera pipeline.

A `Frame` is what a source captured. A `MaskedFrame` is what the privacy mask returned: every consumer
(motion, recorder, snapshot, preview) takes a `MaskedFrame`, so the type checker proves that no code path
hands raw pixels to anything that stores or shows them. Only `edge_agent.camera.privacy` constructs one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class _Image:
    """What every frame carries.

    `captured_at` is UTC epoch seconds (wall clock at capture, or simulated time for replays);
    `seq` counts frames from 0 per source start; `image` is HxWx3 uint8 BGR, owned by this frame.
    """

    camera_id: str
    seq: int
    captured_at: float
    image: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Frame(_Image):
    """One captured image, before masking: only the privacy mask may take it."""


@dataclass(frozen=True, slots=True)
class MaskedFrame(_Image):
    """A frame whose private areas have been masked in place; the only kind consumers accept.

    `i420`, when the camera's stage made it, is the same masked image in I420 (BT.601 limited range,
    H*3/2 x W): one conversion serves both the encoder (its input format) and the motion detector (its
    Y plane is the grey image).
    """

    i420: np.ndarray | None = None
