"""StreamSource: network streams decoded by PyAV to I420, served for real over loopback.

A real H.264 MPEG-TS (made from vtest.avi) is served by an http.server thread on 127.0.0.1, whole, cut
short or stalled, and read through StreamSource. There is no RTSP server here, so RTSP media is not
exercised; a scripted RTSP peer checks instead what FFmpeg's own RTSP client asks for with our options:
only the video track, interleaved over the RTSP TCP connection (`rtsp_transport=tcp`, `allowed_media_types`
in https://ffmpeg.org/ffmpeg-protocols.html#rtsp), and that a silent camera ends the wait at `timeout`
(microseconds; the RTSP demuxer's socket timeout since FFmpeg 5, commit 6f34f031 renamed `stimeout`).
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from edge_agent.camera.frames import PixelFormat
from edge_agent.camera.sources import SourceError, open_source
from edge_agent.camera.sources.opencv import OpenCVSource
from edge_agent.camera.sources.stream import DEFAULT_TIMEOUT_S, StreamSource, stream_options
from edge_agent.commands.cli import main as cli_main
from edge_agent.formats.config import CameraConfig, ConfigError, SourceKind, masked_url, parse_config
from tests.decoding_support import assert_i420_like_opencv, encode_clip, read_all

T = TypeVar("T")
FRAMES = 60
LONG_FRAMES = 200
# How much later than the timeout a stalled read may end (the decoder's queue, a loaded test machine).
SLACK_S = 2.0


@pytest.fixture(scope="module")
def ts_clip(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_clip(
        datasets, tmp_path_factory.mktemp("streams") / "cam.ts", (320, 240), "libx264", FRAMES, "mpegts"
    )


@pytest.fixture(scope="module")
def long_clip(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of stream: longer than the 5 s FFmpeg's open reads ahead to find the streams' parameters."""
    return encode_clip(
        datasets, tmp_path_factory.mktemp("streams") / "long.ts", (320, 240), "libx264", LONG_FRAMES, "mpegts"
    )


class Served:
    """An HTTP server on 127.0.0.1 sending `body` to every GET, like a camera's live MPEG-TS.

    With `stall_after`, it sends that many bytes and then nothing more, keeping the connection open (a
    camera that hangs); with `length`, it declares the body's size (a clean end of stream); with
    `login`, a request without credentials gets 401 and a Basic challenge.
    """

    def __init__(
        self, body: bytes, stall_after: int | None = None, length: bool = False, login: bool = False
    ) -> None:
        self.body = body
        self.stall_after = stall_after
        self.length = length
        self.login = login
        self.authorizations: list[str] = []
        self.released = threading.Event()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization", "")
                served.authorizations.append(authorization)
                if served.login and not authorization:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                if served.length:
                    self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body[: served.stall_after])
                self.wfile.flush()
                if served.stall_after is not None:
                    served.released.wait(60)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.server.server_port}/live.ts"

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[type[Served]]:
    started: list[Served] = []

    class Tracked(Served):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for server in started:
        server.stop()


def camera_on(source: object) -> CameraConfig:
    return CameraConfig(id="pano", source=source, masks=[])


