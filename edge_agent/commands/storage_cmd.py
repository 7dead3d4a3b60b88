"""`edge-agent storage --config F`: what the ring buffer holds, per camera, without touching it."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.formats.config import ConfigError, load_config
from edge_agent.storage.index import INDEX_NAME
from edge_agent.storage.ringbuffer import RingBuffer


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `storage` command."""
    parser = subparsers.add_parser("storage", help="per camera: segments, bytes, oldest/newest, holds")
    parser.add_argument("--config", type=Path, required=True, help="the YAML config file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=show_storage)


# A configured camera with nothing stored yet: the same keys as a `RingBuffer.stats` row.
_NOTHING_STORED = {"segments": 0, "partial": 0, "bytes": 0, "oldest_ts": None, "newest_ts": None}


def _iso(ts: float | int | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def show_storage(args: argparse.Namespace) -> int:
    """Print the index summary (read only: no recovery, no retention runs)."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error.report(args.config))
        return 1
    root = config.storage.path
    if not (root / INDEX_NAME).exists():
        print(f"{root}: no ring buffer here yet (no {INDEX_NAME})")
        return 1
    ring = RingBuffer(root, config.storage, recover=False)
    try:
        stats = ring.stats(past_cap=True)  # what the disk holds, even past retention (agent stopped)
        holds = ring.holds()
    finally:
        ring.close()
    cameras = sorted(set(stats) | {c.id for c in config.cameras})
    if args.json:
        out = {
            camera: {
                **stats.get(camera, _NOTHING_STORED),
                "holds": [asdict(h) for h in holds if h.camera == camera],
            }
            for camera in cameras
        }
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(f"{root}: retention {config.storage.retention_days:g} days")
    for camera in cameras:
        row = stats.get(camera, {})
        print(
            f"  {camera}: {row.get('segments', 0)} segment(s) ({row.get('partial', 0)} partial),"
            f" {int(row.get('bytes') or 0):,} bytes, oldest {_iso(row.get('oldest_ts'))},"
            f" newest {_iso(row.get('newest_ts'))}"
        )
        for hold in (h for h in holds if h.camera == camera):
            print(
                f"    hold {hold.id}: {_iso(hold.start_ts)}..{_iso(hold.end_ts)}, requisition"
                f" {hold.requisition}, until {_iso(hold.expires_at)}"
            )
    return 0
