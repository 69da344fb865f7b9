"""A simulated contactor: in-memory state, a switching log and a scriptable feedback contact."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from drivers.clock import Clock, SystemClock, rfc3339
from drivers.errors import DriverError
from drivers.relay.feedback import FeedbackRelay, Sleep

FeedbackMode = Literal["normal", "welded", "stuck_open"]
RelayListener = Callable[[bool], None]


class SimRelay(FeedbackRelay):
    """Implements :class:`drivers.relay.base.Relay` without hardware.

    * ``switch_log``: ``(timestamp, closed)`` for every change of the commanded state; with
      ``log_file`` each change is also appended as ``"<rfc3339> open|close\\n"`` and fsync'd, so
      a test in another process can read it after a crash.
    * ``set_feedback_mode``: ``"normal"`` (feedback follows the command), ``"welded"`` (always
      reads closed) or ``"stuck_open"`` (never closes); ``has_feedback=False`` simulates a
      contactor without a mirror contact.
    * ``on_change(listener)``: listeners are called with the new commanded state on every
      change (e.g. ``relay.on_change(sim_meter.set_flowing)``).

    The simulated feedback answers instantly, so by default the feedback time-out is 0 ms.
    """

    def __init__(
        self,
        log_file: str | None = None,
        clock: Clock | None = None,
        *,
        has_feedback: bool = True,
        feedback_timeout_ms: float = 0.0,
        sleep: Sleep | None = None,
    ) -> None:
        self._clk: Clock = clock or SystemClock()
        super().__init__(feedback_timeout_ms=feedback_timeout_ms, clock=self._clk, sleep=sleep)
        self._log_file = log_file
        self._has_feedback = has_feedback
        self._state = False
        self._mode: FeedbackMode = "normal"
        self._fail = False
        self._listeners: list[RelayListener] = []
        self._log_lock = threading.Lock()
        self.switch_log: list[tuple[datetime, bool]] = []

    @property
    def simulated(self) -> bool:
        return True

    def describe(self) -> str:
        return "simulated relay"

    # -- test controls ---------------------------------------------------------------------
    def set_feedback_mode(self, mode: FeedbackMode) -> None:
        if mode not in ("normal", "welded", "stuck_open"):
            raise ValueError(f"unknown feedback mode {mode!r}")
        with self._lock:
            self._mode = mode

    @property
    def feedback_mode(self) -> FeedbackMode:
        return self._mode

    def set_failing(self, failing: bool) -> None:
        """While failing, switching raises DriverError (as if the device were unplugged)."""
        with self._lock:
            self._fail = failing

    def on_change(self, listener: RelayListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # -- FeedbackRelay hooks ---------------------------------------------------------------
    def _drive(self, closed: bool) -> None:
        if self._fail:
            raise DriverError("simulated relay failure")
        if closed == self._state:
            return
        self._state = closed
        ts = self._clk.now()
        with self._log_lock:
            self.switch_log.append((ts, closed))
            if self._log_file is not None:
                line = f"{rfc3339(ts)} {'close' if closed else 'open'}\n"
                fd = os.open(self._log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode("ascii"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for listener in list(self._listeners):
            listener(closed)

    def _read_feedback(self) -> bool | None:
        if not self._has_feedback:
            return None
        if self._mode == "welded":
            return True
        if self._mode == "stuck_open":
            return False
        return self._state
