"""Two things a connected broker does not tell: is the backend answering, and is this station's
id used by another station-agent on the same broker?

- **Backend answering.** The broker may be up while the backend behind it stopped reading: once
  an ``auth/req`` has gone ``auth_timeout_s`` without any message from the backend (an
  ``auth/res``, a ``cdr/ack``, a command), the station reports ``backend:not_answering`` (in
  ``P/status`` faults, ``stationctl status`` and ``selftest``) until the backend speaks again.
- **Duplicate station id.** Two processes with one station id take each other's MQTT client id:
  the broker closes the older connection (MQTT 3.1.1 gives no reason), which reconnects a
  second later and pushes the other off, and so on. The broker publishes each pushed-off
  connection's will, so neither sees the other's status; what each does see is its link
  closed by the broker again and again within seconds of being made: :data:`SHORT_RUNS`
  links in a row that lasted under :data:`SHORT_LINK_S`. A status on this station's topic with
  ``online: true``, stamped after this process started, that this process did not publish, is
  proof too (two instances whose connections overlap, e.g. through bridged brokers). Either
  way the station logs an error naming the likely cause and reports ``station_id:duplicate``
  for :data:`DUPLICATE_HOLD_S` after the last evidence.

Thread-safe: the network thread feeds it, the main loop asks for :meth:`faults`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime

log = logging.getLogger(__name__)

DUPLICATE_HOLD_S = 60.0
SHORT_LINK_S = 5.0  # a link the broker closes sooner was probably taken over
SHORT_RUNS = 3  # ... so many times in a row
NOT_ANSWERING = "backend:not_answering"
DUPLICATE = "station_id:duplicate"


class BackendWatch:
    def __init__(
        self,
        *,
        station_id: str,
        auth_timeout_s: float,
        started: datetime,
        monotonic: Callable[[], float],
    ) -> None:
        self._station_id = station_id
        self._timeout = auth_timeout_s
        self._started = started
        self._now = monotonic
        self._lock = threading.Lock()
        self._asked_since: float | None = None  # oldest auth/req not followed by any answer
        self._silent_reported = False
        self._ours: deque[bytes] = deque(maxlen=16)  # status payloads this process published
        self._duplicate_at: float | None = None
        self._up_at: float | None = None
        self._short_links = 0

    # ------------------------------------------------------------------ backend answering
    def asked(self) -> None:
        """An ``auth/req`` was published."""
        with self._lock:
            if self._asked_since is None:
                self._asked_since = self._now()

    def heard(self) -> None:
        """A message from the backend arrived (it answers)."""
        with self._lock:
            if self._silent_reported:
                log.warning("the backend answers again")
            self._asked_since = None
            self._silent_reported = False

    def link_up(self) -> None:
        with self._lock:
            self._up_at = self._now()

    def link_down(self) -> None:
        """The broker is gone: that is reported as such, not as a silent backend. A link that
        the broker closed soon after it was made counts towards a duplicate station id."""
        with self._lock:
            now = self._now()
            self._asked_since = None
            self._silent_reported = False
            short = self._up_at is not None and now - self._up_at < SHORT_LINK_S
            self._short_links = self._short_links + 1 if short else 0
            self._up_at = None
            if self._short_links < SHORT_RUNS:
                return
        self._duplicate(f"the broker closed the last {self._short_links} links within seconds")

    # ------------------------------------------------------------------ duplicate station id
    def published(self, payload: bytes) -> None:
        with self._lock:
            self._ours.append(payload)

    def status_seen(self, payload: bytes) -> None:
        """A message on this station's status topic (our echo, or someone else's)."""
        with self._lock:
            if payload in self._ours:
                return
        try:
            data = json.loads(payload)
            if data.get("online") is not True:  # offline: a will, or a clean stop
                return
            if datetime.fromisoformat(data["ts"]) <= self._started:  # a previous run's
                return
        except (ValueError, TypeError, KeyError, AttributeError):  # not a status at all
            return
        self._duplicate(f"a status of {data['ts']} that this process did not publish")

    def _duplicate(self, evidence: str) -> None:
        with self._lock:
            first = self._duplicate_at is None
            self._duplicate_at = self._now()
        if first:
            log.error(
                "another station-agent is probably connected as station %s on this broker "
                "(%s): two stations share this station id, or a demo runs with it; each takes "
                "the other's MQTT client id, so both keep reconnecting: give each its own "
                "station.id",
                self._station_id,
                evidence,
            )

    # ------------------------------------------------------------------ both
    def faults(self) -> dict[str, str]:
        now = self._now()
        out: dict[str, str] = {}
        with self._lock:
            if self._asked_since is not None and now - self._asked_since > self._timeout:
                out[NOT_ANSWERING] = f"no answer to auth/req for {now - self._asked_since:.0f} s"
                if not self._silent_reported:
                    self._silent_reported = True
                    log.error(
                        "the broker is connected but the backend does not answer: no auth/res "
                        "within %.1f s (is the backend service running and subscribed?)",
                        self._timeout,
                    )
            if self._duplicate_at is not None:
                if now - self._duplicate_at <= DUPLICATE_HOLD_S:
                    out[DUPLICATE] = "another station-agent uses this station id"
                else:
                    self._duplicate_at = None
        return out
