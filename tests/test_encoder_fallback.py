"""Encoder choice and fallback (issue 14 item 13): `auto` tries the board's hardware H.264 encoders then
libx264; an encoder that fails to open or fails while recording hands over to the next, the footage
goes on, and status says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.camera.frames import PixelFormat
from edge_agent.camera.pipeline import CameraState, CameraStats
from edge_agent.formats.config import StorageConfig
from edge_agent.formats.sealing import open_segment, verify_chain, verify_segment
from edge_agent.link.status import CameraReport, camera_status
from edge_agent.storage.encoder import (
    EncoderError,
    VideoEncoder,
    board_model,
    decode_packets,
    encoder_candidates,
    probe_encoder,
)
from edge_agent.storage.recorder import Recorder
from edge_agent.storage.ringbuffer import RingBuffer
from tests.storage_support import camera, footage_clock, make_keys, storage, synthetic_frames

T0 = 1_700_000_000.0
EVERY_ENCODER = {"h264_v4l2m2m", "h264_nvmpi", "h264_nvv4l2", "libx264", "mjpeg"}


@pytest.mark.parametrize(
    ("model", "available", "expected"),
    [
        ("Raspberry Pi 4 Model B Rev 1.4", EVERY_ENCODER, ["h264_v4l2m2m", "libx264"]),
        ("Raspberry Pi Zero 2 W Rev 1.0", EVERY_ENCODER, ["h264_v4l2m2m", "libx264"]),
        ("Raspberry Pi 5 Model B Rev 1.0", EVERY_ENCODER, ["libx264"]),  # no H.264 encoder block
        (
            "NVIDIA Jetson Nano Developer Kit",
            EVERY_ENCODER,
            ["h264_nvmpi", "h264_nvv4l2", "h264_v4l2m2m", "libx264"],
        ),
        (
            "NVIDIA Jetson Xavier NX",
            {"h264_nvv4l2", "libx264"},
            ["h264_nvv4l2", "libx264"],
        ),  # what the build has
        ("Raspberry Pi 4 Model B Rev 1.4", {"libx264"}, ["libx264"]),
        ("", EVERY_ENCODER, ["libx264"]),  # a PC: no device tree
    ],
)
def test_auto_tries_the_boards_hardware_encoders_then_libx264(
    model: str, available: set[str], expected: list[str]
) -> None:
    assert encoder_candidates(StorageConfig(), model, available) == expected
    assert encoder_candidates(StorageConfig(encoder=""), model, available) == expected  # older configs


def test_a_named_encoder_falls_back_to_the_codecs_software_one() -> None:
    pi4 = "Raspberry Pi 4 Model B"
    assert encoder_candidates(StorageConfig(encoder="h264_v4l2m2m"), pi4) == ["h264_v4l2m2m", "libx264"]
    assert encoder_candidates(StorageConfig(encoder="libx264"), pi4) == ["libx264"]
    assert encoder_candidates(StorageConfig(codec="mjpeg"), pi4) == ["mjpeg"]
    assert StorageConfig().encoder == "auto"


def test_board_model_reads_the_device_tree(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert board_model(model) == "Raspberry Pi 4 Model B Rev 1.4"
    assert board_model(tmp_path / "absent") == ""


def test_probe_opens_and_encodes_for_real() -> None:
    st = StorageConfig()
    assert probe_encoder(st, "libx264", (320, 240), 10.0) == ""
    assert (
        probe_encoder(st, "h264_bogus", (320, 240), 10.0) == "encoder 'h264_bogus': not in this FFmpeg build"
    )


def _record(tmp_path: Path, st: StorageConfig, frames: int, **kw: object) -> tuple[Recorder, list[str]]:
    """Record the synthetic camera; every segment verifies, chains and decodes. The recorder, and the
    encoder each segment's stream names."""
    keys = make_keys()
    cam = camera()
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key(), **kw)  # type: ignore[arg-type]
    for _, masked in synthetic_frames(cam, frames, T0):
        recorder.on_frame(masked, False)
    recorder.close()
    rows = ring.segments("cam1")
    assert verify_chain([verify_segment(r.path, keys.device.public_key()) for r in rows]) == []
    decoded = 0
    encoders = []
    for row in rows:
        opened = open_segment(row.path, keys.csu, keys.device.public_key())
        decoded += len(list(decode_packets(opened.stream, opened.packets)))
        encoders.append(opened.stream.encoder)
    assert decoded == recorder.stats().packets
    return recorder, encoders


