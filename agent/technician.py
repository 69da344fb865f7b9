"""A technician's card read is not a tap: ``stationctl rfid read`` must not start a charge.

The readers hand a card both to a waiting :meth:`read_once` and to the agent's ``on_card``
(the waiter first, in the reader's thread). While a technician read is running, and for the
card it returned, :meth:`TechnicianReads.swallow` tells ``Inputs.on_card`` to drop the card: the
claim of a returned card covers the race in which the technician's thread wakes up and ends
the read before the reader thread gets to ``on_card``. A claim nobody consumed (the debounce
suppressed ``on_card``) lapses after :data:`CLAIM_S`, so it cannot eat a later real tap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLAIM_S = 1.0  # the reader thread calls on_card right after feeding the waiter: microseconds


class TechnicianReads:
    """Thread-safe: begun and ended in a control-socket thread, asked in a reader thread."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._lock = threading.Lock()
        self._active = 0
        self._swallowed: set[str] = set()  # dropped while a read ran: no claim needed
        self._claims: dict[str, float] = {}  # uid -> until (monotonic)

    def begin(self) -> None:
        with self._lock:
            self._active += 1

    def end(self, uid: str | None) -> None:
        """The read is over; ``uid``: the card it returned (None: no card)."""
        with self._lock:
            self._active -= 1
            if uid is not None and uid not in self._swallowed:
                self._claims[uid] = self._now() + CLAIM_S
            if not self._active:
                self._swallowed.clear()

    def swallow(self, uid: str) -> bool:
        """True if the card ``uid`` belongs to a technician read (and must not be a tap)."""
        with self._lock:
            now = self._now()
            self._claims = {u: t for u, t in self._claims.items() if t > now}
            if self._claims.pop(uid, None) is not None:
                return True
            if self._active:
                self._swallowed.add(uid)
                return True
            return False
