"""Signed, resumable download of a clip bundle from a device's clip API.

The bundle goes to `<dest>.part` while it arrives; the ETag of the first response is kept beside it
(`<dest>.part.etag`). After a cut connection the next attempt is a newly signed request with
`Range: bytes=<have>-` and `If-Range: <etag>`: the device answers 206 with the rest when the bundle is
unchanged, or 200 with a new bundle (its index changed) and the download starts over. Memory stays at
one chunk whatever the bundle size.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from edge_agent.collector.progress import ProgressBar
from edge_agent.formats.signing import RequestSigner

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(Exception):
    """A download that failed for good (refused by the device, or out of retries)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class DownloadResult:
    """A complete bundle on disk."""

    path: Path
    bundle_id: str
    size: int
    attempts: int
    restarts: int


@dataclass(frozen=True)
class DeviceEndpoint:
    """Where and how to reach a device's clip API."""

    base_url: str
    signer: RequestSigner
    ssl_context: ssl.SSLContext | None = None
    timeout_s: float = 30.0

    def connection(self) -> http.client.HTTPConnection:
        """A new connection to the device."""
        parts = urlsplit(self.base_url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname or "", parts.port or 443, timeout=self.timeout_s, context=self.ssl_context
            )
        if parts.scheme != "http":
            raise FetchError(f"clip URL {self.base_url!r}: scheme must be http or https")
        return http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=self.timeout_s)

    def path(self, path: str) -> str:
        """The full request path under the base URL's own path."""
        return urlsplit(self.base_url).path.rstrip("/") + path

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one signed request; the caller reads and closes the response."""
        full_path = self.path(path)
        headers = self.signer.headers(method, full_path, query, body)
        headers.update(extra_headers or {})
        if body:
            headers["Content-Type"] = "application/json"
        target = full_path + (f"?{urlencode(query)}" if query else "")
        connection = self.connection()
        connection.request(method, target, body=body or None, headers=headers)
        return connection, connection.getresponse()

    def call_json(
        self, method: str, path: str, query: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> dict:
        """A signed request whose answer is JSON; FetchError with the device's message on refusal."""
        connection, response = self.request(method, path, query, body)
        try:
            data = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            raise _refusal(response.status, data)
        result: dict = json.loads(data)
        return result


def _refusal(status: int, data: bytes) -> FetchError:
    try:
        detail = json.loads(data)
        return FetchError(
            f"device refused ({status} {detail.get('error')}): {detail.get('message')}",
            status,
            str(detail.get("error", "")),
        )
    except ValueError:
        return FetchError(f"device answered {status}: {data[:200]!r}", status)


def download_bundle(
    endpoint: DeviceEndpoint,
    query: Sequence[tuple[str, str]],
    dest: Path,
    progress: ProgressBar | None = None,
    max_attempts: int = 8,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Fetch `GET /v1/clips?query` into `dest`, resuming after interruptions."""
    part = dest.with_name(dest.name + ".part")
    etag_file = part.with_name(part.name + ".etag")
    attempts = restarts = 0
    last_error: Exception | None = None
    while attempts < max_attempts:
        attempts += 1
        have = part.stat().st_size if part.exists() and etag_file.exists() else 0
        etag = etag_file.read_text().strip() if have else ""
        try:
            outcome = _attempt(endpoint, query, part, etag_file, have, etag, progress)
        except (OSError, http.client.HTTPException) as error:
            last_error = error
            log.warning("fetch interrupted (%s); attempt %d/%d", error, attempts, max_attempts)
            sleep(min(backoff_s * 2 ** (attempts - 1), 10.0))
            continue
        bundle_id, size, restarted = outcome
        restarts += restarted
        if progress is not None:
            progress.finish()
        part.replace(dest)
        etag_file.unlink(missing_ok=True)
        return DownloadResult(dest, bundle_id, size, attempts, restarts)
    raise FetchError(f"download failed after {attempts} attempts: {last_error}")


def _attempt(
    endpoint: DeviceEndpoint,
    query: Sequence[tuple[str, str]],
    part: Path,
    etag_file: Path,
    have: int,
    etag: str,
    progress: ProgressBar | None,
) -> tuple[str, int, int]:
    """One request: returns (bundle id, size, 1 if the bundle changed and restarted from 0)."""
    extra = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
    connection, response = endpoint.request("GET", "/v1/clips", query, extra_headers=extra)
    try:
        if response.status == 416 and have:
            # What we have may already be everything: the device says there is nothing after it.
            total = int(response.getheader("Content-Range", "*/0").rpartition("/")[2] or 0)
            if total == have:
                return etag.strip('"'), have, 0
            raise http.client.HTTPException(f"range refused, bundle is {total} bytes")
        if response.status >= 400:
            raise _refusal(response.status, response.read())
        new_etag = response.getheader("ETag", "")
        if response.status == 206:
            offset, total = _content_range(response.getheader("Content-Range", ""))
            if offset != have:
                raise FetchError(f"device resumed at byte {offset}, expected {have}")
            mode, restarted = "ab", 0
        else:
            total = int(response.getheader("Content-Length", "0"))
            mode, restarted = "wb", int(have > 0)
            etag_file.write_text(new_etag)
            have = 0
        if progress is not None:
            progress.start(total, have)
        with part.open(mode) as out:
            while True:
                data = response.read(CHUNK)
                if not data:
                    break
                out.write(data)
                if progress is not None:
                    progress.advance(len(data))
            out.flush()
            received = out.tell()
        if received != total:
            raise http.client.IncompleteRead(b"", total - received)
        return new_etag.strip('"'), total, restarted
    finally:
        connection.close()


def _content_range(header: str) -> tuple[int, int]:
    """(first byte, total size) from `bytes first-last/total`."""
    try:
        unit_range, _, total = header.partition("/")
        first = unit_range.split()[1].split("-")[0]
        return int(first), int(total)
    except (IndexError, ValueError):
        raise FetchError(f"device sent an unusable Content-Range {header!r}") from None
