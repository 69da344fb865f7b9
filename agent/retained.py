"""Is the station's retained status really kept by the broker? Read it back, publish it again.

A clustered broker can acknowledge a retained publish and still not keep it: NATS Server 2.9
answers PUBACK while its retained-message stream has no leader (a node holding it was just
killed; the election takes seconds) and only logs ``unable to store retained message``
(measured here: the statuses sent by stations that had just failed over were missing on every
node). The retained status is what the backend and every new subscriber see of a station, so a
stale one (``online: false`` from the last will, or an old EVSE state) would stay until the next
change.

So after every acknowledged status the adapter subscribes to its own status topic again; MQTT
makes the broker hand out its retained copy once more (with the retain flag). When that copy is
not the latest status the station published, the status is published again (and read back
again), at most ``max_republish`` times per status; each time is logged. One check is pending at
a time: a check that finds an older copy while a newer status is on its way just republishes
the newer one (a harmless duplicate).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_REPUBLISH = 5


class RetainedStatusGuard:
    def __init__(
        self,
        *,
        republish: Callable[[bytes], bool],
        read_back: Callable[[], None],
        max_republish: int = MAX_REPUBLISH,
    ) -> None:
        self._republish = republish  # publish this status again, retained
        self._read_back = read_back  # subscribe again: the broker sends its retained copy
        self._max = max_republish
        self._lock = threading.Lock()
        self._latest: bytes | None = None
        self._checking = False
        self._retries = 0
        self.republished = 0  # statuses published again because the broker had lost them

    def published(self, payload: bytes) -> None:
        """A status was handed to the link (loop thread)."""
        with self._lock:
            if payload != self._latest:
                self._latest = payload
                self._retries = 0

    def acked(self) -> None:
        """The broker acknowledged a status (network thread): read its retained copy back."""
        with self._lock:
            if self._checking:
                return
            self._checking = True
        self._read_back()

    def reconnected(self) -> None:
        """A new connection: a check of the old one will not be answered."""
        with self._lock:
            self._checking = False

    def retained_copy(self, payload: bytes) -> None:
        """The broker's retained copy arrived (network thread)."""
        with self._lock:
            if not self._checking:
                return  # the copy every (re)subscription brings, before anything was sent
            self._checking = False
            latest = self._latest
            if latest is None or payload == latest:
                return
            if self._retries >= self._max:
                give_up = True
            else:
                give_up = False
                self._retries += 1
                self.republished += 1
                attempt = self._retries
        if give_up:
            log.error(
                "the broker still does not keep this station's retained status after %d "
                "republishes; it stays stale until the next change",
                self._max,
            )
            return
        log.warning(
            "the broker acknowledged the retained status but kept another one: published "
            "again (%d/%d)",
            attempt,
            self._max,
        )
        self._republish(latest)
