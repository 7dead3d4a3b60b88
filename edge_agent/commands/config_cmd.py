"""`edge-agent check-config FILE`: validate a config and explain every problem.

A config can be valid and still unable to run: a camera that requires masks and has none captures
nothing, and a key or CA file that is missing only shows at start as a failure elsewhere. Both are
reported here, naming the field, so that a technician finds out before the card is in the pole.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cryptography import x509

from edge_agent.formats.config import (
    AgentConfig,
    ConfigError,
    cameras_without_masks,
    load_config,
    named_files,
    summarize,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `check-config` command."""
    parser = subparsers.add_parser(
        "check-config", help="validate a config file and print a summary or every error"
    )
    parser.add_argument("config", type=Path, help="the YAML config file")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="where the device's file system is mounted (a card being provisioned): files named by the"
        " config are looked for under it (default /)",
    )
    parser.set_defaults(handler=check_config)


# Files whose contents are checked too: a CA bundle that does not load fails only when it is used (the
# first connection, or a pushed clip: on a kit already out on the street).
_PEM_CA_FIELDS = ("clip_server.collector_ca_file", "mqtt.tls.ca_file")


def file_problems(config: AgentConfig, root: Path) -> list[str]:
    """`field: path: problem` for every file the config names that the agent could not read."""
    problems = []
    for field, path in named_files(config):
        on_disk = root / path.relative_to(path.anchor) if path.is_absolute() else path
        if not on_disk.is_file():
            problems.append(f"{field}: {path}: no such file")
        elif not os.access(on_disk, os.R_OK):
            problems.append(f"{field}: {path}: not readable")
        elif field in _PEM_CA_FIELDS and (problem := pem_ca_problem(on_disk)):
            problems.append(f"{field}: {path}: {problem}")
    return problems


def pem_ca_problem(path: Path, now: float | None = None) -> str:
    """Why `path` cannot be the CA bundle a TLS client trusts ("" when it can): PEM certificates, each a
    CA (basic constraints), each valid at `now`."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        return f"cannot read ({error.strerror})"
    except ValueError:
        return "not a PEM certificate"
    moment = time.time() if now is None else now
    for certificate in certificates:
        subject = certificate.subject.rfc4514_string()
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            return f"{subject}: not a CA certificate (no basic constraints CA:TRUE)"
        valid_from, valid_to = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if not valid_from.timestamp() <= moment <= valid_to.timestamp():
            return f"{subject}: valid from {valid_from:%Y-%m-%d} to {valid_to:%Y-%m-%d}, not now"
    return ""


def check_config(args: argparse.Namespace) -> int:
    """Print `ok` and a summary, or each problem as `field.path: message`; exit 1 on any problem."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error.report(args.config))
        return 1
    problems = cameras_without_masks(config) + file_problems(config, args.root)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("ok")
    for line in summarize(config):
        print(line)
    return 0
