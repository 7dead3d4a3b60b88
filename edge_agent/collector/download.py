"""The collector's HTTP client of a device's clip API: signed requests, and the resumable bundle download.

Every request goes through `DeviceEndpoint`, on one `requests.Session` per device (kept-alive
connections), signed afresh by `RequestSigner` (a new nonce each time, so nothing is ever re-sent as is:
the session never retries and never follows a redirect on its own).

The bundle goes to `<dest>.part` while it arrives; the ETag of the first response is kept beside it
(`<dest>.part.etag`). After a cut connection the next attempt is a newly signed request with
`Range: bytes=<have>-` and `If-Range: <etag>`: the device answers 206 with the rest when the bundle is
unchanged, or 200 with a new bundle (its index changed) and the download starts over. Memory stays at
one chunk whatever the bundle size.

A bundle answers one request: the device writes the request's nonce into its signed manifest. The first
request of a download is signed with the download's nonce; every later one (signed afresh, as always)
names it as `request_nonce`, so that the device builds the very same bytes and the parts fit together.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode, urlsplit

import requests

from edge_agent.collector.progress import ProgressBar
from edge_agent.formats.signing import RequestSigner, new_nonce
from edge_agent.formats.upload import ContentRange, parse_content_range

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(Exception):
    """A download that failed for good (refused by the device, or out of retries)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class _TransferError(OSError):
    """An answer that went wrong in a way a new attempt may fix (cut short, range not usable).

    An OSError like every network error `requests` raises, so that the download loop retries it.
    """


@dataclass(frozen=True)
class DownloadResult:
    """A complete bundle on disk; `nonce` is the request nonce its manifest must name."""

    path: Path
    bundle_id: str
    size: int
    attempts: int
    restarts: int
    nonce: str


def _new_session() -> requests.Session:
    session = requests.Session()
    # Nothing from the environment: no proxy variables (devices are reached directly on the CSU
    # network), no ~/.netrc credentials sent to a device, no REQUESTS_CA_BUNDLE overriding --ca-file.
    session.trust_env = False
    # Bytes as stored: a compressed answer would make byte ranges count something else.
    session.headers["Accept-Encoding"] = "identity"
    return session


def _verify(ca_file: Path | None) -> str | bool:
    """What `requests` checks the device's certificate against: the given CA file, else the system's
    trust store (as `ssl.create_default_context()` does), else the bundle `requests` ships with."""
    if ca_file is not None:
        return str(ca_file)
    return ssl.get_default_verify_paths().cafile or True


