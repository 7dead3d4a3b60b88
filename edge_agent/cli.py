"""`edge-agent`: the device's command line.

Each command lives beside the code it drives: a module exposes `register(subparsers)`, which adds its
parser and sets `handler` to a function `(args) -> exit code`. This file only lists those modules.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge_agent import __version__

COMMAND_MODULES = [
    "edge_agent.commands.config_cmd",
    "edge_agent.commands.keygen_cmd",
    "edge_agent.commands.storage_cmd",
    "edge_agent.commands.snapshot_cmd",
    "edge_agent.commands.audit_cmd",
    "edge_agent.doctor",
    "edge_agent.replay",
    "edge_agent.commands.run_cmd",
    "edge_agent.demo",
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command's subparser."""
    parser = argparse.ArgumentParser(prog="edge-agent", description="Privacy-first camera edge agent.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
