"""`edge-agent snapshot`: one masked frame to a JPEG, so a technician can check mask placement."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from edge_agent.camera.privacy import MasksRequired, draw_outlines, masker_for_camera
from edge_agent.camera.sources import SourceError, open_source
from edge_agent.formats.config import ConfigError, load_config

# Devices often deliver dark or half-exposed frames while auto-exposure settles.
_WARM_UP_FRAMES = 5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `snapshot` command."""
    parser = subparsers.add_parser("snapshot", help="write one masked frame of a camera to a JPEG")
    parser.add_argument("--config", type=Path, required=True, help="the YAML config file")
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JPEG file to write")
    parser.add_argument("--outline", action="store_true", help="draw mask polygons (red) and zones (green)")
    parser.set_defaults(handler=snapshot)


def snapshot(args: argparse.Namespace) -> int:
    """Capture, mask, optionally outline and write; nothing is written when masking is impossible."""
    try:
        camera = load_config(args.config).camera(args.camera)
        masker = masker_for_camera(camera)
        source = open_source(camera)
    except ConfigError as error:
        print(error.report(args.config), file=sys.stderr)
        return 2
    except (KeyError, MasksRequired, SourceError) as error:
        print(f"snapshot refused: {error}", file=sys.stderr)
        return 2
    try:
        frame = None
        for _ in range(_WARM_UP_FRAMES if source.paced else 1):
            frame = source.read() or frame
    finally:
        source.close()
    if frame is None:
        print(f"snapshot failed: camera {camera.id!r} delivered no frame", file=sys.stderr)
        return 1
    image = masker.apply(frame).bgr()
    if args.outline:
        image = draw_outlines(image, camera.masks, camera.motion.zones)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        print("snapshot failed: JPEG encoding failed", file=sys.stderr)
        return 1
    args.output.write_bytes(encoded.tobytes())
    width, height = frame.size
    print(f"{args.output}: camera {camera.id}, {width}x{height}, {len(camera.masks)} mask(s) applied")
    return 0
