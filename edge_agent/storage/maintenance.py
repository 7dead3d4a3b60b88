"""The ring buffer's maintenance thread: one retention pass now, then one every interval until stopped."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Maintenance:
    """Runs `task` in a background thread, now and then every `interval_s`, until `stop`."""

    def __init__(self, task: Callable[[], object], interval_s: float, name: str) -> None:
        self._task = task
        self._interval = interval_s
        self._name = name
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (no-op when it runs already)."""
        if self._thread is not None:
            return
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._task()
            except (OSError, sqlite3.Error):
                # A full or failing disk must not end maintenance: the next pass may succeed.
                log.exception("%s: pass failed; retrying in %.0f s", self._name, self._interval)
            if self._stop_event.wait(self._interval):
                return

    def stop(self) -> None:
        """Stop the thread; waits for a pass in progress."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
