"""`csu-collector fetch-clip | verify | hold | release`: clips and holds on a device's clip API.

Keys come from the CSU key directory (`--keys`, default `$CSU_KEYS_DIR` or `./keys`, as written by
`edge_agent.formats.keys.generate_csu_keys`): `csu_ed25519.pem` signs requests, `csu_x25519.pem` opens
segments. Every outcome goes to the collector's audit log (`--audit`, default `$CSU_AUDIT_LOG`, else
`csu-audit.jsonl` in the key directory: `edge_agent.collector.paths`).
The device's public key (`--device-key`) is the one from provisioning: it is what makes a bundle
trustworthy, so it is never taken from the bundle itself. The device's address is its last status's
`clip_url` in the collector store (`--store`), or `--url`. A device the CSU cannot reach (its status says
`delivery: push`, or has no clip URL; or `--via push`) is asked over MQTT (`--broker`) to upload the clip
to an endpoint this command runs (`--upload-listen`, reached by devices as `--upload-url`), over HTTPS
with `--tls-cert` and `--tls-key`.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from edge_agent.collector.download import DeviceEndpoint, FetchError
from edge_agent.collector.evidence import CLIP_FILE, ClipRejected, verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.collector.ingest import parse_broker_url
from edge_agent.collector.paths import add_keys, add_keys_and_audit, audit_log_path, device_keys_dir
from edge_agent.collector.pki import PkiError, PkiPaths, load_ca, optional_credential
from edge_agent.collector.progress import ProgressBar
from edge_agent.collector.provenance import (
    has_manifest,
    load_device_keys,
    registered_device_keys,
    verify_export_clip,
)
from edge_agent.collector.push import PushSettings, push_clip
from edge_agent.collector.upload_endpoint import TlsFileError, server_tls_context
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.config import collector_url_problem
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

if TYPE_CHECKING:
    from edge_agent.collector.store import DeviceStatus


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
    _allow_gaps(fetch)
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    push = fetch.add_argument_group(
        "push delivery", "for devices the CSU cannot reach (nomad kits on 4G): the device uploads the clip"
    )
    push.add_argument(
        "--via",
        choices=("auto", "pull", "push"),
        default="auto",
        help="auto (default): push when the device's last status says so (delivery: push, or no clip_url)",
    )
    push.add_argument(
        "--broker", help="mqtt://[user:pass@]host[:port] (mqtts:// for TLS) to publish the command"
    )
    push.add_argument("--topic-root", default="csu/v1", help="topic root of the devices")
    push.add_argument("--upload-listen", help="HOST:PORT where the upload endpoint listens")
    push.add_argument("--upload-url", default="", help="the endpoint's base URL as devices reach it")
    push.add_argument(
        "--tls-cert",
        type=Path,
        help="PEM certificate (then intermediates): the upload endpoint serves HTTPS (needs --tls-key)",
    )
    push.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert, unencrypted")
    push.add_argument(
        "--push-timeout",
        type=float,
        default=PushSettings.order_ttl_s,
        help="seconds the upload order stays valid (default: %(default)g)",
    )
    fetch.set_defaults(handler=fetch_clip_command)

    verify = subparsers.add_parser("verify", help="re-check an exported clip directory")
    verify.add_argument("directory", type=Path)
    add_keys(verify)
    verify.add_argument(
        "--collector-key",
        type=Path,
        action="append",
        help="collector public key(s) to accept (default: csu_ed25519.pub in --keys)",
    )
    verify.add_argument(
        "--ca",
        type=Path,
        help="CSU CA certificate for the clip's C2PA manifest (default: csu_ca.pem in --keys)",
    )
    verify.add_argument(
        "--device-keys",
        type=Path,
        nargs="+",
        help="the CSU's device public keys, files or directories (default: devices/ in --keys)",
    )
    _allow_gaps(verify)
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


# Exit code of a clip whose device's hash chain breaks (segments missing on the device).
INCOMPLETE_EXIT = 4


def _allow_gaps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-gaps",
        action="store_true",
        help=f"exit 0, not {INCOMPLETE_EXIT}, for an incomplete clip (a break in the device's hash chain)",
    )


def _result_exit(result: str, allow_gaps: bool) -> int:
    """The exit code of a verified, incomplete or partial clip."""
    if result == "incomplete":
        return 0 if allow_gaps else INCOMPLETE_EXIT
    return 0 if result == "verified" else 3


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--url", help="the device's clip API URL (default: from its last status)")
    parser.add_argument(  # a str: Path would collapse the `//` of a postgresql:// URL
        "--store", help="collector store, a SQLite file or a postgresql:// URL (for the device's clip_url)"
    )
    add_keys_and_audit(parser)
    parser.add_argument("--device-key", type=Path, help="the device's Ed25519 public key (PEM)")
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA bundle to check the device's TLS certificate (default: the system's trust store)",
    )


def _audit(args: argparse.Namespace) -> AuditLog:
    return AuditLog(audit_log_path(args.keys, args.audit))


class _UsageError(Exception):
    """A command-line value that cannot be used."""


def _last_status(args: argparse.Namespace) -> DeviceStatus | None:
    """The device's last status in --store, read once, when there is a store and no --url says better."""
    if args.url or args.store is None:
        return None
    from edge_agent.collector.store import DB_ERRORS, last_device_status

    try:
        return last_device_status(args.store, args.site, args.device)
    except LookupError as error:
        raise _UsageError(str(error)) from None
    except (*DB_ERRORS, ValueError) as error:
        raise _UsageError(f"--store: {error}") from None


