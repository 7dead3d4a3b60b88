"""Live updates for the pages: one poller of the store, fanned out to every browser by server-sent events.

The console may run in another process than `serve` (or several of them against one PostgreSQL), so
it learns of new messages from the store itself: a cheap query every `poll_s` for motion rows after
the last one seen, and a fleet "version" (counts and latest times of the devices table) that changes
whenever a device comes, goes or reports. Each browser gets a bounded queue; a browser too slow to
drain it loses the oldest messages and reloads its lists at the next `fleet` or `motion` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.collector.console.data import ConsoleData
from edge_agent.collector.store import EventRow

log = logging.getLogger(__name__)

QUEUE_MAX = 256


@dataclass(frozen=True)
class LiveMessage:
    """One server-sent event: its name and its data (one line of text)."""

    event: str
    data: str

    def encode(self) -> bytes:
        """The event on the wire."""
        return f"event: {self.event}\ndata: {self.data}\n\n".encode()


@dataclass(frozen=True)
class Subscription:
    """What one browser listens to: the fleet, motion (with a site/camera/zone filter), or both."""

    fleet: bool
    motion: bool
    site: str = ""
    camera: str = ""
    zone: str = ""

    def wants(self, row: EventRow) -> bool:
        """True when the motion row passes this browser's filter."""
        return (
            self.motion
            and (not self.site or row.site == self.site)
            and (not self.camera or row.camera == self.camera)
            and (not self.zone or self.zone in row.zones)
        )


class LiveHub:
    """Polls the store and pushes `fleet` and `motion` events to subscribed queues."""

    def __init__(
        self,
        data: ConsoleData,
        render_motion: Callable[[EventRow], str],
        poll_s: float = 0.25,
        fleet_min_gap_s: float = 1.0,
        fleet_every_s: float = 20.0,
    ) -> None:
        self.data = data
        self.render_motion = render_motion
        self.poll_s = poll_s
        self.fleet_min_gap_s = fleet_min_gap_s
        self.fleet_every_s = fleet_every_s
        self._subscribers: dict[asyncio.Queue[LiveMessage], Subscription] = {}
        self._task: asyncio.Task[None] | None = None
        self._on_new_event: list[Callable[[EventRow], None]] = []

    def on_new_event(self, callback: Callable[[EventRow], None]) -> None:
        """Call `callback` (in the event loop) for the first message of every new motion event."""
        self._on_new_event.append(callback)

    def subscribe(self, subscription: Subscription) -> asyncio.Queue[LiveMessage]:
        """A queue that receives what `subscription` asks for until `unsubscribe`."""
        queue: asyncio.Queue[LiveMessage] = asyncio.Queue(QUEUE_MAX)
        self._subscribers[queue] = subscription
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LiveMessage]) -> None:
        """Stop sending to `queue`."""
        self._subscribers.pop(queue, None)

    def start(self) -> None:
        """Start polling in the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling and tell every stream to end (`bye`)."""
        self._send(LiveMessage("bye", ""), lambda _s: True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _send(self, message: LiveMessage, wanted: Callable[[Subscription], bool]) -> None:
        for queue, subscription in list(self._subscribers.items()):
            if not wanted(subscription):
                continue
            if queue.full():
                queue.get_nowait()  # drop the oldest: the browser catches up on the next event
            queue.put_nowait(message)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_id = await loop.run_in_executor(None, self.data.last_motion_id)
        version: tuple[Any, ...] | None = None
        last_fleet = 0.0
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                rows = await loop.run_in_executor(None, self.data.motion_after, last_id)
                now = time.monotonic()
                fleet_due = now - last_fleet >= self.fleet_min_gap_s
                current = await loop.run_in_executor(None, self.data.fleet_version) if fleet_due else version
            except Exception:  # the store may be busy or restarting: try again at the next tick
                log.exception("live poll failed")
                continue
            for row in rows:
                last_id = max(last_id, row.id)
                if row.phase == "start":
                    for callback in self._on_new_event:
                        callback(row)
                self._send(LiveMessage("motion", self.render_motion(row)), _wanting(row))
            if fleet_due and (current != version or now - last_fleet >= self.fleet_every_s):
                version, last_fleet = current, now
                self._send(LiveMessage("fleet", str(int(time.time() * 1000))), lambda s: s.fleet)


def _wanting(row: EventRow) -> Callable[[Subscription], bool]:
    """The filter that picks the browsers interested in `row`."""
    return lambda subscription: subscription.wants(row)
