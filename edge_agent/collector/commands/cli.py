"""`csu-collector`: the CSU side's command line (see `edge_agent.commands` for the pattern)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from edge_agent.formats.cli import build_parser as build_command_parser
from edge_agent.formats.cli import run_command

COMMAND_MODULES: list[str] = [
    "edge_agent.collector.commands.clip_cmd",
    "edge_agent.collector.commands.keygen_cmd",
    "edge_agent.collector.commands.pki_cmd",
    "edge_agent.collector.ingest",
    "edge_agent.collector.commands.registry_cmd",
    "edge_agent.collector.commands.user_cmd",
    "edge_agent.collector.commands.console_cmd",
    "edge_agent.collector.commands.db_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command's subparser."""
    return build_command_parser("csu-collector", "CSU collector for edge agents.", COMMAND_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `csu-collector` console script."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