def _device_url(args: argparse.Namespace, status: DeviceStatus | None) -> str:
    if args.url:
        return str(args.url)
    if status is None:
        raise _UsageError("give --url, or --store to look up the device's clip_url")
    from edge_agent.collector.store import published_clip_url

    try:
        return published_clip_url(status)
    except LookupError as error:
        raise _UsageError(str(error)) from None


def _delivery(args: argparse.Namespace, status: DeviceStatus | None) -> str:
    """`pull` or `push`: as asked, else what the device's last status says (push when it publishes
    `delivery: push` or no clip URL: the CSU cannot reach it); pull with --url or without a store."""
    if args.via != "auto":
        return str(args.via)
    if status is None:
        return "pull"
    pushed = (status.status or {}).get("delivery") == "push" or not status.clip_url
    return "push" if pushed else "pull"


def _push_settings(args: argparse.Namespace) -> PushSettings:
    if not args.broker:
        raise _UsageError("--broker: push delivery publishes its command through the broker")
    if not args.upload_listen:
        raise _UsageError("--upload-listen: push delivery needs HOST:PORT for its upload endpoint")
    host, _, port = args.upload_listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _UsageError(f"--upload-listen {args.upload_listen!r}: expected HOST:PORT")
    if args.upload_url and collector_url_problem(args.upload_url):
        raise _UsageError(f"--upload-url {args.upload_url!r}: {collector_url_problem(args.upload_url)}")
    if args.push_timeout <= 0:
        raise _UsageError("--push-timeout: must be positive")
    try:
        broker = parse_broker_url(args.broker)
    except ValueError as error:
        raise _UsageError(f"--broker: {error}") from None
    return PushSettings(
        broker,
        host.strip("[]"),
        int(port),
        upload_url=args.upload_url,
        tls=_endpoint_tls(args),
        topic_root=args.topic_root,
        order_ttl_s=args.push_timeout,
    )


def _endpoint_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The upload endpoint's TLS context from --tls-cert and --tls-key (None: plain HTTP), loaded now so
    that a bad file stops the command before the endpoint listens or the device is asked anything."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise _UsageError("--tls-cert and --tls-key go together: give both or neither")
    if args.upload_url.startswith("http://"):
        raise _UsageError(f"--upload-url {args.upload_url!r}: the endpoint serves HTTPS (--tls-cert)")
    try:
        return server_tls_context(args.tls_cert, args.tls_key)
    except TlsFileError as error:
        raise _UsageError(f"--tls-{error.file} {error}") from None


def _signing_key(args: argparse.Namespace) -> Ed25519PrivateKey:
    """The CSU's private signing key in --keys (KeyFileError naming the file)."""
    return load_ed25519_private(args.keys / f"{CSU_SIGNING_NAME}{PRIVATE_SUFFIX}")


def _endpoint(args: argparse.Namespace, status: DeviceStatus | None) -> DeviceEndpoint:
    return DeviceEndpoint(_device_url(args, status), RequestSigner(_signing_key(args)), args.ca_file)


def _time(name: str, raw: str) -> float:
    try:
        return parse_time(name, raw)
    except TimeFormatError as error:
        raise _UsageError(str(error)) from None


