"""Token buckets per client: bytes per second for clip streams, requests per minute for everything.

A clip fetch is paced so that it cannot take the disk and CPU from recording; a client that floods the
API is refused (HTTP 429) before its signature is even checked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

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
    """One bucket per client key, created on first use; idle full buckets are forgotten."""

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_clients
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def get(self, client: str) -> TokenBucket:
        """The bucket of `client`."""
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                if len(self._buckets) >= self._max:
                    self._forget_idle()
                bucket = self._buckets[client] = TokenBucket(self._rate, self._burst)
            return bucket

    def _forget_idle(self) -> None:
        for client, bucket in list(self._buckets.items()):
            bucket._refill()
            if bucket.tokens >= bucket.burst:
                del self._buckets[client]
