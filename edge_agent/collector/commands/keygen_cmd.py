"""`csu-collector keygen`: create the CSU's key pairs (X25519 opens segments, Ed25519 signs requests)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.formats.keys import (
    KeyFileError,
    generate_csu_keys,
    load_ed25519_public,
    load_x25519_public,
    public_key_id,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `keygen` command."""
    parser = subparsers.add_parser(
        "keygen", help="create the CSU sealing (X25519) and signing (Ed25519) keys"
    )
    parser.add_argument("--dir", type=Path, required=True, help="where to write the two key pairs")
    parser.add_argument(
        "--force", action="store_true", help="replace existing keys (old footage needs them!)"
    )
    parser.set_defaults(handler=keygen)


def keygen(args: argparse.Namespace) -> int:
    """Write both pairs (private 0600); print the public paths and key ids, never the secrets."""
    try:
        paths = generate_csu_keys(args.dir, overwrite=args.force)
    except (KeyFileError, OSError) as error:
        print(f"keygen: {error}")
        return 1
    sealing_id = public_key_id(load_x25519_public(paths.sealing.public))
    signing_id = public_key_id(load_ed25519_public(paths.signing.public))
    print(f"sealing key (X25519): {paths.sealing.public}, id {sealing_id}: install on every device")
    print(f"signing key (Ed25519): {paths.signing.public}, id {signing_id}: install on every device")
    print(f"private keys: {paths.sealing.private}, {paths.signing.private} (mode 0600, keep at the CSU)")
    return 0
