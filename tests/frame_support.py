"""Checks on masked frames, which travel in I420 downstream of the mask."""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.camera.frames import MaskedFrame, PixelFormat, i420_planes


def luma_of(color: tuple[int, int, int]) -> int:
    """The Y value a BGR colour takes in I420 (the conversion the frames go through)."""
    return int(cv2.cvtColor(np.full((2, 2, 3), color, np.uint8), cv2.COLOR_BGR2YUV_I420)[0, 0])


def painted(frame: MaskedFrame, rows: slice, columns: slice, color: tuple[int, int, int]) -> bool:
    """Whether every pixel of the region shows `color` (in I420: its luma, the plane a mask paints
    pixel for pixel)."""
    if frame.pixel_format is PixelFormat.I420:
        return bool(np.all(i420_planes(frame.image)[0][rows, columns] == luma_of(color)))
    return bool(np.all(frame.image[rows, columns] == color))