def within(seconds: float, action: Callable[[], T]) -> T:
    """`action()` run in a thread; a test failure if it is still blocked after `seconds`.

    Without the socket timeout, FFmpeg blocks in C for good, where pytest-timeout's signal cannot stop it.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still blocked after {seconds:g} s")
    if failure:
        raise failure[0]
    return outcome[0]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_http_stream_frames_are_i420_and_match_opencv(ts_clip: Path, serve: type[Served]) -> None:
    server = serve(ts_clip.read_bytes(), length=True)
    source = StreamSource("pano", server.url(), clock=lambda: 7.0)
    assert source.paced
    assert source.native_fps == pytest.approx(10.0)
    frames = read_all(source)
    assert source.read() is None  # the end stays the end: a stream does not loop
    source.close()
    assert_i420_like_opencv(frames, ts_clip, (320, 240), FRAMES)
    assert {f.captured_at for f in frames} == {7.0}


def test_a_stream_url_opens_a_stream_source_and_explicit_opencv_keeps_opencv(
    ts_clip: Path, serve: type[Served]
) -> None:
    server = serve(ts_clip.read_bytes())
    source = open_source(camera_on(server.url()))
    assert isinstance(source, StreamSource)
    first = source.read()
    source.close()
    assert first is not None and first.pixel_format is PixelFormat.I420
    legacy = open_source(camera_on({"kind": "opencv", "uri": server.url()}))
    assert isinstance(legacy, OpenCVSource) and legacy.paced
    frame = legacy.read()
    legacy.close()
    assert frame is not None and frame.pixel_format is PixelFormat.BGR


@pytest.mark.parametrize("timeout_s", [1.0, DEFAULT_TIMEOUT_S])
def test_a_camera_that_stops_sending_ends_the_read_at_the_timeout(
    long_clip: Path, serve: type[Served], timeout_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    data = long_clip.read_bytes()
    server = serve(data, stall_after=len(data) * 3 // 4)
    url = server.url("admin:hunter2@")
    started = time.monotonic()
    source = StreamSource("pano", url, clock=time.monotonic, timeout_s=timeout_s)
    opened = time.monotonic()
    with caplog.at_level(logging.WARNING):
        frames = within(timeout_s + 10, lambda: read_all(source))
    ended = time.monotonic()
    source.close()
    assert opened - started < timeout_s / 2  # the stall comes after the open, while reading
    assert LONG_FRAMES // 2 < len(frames) < LONG_FRAMES  # the frames sent came out, then the stall
    # Bounded by the timeout, and not shorter: the end came from the socket timeout, not from the server
    # (what was sent arrives at once; the demuxer hands its last packets out after the timeout).
    assert timeout_s * 0.9 <= ended - opened < timeout_s + SLACK_S
    assert "camera pano: stream http://***@127.0.0.1" in caplog.text and "lost" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_refused_port_fails_fast_and_masks_the_credentials() -> None:
    url = f"http://admin:s3cr%40t@127.0.0.1:{free_port()}/live.ts"
    started = time.monotonic()
    with pytest.raises(SourceError) as raised:
        open_source(camera_on(url))
    assert time.monotonic() - started < 1.0
    message = str(raised.value)
    port = url.rsplit(":", 1)[1]
    assert message.startswith(f"camera 'pano': cannot open stream 'http://***@127.0.0.1:{port}'")
    assert "Connection refused" in message
    assert "admin" not in message and "s3cr" not in message


def test_a_silent_server_fails_the_open_at_the_timeout() -> None:
    # The kernel completes the TCP handshake for a listening socket nobody accepts: a hung camera.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://user:pw@127.0.0.1:{silent.getsockname()[1]}/live.ts"
        started = time.monotonic()
        with pytest.raises(
            SourceError, match=r"camera 'pano': cannot open stream 'http://\*\*\*@127\.0\.0\.1"
        ):
            within(10, lambda: StreamSource("pano", url, clock=time.monotonic, timeout_s=1.0))
        assert 0.9 <= time.monotonic() - started < 1.0 + SLACK_S


def test_credentials_still_reach_the_camera(ts_clip: Path, serve: type[Served]) -> None:
    server = serve(ts_clip.read_bytes(), login=True)
    source = StreamSource("pano", server.url("admin:hunter2@"), clock=time.monotonic)
    frame = source.read()
    source.close()
    assert frame is not None
    # FFmpeg answers the 401 challenge with the URL's credentials.
    assert server.authorizations[-1] == "Basic " + base64.b64encode(b"admin:hunter2").decode()
    with pytest.raises(SourceError, match=r"cannot open stream 'http://127\.0\.0\.1:\d+/live\.ts' \(.*401"):
        StreamSource("pano", server.url(), clock=time.monotonic, timeout_s=1.0)


def test_a_stream_that_is_not_video_names_the_camera(serve: type[Served]) -> None:
    server = serve(b"<html>login required</html>\n" * 200)
    with pytest.raises(
        SourceError, match=r"camera 'pano': cannot open stream 'http://127\.0\.0\.1:\d+/live\.ts'"
    ):
        StreamSource("pano", server.url(), clock=time.monotonic, timeout_s=1.0)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://10.0.0.9/stream1", "rtsp://10.0.0.9/stream1"),
        ("rtsp://admin:pw@10.0.0.9:554/stream1", "rtsp://***@10.0.0.9:554/stream1"),
        ("rtsp://admin@10.0.0.9/stream1", "rtsp://***@10.0.0.9/stream1"),
        ("rtsp://admin:p@ss/w0rd@10.0.0.9/s", "rtsp://***@10.0.0.9/s"),  # unescaped @ and / in the password
        ("http://u:p@cam.local/snap@2x", "http://***@2x"),  # hides more, never leaks
        ("not a url", "not a url"),
    ],
)
def test_masked_url(url: str, masked: str) -> None:
    assert masked_url(url) == masked


class ScriptedRtspPeer:
    """Answers OPTIONS and DESCRIBE (H.264 video and PCMU audio tracks), refuses SETUP, records requests.

    With `silent`, it accepts the connection and answers nothing, like a hung camera.
    """

    SDP = (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track1\r\n"
        "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:track2\r\n"
    )

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.requests: list[list[str]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            pending = b""
            while data := connection.recv(4096):
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    lines = head.decode().split("\r\n")
                    self.requests.append(lines)
                    if not self.silent:
                        connection.sendall(self._answer(lines).encode())

    def _answer(self, lines: list[str]) -> str:
        method = lines[0].split()[0]
        cseq = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("cseq:"))
        if method == "OPTIONS":
            return f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY\r\n\r\n"
        if method == "DESCRIBE":
            return (
                f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(self.SDP)}\r\n\r\n{self.SDP}"
            )
        return f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n"

    def close(self) -> None:
        self.listener.close()


def test_rtsp_sets_up_only_video_interleaved_over_tcp() -> None:
    peer = ScriptedRtspPeer()
    try:
        with pytest.raises(
            SourceError, match=r"camera 'pano': cannot open stream 'rtsp://\*\*\*@127\.0\.0\.1"
        ):
            StreamSource("pano", f"rtsp://admin:pw@127.0.0.1:{peer.port}/live", clock=time.monotonic)
    finally:
        peer.close()
    setups = [request for request in peer.requests if request[0].startswith("SETUP ")]
    # FFmpeg's default would first ask for RTP over UDP ports, and set up the audio track too.
    assert len(setups) == 1 and setups[0][0].split()[1].endswith("/live/track1")
    assert "Transport: RTP/AVP/TCP;unicast;interleaved=0-1" in setups[0]


def test_a_silent_rtsp_camera_fails_the_open_at_the_timeout() -> None:
    peer = ScriptedRtspPeer(silent=True)
    url = f"rtsp://127.0.0.1:{peer.port}/live"
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match=r"camera 'pano': cannot open stream 'rtsp://127\.0\.0\.1"):
            within(10, lambda: StreamSource("pano", url, clock=time.monotonic, timeout_s=1.0))
    finally:
        peer.close()
    assert 0.9 <= time.monotonic() - started < 1.0 + SLACK_S
    assert [request[0].split()[0] for request in peer.requests] == ["OPTIONS"]


def test_stream_options() -> None:
    assert stream_options("http://cam/live.ts", 2.5) == {"timeout": "2500000"}
    assert stream_options("RTSP://cam/live", 5.0) == {
        "timeout": "5000000",
        "rtsp_transport": "tcp",
        "allowed_media_types": "video",
    }


@pytest.mark.parametrize(
    ("shorthand", "kind"),
    [
        ("rtsp://10.0.0.9/stream1", SourceKind.STREAM),
        ("RTSPS://admin:pw@10.0.0.9/stream1", SourceKind.STREAM),
        ("http://10.0.0.9/live.ts", SourceKind.STREAM),
        ("https://10.0.0.9/live.ts", SourceKind.STREAM),
        ("udp://239.0.0.1:5000", SourceKind.STREAM),
        ("tcp://10.0.0.9:8554", SourceKind.STREAM),
        ("0", SourceKind.OPENCV),
        ("/dev/video2", SourceKind.OPENCV),
        ("/data/square.mp4", SourceKind.FILE),
    ],
)
def test_shorthand_maps_stream_urls_to_stream(shorthand: str, kind: SourceKind) -> None:
    source = camera_on(shorthand).source
    assert source.kind is kind and source.uri == shorthand


def test_explicit_opencv_with_a_url_stays_opencv() -> None:
    source = camera_on({"kind": "opencv", "uri": "rtsp://10.0.0.9/stream1"}).source
    assert source.kind is SourceKind.OPENCV


@pytest.mark.parametrize("uri", [None, "", "/data/square.mp4"])
def test_a_stream_source_needs_a_url(uri: str | None) -> None:
    source = {"kind": "stream"} if uri is None else {"kind": "stream", "uri": uri}
    config = {"site_id": "s", "device_id": "d", "cameras": [{"id": "c", "source": source}]}
    with pytest.raises(
        ConfigError, match=r"cameras\[0\]\.source: a stream source needs `uri`, a network URL"
    ):
        parse_config(config)


def test_check_config_and_the_opencv_source_never_print_a_stream_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary of `check-config` and OpenCV's refusal name the camera's URL with its credentials
    masked (the stream source's own messages are checked above)."""
    url = "rtsp://admin:s3cret@127.0.0.1:9/stream1"
    document = {
        "site_id": "ville-01",
        "device_id": "pi-a",
        "cameras": [{"id": "ptz", "source": url, "masks": [{"points": [[0, 0], [0.2, 0], [0.2, 0.2]]}]}],
        "mqtt": {"enabled": False},
        "keys": {"device_key": str(tmp_path / "k.pem"), "csu_sealing_public_key": str(tmp_path / "c.pub")},
    }
    for name in ("k.pem", "c.pub"):
        (tmp_path / name).write_text("key\n")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    assert cli_main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rtsp://***@127.0.0.1:9/stream1" in out and "s3cret" not in out
    with pytest.raises(SourceError) as refused:
        OpenCVSource("ptz", url, time.time)
    assert "s3cret" not in str(refused.value) and "***@127.0.0.1" in str(refused.value)
