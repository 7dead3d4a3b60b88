"""Frame sources: the synthetic scene, OpenCV files, picamera2 through a stand-in module."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from edge_agent.camera.sources import SourceError, open_source
from edge_agent.camera.sources.opencv import OpenCVSource
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import CameraConfig

WINDOW = [[0.1, 0.1], [0.4, 0.1], [0.4, 0.4], [0.1, 0.4]]


def test_synthetic_scene_is_deterministic() -> None:
    first = SyntheticSource("a", SceneSettings(size=(320, 240), seed=5))
    second = SyntheticSource("a", SceneSettings(size=(320, 240), seed=5))
    other = SyntheticSource("a", SceneSettings(size=(320, 240), seed=6))
    for _ in range(5):
        a, b, c = first.read(), second.read(), other.read()
        assert np.array_equal(a.image, b.image)
        assert not np.array_equal(a.image, c.image)
    assert first.ground_truth(42) == second.ground_truth(42)


def test_synthetic_ground_truth_matches_pixels() -> None:
    scene = SyntheticSource(
        "a", SceneSettings(size=(640, 360), objects=2, noise_sigma=0.0, drift_amplitude=0.0)
    )
    seen_objects = 0
    for seq in range(0, 300, 7):
        image = scene.render(seq).astype(np.int16)
        empty = scene._background.astype(np.int16)
        changed = np.abs(image - empty).max(axis=2) > 20
        boxes = scene.ground_truth(seq)
        inside = np.zeros_like(changed)
        for x, y, w, h in boxes:
            inside[round(y * 360) : round((y + h) * 360), round(x * 640) : round((x + w) * 640)] = True
        seen_objects += len(boxes)
        assert not (changed & ~inside).any(), f"frame {seq}: change outside the ground truth"
        if boxes:
            assert changed[inside].mean() > 0.5, f"frame {seq}: object not drawn where announced"
    assert seen_objects > 10


def test_synthetic_objects_come_and_go() -> None:
    scene = SyntheticSource("a", SceneSettings(objects=1))
    visible = [bool(scene.ground_truth(seq)) for seq in range(0, 10 * 60)]
    assert any(visible) and not all(visible)


def test_synthetic_time_is_simulated_or_clocked() -> None:
    simulated = SyntheticSource("a", SceneSettings(size=(64, 48), fps=4.0), start_ts=1000.0)
    assert [simulated.read().captured_at for _ in range(3)] == [1000.0, 1000.25, 1000.5]
    clocked = SyntheticSource("a", SceneSettings(size=(64, 48)), clock=lambda: 42.0)
    assert clocked.read().captured_at == 42.0


def test_video_file_source_reads_and_loops(datasets: Path) -> None:
    video = datasets / "video" / "vtest.avi"
    source = OpenCVSource("file", str(video), clock=lambda: 0.0, loop=True)
    assert not source.paced
    assert source.native_fps == pytest.approx(10.0, abs=0.5)
    first = source.read()
    assert first is not None and first.size == (768, 576)
    source._capture.set(cv2.CAP_PROP_POS_FRAMES, source._capture.get(cv2.CAP_PROP_FRAME_COUNT))
    looped = source.read()
    assert looped is not None and np.array_equal(looped.image, first.image)
    source.close()


def test_video_file_without_loop_ends(datasets: Path) -> None:
    source = OpenCVSource("file", str(datasets / "video" / "vtest.avi"), clock=lambda: 0.0, loop=False)
    source._capture.set(cv2.CAP_PROP_POS_FRAMES, source._capture.get(cv2.CAP_PROP_FRAME_COUNT))
    assert source.read() is None


def test_missing_file_and_bad_stream_are_clear(tmp_path: Path) -> None:
    missing = CameraConfig(id="cam", source=str(tmp_path / "nope.mp4"), masks=[{"points": WINDOW}])
    with pytest.raises(SourceError, match="does not exist"):
        open_source(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        open_source(
            missing.model_copy(update={"source": missing.source.model_copy(update={"uri": str(garbage)})})
        )


def test_picamera_without_picamera2_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    camera = CameraConfig(id="pi", source="picamera", masks=[{"points": WINDOW}])
    with pytest.raises(SourceError, match=r"edge_agent\[pi\]"):
        open_source(camera)


class _FakeRequest:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image


class _FakeMapped:
    def __init__(self, request: _FakeRequest, stream: str) -> None:
        assert stream == "main"
        self.array = request.image

    def __enter__(self) -> _FakeMapped:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _FakePicamera2:
    """Stands in for picamera2.Picamera2: a sensor buffer, the pre_callback, then the encoder's view."""

    instances: ClassVar[list[_FakePicamera2]] = []

    def __init__(self) -> None:
        self.pre_callback: Any = None
        self.encoder_saw: list[np.ndarray] = []
        self.started = False
        self.size = (0, 0)
        _FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
        assert main["format"] == "RGB888"
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        self.size = config["main"]["size"]

    def start(self) -> None:
        self.started = True

    def capture_array(self, stream: str) -> np.ndarray:
        width, height = self.size
        sensor = np.random.default_rng(len(self.encoder_saw)).integers(
            0, 256, (height, width, 3), dtype=np.uint8
        )
        request = _FakeRequest(sensor)
        self.pre_callback(request)
        self.encoder_saw.append(request.image.copy())
        return request.image

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        return None


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FakePicamera2]]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = _FakePicamera2  # type: ignore[attr-defined]
    module.MappedArray = _FakeMapped  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    _FakePicamera2.instances.clear()
    yield _FakePicamera2


def test_picamera_masks_before_the_encoder_sees_a_frame(fake_picamera2: type[_FakePicamera2]) -> None:
    camera = CameraConfig(
        id="pi", source="picamera", resolution=(640, 480), masks=[{"points": WINDOW, "color": [0, 0, 255]}]
    )
    source = open_source(camera)
    frame = source.read()
    assert frame is not None and frame.size == (640, 480)
    seen = fake_picamera2.instances[0].encoder_saw[0]
    assert np.all(seen[60:180, 70:250] == (0, 0, 255)), "the encoder saw unmasked pixels"
    assert np.all(frame.image[60:180, 70:250] == (0, 0, 255))
    source.close()
    assert not fake_picamera2.instances[0].started


def test_picamera_without_masks_never_starts(fake_picamera2: type[_FakePicamera2]) -> None:
    from edge_agent.camera.privacy import MasksRequired

    with pytest.raises(MasksRequired):
        open_source(CameraConfig(id="pi", source="picamera"))
    assert not fake_picamera2.instances
