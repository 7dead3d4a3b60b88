"""`csu-collector fetch-clip | verify | hold | release`: clips and holds on a device's clip API.

Keys come from the CSU key directory (`--keys`, default `$CSU_KEYS_DIR` or `./keys`, as written by
`edge_agent.formats.keys.generate_csu_keys`): `csu_ed25519.pem` signs requests, `csu_x25519.pem` opens
segments.
The device's public key (`--device-key`) is the one from provisioning: it is what makes a bundle
trustworthy, so it is never taken from the bundle itself. The device's address is its last status's
`clip_url` in the collector store (`--store`), or `--url`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edge_agent.collector.download import DeviceEndpoint, FetchError
from edge_agent.collector.evidence import ClipRejected, verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.collector.progress import ProgressBar
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.keys import (
    CSU_SEALING_NAME,
    CSU_SIGNING_NAME,
    PRIVATE_SUFFIX,
    PUBLIC_SUFFIX,
    KeyFileError,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_private,
)
from edge_agent.formats.signing import RequestSigner
from edge_agent.formats.times import TimeFormatError, parse_time


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `fetch-clip`, `verify`, `hold` and `release`."""
    fetch = subparsers.add_parser("fetch-clip", help="download, verify and export a clip as MP4")
    _device_args(fetch)
    fetch.add_argument("--camera", required=True)
    fetch.add_argument("--start", required=True, help="ISO 8601 with zone, or epoch seconds")
    fetch.add_argument("--end", required=True)
    fetch.add_argument("--requisition", required=True, help="the judicial requisition reference")
    fetch.add_argument("-o", "--output", type=Path, required=True, help="export directory")
    fetch.add_argument("--partial", action="store_true", help="export the verified segments when some fail")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    fetch.set_defaults(handler=fetch_clip_command)

    verify = subparsers.add_parser("verify", help="re-check an exported clip directory")
    verify.add_argument("directory", type=Path)
    verify.add_argument("--keys", type=Path, default=_default_keys(), help="CSU key directory")
    verify.add_argument(
        "--collector-key",
        type=Path,
        action="append",
        help="collector public key(s) to accept (default: csu_ed25519.pub in --keys)",
    )
    verify.set_defaults(handler=verify_command)

    hold = subparsers.add_parser("hold", help="exempt a range from retention on a device")
    _device_args(hold)
    hold.add_argument("--camera", required=True)
    hold.add_argument("--start", required=True)
    hold.add_argument("--end", required=True)
    hold.add_argument("--requisition", required=True)
    hold.add_argument("--expires", help="when the hold lapses (default: one year)")
    hold.set_defaults(handler=hold_command)

    release = subparsers.add_parser("release", help="release a hold on a device")
    _device_args(release)
    release.add_argument("hold_id")
    release.set_defaults(handler=release_command)


def _default_keys() -> Path:
    return Path(os.environ.get("CSU_KEYS_DIR", "keys"))


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--url", help="the device's clip API URL (default: from its last status)")
    parser.add_argument("--store", type=Path, help="collector store (for the device's clip_url)")
    parser.add_argument("--keys", type=Path, default=_default_keys(), help="CSU key directory")
    parser.add_argument("--device-key", type=Path, help="the device's Ed25519 public key (PEM)")
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA bundle to check the device's TLS certificate (default: the system's trust store)",
    )
    parser.add_argument(
        "--audit",
        type=Path,
        default=Path(os.environ.get("CSU_AUDIT_LOG", "csu-audit.jsonl")),
        help="the collector's audit log",
    )


class _UsageError(Exception):
    """A command-line value that cannot be used."""


def _device_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if args.store is None:
        raise _UsageError("give --url, or --store to look up the device's clip_url")
    from edge_agent.collector.store import device_clip_url

    try:
        return device_clip_url(args.store, args.site, args.device)
    except LookupError as error:
        raise _UsageError(str(error)) from None


def _endpoint(args: argparse.Namespace) -> DeviceEndpoint:
    signing = load_ed25519_private(args.keys / f"{CSU_SIGNING_NAME}{PRIVATE_SUFFIX}")
    return DeviceEndpoint(_device_url(args), RequestSigner(signing), args.ca_file)


