"""Signed requests between the CSU collector and a device's clip API.

Scheme `CSU-ED25519-V1`. The collector signs, with its Ed25519 key, the canonical text

    CSU-ED25519-V1\\n{METHOD}\\n{path}\\n{canonical query}\\n{timestamp}\\n{nonce}\\n{sha256(body) hex}

and sends it in four headers: `X-CSU-Key` (key id: first 16 hex digits of the SHA-256 of the raw
32-byte public key), `X-CSU-Timestamp` (integer UTC epoch seconds), `X-CSU-Nonce` (16 to 64 characters
of `[A-Za-z0-9_-]`, fresh per request) and `X-CSU-Signature` (base64 of the 64-byte signature).
The canonical query is every `name=value` pair percent-encoded (RFC 3986 unreserved characters kept),
sorted by name then value, joined by `&`; the path is the request path as sent, without the query.

The device accepts a request only when the key id is one of the provisioned collector keys, the
signature verifies, the timestamp is within the clock-skew window of its own clock, and the nonce has
not been seen within that window (a replay cache that forgets nonces once their timestamp is stale).
The same scheme signs MQTT commands (method `MQTT`, path `/cmd/{name}`, the command's fields as query).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.formats.durable import append_durably
from edge_agent.formats.keys import public_key_id
from edge_agent.formats.times import Clock

SCHEME = "CSU-ED25519-V1"
HEADER_KEY = "X-CSU-Key"
HEADER_TIMESTAMP = "X-CSU-Timestamp"
HEADER_NONCE = "X-CSU-Nonce"
HEADER_SIGNATURE = "X-CSU-Signature"
SIGNED_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
"""The shape of a nonce (`X-CSU-Nonce`)."""
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SignatureError(Exception):
    """A request that fails authentication; `reason` is a short code, `status` the HTTP status."""

    def __init__(self, reason: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """`name=value` pairs percent-encoded, sorted, joined by `&` (order of sending does not matter)."""
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def string_to_sign(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    timestamp: str,
    nonce: str,
    body: bytes = b"",
) -> bytes:
    """The exact bytes that are signed."""
    body_hash = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
    lines = [SCHEME, method.upper(), path, canonical_query(query), timestamp, nonce, body_hash]
    return "\n".join(lines).encode("utf-8")


def new_nonce() -> str:
    """A fresh nonce (24 characters of `[A-Za-z0-9_-]`: 144 random bits)."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class RequestSigner:
    """The collector side: signs requests with its Ed25519 private key."""

    private_key: Ed25519PrivateKey
    clock: Clock = time.time

    @property
    def key_id(self) -> str:
        """Id of the matching public key, as the device knows it."""
        return public_key_id(self.private_key.public_key())

    def headers(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        nonce: str | None = None,
    ) -> dict[str, str]:
        """The four signature headers for one request (a fresh nonce unless one is given)."""
        timestamp = str(int(self.clock()))
        nonce = nonce or new_nonce()
        message = string_to_sign(method, path, query, timestamp, nonce, body)
        signature = base64.b64encode(self.private_key.sign(message)).decode("ascii")
        return {
            HEADER_KEY: self.key_id,
            HEADER_TIMESTAMP: timestamp,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: signature,
        }


NONCE_JOURNAL_NAME = "seen-nonces.log"
"""The device keeps its nonce journal beside its audit log (one state folder to back up or wipe)."""