def _status(recorder: Recorder) -> dict[str, object]:
    stats = CameraStats("cam1", CameraState.RUNNING, 10.0, 40, 0, (320, 240), 1, 0, False, 0, "")
    entry = camera_status(CameraReport(recorder.camera, stats, recorder.stats()))
    assert entry.recorder is not None
    return entry.recorder.wire()


@pytest.mark.parametrize(
    ("configured", "reason"),
    [
        ("h264_bogus", "encoder 'h264_bogus': not in this FFmpeg build"),
        ("h264_v4l2m2m", "encoder 'h264_v4l2m2m' (h264 320x240):"),  # in the build, no device here
    ],
)
def test_an_encoder_that_cannot_open_falls_back_and_nothing_is_lost(
    tmp_path: Path, configured: str, reason: str
) -> None:
    if configured == "h264_v4l2m2m" and probe_encoder(StorageConfig(), configured, (320, 240), 10.0) == "":
        pytest.skip("this machine really has a V4L2 memory-to-memory H.264 encoder")
    recorder, encoders = _record(tmp_path, storage(tmp_path, encoder=configured), 40)
    stats = recorder.stats()
    assert stats.packets == 40 and stats.errors == 0 and stats.encoder == "libx264"
    assert stats.encoder_fallback.startswith(reason)
    assert set(encoders) == {"libx264"}
    wire = _status(recorder)
    assert wire["encoder"] == "libx264" and str(wire["fallback"]).startswith(reason)


class FailingEncoder(VideoEncoder):
    """libx264 behind the same interface, that fails at its `fail_at`-th frame like a hardware
    encoder losing its device mid-run."""

    fail_at = 25

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._frames = 0

    def encode(self, image, captured_at, force_keyframe=False, pixel_format=PixelFormat.BGR):  # type: ignore[no-untyped-def]
        self._frames += 1
        if self._frames >= self.fail_at:
            raise EncoderError("encoder 'h264_flaky': VIDIOC_QBUF: No such device")
        return super().encode(image, captured_at, force_keyframe, pixel_format)


def flaky_factory(
    st: StorageConfig, size: tuple[int, int], fps: float, epoch: float, name: str
) -> VideoEncoder:
    """Opens the flaky encoder under its own name (the stream names it), libx264 for anything else."""
    if name == "h264_flaky":
        encoder = FailingEncoder(st, size, fps, epoch, "libx264")
        return encoder
    return VideoEncoder(st, size, fps, epoch, name)


def test_an_encoder_that_fails_mid_run_hands_over_and_recording_goes_on(tmp_path: Path) -> None:
    st = storage(tmp_path, encoder="h264_flaky", segment_seconds=10.0)
    recorder, encoders = _record(tmp_path, st, 60, open_encoder=flaky_factory)
    stats = recorder.stats()
    # The failing encoder's segment is sealed with what it had handed out, the rest is libx264's.
    assert encoders == ["libx264", "libx264"] and stats.segments == 2 and stats.errors == 0
    assert stats.encoder == "libx264" and "No such device" in stats.encoder_fallback
    first_frames = FailingEncoder.fail_at - 1
    assert (
        first_frames - 3 <= stats.packets - (60 - first_frames) <= first_frames
    )  # at most the look-ahead lost
    assert _status(recorder)["fallback"] == "encoder 'h264_flaky': VIDIOC_QBUF: No such device"


def test_when_the_last_encoder_fails_too_errors_are_counted_and_capture_goes_on(tmp_path: Path) -> None:
    def broken(st: StorageConfig, size: tuple[int, int], fps: float, epoch: float, name: str) -> VideoEncoder:
        raise EncoderError(f"encoder {name!r}: broken")

    keys = make_keys()
    cam = camera()
    st = storage(tmp_path, encoder="h264_v4l2m2m")
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key(), open_encoder=broken)
    for _, masked in synthetic_frames(cam, 5, T0):
        recorder.on_frame(masked, False)  # never raises
    stats = recorder.stats()
    assert (
        stats.errors == 5
        and stats.encoder == "libx264"
        and stats.last_error == "cam1: encoder 'libx264': broken"
    )
    assert stats.encoder_fallback == "encoder 'h264_v4l2m2m': broken" and ring.segments("cam1") == []
