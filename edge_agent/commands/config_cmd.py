"""`edge-agent check-config FILE`: validate a config and explain every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.formats.config import ConfigError, load_config, summarize


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `check-config` command."""
    parser = subparsers.add_parser(
        "check-config", help="validate a config file and print a summary or every error"
    )
    parser.add_argument("config", type=Path, help="the YAML config file")
    parser.set_defaults(handler=check_config)


def check_config(args: argparse.Namespace) -> int:
    """Print `ok` and a summary, or each error as `field.path: message`; exit 1 on errors."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error.report(args.config))
        return 1
    print("ok")
    for line in summarize(config):
        print(line)
    return 0
