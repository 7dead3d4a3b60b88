"""`edge-agent`: the device's command line (see `edge_agent.commands` for the pattern)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from edge_agent.formats.cli import build_parser as build_command_parser
from edge_agent.formats.cli import run_command

COMMAND_MODULES = [
    "edge_agent.commands.config_cmd",
    "edge_agent.commands.keygen_cmd",
    "edge_agent.commands.storage_cmd",
    "edge_agent.commands.snapshot_cmd",
    "edge_agent.commands.audit_cmd",
    "edge_agent.commands.doctor",
    "edge_agent.commands.motion_replay",
    "edge_agent.commands.run_cmd",
    "edge_agent.commands.demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command's subparser."""
    return build_command_parser("edge-agent", "Privacy-first camera edge agent.", COMMAND_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
