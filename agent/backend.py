"""The backend port: everything the station says to or hears from its backend.

The session logic and the components around it only know this :class:`Backend` protocol and the
typed inputs below. An adapter translates them to one wire protocol: :mod:`agent.backend_mqtt`
(MQTT contract v1) is the first; an OCPP adapter is the second on the same port.

Outbound calls return ``True`` once the adapter has taken the message for delivery and ``False``
when it cannot (link down): the caller keeps it durable and tries again later. Inbound messages
arrive already validated, as the typed inputs below, through the sink given to ``start``; junk
is logged and dropped by the adapter, and a command that cannot be read but names its id comes
as :class:`CommandUnreadable`, so that its refusal is answered in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from agent.messages import (
    AnyCommand,
    AuthRequest,
    AuthResponse,
    Cdr,
    CommandResponse,
    SessionEvent,
    StatusMessage,
)


@dataclass(frozen=True)
class LinkUp:
    """The backend can be reached (again): status, queued events and CDRs go out now."""


@dataclass(frozen=True)
class LinkDown:
    reason: str = ""


@dataclass(frozen=True)
class AuthAnswer:
    response: AuthResponse
    t: float = field(default_factory=time.perf_counter)  # arrival, for latency metrics


@dataclass(frozen=True)
class CdrAcked:
    """CDRs were acknowledged (``Backend.acknowledged_cdrs()`` says which): after an outage a
    backend acknowledges a thousand at once, and they are settled in one commit, not one each."""


@dataclass(frozen=True)
class CommandIn:
    command: AnyCommand
    digest: str  # what identifies the command for replay detection (its send time aside)
    t: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class CommandUnreadable:
    """A command that could not be read: it is refused with ``reason`` (and not stored), in
    its turn among the other commands."""

    command_id: str
    reason: str


@dataclass(frozen=True)
class Delivered:
    """Session events were acknowledged by the broker (``Backend.delivered()`` says which)."""


@dataclass(frozen=True)
class Deauthorize:
    """The backend refused a running session's token after the fact (OCPP: a transaction start
    answered with an id tag status other than Accepted, StopTransactionOnInvalidId): the
    session stops with reason ``deauthorized``. Given again after a restart until the stop is
    answered; a session the station no longer holds ignores it."""

    session_id: str
    status: str


class ResetKind(StrEnum):
    SOFT = "soft"  # OCPP 1.6 Reset Soft
    HARD = "hard"  # OCPP 1.6 Reset Hard, 2.0.1 Reset Immediate
    ON_IDLE = "on_idle"  # OCPP 2.0.1 Reset OnIdle: once no session is running


@dataclass(frozen=True)
class ResetRequested:
    """The backend resets the station (:mod:`agent.reset`): answered through
    ``Backend.command_result`` under ``command_id`` once the decision is committed."""

    command_id: str
    kind: ResetKind


BackendInput = (
    LinkUp
    | LinkDown
    | AuthAnswer
    | CdrAcked
    | CommandIn
    | CommandUnreadable
    | Delivered
    | Deauthorize
    | ResetRequested
)
BackendSink = Callable[[BackendInput], None]


class Backend(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def endpoint(self) -> str:
        """Where the backend is (a URL), for status and diagnostics."""
        ...

    def start(self, sink: BackendSink) -> None:
        """Connect in the background; every input goes to ``sink`` (from any thread)."""
        ...

    def stop(self) -> None:
        """Say the station is going offline if the link allows, then disconnect."""
        ...

    def authorize(self, request: AuthRequest) -> bool: ...

    def session_event(self, event: SessionEvent, ref: int) -> bool:
        """Send a queued session event; ``ref`` comes back from :meth:`delivered` once the
        other side has it (then, and only then, it leaves the station's durable queue)."""
        ...

    def acknowledged_cdrs(self) -> list[str]:
        """The session ids of the CDRs acknowledged since the last call."""
        ...

    def delivered(self) -> list[int]:
        """The refs of session events acknowledged since the last call (a :class:`Delivered`
        input announces that there are some)."""
        ...

    def cdr(self, cdr: Cdr) -> bool: ...

    def command_result(self, result: CommandResponse) -> bool: ...

    def status(self, status: StatusMessage) -> bool: ...

    def faults(self) -> dict[str, str]:
        """Backend-side problems to show in the station's status (e.g. a broker ACL)."""
        ...

    def inbound_dropped(self) -> dict[str, int]:
        """Inbound messages dropped by the adapter's rate limit since start, per topic (or
        message kind); empty while nothing was dropped. Shown in the station's status."""
        ...


class AckBatches:
    """Acknowledgements that arrive on an adapter's network thread, taken by the main loop in
    batches: only the first of a batch is announced (one ``Delivered`` / ``CdrAcked`` input),
    the loop then takes all that have come in by the time it looks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[int] = []  # refs of acknowledged session events, not yet taken
        self._cdrs: list[str] = []  # session ids of acknowledged CDRs, not yet taken

    def event_acked(self, ref: int) -> bool:
        """Note an acknowledged event; True when it starts a batch (announce it)."""
        with self._lock:
            self._events.append(ref)
            return len(self._events) == 1

    def cdr_acked(self, session_id: str) -> bool:
        """Note an acknowledged CDR; True when it starts a batch (announce it)."""
        with self._lock:
            self._cdrs.append(session_id)
            return len(self._cdrs) == 1

    def take_events(self) -> list[int]:
        with self._lock:
            refs, self._events = self._events, []
        return refs

    def take_cdrs(self) -> list[str]:
        with self._lock:
            ids, self._cdrs = self._cdrs, []
        return ids
