"""Debouncing of scanned payloads, shared by every QR reader.

A payload seen again less than ``debounce_s`` after its *previous sighting* is the same
presentation and is dropped. So a phone held in front of the camera counts once however long it
stays there, and counts again once it has been out of sight for ``debounce_s``. Different
payloads do not affect each other. ``debounce_s=0`` passes everything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from drivers.clock import Clock, SystemClock

__all__ = ["DEFAULT_DEBOUNCE_S", "Debouncer"]

DEFAULT_DEBOUNCE_S = 5.0


class Debouncer:
    """Thread-safe; remembers at most ``max_entries`` recent payloads (oldest forgotten first)."""

    def __init__(
        self,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        clock: Clock | None = None,
        *,
        max_entries: int = 256,
    ) -> None:
        if debounce_s < 0:
            raise ValueError("debounce_s must be >= 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.debounce_s = float(debounce_s)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max = max_entries
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def accept(self, payload: str) -> bool:
        """Record a sighting of ``payload``; ``True`` when it counts as a new presentation."""
        now = self._clock.monotonic()
        with self._lock:
            previous = self._last_seen.pop(payload, None)
            self._last_seen[payload] = now  # most recent last
            self._forget_older_than(now - self.debounce_s)
            while len(self._last_seen) > self._max:
                self._last_seen.popitem(last=False)
            return previous is None or now - previous >= self.debounce_s

    def reset(self) -> None:
        """Forget every payload (the next sighting of any payload counts)."""
        with self._lock:
            self._last_seen.clear()

    def _forget_older_than(self, limit: float) -> None:
        while self._last_seen:
            _key, seen = next(iter(self._last_seen.items()))
            if seen >= limit:
                break
            self._last_seen.popitem(last=False)
