"""One-shot card waiters behind :meth:`drivers.rfid.base.RfidReader.read_once`.

A reader feeds every card it sees (also one its debounce suppresses) to :meth:`CardWaiters.feed`;
:meth:`CardWaiters.wait` blocks a diagnostic caller until the next card or its time-out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.rfid.base import CardRead


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    card: CardRead | None = None
    seen_at: float = 0.0


class CardWaiters:
    """Thread-safe: ``wait`` runs in the caller's thread, ``feed`` in the reader's."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []

    def wait(self, timeout_s: float) -> tuple[CardRead, float] | None:
        """The next card fed within ``timeout_s`` and the seconds until it came, or None."""
        waiter = _Waiter()
        t0 = self._monotonic()
        with self._lock:
            self._waiters.append(waiter)
        try:
            if not waiter.event.wait(timeout_s) or waiter.card is None:
                return None
            return waiter.card, waiter.seen_at - t0
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def feed(self, card: CardRead, seen_at: float | None = None) -> int:
        """Hand ``card`` to every current waiter; return how many there were."""
        when = self._monotonic() if seen_at is None else seen_at
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.card, waiter.seen_at = card, when
            waiter.event.set()
        return len(waiters)
