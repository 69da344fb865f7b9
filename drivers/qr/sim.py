"""A QR reader fed by hand (tests, simulation, ``stationctl`` demos), with the real debounce."""

from __future__ import annotations

import logging
import threading
from collections import deque

from drivers.clock import Clock
from drivers.health import Health
from drivers.qr.base import PayloadCallback
from drivers.qr.debounce import DEFAULT_DEBOUNCE_S, Debouncer

__all__ = ["SimQrReader"]

log = logging.getLogger(__name__)


class SimQrReader:
    """:class:`~drivers.qr.base.QrReader` whose payloads come from :meth:`feed`."""

    def __init__(
        self,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        clock: Clock | None = None,
        *,
        history_size: int = 100,
    ) -> None:
        self._debouncer = Debouncer(debounce_s, clock)
        self._lock = threading.Lock()
        self._callback: PayloadCallback | None = None
        self._health = Health.healthy()
        self.delivered: deque[str] = deque(maxlen=history_size)
        """The payloads passed to the callback, oldest first (bounded)."""

    def start(self, on_payload: PayloadCallback) -> None:
        with self._lock:
            self._callback = on_payload

    def stop(self) -> None:
        with self._lock:
            self._callback = None

    @property
    def simulated(self) -> bool:
        return True

    def health(self) -> Health:
        with self._lock:
            return self._health

    def set_health(self, health: Health) -> None:
        with self._lock:
            self._health = health

    @property
    def running(self) -> bool:
        with self._lock:
            return self._callback is not None

    def feed(self, payload: str) -> bool:
        """Present ``payload`` to the reader, as if the camera had decoded it.

        Returns whether it reached the callback: ``False`` when the reader is not started or
        the payload is a repeat within the debounce time. The callback runs in the caller's
        thread; its exceptions propagate (tests want to see them).
        """
        with self._lock:
            callback = self._callback
        if callback is None:
            log.debug("SimQrReader.feed while stopped: dropped")
            return False
        if not self._debouncer.accept(payload):
            return False
        with self._lock:
            self.delivered.append(payload)
        callback(payload)
        return True
