"""`edge-agent demo`: its command line only; the site itself is in `edge_agent.commands.demo`.

Every `edge-agent` command's parser is built at each start, `run` on a device included: the demo's
wiring (the CSU collector, its console and their libraries, some 18 MB) is imported only when the demo
really runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser("demo", help="run a simulated site end to end (Ctrl-C to stop)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--dir", type=Path, default=Path("demo-site"), help="working folder (wiped each run)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Import the demo site and run it."""
    from edge_agent.commands.demo import demo

    return demo(args)
