"""Token buckets per client: bytes per second for clip streams, requests per minute for everything;
the refusal budget (which refusals may cost an audit line) and a log throttle.

A clip fetch is paced so that it cannot take the disk and CPU from recording; a client that floods the
API is refused (HTTP 429) before its signature is even checked. Refusals are cheap: past a small budget
per client address and overall, they are tallied in memory and audited as one line per address and
minute, so that no flood, from one address or thousands, can make the audit log grow fast.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.formats.times import Clock


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; rate 0 means unlimited."""

    rate: float
    burst: float
    clock: Clock = time.monotonic
    tokens: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self, amount: float = 1.0) -> bool:
        """Take `amount` tokens if available now."""
        if self.rate <= 0:
            return True
        self._refill()
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def delay_for(self, amount: float) -> float:
        """Take `amount` tokens (going into debt) and return how long to wait to honour the rate."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)

    async def take(self, amount: float) -> None:
        """Wait until `amount` tokens are paid for (several streams of a client share the bucket)."""
        delay = self.delay_for(amount)
        if delay > 0:
            await asyncio.sleep(delay)


class BucketMap:
    """One bucket per client key, created on first use; at most `max_clients` are kept (idle full
    buckets are forgotten first, then the oldest), so that many addresses cannot grow the map."""

    def __init__(
        self, rate: float, burst: float, max_clients: int = 10_000, clock: Clock = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_clients
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def get(self, client: str) -> TokenBucket:
        """The bucket of `client`."""
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                if len(self._buckets) >= self._max:
                    self._forget_idle()
                bucket = self._buckets[client] = TokenBucket(self._rate, self._burst, self._clock)
            return bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_idle(self) -> None:
        for client, bucket in list(self._buckets.items()):
            bucket._refill()
            if bucket.tokens >= bucket.burst:
                del self._buckets[client]
        # Still full: the oldest go (dicts keep insertion order); the overall budgets still hold.
        for client in list(self._buckets)[: max(0, len(self._buckets) - self._max + 1)]:
            del self._buckets[client]


@dataclass
class RefusalTally:
    """Refusals of one client address (`*`: of every address past the tallied ones) in one window."""

    remote: str
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class RefusalBudget:
    """Decides which refusals get an audit line of their own; tallies the others.

    Each client address may cost `per_client` lines per `window_s`, all addresses together `overall`.
    Past that, a refusal is only counted: per address for the first `max_tallies` addresses of the
    window, then in one `*` tally. `drain` hands the tallies of a finished window over, to be audited as
    one line per address: at most `overall + max_tallies + 1` lines a window, whatever the flood.
    """

    def __init__(
        self,
        per_client: int = 10,
        overall: int = 30,
        window_s: float = 60.0,
        max_tallies: int = 16,
        clock: Clock = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._clients = BucketMap(per_client / window_s, per_client, clock=clock)
        self._overall = TokenBucket(overall / window_s, overall, clock)
        self._max_tallies = max_tallies
        self._clock = clock
        self._tallies: dict[str, RefusalTally] = {}
        self._window_start = clock()
        self._lock = threading.Lock()
        self.audited = 0
        self.tallied = 0

    def admit(self, remote: str, reason: str) -> bool:
        """True when this refusal may be audited on its own; False when it was tallied instead."""
        with self._lock:
            if self._clients.get(remote).try_take() and self._overall.try_take():
                self.audited += 1
                return True
            if remote not in self._tallies and len(self._tallies) >= self._max_tallies:
                remote = "*"
            tally = self._tallies.setdefault(remote, RefusalTally(remote))
            tally.count += 1
            tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
            self.tallied += 1
            return False

    def drain(self, force: bool = False) -> list[RefusalTally]:
        """The tallies of the window once it is over (or now, with `force`), and a new window."""
        with self._lock:
            now = self._clock()
            if not force and now - self._window_start < self.window_s:
                return []
            tallies = list(self._tallies.values())
            self._tallies = {}
            self._window_start = now
            return tallies


class LogThrottle:
    """At most one log line per condition (`key`) and `interval_s`; the next line says how many were
    held back. For conditions a client can repeat at will (turned-away connections, bad requests)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, clock: Clock = time.monotonic):
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._state: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def info(self, key: str, message: str, *args: Any) -> None:
        """An INFO line, unless `key` was logged less than an interval ago."""
        self._log(logging.INFO, key, message, args, {})

    def warning(self, key: str, message: str, *args: Any) -> None:
        """A WARNING, unless `key` was logged less than an interval ago."""
        self._log(logging.WARNING, key, message, args, {})

    def exception(self, key: str, message: str, *args: Any, **kwargs: Any) -> None:
        """An ERROR with the traceback in `kwargs` (`exc_info`), at most once an interval per `key`."""
        self._log(logging.ERROR, key, message, args, kwargs)

    def _log(self, level: int, key: str, message: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._lock:
            now = self._clock()
            last, held = self._state.get(key, (None, 0))
            if last is not None and now - last < self._interval:
                self._state[key] = (last, held + 1)
                return
            if len(self._state) >= 256:
                self._state.clear()  # keys are condition names: this only bounds a misuse
            self._state[key] = (now, 0)
        if held:
            message += f" ({held} more held back in the last {self._interval:.0f} s)"
        self._logger.log(level, message, *args, **kwargs)
