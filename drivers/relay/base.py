"""The relay protocol. ``open()`` must be safe to call at any time, repeatedly.

Every driver implements the whole protocol (no ``getattr`` probing by callers). Faults are
reported as :class:`drivers.relay.feedback.RelayFault` (a :class:`~drivers.errors.DriverError`
whose ``kind`` is ``"relay_welded"`` or ``"relay_stuck_open"``); other device failures raise a
plain :class:`~drivers.errors.DriverError` (``kind`` is ``None``: callers report it as
``"relay_failed"``).
"""

from __future__ import annotations

from typing import Protocol

from drivers.health import Health


class Relay(Protocol):
    def open(self) -> None:
        """Open the contactor (no energy flows). Raises DriverError if it cannot.

        Raises RelayFault (``kind="relay_welded"``) if the feedback still reads closed.
        """
        ...

    def close(self) -> None:
        """Close the contactor. Raises DriverError if it cannot.

        Raises RelayFault while a fault is latched (``close`` is refused until :meth:`reset`)
        and when the feedback does not confirm (``relay_stuck_open``; the coil is driven back
        off).
        """
        ...

    def is_closed(self) -> bool:
        """The commanded state."""
        ...

    def feedback_closed(self) -> bool | None:
        """The mirror contact, or None where no feedback input is wired."""
        ...

    def check_feedback(self) -> Health:
        """Supervise between switches; return :meth:`health` afterwards.

        Where a feedback contact is wired and no fault is latched yet, compare it with the
        commanded state (waiting at most the feedback time-out for contact bounce):

        * commanded open, feedback closed  -> latch ``relay_welded``;
        * commanded closed, feedback open (the contactor dropped out) -> command the relay
          open and latch ``relay_stuck_open``.

        A feedback that cannot be read is reported as ``relay_unavailable``. Never raises a
        DriverError. Drivers without feedback (and a relay after ``shutdown``) just return
        :meth:`health`.
        """
        ...

    def reset(self) -> None:
        """Clear a latched ``relay_welded`` / ``relay_stuck_open`` fault (technician action).

        Succeeds only when the feedback reads open (or no feedback is wired); while it still
        reads closed the fault stays latched and RelayFault is raised (with the latched
        ``kind``). A relay with no latched fault: a no-op that succeeds (the feedback is not
        read). Raises DriverError if the feedback cannot be read.
        """
        ...

    def shutdown(self) -> None:
        """Open and release the device. Idempotent."""
        ...

    def health(self) -> Health: ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...