class NonceCache:
    """Nonces seen recently, each kept until its request would be stale anyway.

    Bounded: when full of still-fresh nonces it refuses new ones (fail closed) rather than forgetting
    a nonce that could then be replayed. With a `journal` file, every accepted nonce is appended and
    fsynced before the request is acted on, and the still-fresh ones are read back at start: a request
    replayed after an agent restart is refused like any other replay. Only signed, fresh requests reach
    the journal, so refusals never cost a disk write.
    """

    def __init__(self, max_entries: int = 100_000, journal: Path | None = None, now: float = 0.0) -> None:
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self._journal = journal
        self._journal_lines = 0
        if journal is not None:
            self._load(journal, now)

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: str, expires_at: float, now: float) -> None:
        """Record `nonce`; SignatureError if it was already seen or the cache is full."""
        with self._lock:
            self._expire(now)
            if nonce in self._expiry:
                raise SignatureError("replayed-nonce", f"nonce {nonce!r} was already used")
            if len(self._expiry) >= self._max:
                raise SignatureError(
                    "replay-cache-full", "too many requests in the skew window; retry later", 503
                )
            self._expiry[nonce] = expires_at
            self._record(nonce, expires_at)

    def _expire(self, now: float) -> None:
        # Insertion order is close to expiry order (timestamps within the skew window); an entry
        # kept a little longer than needed is harmless.
        while self._expiry:
            nonce, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[nonce]

    def _load(self, journal: Path, now: float) -> None:
        try:
            lines = journal.read_text(encoding="ascii", errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            expires, _, nonce = line.partition(" ")
            try:
                expires_at = float(expires)
            except ValueError:
                continue  # a line torn by a crash: its request was never acted on
            if expires_at > now and nonce:
                self._expiry[nonce] = expires_at
        self._rewrite(journal)

    def _record(self, nonce: str, expires_at: float) -> None:
        if self._journal is None:
            return
        if self._journal_lines > 2 * len(self._expiry) + 1_000:
            self._rewrite(self._journal)
            return
        # A line the disk refuses is cut back off: the next one must not land on a torn line, which
        # would lose its nonce at the next start.
        append_durably(self._journal, f"{expires_at:.0f} {nonce}\n".encode("ascii"))
        self._journal_lines += 1

    def _rewrite(self, journal: Path) -> None:
        """Replace the journal by the live entries only (write, fsync, rename: never a half journal)."""
        journal.parent.mkdir(parents=True, exist_ok=True)
        fresh = journal.with_name(journal.name + ".tmp")
        with fresh.open("w", encoding="ascii") as out:
            out.writelines(f"{expires:.0f} {nonce}\n" for nonce, expires in self._expiry.items())
            out.flush()
            os.fsync(out.fileno())
        os.replace(fresh, journal)
        self._journal_lines = len(self._expiry)


class RequestVerifier:
    """The device side: checks key, signature, freshness and uniqueness of a signed request."""

    def __init__(
        self,
        public_keys: Iterable[Ed25519PublicKey],
        skew_s: float,
        clock: Clock = time.time,
        nonces: NonceCache | None = None,
    ) -> None:
        self._keys = {public_key_id(k): k for k in public_keys}
        self._skew = skew_s
        self._clock = clock
        self._nonces = NonceCache() if nonces is None else nonces  # an empty cache is falsy

    def verify(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> str:
        """Return the key id of the signer, or raise SignatureError naming what is wrong."""
        values = {name: headers.get(name) for name in SIGNED_HEADERS}
        if all(v is None for v in values.values()):
            raise SignatureError("missing-signature", "request is not signed")
        absent = [name for name, value in values.items() if not value]
        if absent:
            raise SignatureError("malformed-signature", f"missing header(s): {', '.join(absent)}")
        kid, timestamp, nonce, signature_b64 = (str(values[n]) for n in SIGNED_HEADERS)
        if not _KEY_ID_RE.match(kid):
            raise SignatureError("malformed-signature", f"{HEADER_KEY}: not a 16-hex-digit key id")
        if not _TIMESTAMP_RE.match(timestamp):
            raise SignatureError("malformed-signature", f"{HEADER_TIMESTAMP}: not epoch seconds")
        if not NONCE_RE.match(nonce):
            raise SignatureError(
                "malformed-signature", f"{HEADER_NONCE}: 16 to 64 characters of [A-Za-z0-9_-]"
            )
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("malformed-signature", f"{HEADER_SIGNATURE}: not base64") from None
        public_key = self._keys.get(kid)
        if public_key is None:
            raise SignatureError("unknown-key", f"key {kid} is not an authorized collector key", 403)
        try:
            public_key.verify(signature, string_to_sign(method, path, query, timestamp, nonce, body))
        except InvalidSignature:
            raise SignatureError("bad-signature", "signature does not verify") from None
        now = self._clock()
        sent_at = int(timestamp)
        if abs(now - sent_at) > self._skew:
            raise SignatureError(
                "stale-timestamp",
                f"timestamp {sent_at} is {now - sent_at:+.0f}s from the device clock"
                f" (window ±{self._skew:g}s)",
            )
        self._nonces.add(f"{kid}:{nonce}", sent_at + self._skew + 1, now)
        return kid


# Where an MQTT command carries the four signature headers (its payload has no headers).
COMMAND_SIGNATURE_FIELDS = {
    "key": HEADER_KEY,
    "ts": HEADER_TIMESTAMP,
    "nonce": HEADER_NONCE,
    "sig": HEADER_SIGNATURE,
}


def signed_command(
    name: str, fields: Mapping[str, Any], signer: RequestSigner, nonce: str | None = None
) -> dict[str, Any]:
    """The payload of a signed MQTT command `name`: its fields (the query) plus the signature fields
    (with `nonce` when the sender must know it beforehand, else a fresh one)."""
    query = sorted((k, str(v)) for k, v in fields.items())
    headers = signer.headers("MQTT", f"/cmd/{name}", query, nonce=nonce)
    return {**fields, **{k: headers[h] for k, h in COMMAND_SIGNATURE_FIELDS.items()}}


def verify_command(
    name: str, payload: Mapping[str, Any], verifier: RequestVerifier
) -> tuple[str, dict[str, Any]]:
    """Check a signed MQTT command `name` (the device side of `signed_command`): (signer's key id, its
    fields without the signature); SignatureError like an HTTP request."""
    fields = {k: v for k, v in payload.items() if k not in COMMAND_SIGNATURE_FIELDS}
    headers = {h: str(payload[k]) for k, h in COMMAND_SIGNATURE_FIELDS.items() if k in payload}
    query = sorted((k, str(v)) for k, v in fields.items())
    return verifier.verify("MQTT", f"/cmd/{name}", query, headers), fields
