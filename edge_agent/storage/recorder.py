"""The recorder: one camera's masked frames -> encoder -> sealed segments in the ring buffer.

It is a frame sink of the camera's pipeline (`on_frame` on the processing thread, `close` at stop).
Segments are cut on encoded packets: a new one starts at the first keyframe packet once the current one
has `segment_seconds` of footage (a keyframe is requested at that moment), so each segment decodes alone.

Modes (`camera.recording`): `continuous` records everything; `motion` encodes all the time but keeps
the last few seconds of ENCODED packets in memory (from a keyframe), and seals while an event is open,
from the keyframe at or before `event start - pre_roll_seconds` until `post_roll_seconds` after it
closes; `off` encodes nothing. The event start is the time of its first moving frame (the tracker opens
an event only some frames later), so the pre-roll is never shorter than configured. A motion segment
ends on a keyframe (the post-roll runs on to the next one), so that the memory buffer starts where the
segment stopped and a new event close behind finds its whole pre-roll.

An encoder that fails to open or fails at run time hands over to the next of `encoder_candidates` (a
hardware encoder to libx264): the segment in progress is sealed, the reason kept for status, and the
frame encoded again by the next one. Only when the last candidate fails does the error path below run.

A write error (full disk, I/O error) never leaves `on_frame`: the segment in progress is dropped, the
error is counted and logged, retention is asked to make room, and recording resumes at the next keyframe.
The packets lost meanwhile are counted as `frames_dropped_disk`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge_agent.camera.frames import MaskedFrame
from edge_agent.formats.config import CameraConfig, RecordingMode, StorageConfig
from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.sealing import SegmentWriter
from edge_agent.formats.times import Clock
from edge_agent.storage.encoder import (
    EncoderError,
    EncoderFactory,
    VideoEncoder,
    encoder_candidates,
)
from edge_agent.storage.ringbuffer import PendingSegment, RingBuffer

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 30.0


@dataclass(frozen=True)
class RecorderStats:
    """Counters of one camera's recorder, for status and metrics."""

    camera_id: str
    recording: bool
    segments: int
    bytes: int
    packets: int
    errors: int
    frames_dropped_disk: int
    last_error: str
    encoder: str = ""  # the encoder in use (or to be opened at the next frame)
    encoder_fallback: str = ""  # why the recorder left an earlier encoder; "" when it never did


