"""Carrying out the table's actions for one EVSE: commit first, then switch, then tell.

One handler per action type (a registry, no ``isinstance`` chain). A handler never dispatches:
what it finds out (a relay that faulted, a meter that did not answer, an offline decision)
comes back as table events for the same EVSE, which the controller runs through the table next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.authorization import Authorizer
from agent.commands import Commands
from agent.config import AgentConfig
from agent.delivery import Delivery
from agent.evse import EvseRuntime, Metrics, PowerPath
from agent.failpoints import Failpoints, Point
from agent.loop import Timers
from agent.messages import CommandResponse, SessionEventKind, token_for_record
from agent.metering import SignedMetering, SignedStart
from agent.privacy import mask
from agent.session import (
    Action,
    Authorize,
    AuthorizeAndCharge,
    BeginCharging,
    CancelTimer,
    CloseRelay,
    CommandResult,
    DropSession,
    EndSession,
    Event,
    FaultKind,
    FaultRaised,
    Ignored,
    Notify,
    OpenRelay,
    RequestAuth,
    ResumeCharging,
    SessionInfo,
    StartTimer,
    Timer,
)
from agent.store import Store
from drivers.display.base import Display
from drivers.meter.base import MeterReading

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Per-call facts for latency metrics: when the tap or the backend's answer arrived."""

    tap_t: float | None = None
    answer_t: float | None = None


