"""The frame types that travel through a camera pipeline.

A `Frame` is what a source captured. A `MaskedFrame` is what the privacy mask returned: every consumer
(motion, recorder, snapshot, preview) takes a `MaskedFrame`, so the type checker proves that no code path
hands raw pixels to anything that stores or shows them. Only `edge_agent.camera.privacy` masks pixels.

A frame's pixels are BGR (HxWx3, what OpenCV captures) or I420 ((H*3/2)xW: the Y plane then the U and V
planes at half size, BT.601 limited range, what a decoder or the Pi's ISP delivers and what the H.264
encoder takes). The camera stage turns every masked frame to I420 once, so that downstream of the
mask a 1080p frame weighs 3 MB instead of 6 (plus the 3 of a conversion), the detector reads its grey
image off the Y plane and the encoder takes it as is; BGR is made again only for a snapshot or preview.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

import cv2
import numpy as np


class PixelFormat(StrEnum):
    """How a frame's pixels are laid out (named as FFmpeg names them)."""

    BGR = "bgr24"
    I420 = "yuv420p"


def i420_planes(i420: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a contiguous (H*3/2)xW I420 image (writes go through)."""
    height, width = i420.shape[0] * 2 // 3, i420.shape[1]
    flat = i420.reshape(-1)
    luma = width * height
    u = flat[luma : luma * 5 // 4].reshape(height // 2, width // 2)
    v = flat[luma * 5 // 4 : luma * 3 // 2].reshape(height // 2, width // 2)
    return i420[:height], u, v


@dataclass(frozen=True, slots=True)
class _Image:
    """What every frame carries.

    `captured_at` is UTC epoch seconds (wall clock at capture, or simulated time for replays);
    `seq` counts frames from 0 per source start; `image` holds the pixels in `pixel_format`, owned by
    this frame.
    """

    camera_id: str
    seq: int
    captured_at: float
    image: np.ndarray
    pixel_format: PixelFormat = PixelFormat.BGR

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        rows = self.image.shape[0]
        height = rows * 2 // 3 if self.pixel_format is PixelFormat.I420 else rows
        return int(self.image.shape[1]), int(height)

    def bgr(self) -> np.ndarray:
        """The pixels as BGR: the image itself when it is BGR (do not modify), else a new conversion."""
        if self.pixel_format is PixelFormat.BGR:
            return self.image
        return cv2.cvtColor(self.image, cv2.COLOR_YUV2BGR_I420)

    def in_i420(self) -> Self:
        """This frame with I420 pixels (itself when they already are, or when a side is odd: I420 has
        no odd sizes, and the encoder converts those on its own)."""
        width, height = self.size
        if self.pixel_format is PixelFormat.I420 or width % 2 or height % 2:
            return self
        i420 = cv2.cvtColor(self.image, cv2.COLOR_BGR2YUV_I420)
        return dataclasses.replace(self, image=i420, pixel_format=PixelFormat.I420)


@dataclass(frozen=True, slots=True)
class Frame(_Image):
    """One captured image, before masking: only the privacy mask may take it."""


@dataclass(frozen=True, slots=True)
class MaskedFrame(_Image):
    """A frame whose private areas have been masked in place; the only kind consumers accept."""
