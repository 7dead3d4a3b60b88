"""`csu-collector console`: the web console for operators and investigators (see `collector/console`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from edge_agent.collector.console.app import ConsoleSettings
from edge_agent.collector.console.fleet import FleetRules
from edge_agent.collector.console.server import (
    ConsoleOptions,
    ConsoleServer,
    beside,
    parse_listen,
)
from edge_agent.collector.ingest import parse_broker_url
from edge_agent.collector.paths import add_keys_and_audit, audit_log_path, device_keys_dir
from edge_agent.collector.store import DB_ERRORS
from edge_agent.formats.keys import KeyFileError


def add_console_arguments(parser: argparse.ArgumentParser) -> None:
    """The console's options (shared by `console` and `serve --console`)."""
    add_keys_and_audit(parser)
    parser.add_argument(
        "--device-keys", type=Path, help="provisioned device keys as SITE/DEVICE.pub (default: KEYS/devices)"
    )
    parser.add_argument("--exports", type=Path, help="where clip exports go (default: exports/ beside --db)")
    parser.add_argument(
        "--status-interval", type=float, default=30.0, help="the devices' status interval (s)"
    )
    parser.add_argument(
        "--legal-days", type=float, default=0.0, help="legal retention in days (0: each device's)"
    )
    parser.add_argument(
        "--session-idle-minutes", type=float, default=30.0, help="idle time that ends a session"
    )
    parser.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `csu-collector console`."""
    parser = subparsers.add_parser("console", help="the web console (fleet, alerts, clips, holds, audit)")
    parser.add_argument(
        "--db", required=True, help="the collector store: a SQLite file or a postgresql:// URL"
    )
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    parser.add_argument("--broker", help="mqtt://... for snapshots (the devices' signed snapshot command)")
    parser.add_argument("--topic-root", default="csu/v1", help="topic root of the devices")
    add_console_arguments(parser)
    parser.set_defaults(handler=console_command)


def console_options(args: argparse.Namespace) -> ConsoleOptions:
    """Options from parsed arguments; ValueError naming a bad one."""
    if args.status_interval <= 0:
        raise ValueError("--status-interval: must be positive")
    if args.session_idle_minutes <= 0:
        raise ValueError("--session-idle-minutes: must be positive")
    broker = parse_broker_url(args.broker) if args.broker else None
    settings = ConsoleSettings(
        rules=FleetRules(status_interval_s=args.status_interval, legal_retention_days=args.legal_days),
        session_idle_s=args.session_idle_minutes * 60,
        secure_cookies=args.secure_cookies,
    )
    return ConsoleOptions(
        db=args.db,
        keys=args.keys,
        device_keys=args.device_keys or device_keys_dir(args.keys),
        audit=audit_log_path(args.keys, args.audit),
        exports=args.exports or beside(args.db, "exports"),
        broker=broker,
        topic_root=args.topic_root,
        settings=settings,
    )


def start_console(args: argparse.Namespace, listen: str) -> ConsoleServer | None:
    """Build and start the console from parsed arguments; None (and the reason on stderr) if it cannot."""
    try:
        host, port = parse_listen(listen)
        server = ConsoleServer(console_options(args), host, port)
    except ValueError as error:
        print(f"console: {error}", file=sys.stderr)
        return None
    except KeyFileError as error:
        print(f"console: --keys: {error}", file=sys.stderr)
        return None
    except DB_ERRORS as error:
        print(f"console: --db: {error}", file=sys.stderr)
        return None
    try:
        server.start()
    except OSError as error:
        print(f"console: {listen}: {error}", file=sys.stderr)
        server.stop()
        return None
    print(f"console on {server.url}", flush=True)
    return server


def console_command(args: argparse.Namespace) -> int:
    """Serve the console until SIGINT/SIGTERM."""
    server = start_console(args, args.listen)
    if server is None:
        return 2
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    server.stop()
    return 0