@dataclass(kw_only=True)
class ActionRunner:
    config: AgentConfig
    store: Store
    power: PowerPath
    delivery: Delivery
    authorizer: Authorizer
    commands: Commands
    timers: Timers
    display: Display
    metrics: Metrics
    boot_id: str | None
    failpoints: Failpoints = field(default_factory=Failpoints)
    metering: SignedMetering | None = None  # signing meters' records (OCMF)

    def __post_init__(self) -> None:
        self._handlers: dict[type[Any], Callable[[EvseRuntime, Any, Context], list[Event]]] = {
            RequestAuth: self._request_auth,
            StartTimer: self._start_timer,
            CancelTimer: self._cancel_timer,
            Authorize: self._authorize,
            AuthorizeAndCharge: self._authorize_and_charge,
            BeginCharging: self._begin_charging,
            ResumeCharging: self._resume_charging,
            EndSession: self._end_session,
            DropSession: self._drop_session,
            OpenRelay: self._open_relay,
            CloseRelay: self._close_relay,
            CommandResult: self._command_result,
            Notify: self._notify,
            Ignored: self._ignored,
        }

    def run(self, rt: EvseRuntime, action: Action, ctx: Context) -> list[Event]:
        return self._handlers[type(action)](rt, action, ctx)

    # ---------------------------------------------------------------- authorisation
    def _request_auth(self, rt: EvseRuntime, action: RequestAuth, ctx: Context) -> list[Event]:
        session = rt.state.session
        session_id = session.session_id if session else ""
        outcome = self.authorizer.request(rt.evse_id, action, session_id)
        if outcome.sent:
            self.metrics.add("tap_to_auth_req", ctx.tap_t)
        return [outcome.decision] if outcome.decision is not None else []

    def _start_timer(self, rt: EvseRuntime, action: StartTimer, ctx: Context) -> list[Event]:
        seconds = (
            self.config.mqtt.auth_timeout_s
            if action.timer is Timer.AUTH
            else self.config.auth.connection_timeout_s
        )
        self.timers.start(rt.evse_id, action.timer, action.key, seconds)
        return []

    def _cancel_timer(self, rt: EvseRuntime, action: CancelTimer, ctx: Context) -> list[Event]:
        self.timers.cancel(rt.evse_id, action.timer)
        return []

    def _insert(self, rt: EvseRuntime, session: SessionInfo, reading: MeterReading | None) -> None:
        clock = self.power.clock
        self.store.insert_session(
            session_id=session.session_id,
            evse_id=rt.evse_id,
            token=token_for_record(session.token).model_dump(exclude_none=True),
            contract_id=session.contract_id,
            start=clock.now(),
            offline=session.offline,
            boot_id=self.boot_id,
            meter_kwh=reading.energy_kwh if reading is not None else None,
            mono=clock.monotonic(),  # the CDR's durations come from this, not the wall clock
        )
        log.info(
            "%s: session %s authorised%s for %s",
            rt.evse_id,
            session.session_id,
            " offline" if session.offline else "",
            mask(session.token_key.split(":", 1)[1]),
        )

    def _commit_start(
        self,
        rt: EvseRuntime,
        session: SessionInfo,
        command_id: str | None,
        reading: MeterReading | None,
        signed: SignedStart | None = None,
    ) -> CommandResponse | None:
        """The session, its charging start (with a reading and a signed start record) and a
        remote start's acceptance: one commit. Nothing is answered or switched before it."""
        with self.store.unit():
            self._insert(rt, session, reading)
            if self.metering is not None:
                self.metering.save_start(session.session_id, signed)
            answer = None if command_id is None else self.commands.record(command_id, True, None)
            self.delivery.queue(
                session.session_id, rt.evse_id, SessionEventKind.AUTHORIZED, offline=session.offline
            )
        if command_id is not None:
            self.failpoints.hit(Point.START_COMMITTED)
        return answer

    def _authorize(self, rt: EvseRuntime, action: Authorize, ctx: Context) -> list[Event]:
        """Commit the authorised session, then tell the backend."""
        session = action.session
        answer = self._commit_start(rt, session, action.command_id, None)
        if answer is not None:
            self.commands.announce(answer)
        self.delivery.flush_events()  # 'authorized'
        return []

    def _authorize_and_charge(
        self, rt: EvseRuntime, action: AuthorizeAndCharge, ctx: Context
    ) -> list[Event]:
        """The car is plugged: session and charging start in one commit, then the relay, then
        the 'authorized' and 'started' events. No session starts unmetered."""
        session = action.session
        reading, signed = self._signed_start(rt, _token(session))
        answer = self._commit_start(rt, session, action.command_id, reading, signed)
        if reading is None:
            if answer is not None:
                self.commands.announce(answer)
            self.delivery.flush_events()  # 'authorized'
            return [FaultRaised(FaultKind.METER_FAILED)]
        rt.last_meter_store = self.power.clock.monotonic()
        fault = self._close(rt, session.session_id, ctx) if action.close_relay else None
        if answer is not None:
            self.commands.announce(answer)
        self.delivery.flush_events()  # 'authorized'
        if fault is not None:
            return [fault]
        self._charging_started(rt, session, reading)
        return []

    # ---------------------------------------------------------------- charging
    def _signed_start(
        self, rt: EvseRuntime, token: dict[str, Any]
    ) -> tuple[MeterReading | None, SignedStart | None]:
        """The start reading; a signing meter begins its transaction too, and its signed
        value becomes the start reading (the CDR bills what the meter signed)."""
        reading = self.power.read_meter(rt)
        if reading is None or self.metering is None:
            return reading, None
        signed = self.metering.begin(rt.evse_id, token)
        record = signed.record if signed is not None else None
        if record is not None and record.begin_kwh is not None:
            reading = replace(reading, energy_kwh=record.begin_kwh)
            rt.last_energy_kwh = record.begin_kwh
        return reading, signed

    def _begin_charging(self, rt: EvseRuntime, action: BeginCharging, ctx: Context) -> list[Event]:
        session = rt.state.session
        row = self.store.get_session(action.session_id) if session is None else None
        token = _token(session) if session is not None else (row.token if row else {})
        reading, signed = self._signed_start(rt, token)
        if reading is None:
            return [FaultRaised(FaultKind.METER_FAILED)]
        clock = self.power.clock
        with self.store.unit():  # the charging start and the signed start record: one commit
            self.store.mark_charging(
                action.session_id,
                clock.now(),
                reading.energy_kwh,
                evse_id=rt.evse_id,
                mono=clock.monotonic(),
            )
            if self.metering is not None:
                self.metering.save_start(action.session_id, signed)
        rt.last_meter_store = clock.monotonic()
        fault = self._close(rt, action.session_id, ctx) if action.close_relay else None
        if fault is not None:
            return [fault]
        if rt.state.session is not None:
            self._charging_started(rt, rt.state.session, reading)
        return []

    def _close(self, rt: EvseRuntime, session_id: str, ctx: Context) -> Event | None:
        fault = self.power.close_relay(rt, session_id)
        if fault is None:
            self.metrics.add("answer_to_relay", ctx.answer_t)  # auth/res or remote_start in
            self.metrics.add("tap_to_relay", ctx.tap_t)  # offline / local list: no round trip
        return fault

    def _charging_started(
        self, rt: EvseRuntime, session: SessionInfo, reading: MeterReading
    ) -> None:
        log.info(
            "%s: charging, session %s, meter %.3f kWh",
            rt.evse_id,
            session.session_id,
            reading.energy_kwh,
        )
        self._event(rt, session, SessionEventKind.STARTED)

    def _resume_charging(
        self, rt: EvseRuntime, action: ResumeCharging, ctx: Context
    ) -> list[Event]:
        if action.close_relay and self.power.close_relay(rt, action.session_id) is not None:
            return [FaultRaised(FaultKind.RELAY_FAILED)]
        rt.last_meter_store = self.power.clock.monotonic()
        log.warning("%s: session %s resumed after restart", rt.evse_id, action.session_id)
        return []

    def _end_session(self, rt: EvseRuntime, action: EndSession, ctx: Context) -> list[Event]:
        """Read the meter (the relay still closed: the register the session ends on), commit
        the end with its CDR, open the relay, then tell the backend. A crash between commit and
        relay leaves an ended session (the relays open first thing at start-up), never a stop
        that a restart undoes."""
        why = f"session end ({action.reason.value})"
        # a meter known dead is not asked again: its time-out would stall the loop
        dead = rt.state.fault is FaultKind.METER_FAILED
        reading = None if dead else self.power.read_meter(rt)
        row = self.store.get_session(action.session_id)
        if row is None:
            log.error("%s: session %s not in the store", rt.evse_id, action.session_id)
            return self._open_relay(rt, OpenRelay(), ctx, why=why)
        last = rt.last_energy_kwh if rt.last_energy_kwh is not None else row.meter_last_kwh
        meter_stop = reading.energy_kwh if reading is not None else last
        signed = None
        if self.metering is not None:  # the meter signs the end (the relay still closed)
            signed = self.metering.end(
                row.session_id, rt.evse_id, row.token, ask=reading is not None
            )
        now = self.power.clock.now()
        cdr = self.delivery.commit_end(row, action.reason, now, meter_stop or 0.0, signed=signed)
        self.failpoints.hit(Point.SESSION_ENDED)
        events = self._open_relay(rt, OpenRelay(), ctx, why=why)
        self.failpoints.hit(Point.RELAY_OPENED)
        self.delivery.announce_end(row, cdr)
        return events

    def _drop_session(self, rt: EvseRuntime, action: DropSession, ctx: Context) -> list[Event]:
        session = action.session
        self.authorizer.forget(session.request_id)
        with self.store.unit():  # the end and its event: one commit
            if self.store.get_session(session.session_id) is not None:
                self.store.end_session(
                    session.session_id, end=self.power.clock.now(), reason=action.reason
                )
            self.delivery.queue(
                session.session_id,
                rt.evse_id,
                action.event,
                action.reason,
                offline=session.offline,
            )
        self.delivery.flush_events()
        return []

    def _open_relay(
        self, rt: EvseRuntime, action: OpenRelay, ctx: Context, why: str = "state change"
    ) -> list[Event]:
        fault = self.power.open_relay(rt, why)
        return [fault] if fault is not None else []

    def _close_relay(self, rt: EvseRuntime, action: CloseRelay, ctx: Context) -> list[Event]:
        """The car asks for energy again (pilot C/D): the session's start is committed already."""
        fault = self.power.close_relay(rt, action.session_id)
        return [fault] if fault is not None else []

    # ---------------------------------------------------------------- answers and screens
    def _command_result(self, rt: EvseRuntime, action: CommandResult, ctx: Context) -> list[Event]:
        self.commands.result(action.command_id, action.accepted, action.reason)
        return []

    def _notify(self, rt: EvseRuntime, action: Notify, ctx: Context) -> list[Event]:
        """The EVSE's own panel says it (redrawn after the item); the station-wide band is left
        to station-wide messages, so a message is never on the screen twice."""
        rt.message = action.message
        return []

    def _ignored(self, rt: EvseRuntime, action: Ignored, ctx: Context) -> list[Event]:
        log.info("%s: %s", rt.evse_id, action.reason)
        return []

    def _event(self, rt: EvseRuntime, session: SessionInfo, kind: SessionEventKind) -> None:
        self.delivery.session_event(session.session_id, rt.evse_id, kind, offline=session.offline)


def _token(session: SessionInfo) -> dict[str, Any]:
    """The session's token as stored and put into records (never with a PIN)."""
    return token_for_record(session.token).model_dump(exclude_none=True)
