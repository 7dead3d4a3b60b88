"""`edge-agent keygen`: create the device's Ed25519 identity (signs segments and bundles)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.formats.keys import KeyFileError, generate_device_key, load_ed25519_public, public_key_id

DEFAULT_DIR = Path("/var/lib/edge-agent/keys")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `keygen` command."""
    parser = subparsers.add_parser("keygen", help="create the device identity key (Ed25519)")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"where to write the key pair (default {DEFAULT_DIR})"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing key (old segments stay)")
    parser.set_defaults(handler=keygen)


def keygen(args: argparse.Namespace) -> int:
    """Write device_ed25519.pem (0600) and .pub; print the public path and key id, never the secret."""
    try:
        paths = generate_device_key(args.dir, overwrite=args.force)
    except (KeyFileError, OSError) as error:
        print(f"keygen: {error}")
        return 1
    print(f"private key: {paths.private} (mode 0600, keep it on the device)")
    print(f"public key:  {paths.public}")
    print(f"key id:      {public_key_id(load_ed25519_public(paths.public))}")
    return 0