def fetch_clip_command(args: argparse.Namespace) -> int:
    """Fetch (pull) or have pushed, verify, export; exit 0 verified, 3 partial export, 4 incomplete (0
    with --allow-gaps), 1 rejected or failed, 2 usage."""
    try:
        if args.device_key is None:
            raise _UsageError("--device-key: the device's public key from provisioning is required")
        status = _last_status(args)
        via = _delivery(args, status)
        push = _push_settings(args) if via == "push" else None
        endpoint = _endpoint(args, status) if push is None else None
        keys = CollectorKeys(
            signing=_signing_key(args),
            sealing=load_x25519_private(args.keys / f"{CSU_SEALING_NAME}{PRIVATE_SUFFIX}"),
            device=load_ed25519_public(args.device_key),
            credential=optional_credential(args.keys),
        )
        request = ClipRequest(
            args.site,
            args.device,
            args.camera,
            _time("--start", args.start),
            _time("--end", args.end),
            args.requisition,
        )
    except (_UsageError, KeyFileError, PkiError) as error:
        print(f"fetch-clip: {error}", file=sys.stderr)
        return 2
    progress = ProgressBar(f"{args.camera}", enabled=False if args.no_progress else None)
    audit = _audit(args)
    try:
        if endpoint is not None:
            with endpoint:
                outcome = fetch_clip(endpoint, request, keys, args.output, audit, progress, args.partial)
        else:
            assert push is not None
            outcome = push_clip(push, request, keys, args.output, audit, progress, args.partial)
    except (FetchError, ClipRejected) as error:
        print(f"fetch-clip: {error}", file=sys.stderr)
        return 1
    evidence = outcome.evidence
    clip = evidence["clip"] or {}
    print(
        f"{evidence['verification']['result']}: {args.output / CLIP_FILE}"
        f" ({clip.get('frames', 0)} frames, {clip.get('duration_s', 0)} s)"
    )
    for gap in evidence["gaps"]:
        print(f"  gap {gap['start_ts']:.3f}..{gap['end_ts']:.3f}: {gap['reason']}")
    for problem in evidence["verification"]["problems"]:
        print(f"  {problem}")
    code = _result_exit(evidence["verification"]["result"], args.allow_gaps)
    if code == INCOMPLETE_EXIT:
        print("fetch-clip: the clip is incomplete (see above); --allow-gaps accepts it", file=sys.stderr)
    return code


def verify_command(args: argparse.Namespace) -> int:
    """Re-check an export: exit 0 intact, 1 with every problem listed, 4 intact but incomplete (0 with
    --allow-gaps)."""
    paths = args.collector_key or [args.keys / f"{CSU_SIGNING_NAME}{PUBLIC_SUFFIX}"]
    try:
        keys = [load_ed25519_public(p) for p in paths]
    except KeyFileError as error:
        print(f"verify: {error}", file=sys.stderr)
        return 2
    try:
        provenance_ok = _verify_provenance(args)
    except (PkiError, KeyFileError) as error:
        print(f"verify: {error}", file=sys.stderr)
        return 2
    evidence, problems = verify_export(args.directory, keys)
    if problems:
        print(f"{args.directory}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    assert evidence is not None
    result = evidence["verification"]["result"]
    print(f"{args.directory}: intact ({result}), {evidence['camera']} requisition {evidence['requisition']}")
    if not provenance_ok:
        return 1
    if result != "incomplete":
        return 0
    for problem in evidence["verification"]["problems"]:
        print(f"  {problem}")
    return _result_exit(result, args.allow_gaps)


def _verify_provenance(args: argparse.Namespace) -> bool:
    """Print the frame-level check of the export's MP4 (`provenance`: the words `verify_evidence.py`
    says); False when it finds a problem. Run when the clip carries a C2PA manifest or --ca is given."""
    clip = args.directory / CLIP_FILE
    if not clip.exists() or (args.ca is None and not has_manifest(clip)):
        return True
    ca_pem = load_ca(args.ca or PkiPaths(args.keys).ca_cert).public_bytes(Encoding.PEM).decode()
    known = (
        load_device_keys(args.device_keys)
        if args.device_keys
        else registered_device_keys(device_keys_dir(args.keys))
    )
    report = verify_export_clip(clip, ca_pem, known)
    for line in report.lines():
        print(line)
    return report.ok


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
        with _endpoint(args, _last_status(args)) as endpoint:
            result = endpoint.call_json("POST", "/v1/holds", body=json.dumps(body).encode())
    except (_UsageError, KeyFileError, FetchError, OSError) as error:
        return _failed("hold", args, error)
    _audit(args).append(action="hold", outcome="accepted", site=args.site, device=args.device, hold=result)
    print(json.dumps(result, sort_keys=True))
    return 0


def release_command(args: argparse.Namespace) -> int:
    """DELETE a hold by id."""
    try:
        with _endpoint(args, _last_status(args)) as endpoint:
            result = endpoint.call_json("DELETE", f"/v1/holds/{args.hold_id}")
    except (_UsageError, KeyFileError, FetchError, OSError) as error:
        return _failed("release", args, error)
    _audit(args).append(
        action="release", outcome="accepted", site=args.site, device=args.device, hold_id=args.hold_id
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def _failed(action: str, args: argparse.Namespace, error: Exception) -> int:
    """Exit 2 for what was never sent (a bad option, an unreadable key); otherwise the attempt is
    audited, refused by the device or failed on the way (unreachable, certificate not trusted), and
    the exit is 1."""
    print(f"{action}: {error}", file=sys.stderr)
    if isinstance(error, (_UsageError, KeyFileError)):
        return 2
    refused = isinstance(error, FetchError)
    _audit(args).append(
        action=action,
        outcome="refused" if refused else "failed",
        reason=error.reason if isinstance(error, FetchError) else "unreachable",
        detail=str(error),
        site=args.site,
        device=args.device,
    )
    return 1
