"""`csu-collector sites` and `csu-collector events`: read the registry the `serve` command keeps.

`--db` is the SQLite file or the PostgreSQL URL `serve` writes; both are opened read-only.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict

from edge_agent.collector.store import (
    DB_ERRORS,
    STALE_AFTER_S,
    STALE_PERIODS,
    STATUS_INTERVAL_S,
    EventRow,
    db_exit,
    open_store,
)
from edge_agent.formats.times import TimeFormatError, iso_ms, parse_iso

DEFAULT_DB = "collector.sqlite"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """`2024-05-01T12:00:00Z` (ISO 8601) or a duration back from now (`90s`, `15m`, `2h`, `7d`)."""
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return parse_iso(text.strip())
    except TimeFormatError:
        raise ValueError(f"--since {text!r}: give an ISO 8601 time or a duration like 15m, 2h, 7d") from None


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sites` and `events`."""
    sites = subparsers.add_parser("sites", help="sites, devices online, cameras running")
    sites.add_argument("--db", default=DEFAULT_DB, help="registry written by `serve` (file or postgresql://)")
    sites.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a device's last status older than this is stale (default {STALE_AFTER_S:g}: "
        f"{STALE_PERIODS} x the {STATUS_INTERVAL_S:g} s status interval; {STALE_PERIODS} x its heartbeat "
        "when the device declares one, as the console judges); cameras of a stale or offline device "
        "are not counted as running",
    )
    sites.add_argument("--json", action="store_true", help="JSON instead of a table")
    sites.set_defaults(handler=show_sites)
    events = subparsers.add_parser("events", help="motion events of a site, newest first")
    events.add_argument(
        "--db", default=DEFAULT_DB, help="registry written by `serve` (file or postgresql://)"
    )
    events.add_argument("--site", required=True, help="site id")
    events.add_argument("--since", default="1h", help="ISO 8601 time or duration back (15m, 2h, 7d)")
    events.add_argument("--device", default=None, help="only this device")
    events.add_argument("--limit", type=int, default=1000, help="at most this many rows, the newest")
    events.add_argument("--json", action="store_true", help="JSON instead of a table")
    events.set_defaults(handler=show_events)


def show_sites(args: argparse.Namespace) -> int:
    """Print every site with its device and camera counts (running: of online devices, fresh status)."""
    if not args.stale_after > 0:
        print(f"--stale-after {args.stale_after:g}: must be a positive number of seconds")
        return 2
    try:
        store = open_store(args.db, readonly=True, pool_size=1)
    except DB_ERRORS as error:
        return db_exit(error)
    try:
        sites = store.sites(time.time(), args.stale_after)
        devices = store.devices()
    finally:
        store.close()
    if args.json:
        out = [
            {
                **asdict(site),
                "last_seen": iso_ms(site.last_seen),
                "devices": [
                    {
                        "device": d.device,
                        "online": d.online,
                        "last_seen": iso_ms(d.last_seen),
                        "version": d.version,
                        "clip_url": d.clip_url,
                        "malformed": d.malformed,
                        "cameras": (d.status or {}).get("cameras", []),
                    }
                    for d in devices
                    if d.site == site.site
                ],
                "device_count": site.devices,
            }
            for site in sites
        ]
        print(json.dumps(out, indent=2))
        return 0
    rows = [
        (s.site, f"{s.online}/{s.devices}", f"{s.cameras_running}/{s.cameras}", iso_ms(s.last_seen))
        for s in sites
    ]
    print(table(("SITE", "ONLINE", "CAMERAS RUNNING", "LAST SEEN (UTC)"), rows))
    return 0


def show_events(args: argparse.Namespace) -> int:
    """Print a site's motion events since a time, newest first."""
    if args.limit < 1:
        print(f"--limit {args.limit}: must be at least 1")
        return 2
    try:
        since = parse_since(args.since, time.time())
    except ValueError as error:
        print(error)
        return 2
    try:
        store = open_store(args.db, readonly=True, pool_size=1)
    except DB_ERRORS as error:
        return db_exit(error)
    try:
        events = store.events(site=args.site, since=since, device=args.device, limit=args.limit)
    finally:
        store.close()
    if args.json:
        times = ("ts", "start_ts", "stored_at")
        out = [{**asdict(e), **{k: iso_ms(getattr(e, k)) for k in times}} for e in events]
        print(json.dumps(out, indent=2))
        return 0
    rows = [
        (iso_ms(e.ts), e.device, e.camera, _phase(e), e.event_id, f"{e.score:.2f}", ",".join(e.zones) or "-")
        for e in events
    ]
    print(table(("TIME (UTC)", "DEVICE", "CAMERA", "PHASE", "EVENT", "SCORE", "ZONES"), rows))
    return 0


def _phase(event: EventRow) -> str:
    """The phase, and why the collector wrote it when it did (`end:device-offline`)."""
    return f"{event.phase}:{event.end_reason}" if event.end_reason else event.phase