def _time(name: str, raw: str) -> float:
    try:
        return parse_time(name, raw)
    except TimeFormatError as error:
        raise _UsageError(str(error)) from None


def fetch_clip_command(args: argparse.Namespace) -> int:
    """Fetch, verify, export; exit 0 verified, 3 partial export, 1 rejected or failed, 2 usage."""
    try:
        if args.device_key is None:
            raise _UsageError("--device-key: the device's public key from provisioning is required")
        endpoint = _endpoint(args)
        keys = CollectorKeys(
            signing=endpoint.signer.private_key,
            sealing=load_x25519_private(args.keys / f"{CSU_SEALING_NAME}{PRIVATE_SUFFIX}"),
            device=load_ed25519_public(args.device_key),
        )
        request = ClipRequest(
            args.site,
            args.device,
            args.camera,
            _time("--start", args.start),
            _time("--end", args.end),
            args.requisition,
        )
    except (_UsageError, KeyFileError) as error:
        print(f"fetch-clip: {error}", file=sys.stderr)
        return 2
    progress = ProgressBar(f"{args.camera}", enabled=False if args.no_progress else None)
    try:
        with endpoint:
            outcome = fetch_clip(
                endpoint, request, keys, args.output, AuditLog(args.audit), progress, args.partial
            )
    except FetchError as error:
        print(f"fetch-clip: {error}", file=sys.stderr)
        return 1
    except ClipRejected as error:
        print(f"fetch-clip: {error}", file=sys.stderr)
        return 1
    evidence = outcome.evidence
    clip = evidence["clip"] or {}
    print(
        f"{evidence['verification']['result']}: {args.output / 'clip.mp4'}"
        f" ({clip.get('frames', 0)} frames, {clip.get('duration_s', 0)} s)"
    )
    for gap in evidence["gaps"]:
        print(f"  gap {gap['start_ts']:.3f}..{gap['end_ts']:.3f}: {gap['reason']}")
    for problem in evidence["verification"]["problems"]:
        print(f"  {problem}")
    return 0 if evidence["verification"]["result"] == "verified" else 3


def verify_command(args: argparse.Namespace) -> int:
    """Re-check an export: exit 0 intact, 1 with every problem listed."""
    paths = args.collector_key or [args.keys / f"{CSU_SIGNING_NAME}{PUBLIC_SUFFIX}"]
    try:
        keys = [load_ed25519_public(p) for p in paths]
    except KeyFileError as error:
        print(f"verify: {error}", file=sys.stderr)
        return 2
    evidence, problems = verify_export(args.directory, keys)
    if problems:
        print(f"{args.directory}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    assert evidence is not None
    print(
        f"{args.directory}: intact ({evidence['verification']['result']}),"
        f" {evidence['camera']} requisition {evidence['requisition']}"
    )
    return 0


def hold_command(args: argparse.Namespace) -> int:
    """POST a hold; prints the device's answer (with the hold id)."""
    try:
        body = {
            "camera": args.camera,
            "start": args.start,
            "end": args.end,
            "requisition": args.requisition,
        }
        if args.expires:
            body["expires"] = args.expires
        with _endpoint(args) as endpoint:
            result = endpoint.call_json("POST", "/v1/holds", body=json.dumps(body).encode())
    except (_UsageError, KeyFileError, FetchError, OSError) as error:
        return _failed("hold", args, error)
    AuditLog(args.audit).append(
        action="hold", outcome="accepted", site=args.site, device=args.device, hold=result
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def release_command(args: argparse.Namespace) -> int:
    """DELETE a hold by id."""
    try:
        with _endpoint(args) as endpoint:
            result = endpoint.call_json("DELETE", f"/v1/holds/{args.hold_id}")
    except (_UsageError, KeyFileError, FetchError, OSError) as error:
        return _failed("release", args, error)
    AuditLog(args.audit).append(
        action="release", outcome="accepted", site=args.site, device=args.device, hold_id=args.hold_id
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def _failed(action: str, args: argparse.Namespace, error: Exception) -> int:
    print(f"{action}: {error}", file=sys.stderr)
    if isinstance(error, FetchError):
        AuditLog(args.audit).append(
            action=action,
            outcome="refused",
            reason=error.reason,
            detail=str(error),
            site=args.site,
            device=args.device,
        )
        return 1
    return 2