@dataclass(frozen=True)
class DeviceEndpoint:
    """Where and how to reach a device's clip API; `close()` (or `with`) releases its connections."""

    base_url: str
    signer: RequestSigner
    ca_file: Path | None = None
    timeout_s: float = 30.0
    session: requests.Session = field(default_factory=_new_session, compare=False, repr=False)

    def __enter__(self) -> DeviceEndpoint:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.session.close()

    def path(self, path: str) -> str:
        """The full request path under the base URL's own path."""
        return urlsplit(self.base_url).path.rstrip("/") + path

    def url(self, path: str, query: Sequence[tuple[str, str]] = ()) -> str:
        """The absolute URL of `path` with its query, encoded as signed; FetchError for a bad base URL."""
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"clip URL {self.base_url!r}: scheme must be http or https")
        try:
            usable = bool(parts.hostname) and (parts.port is None or parts.port > 0)
        except ValueError:  # a port that is not a number, or out of range
            usable = False
        if not usable:
            raise FetchError(f"clip URL {self.base_url!r}: needs a host and a valid port")
        target = self.path(path) + (f"?{urlencode(query)}" if query else "")
        return f"{parts.scheme}://{parts.netloc}{target}"

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        extra_headers: dict[str, str] | None = None,
        stream: bool = False,
        nonce: str | None = None,
    ) -> requests.Response:
        """Send one signed request (with `nonce`, else a fresh one: never one sent before); the caller
        closes the response (`with`), which matters with `stream`."""
        url = self.url(path, query)
        headers = self.signer.headers(method, self.path(path), query, body, nonce)
        headers.update(extra_headers or {})
        if body:
            headers["Content-Type"] = "application/json"
        return self.session.request(
            method,
            url,
            data=body or None,
            headers=headers,
            stream=stream,
            timeout=self.timeout_s,
            verify=_verify(self.ca_file),
            allow_redirects=False,
        )

    def call_json(
        self, method: str, path: str, query: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> dict:
        """A signed request whose answer is JSON; FetchError with the device's message on refusal."""
        with self.request(method, path, query, body) as response:
            data = response.content
        if response.status_code >= 400:
            raise _refusal(response.status_code, data)
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
    nonce: str = "",
) -> DownloadResult:
    """Fetch `GET /v1/clips?query` into `dest`, resuming after interruptions; the bundle answers `nonce`
    (a fresh one unless given, which must never have been sent before)."""
    part = dest.with_name(dest.name + ".part")
    etag_file = part.with_name(part.name + ".etag")
    nonce = nonce or new_nonce()
    attempts = restarts = 0
    last_error: Exception | None = None
    while attempts < max_attempts:
        attempts += 1
        have = part.stat().st_size if part.exists() and etag_file.exists() else 0
        etag = etag_file.read_text().strip() if have else ""
        # The first request carries the nonce itself; a later one cannot (a nonce is never sent twice).
        first = attempts == 1
        asked = list(query) if first else [*query, ("request_nonce", nonce)]
        try:
            outcome = _attempt(
                endpoint, asked, part, etag_file, have, etag, progress, nonce if first else None
            )
        except (requests.RequestException, _TransferError) as error:  # the network: a new attempt may do
            last_error = error
            log.warning("fetch interrupted (%s); attempt %d/%d", error, attempts, max_attempts)
            sleep(min(backoff_s * 2 ** (attempts - 1), 10.0))
            continue
        except OSError as error:  # the collector's own disk (full, read-only): no new attempt can help
            raise FetchError(f"{part}: cannot be written: {error}") from None
        bundle_id, size, restarted = outcome
        restarts += restarted
        if progress is not None:
            progress.finish()
        part.replace(dest)
        etag_file.unlink(missing_ok=True)
        return DownloadResult(dest, bundle_id, size, attempts, restarts, nonce)
    raise FetchError(f"download failed after {attempts} attempts: {last_error}")


def _attempt(
    endpoint: DeviceEndpoint,
    query: Sequence[tuple[str, str]],
    part: Path,
    etag_file: Path,
    have: int,
    etag: str,
    progress: ProgressBar | None,
    nonce: str | None,
) -> tuple[str, int, int]:
    """One request: returns (bundle id, size, 1 if the bundle changed and restarted from 0)."""
    extra = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
    with endpoint.request(
        "GET", "/v1/clips", query, extra_headers=extra, stream=True, nonce=nonce
    ) as response:
        if response.status_code == 416 and have:
            # What we have may already be everything: the device says there is nothing after it.
            total = _content_range(response.headers.get("Content-Range", "")).total
            if total == have:
                return etag.strip('"'), have, 0
            raise _TransferError(f"range refused, bundle is {total} bytes")
        if response.status_code >= 400:
            raise _refusal(response.status_code, response.content)
        new_etag = response.headers.get("ETag", "")
        if response.status_code == 206:
            served = _content_range(response.headers.get("Content-Range", ""))
            offset, total = served.first, served.total
            if offset != have:
                raise FetchError(f"device resumed at byte {offset}, expected {have}")
            mode, restarted = "ab", 0
        else:
            total = int(response.headers.get("Content-Length", "0"))
            mode, restarted = "wb", int(have > 0)
            etag_file.write_text(new_etag)
            have = 0
        if progress is not None:
            progress.start(total, have)
        with part.open(mode) as out:
            for data in response.iter_content(CHUNK):
                out.write(data)
                if progress is not None:
                    progress.advance(len(data))
            out.flush()
            received = out.tell()
        if received != total:
            raise _TransferError(f"answer cut short: {total - received} of {total} bytes missing")
        return new_etag.strip('"'), total, restarted


def _content_range(header: str) -> ContentRange:
    """The device's `Content-Range` (FetchError naming it when it is not one)."""
    try:
        return parse_content_range(header)
    except ValueError as error:
        raise FetchError(f"device sent an unusable Content-Range: {error}") from None
