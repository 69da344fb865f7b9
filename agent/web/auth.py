"""Login state of the status page: server-side sessions with CSRF tokens, and the login limiter.

- :class:`Sessions`: a random 256-bit token per login (the cookie), kept only in this process's
  memory with an absolute expiry and its own CSRF token; a restart logs everybody out. At most
  :data:`MAX_SESSIONS` at once (the oldest goes first).
- :class:`LoginLimiter`: per client address, every failed login doubles the time before the
  next attempt is even looked at (1 s, 2 s, 4 s, ... up to :data:`MAX_BACKOFF_S`); a success
  clears it. Attempts inside the back-off, and attempts while another one of the same client
  is still being checked, are refused without running scrypt: a guesser with many parallel
  connections gets no more tries than one with one, and costs the station nothing but a 429.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_SESSIONS = 64
MAX_CLIENTS = 4096  # addresses remembered by the limiter (the oldest is forgotten first)
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 900.0


@dataclass(kw_only=True)
class Session:
    token: str
    csrf: str
    expires: float  # monotonic


class Sessions:
    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime = lifetime_s
        self._clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    @property
    def lifetime_s(self) -> float:
        return self._lifetime

    def create(self) -> Session:
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.popitem(last=False)
        s = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires=self._clock() + self._lifetime,
        )
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 100:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        if self._clock() >= s.expires:
            del self._by_token[token]
            return None
        return s

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


@dataclass(kw_only=True)
class _Client:
    failures: int = 0
    not_before: float = 0.0


class LoginLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._checking: set[str] = set()

    def begin(self, client: str) -> float:
        """0 and the client's attempt begins (end it with :meth:`failed` or :meth:`succeeded`),
        or the seconds it must wait first."""
        if client in self._checking:
            return FIRST_BACKOFF_S
        wait = self.wait_s(client)
        if wait == 0:
            self._checking.add(client)
        return wait

    def wait_s(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        c = self._clients.get(client)
        return 0.0 if c is None else max(0.0, c.not_before - self._clock())

    def failed(self, client: str) -> float:
        """Count a failure; returns the back-off it starts."""
        self._checking.discard(client)
        c = self._clients.pop(client, None) or _Client()
        c.failures += 1
        backoff = min(FIRST_BACKOFF_S * 2.0 ** min(c.failures - 1, 30), MAX_BACKOFF_S)
        c.not_before = self._clock() + backoff
        self._clients[client] = c
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        return backoff

    def succeeded(self, client: str) -> None:
        self._checking.discard(client)
        self._clients.pop(client, None)
