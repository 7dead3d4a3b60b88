"""FileSource: video files decoded by PyAV to I420, checked against OpenCV's decode of the same files."""

from __future__ import annotations

import logging
import os
import random
import wave
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edge_agent.camera.frames import PixelFormat
from edge_agent.camera.sources import SourceError, open_source
from edge_agent.camera.sources.file import FileSource
from edge_agent.camera.sources.opencv import OpenCVSource
from edge_agent.formats.config import CameraConfig, ConfigError, SourceKind, parse_config
from tests.decoding_support import MIN_PSNR, assert_i420_like_opencv, encode_clip, opencv_frames, read_all

WINDOW = [(0.1, 0.1), (0.3, 0.1), (0.3, 0.3)]
FRAMES = 30


@pytest.fixture(scope="module")
def h264_clip(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H.264 mp4 with B-frames (libx264's default), so the decoder holds frames back until drained."""
    return encode_clip(
        datasets, tmp_path_factory.mktemp("clips") / "square.mp4", (320, 240), "libx264", FRAMES
    )


@pytest.fixture(scope="module")
def odd_clip(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MPEG-4 part 2 accepts odd sizes in 4:2:0, which have no I420 layout."""
    return encode_clip(datasets, tmp_path_factory.mktemp("clips") / "odd.mp4", (321, 241), "mpeg4", 10)


def camera_on(uri: str) -> CameraConfig:
    return CameraConfig(id="square", source=uri, masks=[{"points": WINDOW}])


def test_h264_frames_are_i420_and_match_opencv(h264_clip: Path) -> None:
    source = FileSource("square", str(h264_clip), clock=lambda: 42.0, loop=False)
    assert not source.paced
    assert source.native_fps == pytest.approx(10.0)
    frames = read_all(source)
    source.close()
    assert_i420_like_opencv(frames, h264_clip, (320, 240), FRAMES)
    assert {f.captured_at for f in frames} == {42.0}


def test_looping_restarts_the_file_and_seq_keeps_counting(h264_clip: Path) -> None:
    source = FileSource("square", str(h264_clip), clock=lambda: 0.0, loop=True)
    frames = [source.read() for _ in range(2 * FRAMES + 3)]
    source.close()
    assert all(f is not None for f in frames)
    seqs = [f.seq for f in frames if f is not None]
    assert seqs == list(range(2 * FRAMES + 3))
    first_pass = [f.image for f in frames[:FRAMES] if f is not None]
    for offset in (FRAMES, 2 * FRAMES):
        for index in range(3):
            again = frames[offset + index]
            assert again is not None and np.array_equal(again.image, first_pass[index])
    # The last frame of a pass is not the first one again: the restart is real, not a repeat.
    last = frames[FRAMES - 1]
    assert last is not None and not np.array_equal(last.image, first_pass[0])


def test_without_loop_the_end_is_none_and_stays_none(h264_clip: Path) -> None:
    source = FileSource("square", str(h264_clip), clock=lambda: 0.0, loop=False)
    assert len(read_all(source)) == FRAMES
    assert source.read() is None
    source.close()


def test_decoding_starts_no_thread(h264_clip: Path) -> None:
    # FFmpeg's default would start a frame thread per core (and one more) on the first decode.
    before = len(os.listdir("/proc/self/task"))
    source = FileSource("square", str(h264_clip), clock=lambda: 0.0)
    assert all(source.read() is not None for _ in range(5))
    assert len(os.listdir("/proc/self/task")) <= before
    source.close()


def test_odd_sized_file_gives_bgr(odd_clip: Path) -> None:
    source = FileSource("odd", str(odd_clip), clock=lambda: 0.0, loop=False)
    frames = read_all(source)
    source.close()
    reference = opencv_frames(odd_clip)
    assert len(frames) == len(reference) == 10
    for frame, expected in zip(frames, reference, strict=True):
        assert frame.pixel_format is PixelFormat.BGR and frame.size == (321, 241)
        assert frame.image.shape == (241, 321, 3) and frame.image.flags.c_contiguous
        assert frame.image.flags.owndata  # not a view into PyAV's padded frame buffer
        assert cv2.PSNR(frame.image, expected) > MIN_PSNR


def test_corrupt_data_mid_file_ends_the_read_without_raising(
    h264_clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with av.open(str(h264_clip)) as container:
        packets = [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]
    data = bytearray(h264_clip.read_bytes())
    start, size = packets[20]  # one P- or B-frame, two thirds into the file
    noise = random.Random(7)
    data[start : start + size] = bytes(noise.randrange(256) for _ in range(size))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    source = FileSource("square", str(corrupt), clock=lambda: 0.0, loop=True)
    with caplog.at_level(logging.WARNING):
        frames = read_all(source)
    source.close()
    assert 0 < len(frames) < 20  # the frames before it came out; looping never reached the start again
    assert "camera square: cannot decode" in caplog.text and str(corrupt) in caplog.text


def test_missing_and_undecodable_files_name_the_camera(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"camera 'square': video file .*nope\.mp4' does not exist"):
        open_source(camera_on(str(tmp_path / "nope.mp4")))
    text = tmp_path / "notes.mp4"
    text.write_text("these are notes, not a video\n" * 50)
    with pytest.raises(SourceError, match=r"camera 'square': cannot open .*notes\.mp4' as a video file"):
        open_source(camera_on(str(text)))
    sound = tmp_path / "sound.wav"
    with wave.open(str(sound), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(bytes(16000))
    with pytest.raises(SourceError, match=r"camera 'square': .*sound\.wav' has no video stream"):
        open_source(camera_on(str(sound)))


def test_a_file_path_opens_a_file_source_and_explicit_opencv_keeps_opencv(h264_clip: Path) -> None:
    source = open_source(camera_on(str(h264_clip)))
    assert isinstance(source, FileSource)
    source.close()
    legacy = CameraConfig(id="square", source={"kind": "opencv", "uri": str(h264_clip)}, masks=[])
    source = open_source(legacy)
    assert isinstance(source, OpenCVSource)
    source.close()


@pytest.mark.parametrize(
    ("shorthand", "kind"),
    [
        ("synthetic:4", SourceKind.SYNTHETIC),
        ("picamera", SourceKind.PICAMERA),
        ("0", SourceKind.OPENCV),
        ("/dev/video2", SourceKind.OPENCV),
        ("rtsp://10.0.0.9/stream1", SourceKind.STREAM),
        ("RTSPS://10.0.0.9/stream1", SourceKind.STREAM),
        ("http://10.0.0.9/mjpeg", SourceKind.STREAM),
        ("https://10.0.0.9/mjpeg", SourceKind.STREAM),
        ("udp://239.0.0.1:5000", SourceKind.STREAM),
        ("tcp://10.0.0.9:8554", SourceKind.STREAM),
        ("/data/square.mp4", SourceKind.FILE),
        ("clips/square.avi", SourceKind.FILE),
        ("file.mkv", SourceKind.FILE),
    ],
)
def test_shorthand_kinds(shorthand: str, kind: SourceKind) -> None:
    source = camera_on(shorthand).source
    assert source.kind is kind
    if kind in (SourceKind.OPENCV, SourceKind.FILE, SourceKind.STREAM):
        assert source.uri == shorthand


def test_a_file_source_needs_a_uri() -> None:
    config = {"site_id": "s", "device_id": "d", "cameras": [{"id": "c", "source": {"kind": "file"}}]}
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.source: a file source needs `uri`"):
        parse_config(config)
