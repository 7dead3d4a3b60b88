"""Raspberry Pi camera through picamera2 (optional extra `edge_agent[pi]`).

The privacy mask is installed as picamera2's `pre_callback`, which runs on every request buffer before
any consumer of the stream, so even picamera2's own hardware encoder and previews only ever see
masked pixels. The frame the worker reads is masked again by the pipeline; masking is idempotent.
"""

from __future__ import annotations

import importlib
from typing import Any

from edge_agent.camera.frames import Frame
from edge_agent.camera.privacy import PrivacyMasker, masker_for_camera
from edge_agent.camera.sources.base import SourceError
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock


def _import_picamera2() -> Any:
    try:
        return importlib.import_module("picamera2")
    except ImportError as error:
        raise SourceError(
            "the picamera backend needs picamera2, which is not installed: "
            "pip install 'edge_agent[pi]' (on Raspberry Pi OS: apt install python3-picamera2)"
        ) from error


class PicameraSource:
    """Captures the `main` stream as BGR frames, masked in picamera2's pre_callback."""

    paced = True

    def __init__(
        self, camera_id: str, masker: PrivacyMasker, resolution: tuple[int, int], fps: float, clock: Clock
    ) -> None:
        module = _import_picamera2()
        self.camera_id = camera_id
        self._mapped_array = module.MappedArray
        self._masker = masker
        self._clock = clock
        self._seq = 0
        self._camera = module.Picamera2()
        # picamera2's "RGB888" stores pixels in B, G, R byte order, which is what OpenCV expects.
        video = self._camera.create_video_configuration(
            main={"size": tuple(resolution), "format": "RGB888"}, controls={"FrameRate": fps}
        )
        self._camera.configure(video)
        self._camera.pre_callback = self._mask_request
        self._camera.start()

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> PicameraSource:
        """The Pi camera for this config; MasksRequired propagates so that nothing starts unmasked."""
        return cls(camera.id, masker_for_camera(camera), camera.resolution, camera.fps, clock)

    def _mask_request(self, request: Any) -> None:
        with self._mapped_array(request, "main") as mapped:
            self._masker.apply_to_image(mapped.array)

    def read(self) -> Frame | None:
        """The next frame, or None when the camera stopped delivering."""
        try:
            image = self._camera.capture_array("main")
        except RuntimeError:
            return None
        seq = self._seq
        self._seq += 1
        # capture_array already hands over a fresh array of the RGB888 (3-channel BGR) main stream.
        return Frame(self.camera_id, seq, self._clock(), image)

    def close(self) -> None:
        """Stop and release the camera."""
        self._camera.stop()
        self._camera.close()
