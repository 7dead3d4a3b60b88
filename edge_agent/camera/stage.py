"""The mask -> motion stage: privacy mask, then motion detector, then event tracker.

One object holds the three, so that the live camera worker and `edge-agent motion-replay` run the very
same steps on each frame and a technician tuning with a replay sees what the camera would decide.

Every masked frame leaves `mask` in I420 (`MaskedFrame.in_i420`; a source that delivers I420 is masked
as it is): the queue then holds half the bytes, the detector reads the grey image off the Y plane and
the encoder takes the frame as its input, instead of each converting a BGR image on its own. It is made
from the masked image, so nothing downstream sees an unmasked pixel.

The stage is split in two calls because the live worker splits it across two threads: `mask` runs on
the capture thread (no raw frame ever reaches the queue), `observe` on the processing thread. Each call
must always come from the same thread; `step` does both for a caller with a single thread (the replay).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.camera.frames import Frame, MaskedFrame
from edge_agent.camera.motion import EventTracker, MotionDetector, MotionEvent, MotionResult
from edge_agent.camera.privacy import PrivacyMasker, masker_for_camera
from edge_agent.formats.config import CameraConfig, MotionConfig


@dataclass(frozen=True)
class StageOutput:
    """One frame through the stage: the masked frame, what the detector saw (None when motion detection
    is disabled) and the event messages the frame caused."""

    frame: MaskedFrame
    result: MotionResult | None
    events: list[MotionEvent]


class MotionStage:
    """A camera's privacy masker, motion detector and event tracker, fed frames in time order."""

    def __init__(self, camera_id: str, masker: PrivacyMasker, motion: MotionConfig) -> None:
        self.camera_id = camera_id
        self.masker = masker
        self.motion = motion
        self._tracker = EventTracker(camera_id, motion)
        self._detector: MotionDetector | None = None
        self._last_ts = 0.0
        self._event_start: float | None = None

    @classmethod
    def for_camera(cls, camera: CameraConfig) -> MotionStage:
        """The stage of a configured camera; MasksRequired when it must be masked and has no mask."""
        return cls(camera.id, masker_for_camera(camera), camera.motion)

    @property
    def event_open(self) -> bool:
        """Whether a motion event is in progress."""
        return self._tracker.is_open

    @property
    def event_start(self) -> float | None:
        """When the open event started (its first moving frame, before the event was confirmed); None
        when no event is open. The recorder counts its pre-roll back from there."""
        return self._event_start if self._tracker.is_open else None

    def mask(self, frame: Frame) -> MaskedFrame:
        """Mask the raw frame in place (the raw Frame must not be used afterwards), in I420 (odd sizes
        stay BGR: I420 has none)."""
        return self.masker.apply(frame).in_i420()

    def observe(self, frame: MaskedFrame) -> StageOutput:
        """Run detection and event tracking on a masked frame, at its capture time."""
        self._last_ts = frame.captured_at
        if not self.motion.enabled:
            return StageOutput(frame, None, [])
        if self._detector is None or self._detector.frame_size != frame.size:
            # A source reopened at another resolution needs a background model (and mask) of that size.
            self._detector = MotionDetector(self.motion, frame.size, self.masker.mask_for(frame.size))
        result = self._detector.detect(frame)
        events = self._tracker.update(result, frame.captured_at)
        for event in events:
            if event.phase == "start":
                self._event_start = event.start_ts
        return StageOutput(frame, result, events)

    def step(self, frame: Frame) -> StageOutput:
        """`mask` then `observe`, for a caller that does both on one thread."""
        return self.observe(self.mask(frame))

    def close(self) -> list[MotionEvent]:
        """End an event still open, at the time of the last frame observed."""
        return self._tracker.close(self._last_ts)
