"""A one-line progress bar on stderr (only when stderr is a terminal, unless forced)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`[#####-----]  52%  31.4/60.2 MB  48.1 MB/s`, redrawn at most 10 times a second."""

    def __init__(
        self, label: str, stream: TextIO | None = None, enabled: bool | None = None, width: int = 30
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.total = 0
        self.done = 0
        self._started = time.monotonic()
        self._drawn = 0.0
        self._base = 0

    def start(self, total: int, done: int = 0) -> None:
        """Begin (or begin again after a resume) with `done` of `total` bytes already there."""
        self.total = total
        self.done = done
        self._started = time.monotonic()
        self._base = done
        self._draw(force=True)

    def advance(self, amount: int) -> None:
        """`amount` more bytes received."""
        self.done += amount
        self._draw()

    def finish(self) -> None:
        """Draw the final state and end the line."""
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        rate = (self.done - self._base) / max(now - self._started, 1e-6) / 1e6
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'-' * (self.width - filled)}] {fraction:4.0%}"
            f"  {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB  {rate:.1f} MB/s"
        )
        self.stream.flush()
