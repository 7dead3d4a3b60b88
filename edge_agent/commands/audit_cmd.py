"""`edge-agent audit verify [LOG]`: re-check the hash chain of an audit log and its rotated files."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.formats.audit import log_files, verify_log
from edge_agent.formats.config import ConfigError, load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `audit` command group (`audit verify`)."""
    parser = subparsers.add_parser("audit", help="inspect the audit log")
    actions = parser.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify", help="detect edited, removed or reordered lines (across the rotated files too)"
    )
    verify.add_argument("log", type=Path, nargs="?", help="audit log (default: from --config)")
    verify.add_argument("--config", type=Path, help="device config naming clip_server.audit_log")
    verify.set_defaults(handler=audit_verify)


def audit_verify(args: argparse.Namespace) -> int:
    """Print `ok, N entries` or every problem; exit 1 when the log was tampered with."""
    path: Path | None = args.log
    if path is None:
        if args.config is None:
            print("audit verify: give the log path or --config")
            return 2
        try:
            path = load_config(args.config).clip_server.audit_log
        except ConfigError as error:
            print(error.report(args.config))
            return 2
    files = log_files(path)
    if not files:
        print(f"{path}: no such audit log")
        return 2
    report = verify_log(path)
    across = f" in {len(files)} files" if len(files) > 1 else ""
    if report.ok:
        print(f"{path}: ok, {report.entries} entries{across}, chain intact")
        return 0
    print(f"{path}: {len(report.problems)} problem(s) in {report.entries} entries")
    for problem in report.problems:
        print(f"  {problem}")
    return 1
