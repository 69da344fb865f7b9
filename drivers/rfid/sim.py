"""Simulated RFID reader: ``tap()`` presents a card as if it had been read."""

from __future__ import annotations

import logging
import threading

from drivers.health import Health
from drivers.rfid.base import CardCallback, CardRead, CardType
from drivers.rfid.waiters import CardWaiters

log = logging.getLogger(__name__)


class SimRfidReader:
    def __init__(self) -> None:
        self._on_card: CardCallback | None = None
        self._lock = threading.Lock()
        self._waiters = CardWaiters()
        self.taps = 0

    def start(self, on_card: CardCallback) -> None:
        with self._lock:
            self._on_card = on_card

    def stop(self) -> None:
        with self._lock:
            self._on_card = None

    def tap(self, uid: str, card_type: CardType = CardType.UNKNOWN) -> None:
        card = CardRead(uid=uid, card_type=card_type)
        with self._lock:
            callback = self._on_card
            self.taps += 1
        fed = self._waiters.feed(card)
        if callback is None:
            if not fed:
                log.warning("sim reader tapped while not started; ignored")
            return
        callback(card)

    def read_once(self, timeout_s: float) -> tuple[CardRead, float] | None:
        """Wait up to ``timeout_s`` for the next :meth:`tap` (from another thread).

        The tap is still delivered to ``on_card`` as usual.
        """
        return self._waiters.wait(timeout_s)

    @property
    def simulated(self) -> bool:
        return True

    def health(self) -> Health:
        return Health.healthy()

    def info(self) -> dict[str, object]:
        return {"driver": "sim", "taps": self.taps, "connected": True}
