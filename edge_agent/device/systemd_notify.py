"""systemd service notifications (sd_notify): READY, WATCHDOG, STOPPING, STATUS.

The unit runs the agent with `Type=notify` and `WatchdogSec=`: systemd counts the service started only
once READY=1 arrives, and restarts it when WATCHDOG=1 pings stop for longer than WatchdogSec. The protocol
is one datagram of `KEY=value` lines to the unix socket named by $NOTIFY_SOCKET (a leading `@` means
the abstract namespace); outside systemd the variable is absent and every call is a no-op.

Ping the watchdog from the loop whose progress matters (the agent's supervision loop, after checking the
camera workers), never from a timer thread of its own: a watchdog that is fed while the work is stuck
restarts nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to systemd when run under it; does nothing otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """True when systemd gave a notification socket."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call `watchdog()`: half of WatchdogSec, or None when no watchdog is set."""
        return None if self._watchdog_s is None else self._watchdog_s / 2

    def ready(self, status: str = "") -> bool:
        """Start-up done: cameras opened, storage and links set up."""
        return self.notify("READY=1", f"STATUS={status}" if status else "")

    def watchdog(self) -> bool:
        """The agent is alive and making progress."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """Shutdown started (so systemd does not take the slow stop for a hang)."""
        return self.notify("STOPPING=1", f"STATUS={status}" if status else "")

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`."""
        return self.notify(f"STATUS={text}")

    def notify(self, *fields: str) -> bool:
        """Send the non-empty `KEY=value` fields in one datagram (a newline in a value would start a
        new field, so it becomes a space); True if sent."""
        if self._address is None:
            return False
        payload = "\n".join(f.replace("\n", " ") for f in fields if f).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as error:
            # A lost notification must never take the agent down; systemd will notice by itself.
            log.warning("systemd notification failed: %s", error)
            return False
        return True


def _socket_address(raw: str) -> str | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    log.warning("ignoring NOTIFY_SOCKET=%r: not a unix socket path", raw)
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. our parent)
    return int(usec) / 1_000_000
