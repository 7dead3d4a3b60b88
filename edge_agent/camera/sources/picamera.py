"""Raspberry Pi camera through picamera2 (optional extra `edge_agent[pi]`).

The privacy mask is installed as picamera2's `pre_callback`, which runs on every request buffer before
any consumer of the stream, so even picamera2's own hardware encoder and previews only ever see
masked pixels. The frame the worker reads is masked again by the pipeline; masking is idempotent.

The main stream is captured as YUV420, what the ISP delivers natively: a Pi never holds a BGR frame
(twice the bytes, plus a conversion). picamera2 hands such a buffer over as (H*3/2) rows of `stride`
bytes: the Y plane (H rows of `stride`), then the U and V planes (H/2 rows of `stride`/2 each). The
stride is the width rounded up for the hardware (the ISP aligns it to 64 bytes), so at some widths every
row carries padding, which the mask skips and `read()` drops.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from edge_agent.camera.frames import Frame, PixelFormat, i420_planes
from edge_agent.camera.privacy import PrivacyMasker, masker_for_camera
from edge_agent.camera.sources.base import SourceError
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock

Size = tuple[int, int]


def yuv420_planes(buffer: np.ndarray, size: Size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a picamera2 YUV420 buffer shaped (H*3/2, stride), as
    `MappedArray` and `capture_array` shape it; the chroma rows are stride/2 long. Writes go through."""
    width, height = size
    rows, stride = buffer.shape
    if width % 2 or height % 2 or stride % 2 or stride < width or rows != height * 3 // 2:
        raise ValueError(f"not a YUV420 buffer of {width}x{height}: shape {buffer.shape}")
    if buffer.dtype != np.uint8 or not buffer.flags.c_contiguous:
        raise ValueError("a YUV420 buffer must be contiguous bytes: its planes are found by offset")
    flat = buffer.reshape(-1)  # a view, the buffer being contiguous
    luma = height * stride
    chroma = (height // 2) * (stride // 2)
    # A chroma plane may end in the middle of a buffer row (H/2 odd), hence the flat offsets.
    y = flat[:luma].reshape(height, stride)[:, :width]
    u = flat[luma : luma + chroma].reshape(height // 2, stride // 2)[:, : width // 2]
    v = flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, stride // 2)[:, : width // 2]
    return y, u, v


def contiguous_i420(buffer: np.ndarray, size: Size) -> np.ndarray:
    """The (H*3/2)xW I420 image in a picamera2 YUV420 buffer: the buffer itself when its rows carry no
    padding, else a copy without it."""
    width, height = size
    planes = yuv420_planes(buffer, size)
    if buffer.shape[1] == width:
        return buffer
    image = np.empty((height * 3 // 2, width), np.uint8)
    for target, source in zip(i420_planes(image), planes, strict=True):
        target[...] = source
    return image


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise SourceError(
            f"the picamera backend needs {name}, which is not installed: "
            "pip install 'edge_agent[pi]' (on Raspberry Pi OS: apt install python3-picamera2)"
        ) from error


class PicameraSource:
    """Captures the `main` stream as I420 frames, masked in picamera2's pre_callback."""

    paced = True

    def __init__(
        self, camera_id: str, masker: PrivacyMasker, resolution: tuple[int, int], fps: float, clock: Clock
    ) -> None:
        module = _import("picamera2")
        libcamera = _import("libcamera")
        self.camera_id = camera_id
        self._mapped_array = module.MappedArray
        self._masker = masker
        self._clock = clock
        self._seq = 0
        self._camera = module.Picamera2()
        # Frames are BT.601 limited range; picamera2 would pick BT.709 for a YUV stream from 1280x720 up.
        video = self._camera.create_video_configuration(
            main={"size": tuple(resolution), "format": "YUV420"},
            controls={"FrameRate": fps},
            colour_space=libcamera.ColorSpace.Smpte170m(),
        )
        self._camera.configure(video)
        # libcamera may adjust the size it was asked for; the buffers have the size it configured.
        width, height = self._camera.camera_configuration()["main"]["size"]
        self._size = (int(width), int(height))
        self._camera.pre_callback = self._mask_request
        self._camera.start()

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> PicameraSource:
        """The Pi camera for this config; MasksRequired propagates so that nothing starts unmasked."""
        return cls(camera.id, masker_for_camera(camera), camera.resolution, camera.fps, clock)

    def _mask_request(self, request: Any) -> None:
        # Masked in the request's own (possibly padded) buffer, which every consumer reads afterwards.
        with self._mapped_array(request, "main") as mapped:
            self._masker.apply_to_planes(*yuv420_planes(mapped.array, self._size))

    def read(self) -> Frame | None:
        """The next frame, or None when the camera stopped delivering."""
        try:
            buffer = self._camera.capture_array("main")
        except RuntimeError:
            return None
        seq = self._seq
        self._seq += 1
        # capture_array hands over a fresh copy of the buffer, so an unpadded one is the frame's own.
        image = contiguous_i420(buffer, self._size)
        return Frame(self.camera_id, seq, self._clock(), image, PixelFormat.I420)

    def close(self) -> None:
        """Stop and release the camera."""
        self._camera.stop()
        self._camera.close()
