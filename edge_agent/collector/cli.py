"""`csu-collector`: the CSU side's command line.

Same pattern as `edge_agent.cli`: each module in COMMAND_MODULES exposes `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge_agent import __version__

COMMAND_MODULES: list[str] = [
    "edge_agent.collector.clip_cmd",
    "edge_agent.collector.keygen_cmd",
    "edge_agent.collector.ingest",
    "edge_agent.collector.registry_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command's subparser."""
    parser = argparse.ArgumentParser(prog="csu-collector", description="CSU collector for edge agents.")
    parser.add_argument("--version", action="version", version=f"csu-collector {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `csu-collector` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        print(f"csu-collector {__version__}")
        return 0
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
