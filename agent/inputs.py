"""Local inputs: the items devices and technicians post, and how they become table events.

A card or a contract QR code is routed to an EVSE (:mod:`agent.routing`) and presented there; a
station sticker held to the camera is only recorded, for ``stationctl qr verify``; a plug change
goes to its EVSE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.actions import Context
from agent.clock import ClockCheck
from agent.errors import DriverError
from agent.messages import QrToken, RfidToken, token_key
from agent.privacy import mask
from agent.routing import route_token
from agent.session import AnyToken, Event, Evse, PilotSignal, PlugIn, PlugOut, TokenPresented
from agent.technician import TechnicianReads
from drivers.display.base import Display
from drivers.pilot.base import PilotState
from drivers.qr.payload import classify
from drivers.rfid.base import CardRead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardTapped:
    read: CardRead
    t: float = field(default_factory=time.perf_counter)  # when the reader reported it


@dataclass(frozen=True)
class QrScanned:
    payload: str


@dataclass(frozen=True)
class PlugChanged:
    evse_id: str
    plugged: bool


@dataclass(frozen=True)
class PilotChanged:
    evse_id: str
    state: PilotState


@dataclass
class ControlCall:
    """A control-socket request, answered from the main loop."""

    request: dict[str, Any]
    reply: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Shutdown:
    pass


class QrSightings:
    """Station codes seen by the camera (thread-safe: ``qr verify`` waits in its own thread)."""

    def __init__(self, size: int = 20) -> None:
        self._seen: deque[tuple[float, str]] = deque(maxlen=size)
        self._cond = threading.Condition()

    def add(self, evse_id: str) -> None:
        with self._cond:
            self._seen.append((time.monotonic(), evse_id))
            self._cond.notify_all()

    def wait_since(self, since: float, timeout: float, on_wait: Callable[[], None]) -> str | None:
        """The latest code seen at or after ``since`` (monotonic), waiting up to ``timeout``.
        ``on_wait`` runs once the waiter is registered (the signal that it is looking)."""
        deadline = since + timeout
        with self._cond:
            on_wait()
            while True:
                seen = [e for t, e in self._seen if t >= since]
                if seen:
                    return seen[-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


Routed = list[tuple[str, Event, Context]]  # (evse_id, event, context) to dispatch


class Inputs:
    """Turns local items into table events for the loop to dispatch (it never dispatches)."""

    def __init__(
        self,
        *,
        states: Callable[[], list[Evse]],
        display: Display,
        post: Callable[[Any], None],
        new_id: Callable[[], str],
        clock_check: ClockCheck | None = None,
    ) -> None:
        self._states = states
        self._display = display
        self._post = post
        self._new_id = new_id
        self._clock_check = clock_check  # no session starts on a clock known to be unset
        self.qr_sightings = QrSightings()
        self.technician_reads = TechnicianReads()  # stationctl rfid read: not a tap

    def handle(self, item: CardTapped | QrScanned | PlugChanged | PilotChanged) -> Routed:
        if isinstance(item, CardTapped):
            return self._on_card(item)
        if isinstance(item, QrScanned):
            return self._on_qr(item)
        if isinstance(item, PilotChanged):
            return self._on_pilot(item)
        return self._on_plug(item)

    # ---------------------------------------------------------------- driver callbacks
    def on_card(self, read: CardRead) -> None:
        if self.technician_reads.swallow(read.uid):
            log.info(
                "card %s read by a technician (stationctl rfid read): not a tap", mask(read.uid)
            )
            return
        self._post(CardTapped(read))

    def on_qr(self, payload: str) -> None:
        self._post(QrScanned(payload))

    def on_plug(self, evse_id: str) -> Callable[[bool], None]:
        def cb(plugged: bool) -> None:
            self._post(PlugChanged(evse_id, plugged))

        return cb

    # ---------------------------------------------------------------- in the loop
    def _on_card(self, item: CardTapped) -> Routed:
        read = item.read
        try:
            token: AnyToken = RfidToken(uid=read.uid, card_type=read.card_type.value)
        except ValueError:
            log.warning("card with malformed UID %s ignored", mask(read.uid))
            return []
        log.info("card %s (%s) presented", mask(read.uid), read.card_type.value)
        return self._present(token, Context(tap_t=item.t))

    def _on_qr(self, item: QrScanned) -> Routed:
        """A contract code (EMAID, with or without PIN) authorises like a card; a station
        sticker (evseid=) is recorded for ``stationctl qr verify``; anything else is refused
        with a message. The PIN goes only into the auth request."""
        code = classify(item.payload)
        if code.kind == "contract" and code.emaid:
            log.info("QR contract code %s read", code.to_dict(masked=True))
            return self._present(QrToken(contract_id=code.emaid, pin=code.pin), Context())
        if code.kind == "evse" and code.evse_id:
            log.info("QR station code for %s read (not an authorisation)", code.evse_id)
            self.qr_sightings.add(code.evse_id)
            return []
        log.warning("QR code refused: %s", code.reason or "not a contract or station code")
        self._show("Unknown code")
        return []

    def _present(self, token: AnyToken, ctx: Context) -> Routed:
        key = token_key(token)
        unset = self._clock_check.refuses_sessions() if self._clock_check else None
        if unset is not None:
            log.warning("token %s refused: clock not set (%s)", mask(key.split(":", 1)[1]), unset)
            self._show("Clock not set - try again shortly")
            return []
        route = route_token(self._states(), key)
        if route.evse_id is None:
            log.info("token %s: no EVSE free for it", mask(key.split(":", 1)[1]))
            self._show("No free charge point")
            return []
        event = TokenPresented(
            token=token,
            token_key=key,
            session_id=self._new_id(),
            request_id=self._new_id(),
            floating=route.floating,
        )
        return [(route.evse_id, event, ctx)]

    def _on_plug(self, item: PlugChanged) -> Routed:
        state = next((st for st in self._states() if st.evse_id == item.evse_id), None)
        if state is None or state.plugged == item.plugged:
            return []
        log.info("%s: car %s", item.evse_id, "plugged in" if item.plugged else "unplugged")
        return [(item.evse_id, PlugIn() if item.plugged else PlugOut(), Context())]

    def on_pilot(self, evse_id: str) -> Callable[[PilotState], None]:
        def cb(state: PilotState) -> None:
            self._post(PilotChanged(evse_id, state))

        return cb

    def _on_pilot(self, item: PilotChanged) -> Routed:
        """The pilot is the plug sensor too: B/C/D plugged, A unplugged (E/F change nothing
        but the pilot state, whose handler opens the contactor)."""
        state = next((st for st in self._states() if st.evse_id == item.evse_id), None)
        if state is None:
            return []
        log.info("%s: pilot %s", item.evse_id, item.state.value)
        routed: Routed = [(item.evse_id, PilotSignal(item.state), Context())]
        if item.state.connected and not state.plugged:
            routed.append((item.evse_id, PlugIn(), Context()))
        elif item.state is PilotState.A and state.plugged:
            routed.append((item.evse_id, PlugOut(), Context()))
        return routed

    def _show(self, text: str) -> None:
        try:
            self._display.show_message(text)
        except DriverError as err:
            log.error("display failed: %s", err)
