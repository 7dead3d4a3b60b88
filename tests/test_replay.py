"""`edge-agent motion-replay`: the public output contract, the tuner on a real video, camera settings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edge_agent.camera.frames import Frame
from edge_agent.camera.motion import MotionResult
from edge_agent.camera.privacy import PrivacyMasker
from edge_agent.commands.cli import main
from edge_agent.commands.motion_replay import ReplaySettings, annotate
from edge_agent.formats.config import MotionConfig

SIZE = (200, 150)
FRAMES = 30


@pytest.fixture
def sequence(tmp_path: Path) -> str:
    """An image sequence in%06d.png: a textured scene with a bright square moving right."""
    folder = tmp_path / "seq"
    folder.mkdir()
    rng = np.random.default_rng(5)
    base = rng.integers(80, 120, (SIZE[1], SIZE[0], 3)).astype(np.uint8)
    for i in range(FRAMES):
        image = base.copy()
        image[60:90, 10 + 4 * i : 40 + 4 * i] = 230
        cv2.imwrite(str(folder / f"in{i:06d}.png"), image)
    return str(folder / "in%06d.png")


def _lines(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text(encoding="utf-8").splitlines()]


def test_contract_one_line_per_frame_in_order_with_masks_at_source_size(
    sequence: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["motion-replay", sequence, "--out", str(out), "--write-masks"]) == 0
    lines = _lines(out)
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    for line in lines:
        assert set(line) == {"frame", "motion", "score", "boxes"}
        assert isinstance(line["motion"], bool) and isinstance(line["score"], float)
        boxes = line["boxes"]
        assert isinstance(boxes, list)
        for box in boxes:
            assert len(box) == 4 and all(0.0 <= v <= 1.0 for v in box)
    assert sum(bool(line["motion"]) for line in lines) >= FRAMES - 5
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in masks] == [f"{i:06d}.png" for i in range(FRAMES)]
    last = cv2.imread(str(masks[-1]), cv2.IMREAD_UNCHANGED)
    assert last.shape == (SIZE[1], SIZE[0]) and last.dtype == np.uint8
    assert set(np.unique(last)) <= {0, 255}
    x = 10 + 4 * (FRAMES - 1)
    assert last[75, x + 15] == 255 and last[10, 10] == 0  # inside the square / far from it


def test_same_input_gives_the_same_output(sequence: str, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main(["motion-replay", sequence, "--out", str(tmp_path / name), "--write-masks"]) == 0
    assert (tmp_path / "a" / "frames.jsonl").read_bytes() == (tmp_path / "b" / "frames.jsonl").read_bytes()
    for mask in (tmp_path / "a" / "masks").iterdir():
        assert mask.read_bytes() == (tmp_path / "b" / "masks" / mask.name).read_bytes()


def test_fps_sets_the_simulated_time_of_events(sequence: str, tmp_path: Path) -> None:
    assert main(["motion-replay", sequence, "--out", str(tmp_path / "o"), "--fps", "5"]) == 0
    events = [json.loads(line) for line in (tmp_path / "o" / "events.jsonl").read_text().splitlines()]
    assert events[0]["phase"] == "start" and events[-1]["phase"] == "end"
    assert all(abs(e["ts"] * 5 - round(e["ts"] * 5)) < 1e-6 for e in events)
    assert events[-1]["ts"] == pytest.approx((FRAMES - 1) / 5)  # closed at the last frame


def test_tuner_on_a_video_file(datasets: Path, tmp_path: Path) -> None:
    video = datasets / "video" / "vtest.avi"
    out = tmp_path / "tune"
    annotated = tmp_path / "tune.mp4"
    code = main(
        ["motion-replay", str(video), "--out", str(out), "--max-frames", "40", "--annotate", str(annotated)]
    )
    assert code == 0
    lines = _lines(out)
    assert [line["frame"] for line in lines] == list(range(40))
    assert sum(bool(line["motion"]) for line in lines) > 30  # pedestrians walk through every frame
    boxes = [b for line in lines for b in line["boxes"]]  # type: ignore[union-attr]
    assert boxes and all(b[2] * b[3] < 0.25 for b in boxes)
    capture = cv2.VideoCapture(str(annotated))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 40
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (
        768,
        576,
    )


def test_annotate_tints_only_the_foreground_and_draws_the_boxes() -> None:
    masker = PrivacyMasker([])
    frame = masker.apply(Frame("cam", 7, 0.0, np.full((SIZE[1], SIZE[0], 3), 100, np.uint8)))
    foreground = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    foreground[60:90, 100:130] = 255
    result = MotionResult(True, 0.03, [(0.5, 0.4, 0.15, 0.2)], [], foreground)
    settings = ReplaySettings("cam", masker, MotionConfig(), 25.0)  # type: ignore[call-arg]
    canvas = annotate(frame, result, foreground, settings)
    assert tuple(canvas[75, 115]) == (50, 50, 178)  # half the pixel, half pure red
    assert tuple(canvas[120, 20]) == (100, 100, 100)  # outside the foreground: untouched
    assert tuple(canvas[60, 110]) == (0, 255, 255)  # the box's top edge
    assert (frame.image == 100).all()  # drawn on a copy


def _config(tmp_path: Path, cameras: list[dict[str, object]]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"site_id": "ville", "device_id": "pi-1", "cameras": cameras}))
    return path


def test_camera_masks_and_zones_apply(sequence: str, tmp_path: Path) -> None:
    camera = {
        "id": "cam-a",
        "source": "synthetic",
        "resolution": [200, 150],
        "masks": [{"name": "window", "points": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}],
        "motion": {"zones": [{"name": "road", "points": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]}]},
    }
    config = _config(tmp_path, [camera, {**camera, "id": "cam-b", "masks": []}])
    out = tmp_path / "out"
    code = main(
        [
            "motion-replay",
            sequence,
            "--out",
            str(out),
            "--config",
            str(config),
            "--camera",
            "cam-a",
            "--write-masks",
        ]
    )
    assert code == 0
    for mask in (out / "masks").iterdir():
        image = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        assert not image[:, :100].any(), f"{mask.name}: motion inside the privacy mask"
    lines = _lines(out)
    assert not any(line["motion"] for line in lines[:10])  # the square is behind the mask until x >= 100
    assert any(line["motion"] for line in lines[-5:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--camera", "cam-a"], "--camera needs --config"),
        (["--config", "CONFIG", "--camera", "nope"], "no camera 'nope'"),
        (["--config", "CONFIG"], "--camera is needed"),
        (["--config", "CONFIG", "--camera", "bare"], "requires privacy masks"),
    ],
)
def test_bad_settings_are_explained(
    sequence: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    masked = {"id": "cam-a", "source": "synthetic", "masks": [{"points": [[0, 0], [0.1, 0], [0.1, 0.1]]}]}
    config = _config(tmp_path, [masked, {"id": "bare", "source": "synthetic"}])
    args = [str(config) if a == "CONFIG" else a for a in args]
    out = tmp_path / "out"
    assert main(["motion-replay", sequence, "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().out
    assert not (out / "frames.jsonl").exists()


def test_unreadable_source_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["motion-replay", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().out
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert main(["motion-replay", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "junk.mp4" in capsys.readouterr().out