class PreRoll:
    """The last `seconds` of encoded packets, always starting at a keyframe (so they decode alone)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._packets: deque[tuple[float, EncodedPacket]] = deque()

    def add(self, t: float, packet: EncodedPacket) -> None:
        """Keep a packet captured at t; drop whole GOPs that are older than the pre-roll needs."""
        if not self._packets and not packet.keyframe:
            return
        self._packets.append((t, packet))
        self._trim(t - self._seconds)

    def _trim(self, since: float) -> None:
        """Drop the oldest GOPs while the next one still starts at or before `since`."""
        keyframes = [i for i, (_, p) in enumerate(self._packets) if p.keyframe]
        drop = 0
        for index in keyframes[1:]:
            if self._packets[index][0] <= since:
                drop = index
        for _ in range(drop):
            self._packets.popleft()

    def drain(self, since: float) -> list[tuple[float, EncodedPacket]]:
        """The packets from the keyframe at or before `since` on (all, when none is that old), oldest
        first; the buffer is empty afterwards."""
        self._trim(since)
        packets = list(self._packets)
        self._packets.clear()
        return packets

    def clear(self) -> None:
        """Forget everything (the stream changed)."""
        self._packets.clear()


def _confirmation_margin(camera: CameraConfig) -> float:
    """Seconds the memory buffer keeps beyond the pre-roll: an event opens `start_frames` frames after
    its first moving frame, and the encoder hands packets out a few frames late."""
    return max(1.0, 2 * camera.motion.start_frames / camera.fps)


class Recorder:
    """Encodes, seals and stores one camera's masked frames (see the module docstring)."""

    def __init__(
        self,
        camera: CameraConfig,
        storage: StorageConfig,
        ring: RingBuffer,
        device_key: Ed25519PrivateKey,
        csu_public_key: X25519PublicKey,
        *,
        device_id: str = "",
        clock: Clock = time.monotonic,
        open_encoder: EncoderFactory = VideoEncoder,
    ) -> None:
        """`open_encoder` opens an encoder by name (a test may wrap one that fails)."""
        self.camera = camera
        self._storage = storage
        self._ring = ring
        self._device_key = device_key
        self._csu_public_key = csu_public_key
        self._device_id = device_id
        self._clock = clock
        self._lock = threading.Lock()
        self._mode = camera.recording
        self._encoder: VideoEncoder | None = None
        self._open_encoder = open_encoder
        self._candidates = encoder_candidates(storage) if camera.recording is not RecordingMode.OFF else []
        self._candidate = 0
        self._fallback = ""
        self._pending: PendingSegment | None = None
        self._writer: SegmentWriter | None = None
        self._segment_start = 0.0
        self._preroll = PreRoll(camera.motion.pre_roll_seconds + _confirmation_margin(camera))
        self._in_event = False
        self._event_start = math.inf
        self._wanted_until = -math.inf
        self._want_keyframe = False
        self._cut_requested = False  # the keyframe that ends the segment in progress was asked for
        self._segments = 0
        self._bytes = 0
        self._packets = 0
        self._errors = 0
        self._dropped = 0
        self._last_error = ""
        self._last_error_log = -math.inf

    # ---- frames ------------------------------------------------------------------------------------

    def on_frame(self, frame: MaskedFrame, event_open: bool, event_start: float | None = None) -> None:
        """Take one masked frame; never raises (errors are counted, logged, and recording goes on).

        `event_start` is when the open event started (its first moving frame), when the caller knows
        it: the pre-roll counts back from there rather than from the frame that opened the event.
        """
        if self._mode is RecordingMode.OFF:
            return
        with self._lock:
            try:
                self._track_event(frame.captured_at, event_open, event_start)
                for packet in self._encode_or_fall_back(frame):
                    self._on_packet(packet)
            except EncoderError as error:
                self._fail(f"{self.camera.id}: {error}")
                self._reset_encoder()
            except (OSError, sqlite3.Error) as error:
                self._fail(f"{self.camera.id}: writing a segment: {error}")
                self._drop_segment()

    def _track_event(self, t: float, event_open: bool, event_start: float | None) -> None:
        if self._mode is not RecordingMode.MOTION:
            return
        if event_open:
            if not self._in_event:
                self._in_event = True
                self._event_start = t if event_start is None else min(t, event_start)
            self._wanted_until = math.inf
        elif self._in_event:
            self._in_event = False
            self._wanted_until = t + self.camera.motion.post_roll_seconds

    def _encode_or_fall_back(self, frame: MaskedFrame) -> list[EncodedPacket]:
        """The frame's packets from the first encoder that takes it (EncoderError from the last one)."""
        while True:
            try:
                return self._encode(frame)
            except EncoderError as error:
                if self._candidate + 1 >= len(self._candidates):
                    raise
                self._fall_back(str(error))

    def _fall_back(self, reason: str) -> None:
        """Leave the failing encoder for the next candidate; what it had encoded is sealed."""
        failed, following = self._candidates[self._candidate], self._candidates[self._candidate + 1]
        log.warning("%s: %s; falling back to %s", self.camera.id, reason, following)
        self._fallback = reason
        self._candidate += 1
        encoder, self._encoder = self._encoder, None
        try:
            if encoder is not None:
                for packet in encoder.flush():
                    self._on_packet(packet, encoder.stream)
        except EncoderError as error:
            log.info("%s: the packets still inside %s are lost: %s", self.camera.id, failed, error)
        try:
            self._close_segment()
        except (OSError, sqlite3.Error) as error:
            self._fail(f"{self.camera.id}: writing a segment: {error}")
            self._drop_segment()
        self._preroll.clear()  # the next encoder's packets start another stream

    def _encode(self, frame: MaskedFrame) -> list[EncodedPacket]:
        if self._encoder is not None and self._encoder.size != frame.size:
            log.info("%s: resolution changed to %dx%d, new encoder", self.camera.id, *frame.size)
            for packet in self._encoder.flush():
                self._on_packet(packet)
            self._close_segment()
            self._encoder = None
            self._preroll.clear()
        if self._encoder is None:
            name = self._candidates[self._candidate]
            self._encoder = self._open_encoder(
                self._storage, frame.size, self.camera.fps, frame.captured_at, name
            )
            self._want_keyframe = False
        # One keyframe asked per segment end: it comes out a few frames later (look-ahead), and asking
        # again meanwhile would make each of those frames an IDR frame (costly in time and bytes).
        cut_due = (
            self._writer is not None
            and not self._cut_requested
            and frame.captured_at - self._segment_start >= self._storage.segment_seconds
        )
        force = self._want_keyframe or cut_due
        if force:
            self._want_keyframe = False
            self._cut_requested = True
        return self._encoder.encode(frame.image, frame.captured_at, force, frame.pixel_format)

    # ---- packets -----------------------------------------------------------------------------------

    def _wanted(self, t: float) -> bool:
        if self._mode is RecordingMode.CONTINUOUS:
            return True
        return self._event_start - self.camera.motion.pre_roll_seconds <= t <= self._wanted_until

    def _on_packet(self, packet: EncodedPacket, stream: StreamInfo | None = None) -> None:
        """Seal or buffer one packet of `stream` (the open encoder's, unless named)."""
        if stream is None:
            assert self._encoder is not None
            stream = self._encoder.stream
        t = stream.seconds(packet.pts)
        wanted = self._wanted(t)
        if self._writer is not None:
            if not wanted and not packet.keyframe:
                # Past the post-roll: run on to the next keyframe, where the memory buffer takes over.
                self._append(packet)
                return
            if not wanted:
                self._close_segment()
            elif packet.keyframe and t - self._segment_start >= self._storage.segment_seconds:
                self._close_segment()
                self._open_segment(stream, [(t, packet)])
                return
            else:
                self._append(packet)
                return
        if self._mode is RecordingMode.MOTION:
            self._preroll.add(t, packet)
        if not wanted:
            return
        if self._mode is RecordingMode.MOTION:
            backlog = self._preroll.drain(self._event_start - self.camera.motion.pre_roll_seconds)
        else:
            backlog = [(t, packet)] if packet.keyframe else []
        if backlog:
            self._open_segment(stream, backlog)
        else:
            # Waiting for a keyframe to start on (after a write error, or the encoder's first GOP).
            self._want_keyframe = True
            if self._errors:
                self._dropped += 1

    def _open_segment(self, stream: StreamInfo, packets: list[tuple[float, EncodedPacket]]) -> None:
        start = packets[0][0]
        try:
            self._pending = self._ring.begin(self.camera.id)
            self._writer = SegmentWriter(
                self._pending.file,
                camera=self.camera.id,
                device=self._device_id,
                sequence=self._pending.sequence,
                prev_sha256=self._pending.prev_sha256,
                stream=stream,
                start_ts=start,
                device_key=self._device_key,
                csu_public_key=self._csu_public_key,
                cipher=self._storage.cipher,
                journal=self._pending.journal,
            )
            self._segment_start = start
            self._cut_requested = False
            for _, packet in packets:
                self._append(packet)
        except OSError:
            self._dropped += len(packets) - (self._writer.packets if self._writer is not None else 0)
            raise

    def _append(self, packet: EncodedPacket) -> None:
        assert self._writer is not None
        self._writer.append(packet)
        self._packets += 1

    def _close_segment(self) -> None:
        """Finish, seal and commit the segment in progress (no-op when none)."""
        if self._writer is None or self._pending is None:
            return
        writer, pending = self._writer, self._pending
        self._writer = self._pending = None
        try:
            sealed = writer.finish()
            record = self._ring.commit(pending, sealed)
        except OSError:
            self._dropped += writer.packets
            self._ring.abort(pending)
            raise
        self._segments += 1
        self._bytes += record.size
        log.debug(
            "%s: sealed segment #%d (%d packets, %d bytes)",
            self.camera.id,
            record.sequence,
            sealed.packets,
            record.size,
        )

    def _drop_segment(self) -> None:
        """After a write error: abandon the segment in progress and let retention make room."""
        if self._pending is not None:
            if self._writer is not None:
                self._dropped += self._writer.packets
            self._ring.abort(self._pending)
        self._writer = self._pending = None
        self._want_keyframe = True
        try:
            self._ring.enforce_space()
        except (OSError, sqlite3.Error) as error:
            log.debug("%s: making room failed: %s", self.camera.id, error)

    def _reset_encoder(self) -> None:
        self._drop_segment()
        self._encoder = None
        self._preroll.clear()

    def _fail(self, message: str) -> None:
        self._errors += 1
        self._last_error = message
        now = self._clock()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.error("%s (%d errors so far; recording resumes at the next keyframe)", message, self._errors)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Drain the encoder and seal the segment in progress; never raises."""
        with self._lock:
            try:
                if self._encoder is not None:
                    for packet in self._encoder.flush():
                        self._on_packet(packet)
                self._close_segment()
            except (OSError, sqlite3.Error, EncoderError) as error:
                self._fail(f"{self.camera.id}: closing: {error}")
                self._drop_segment()
            self._encoder = None

    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        with self._lock:
            return RecorderStats(
                camera_id=self.camera.id,
                recording=self._writer is not None,
                segments=self._segments,
                bytes=self._bytes,
                packets=self._packets,
                errors=self._errors,
                frames_dropped_disk=self._dropped,
                last_error=self._last_error,
                encoder=self._candidates[self._candidate] if self._candidates else "",
                encoder_fallback=self._fallback,
            )
