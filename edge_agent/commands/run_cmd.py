"""`edge-agent run --config F`: the device entry point under systemd or balena."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from edge_agent.device.agent import Agent, AgentError
from edge_agent.device.systemd_notify import SystemdNotifier
from edge_agent.formats.config import ConfigError, load_config
from edge_agent.link.mqtt import CommandError

log = logging.getLogger(__name__)
TICK_S = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` command."""
    parser = subparsers.add_parser("run", help="run the device agent until SIGTERM (SIGHUP reloads)")
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the YAML config file (may be `{}` when EDGE_* variables carry the settings)",
    )
    parser.add_argument("--no-hotplug", action="store_true", help="do not watch udev for USB cameras")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start the agent, tell systemd, supervise until a stop signal; exit 2 on a bad set-up."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error.report(args.config), file=sys.stderr)
        return 2
    agent = Agent(config, args.config, hotplug=not args.no_hotplug)
    try:
        agent.start()
    except AgentError as error:
        print(f"edge-agent: cannot start: {error}", file=sys.stderr)
        return 2
    stop, reload = threading.Event(), threading.Event()
    _install_signals(stop, reload)
    notifier = SystemdNotifier()
    notifier.ready(f"{len(config.cameras)} camera(s)")
    try:
        supervise(agent, notifier, stop, reload)
    finally:
        notifier.stopping("stopping cameras")
        agent.stop()
    return 0


def supervise(
    agent: Agent, notifier: SystemdNotifier, stop: threading.Event, reload: threading.Event
) -> None:
    """The main loop: status changes, reloads and the systemd watchdog, until `stop` is set."""
    interval = notifier.watchdog_interval_s
    last_watchdog = 0.0
    while not stop.wait(TICK_S):
        agent.tick()
        if reload.is_set():
            reload.clear()
            try:
                log.info("reload: %s", agent.reload())
            except CommandError as error:
                log.error("%s", error)
        if interval is not None and time.monotonic() - last_watchdog >= interval:
            notifier.watchdog()
            last_watchdog = time.monotonic()


def _install_signals(stop: threading.Event, reload: threading.Event) -> None:
    def on_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_reload(_signum: int, _frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
