"""Console accounts: roles and what they may do, password hashing, session tokens, login throttling.

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes), a memory-hard KDF, so a
stolen database costs an attacker real hardware per guess. Session and CSRF tokens are random; only the
SHA-256 of a session token is stored, so the database alone does not let anyone log in.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import threading
from collections import deque
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edge_agent.collector.store.console import Session

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
SESSION_IDLE_S = 30 * 60.0
SESSION_MAX_S = 12 * 3600.0


class Role(StrEnum):
    """Who a user is at the CSU; each role can do everything the one before it can."""

    OPERATOR = "operator"
    INVESTIGATOR = "investigator"
    ADMIN = "admin"


_RANK = {Role.OPERATOR: 0, Role.INVESTIGATOR: 1, Role.ADMIN: 2}

# The least role that may use each part of the console: operators watch the fleet, alerts and
# snapshots; investigators also pull clips, place holds and read the audit log; admins manage users.
PERMISSIONS: dict[str, Role] = {
    "fleet": Role.OPERATOR,
    "alerts": Role.OPERATOR,
    "snapshots": Role.OPERATOR,
    "clips": Role.INVESTIGATOR,
    "holds": Role.INVESTIGATOR,
    "audit": Role.INVESTIGATOR,
    "users": Role.ADMIN,
}


def allows(role: str, permission: str) -> bool:
    """True when `role` may use `permission` (an unknown role or permission is refused)."""
    least = PERMISSIONS.get(permission)
    try:
        rank = _RANK[Role(role)]
    except ValueError:
        return False
    return least is not None and rank >= _RANK[least]


def session_expired(
    session: Session, now: float, idle_s: float = SESSION_IDLE_S, max_s: float = SESSION_MAX_S
) -> bool:
    """Idle too long, or older than the longest session."""
    return now - session.last_seen > idle_s or now - session.created_at > max_s


class AccountError(ValueError):
    """A user name, role or password that cannot be used; the message names the field."""


def check_user_name(name: str) -> str:
    """A user name: letters, digits, `.`, `_`, `-` (it is the officer name sent to devices)."""
    if not USER_NAME_RE.match(name):
        raise AccountError(f"name: {name!r} must be 1 to 64 letters, digits, . _ - (starting with one)")
    return name


def check_role(raw: str) -> Role:
    """A role by name."""
    try:
        return Role(raw)
    except ValueError:
        raise AccountError(f"role: {raw!r} must be one of {', '.join(r.value for r in Role)}") from None


def check_password(password: str) -> str:
    """A password long enough to resist guessing (length beats composition rules)."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password: must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


class Passwords:
    """argon2id hashing and checking (one hasher: its parameters are read back from each hash)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()

    def hash(self, password: str) -> str:
        """The argon2id hash of a checked password."""
        return self._hasher.hash(check_password(password))

    def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; never raises for a wrong or malformed hash."""
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def dummy_verify(self, password: str) -> None:
        """Spend the time of a real check, so that an unknown user name answers as slowly as a known one."""
        self.verify(_dummy_hash(), password)


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: argon2 takes 64 MiB for it, and every `edge-agent` command
    # imports this module through the demo's parser.
    return PasswordHasher().hash("not a password of anyone")


def new_token() -> str:
    """A fresh random token for a cookie or a form (256 bits)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


class LoginThrottle:
    """Refuses logins after too many failures, per user name and per client address.

    A sliding window in memory: `failures` failed attempts within `window_s` block that name (or that
    address) until the oldest of them leaves the window. A success clears the name's record.
    """

    def __init__(self, failures: int = 5, window_s: float = 300.0) -> None:
        self.failures = failures
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._seen.setdefault(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def wait_s(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds before another attempt is allowed for any of `keys` (0 when allowed now)."""
        with self._lock:
            waits = [
                self.window_s - (now - times[0])
                for times in (self._recent(k, now) for k in keys)
                if len(times) >= self.failures
            ]
        return max(waits, default=0.0)

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        """Record one failed attempt under each key."""
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        """Forget the failures of a name that has just logged in."""
        with self._lock:
            self._seen.pop(key, None)
