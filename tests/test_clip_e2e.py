"""End to end: a site records real footage (masked), the collector fetches 20 s through the CLI,
the MP4 plays with the expected frames, the masked area never changes; exports re-verify."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edge_agent.api.clip_server import ClipServer, ClipServerThread
from edge_agent.camera.frames import Frame
from edge_agent.camera.privacy import PrivacyMasker
from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.formats.audit import AuditLog, verify_log
from edge_agent.formats.config import parse_config
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_public,
)
from edge_agent.storage.recorder import Recorder
from edge_agent.storage.ringbuffer import RingBuffer

T0 = 1_800_000_000.0
FPS = 10
SIZE = (384, 288)
MASK = [(0.0, 0.0), (0.4, 0.0), (0.4, 0.5), (0.0, 0.5)]  # top-left: a private window


@pytest.fixture(scope="module")
def recorded_site(tmp_path_factory, datasets):
    """40 s of vtest.avi at 10 fps, masked, encoded, sealed and stored by the real Recorder."""
    root = tmp_path_factory.mktemp("e2e")
    device_keys = generate_device_key(root / "device-keys")
    csu_keys = generate_csu_keys(root / "csu-keys")
    config = parse_config(
        {
            "site_id": "ville-01",
            "device_id": "pi-01",
            "cameras": [
                {
                    "id": "cam1",
                    "source": str(datasets / "video" / "vtest.avi"),
                    "resolution": list(SIZE),
                    "fps": FPS,
                    "masks": [{"name": "window", "points": MASK, "color": [0, 0, 0]}],
                }
            ],
            "storage": {
                "path": str(root / "ring"),
                "segment_seconds": 4,
                "gop_seconds": 1,
                "min_free_bytes": 0,
                "preset": "ultrafast",
            },
            "clip_server": {
                "bind": "127.0.0.1",
                "port": 0,
                "audit_log": str(root / "device-audit.jsonl"),
                "max_clip_seconds": 60,
            },
            "keys": {
                "device_key": str(device_keys.private),
                "collector_public_keys": [str(csu_keys.signing.public)],
            },
        }
    )
    ring = RingBuffer(config.storage.path, config.storage, clock=lambda: T0 + 60)
    camera = config.cameras[0]
    recorder = Recorder(
        camera,
        config.storage,
        ring,
        load_ed25519_private(device_keys.private),
        load_x25519_public(csu_keys.sealing.public),
        device_id=config.device_id,
    )
    masker = PrivacyMasker(camera.masks)
    capture = cv2.VideoCapture(str(datasets / "video" / "vtest.avi"))
    for seq in range(40 * FPS):
        ok, image = capture.read()
        assert ok, "vtest.avi ended early"
        image = cv2.resize(image, SIZE)
        recorder.on_frame(masker.apply(Frame("cam1", seq, T0 + seq / FPS, image)), event_open=False)
    capture.release()
    recorder.close()
    return root, config, ring, device_keys, csu_keys


@pytest.fixture
def served(recorded_site):
    _, config, ring, device_keys, csu_keys = recorded_site
    server = ClipServer(
        config,
        ring,
        AuditLog(config.clip_server.audit_log),
        load_ed25519_private(device_keys.private),
        [load_ed25519_public(csu_keys.signing.public)],
    )
    thread = ClipServerThread(server)
    thread.start()
    yield server
    thread.stop()


def _fetch_args(recorded_site, server: ClipServer, out: Path, start: float, end: float) -> list[str]:
    root, _, _, device_keys, csu_keys = recorded_site
    return [
        "fetch-clip",
        "--site", "ville-01", "--device", "pi-01", "--camera", "cam1",
        "--start", f"{start:.3f}", "--end", f"{end:.3f}",
        "--requisition", "PV 2024/118-B",
        "--url", server.local_url,
        "--keys", str(csu_keys.signing.private.parent),
        "--device-key", str(device_keys.public),
        "--audit", str(root / "collector-audit.jsonl"),
        "-o", str(out),
        "--no-progress",
    ]  # fmt: skip


def test_fetch_twenty_seconds_plays_with_the_mask_intact(recorded_site, served, tmp_path, capsys) -> None:
    root, config, *_ = recorded_site
    start = T0 + 10.05  # mid-GOP on purpose
    out = tmp_path / "export"
    assert collector_main(_fetch_args(recorded_site, served, out, start, start + 20)) == 0
    assert "verified:" in capsys.readouterr().out

    with av.open(str(out / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
        duration = container.duration / 1e6
    assert len(frames) == 200  # captured at T0+10.1 .. T0+30.0
    assert duration == pytest.approx(20.0, abs=0.15)
    width, height = SIZE
    inside = np.stack([f[4 : height // 2 - 8, 4 : int(width * 0.4) - 8] for f in frames])
    outside = np.stack([f[height // 2 + 8 :, int(width * 0.4) + 8 :] for f in frames])
    assert inside.max() <= 16, "masked area is not black"
    assert np.ptp(inside, axis=0).max() <= 12, "masked area changes over time"
    assert np.ptp(outside, axis=0).mean() > 20, "the rest of the scene should move"

    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["verification"] == {"result": "verified", "problems": []}
    assert evidence["gaps"] == []
    assert evidence["requisition"] == "PV 2024/118-B"
    assert evidence["clip"]["frames"] == 200
    assert evidence["covered"] == [{"start_ts": start, "end_ts": start + 20}]

    device_audit = [json.loads(line) for line in config.clip_server.audit_log.read_text().splitlines()]
    served_line = [e for e in device_audit if e["action"] == "clip" and e["outcome"] == "served"][-1]
    assert served_line["bytes"] == evidence["bundle"]["size"]
    assert served_line["requisition"] == "PV 2024/118-B"
    assert verify_log(config.clip_server.audit_log).ok
    assert verify_log(root / "collector-audit.jsonl").ok

    keys_dir = recorded_site[4].signing.private.parent
    assert collector_main(["verify", str(out), "--keys", str(keys_dir)]) == 0
    clip = out / "clip.mp4"
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0x10
    clip.write_bytes(bytes(data))
    assert collector_main(["verify", str(out), "--keys", str(keys_dir)]) == 1
    assert "clip.mp4: sha256 differs" in capsys.readouterr().out


def test_range_before_retention_is_reported_as_a_gap(recorded_site, served, tmp_path, capsys) -> None:
    out = tmp_path / "export"
    args = _fetch_args(recorded_site, served, out, T0 - 10, T0 + 5)
    assert collector_main(args) == 0
    text = capsys.readouterr().out
    assert "retention" in text
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["gaps"][0]["reason"] == "retention"
    assert evidence["gaps"][0]["end_ts"] == pytest.approx(T0, abs=0.2)


def test_hold_and_release_through_the_cli(recorded_site, served, capsys) -> None:
    root, _, ring, _, csu_keys = recorded_site
    common = [
        "--site", "ville-01", "--device", "pi-01", "--url", served.local_url,
        "--keys", str(csu_keys.signing.private.parent), "--audit", str(root / "collector-audit.jsonl"),
    ]  # fmt: skip
    assert collector_main(["hold", *common, "--camera", "cam1", "--start", str(T0),
                           "--end", str(T0 + 20), "--requisition", "PV-77"]) == 0  # fmt: skip
    hold = json.loads(capsys.readouterr().out)
    assert [h.requisition for h in ring.holds()] == ["PV-77"]
    assert collector_main(["release", *common, str(hold["id"])]) == 0
    assert ring.holds() == []
    assert collector_main(["release", *common, str(hold["id"])]) == 1
    assert "unknown-hold" in capsys.readouterr().err
