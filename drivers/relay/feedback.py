"""Contactor feedback (mirror contact) verification shared by every relay driver.

After each switch the feedback input, where one is wired, must follow the command within
``feedback_timeout_ms``:

* commanded open but the feedback stays closed  -> ``relay_welded`` (energy may still flow);
* commanded closed but the feedback never closes -> ``relay_stuck_open``.

A detected fault is latched: :meth:`FeedbackRelay.health` reports it, ``close()`` is refused, and
only an explicit :meth:`FeedbackRelay.reset` clears it, which succeeds only while the feedback
reads open. Time comes from an injected :class:`~drivers.clock.Clock` and ``sleep`` function, so
tests can run the time-out without sleeping (``sleep=fake_clock.advance``).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import StrEnum

from drivers.clock import Clock, SystemClock
from drivers.errors import DriverError
from drivers.health import Health

log = logging.getLogger(__name__)


class RelayFaultKind(StrEnum):
    """The latched contactor faults (the ``fault`` string of :class:`~drivers.health.Health`)."""

    WELDED = "relay_welded"
    STUCK_OPEN = "relay_stuck_open"


WELDED = RelayFaultKind.WELDED
STUCK_OPEN = RelayFaultKind.STUCK_OPEN

DEFAULT_FEEDBACK_TIMEOUT_MS = 200.0
DEFAULT_POLL_MS = 5.0

FeedbackReader = Callable[[], bool | None]
Sleep = Callable[[float], None]


class RelayFault(DriverError):
    """The feedback contact contradicts the command (welded or stuck-open contactor).

    ``kind`` (declared on :class:`~drivers.errors.DriverError`) is narrowed to
    :class:`RelayFaultKind` (``"relay_welded"`` or ``"relay_stuck_open"``), never ``None``.
    """

    kind: RelayFaultKind

    def __init__(self, kind: RelayFaultKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}", kind=kind)
        self.detail = detail


def verify_feedback(
    read: FeedbackReader,
    commanded_closed: bool,
    *,
    timeout_s: float,
    clock: Clock,
    sleep: Sleep,
    poll_s: float = DEFAULT_POLL_MS / 1000.0,
    where: str = "relay",
) -> RelayFault | None:
    """Wait until the feedback matches ``commanded_closed``; return the fault if it never does.

    Returns ``None`` at once where no feedback is wired (``read()`` returns ``None``). The
    feedback is read at least once, even with a zero time-out. Errors of ``read`` propagate.
    """
    deadline = clock.monotonic() + max(timeout_s, 0.0)
    while True:
        feedback = read()
        if feedback is None or feedback == commanded_closed:
            return None
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            break
        sleep(min(poll_s, remaining))
    waited_ms = timeout_s * 1000.0
    if feedback:
        return RelayFault(
            WELDED,
            f"{where}: commanded open but the feedback contact still reads closed after "
            f"{waited_ms:.0f} ms; the contactor may be welded and energy may still flow. "
            "Isolate the supply upstream, inspect the contactor and its feedback wiring",
        )
    return RelayFault(
        STUCK_OPEN,
        f"{where}: commanded closed but the feedback contact did not close within "
        f"{waited_ms:.0f} ms. Check the contactor coil supply, the driver output and the "
        "feedback (mirror) contact wiring",
    )


class FeedbackRelay(ABC):
    """Base class of the relay drivers: commanded state, feedback verification, latched faults.

    Subclasses implement :meth:`_drive`, and optionally :meth:`_read_feedback` and
    :meth:`_release`; they raise :class:`DriverError` when the device fails. All public methods
    are thread-safe (one re-entrant lock per relay).
    """

    def __init__(
        self,
        *,
        feedback_timeout_ms: float = DEFAULT_FEEDBACK_TIMEOUT_MS,
        poll_ms: float = DEFAULT_POLL_MS,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if feedback_timeout_ms < 0:
            raise ValueError("feedback_timeout_ms must not be negative")
        self._feedback_timeout_s = feedback_timeout_ms / 1000.0
        self._poll_s = max(poll_ms, 0.1) / 1000.0
        self._clock: Clock = clock or SystemClock()
        self._sleep: Sleep = sleep or time.sleep
        self._lock = threading.RLock()
        self._closed = False
        self._fault: RelayFault | None = None
        self._device_error: str | None = None
        self._shut_down = False

    # -- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def _drive(self, closed: bool) -> None:
        """Command the device. Raise DriverError when it cannot."""

    def _read_feedback(self) -> bool | None:
        """The feedback contact (True = closed), or None where none is wired."""
        return None

    def _release(self) -> None:
        """Release the device so it falls back to its safe (open) default. Idempotent."""
        return None

    def describe(self) -> str:
        """Where the relay is, for technicians (device path, line, address)."""
        return type(self).__name__

    @property
    @abstractmethod
    def simulated(self) -> bool:
        """True only for :class:`drivers.relay.sim.SimRelay`."""

    # -- Relay protocol --------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            self._closed = False
            if self._shut_down:
                return
            self._command(False)
            self._verify(False)

    def close(self) -> None:
        with self._lock:
            if self._shut_down:
                raise DriverError(f"{self.describe()}: relay has been shut down")
            if self._fault is not None:
                raise RelayFault(
                    self._fault.kind,
                    f"refusing to close while the fault is latched ({self._fault.detail}); "
                    "reset() it once the contactor has been checked",
                )
            try:
                self._command(True)
            except DriverError:
                self._closed = False
                self._best_effort_open()
                raise
            self._closed = True
            try:
                self._verify(True)
            except DriverError:
                # Never leave the coil energised against a contactor that did not confirm:
                # a late closing would let energy flow without the agent knowing.
                self._closed = False
                self._best_effort_open()
                raise

    def is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def feedback_closed(self) -> bool | None:
        with self._lock:
            if self._shut_down:
                return None
            try:
                value = self._read_feedback()
            except DriverError as err:
                self._device_error = str(err)
                raise
            return value

    def shutdown(self) -> None:
        with self._lock:
            if self._shut_down:
                return
            self._closed = False
            try:
                self._command(False)
                self._verify(False)
            except DriverError as err:
                log.error("%s: shutdown could not confirm the open state: %s", self.describe(), err)
            finally:
                self._shut_down = True
                try:
                    self._release()
                except DriverError as err:
                    log.error("%s: release failed: %s", self.describe(), err)

    def health(self) -> Health:
        with self._lock:
            if self._fault is not None:
                return Health(ok=False, fault=self._fault.kind.value, detail=self._fault.detail)
            if self._device_error is not None:
                return Health(ok=False, fault="relay_unavailable", detail=self._device_error)
            return Health.healthy()

    # -- fault handling --------------------------------------------------------------------
    @property
    def fault(self) -> RelayFault | None:
        with self._lock:
            return self._fault

    def reset(self) -> None:
        """Clear a latched fault. Raises RelayFault while the feedback still reads closed.

        No-op without a latched fault. See :meth:`drivers.relay.base.Relay.reset`.
        """
        with self._lock:
            if self._fault is None:
                return
            feedback = self.feedback_closed()
            if feedback:
                raise RelayFault(
                    self._fault.kind,
                    f"{self.describe()}: reset refused, the feedback contact still reads closed",
                )
            log.warning("%s: fault %s reset by operator", self.describe(), self._fault.kind)
            self._fault = None

    def check_feedback(self) -> Health:
        """Supervise between switches: latch a fault if the feedback contradicts the command.

        Waits at most ``feedback_timeout_ms`` for a mismatch to clear (contact bounce). A
        contactor that drops out while commanded closed is commanded open and reported
        ``relay_stuck_open``. Returns :meth:`health`.
        """
        with self._lock:
            if not self._shut_down and self._fault is None:
                try:
                    self._verify(self._closed)
                except RelayFault:
                    if self._closed:
                        self._closed = False
                        self._best_effort_open()
                except DriverError:
                    pass  # recorded as relay_unavailable by _verify
            return self.health()

    # -- internals -------------------------------------------------------------------------
    def _command(self, closed: bool) -> None:
        try:
            self._drive(closed)
        except DriverError as err:
            self._device_error = str(err)
            log.error("%s: cannot %s: %s", self.describe(), "close" if closed else "open", err)
            raise
        self._device_error = None

    def _verify(self, closed: bool) -> None:
        try:
            fault = verify_feedback(
                self._read_feedback,
                closed,
                timeout_s=self._feedback_timeout_s,
                clock=self._clock,
                sleep=self._sleep,
                poll_s=self._poll_s,
                where=self.describe(),
            )
        except DriverError as err:
            self._device_error = f"cannot read the feedback contact: {err}"
            raise
        if fault is not None:
            log.error("%s: %s", self.describe(), fault)
            self._fault = fault
            raise fault

    def _best_effort_open(self) -> None:
        try:
            self._drive(False)
        except DriverError as err:
            log.error("%s: cannot open after a failed close: %s", self.describe(), err)
