"""`edge-agent snapshot`: masked JPEG, outlines, and refusals that write nothing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edge_agent.commands.cli import main as cli_main

WINDOW = [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]]


def write_config(tmp_path: Path, cameras: list[dict[str, object]]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"site_id": "s1", "device_id": "d1", "cameras": cameras}))
    return path


def test_snapshot_is_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(
        tmp_path,
        [{"id": "cam", "source": "synthetic", "resolution": [640, 360], "masks": [{"points": WINDOW}]}],
    )
    out = tmp_path / "snap.jpg"
    assert cli_main(["snapshot", "--config", str(config), "--camera", "cam", "-o", str(out)]) == 0
    image = cv2.imread(str(out))
    assert image.shape == (360, 640, 3)
    # JPEG is lossy: the black fill may ring a little at its edges, not inside.
    assert image[50:160, 80:300].max() < 12
    assert image[250:350, 400:600].std() > 10, "the unmasked scene should keep its texture"
    assert "1 mask(s) applied" in capsys.readouterr().out


def test_snapshot_outline_marks_masks(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        [{"id": "cam", "source": "synthetic", "resolution": [640, 360], "masks": [{"points": WINDOW}]}],
    )
    out = tmp_path / "outlined.jpg"
    assert (
        cli_main(["snapshot", "--config", str(config), "--camera", "cam", "-o", str(out), "--outline"]) == 0
    )
    image = cv2.imread(str(out)).astype(np.int16)
    redness = image[:, :, 2] - image[:, :, 1]
    top_edge = redness[33:40, 64:320].max(axis=0)
    assert (top_edge > 80).mean() > 0.8, "mask outline missing along its top edge"


def test_snapshot_refuses_unmasked_camera(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"id": "cam", "source": "synthetic", "require_masks": True}])
    out = tmp_path / "never.jpg"
    assert cli_main(["snapshot", "--config", str(config), "--camera", "cam", "-o", str(out)]) == 2
    assert not out.exists()
    assert "requires privacy masks" in capsys.readouterr().err


def test_snapshot_unknown_camera(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"id": "cam", "source": "synthetic", "masks": [{"points": WINDOW}]}])
    out = tmp_path / "never.jpg"
    assert cli_main(["snapshot", "--config", str(config), "--camera", "nope", "-o", str(out)]) == 2
    assert "no camera 'nope'" in capsys.readouterr().err
    assert not out.exists()
