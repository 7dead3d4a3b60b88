"""`csu-collector pki init | import | show`: the collector's certificate that signs exports (C2PA).

`init` makes a CSU CA and a collector certificate for a town without a PKI; `import` takes an existing
certificate and key (with the CA that issued them); `show` says what a key directory holds. The CA
certificate (`csu_ca.pem`) is what the CSU gives to whoever checks an export.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from cryptography import x509

from edge_agent.collector.paths import add_keys
from edge_agent.collector.pki import (
    PkiError,
    credential_problems,
    import_credential,
    init_pki,
    load_credential,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pki` and its sub-commands."""
    pki = subparsers.add_parser("pki", help="the collector's X.509 certificate that signs exports (C2PA)")
    actions = pki.add_subparsers(dest="pki_action", required=True)
    init = actions.add_parser("init", help="create a CSU CA and a collector certificate (Ed25519)")
    add_keys(init)
    init.add_argument("--org", default="CSU", help="the town or body named in the certificates")
    init.add_argument("--days", type=int, default=10 * 365, help="collector certificate lifetime (days)")
    init.add_argument("--force", action="store_true", help="replace an existing CA and certificate")
    init.set_defaults(handler=init_command)
    imported = actions.add_parser("import", help="use an existing certificate and key")
    add_keys(imported)
    imported.add_argument("--cert", type=Path, required=True, help="PEM: the certificate, then intermediates")
    imported.add_argument("--key", type=Path, required=True, help="PEM: its private key (Ed25519 or ECDSA)")
    imported.add_argument("--ca", type=Path, help="PEM: the CA certificate (default: the root ending --cert)")
    imported.add_argument("--force", action="store_true", help="replace an existing certificate")
    imported.set_defaults(handler=import_command)
    show = actions.add_parser("show", help="the certificates of a key directory, and whether they can sign")
    add_keys(show)
    show.set_defaults(handler=show_command)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _describe(certificate: x509.Certificate) -> str:
    return (
        f"{certificate.subject.rfc4514_string()}, valid to {certificate.not_valid_after_utc:%Y-%m-%d},"
        f" serial {certificate.serial_number:x}"
    )


def init_command(args: argparse.Namespace) -> int:
    """Create the CA and the collector certificate; exit 1 when files exist (without --force)."""
    if args.days <= 0:
        print("pki init: --days must be positive", file=sys.stderr)
        return 2
    try:
        paths = init_pki(args.keys, args.org, _now(), collector_days=args.days, overwrite=args.force)
    except PkiError as error:
        print(f"pki init: {error}", file=sys.stderr)
        return 1
    print(f"CA certificate: {paths.ca_cert}: give it to whoever checks an export (the trust anchor)")
    print(f"CA private key: {paths.ca_key} (mode 0600): move it offline; only new certificates need it")
    print(f"collector certificate: {paths.collector_cert}, key {paths.collector_key} (mode 0600)")
    return 0


def import_command(args: argparse.Namespace) -> int:
    """Check and copy an existing certificate and key; exit 1 naming every problem."""
    try:
        paths = import_credential(args.keys, args.cert, args.key, args.ca, _now(), overwrite=args.force)
    except PkiError as error:
        print(f"pki import: {error}", file=sys.stderr)
        return 1
    print(f"imported: {paths.collector_cert} and {paths.collector_key}; CA {paths.ca_cert}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    """Print the CA and collector certificates; exit 1 when they cannot sign exports."""
    try:
        credential = load_credential(args.keys)
    except PkiError as error:
        print(f"pki show: {error}", file=sys.stderr)
        return 1
    print(f"CA: {_describe(credential.ca)}")
    print(f"collector ({credential.algorithm}): {_describe(credential.chain[0])}")
    problems = credential_problems(list(credential.chain), credential.key, credential.ca, _now())
    for problem in problems:
        print(f"  cannot sign exports: {problem}")
    return 1 if problems else 0
