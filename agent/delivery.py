"""Delivery: session events and CDRs from the store to the backend, in order, durably.

A session event goes out at once when the link is up and nothing is queued before it; else it
waits in the store's event queue and is sent, oldest first, when the link returns. A CDR is
committed with the end of its session (one transaction) and re-sent with capped, doubling
back-off until the backend acknowledges it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError

from agent.backend import Backend
from agent.clock import Clock, rfc3339
from agent.config import AgentConfig
from agent.messages import Cdr, SessionEvent, SessionEventKind, SessionReason, StopReason, dump
from agent.metering import SignedEnd, SignedMetering
from agent.store import OutboxEntry, SessionRow, Store

log = logging.getLogger(__name__)

EVENT_BATCH = 500
RESEND_BATCH = 1000
SESSION_TOPIC = "session"  # the kind of queued item (the only one so far)
CLOCK_TOLERANCE_S = 2.0  # wall span vs monotonic span: more apart than this is a clock step


@dataclass(frozen=True)
class CdrTimes:
    session_start: datetime
    charging_start: datetime | None
    corrected: bool


def cdr_times(
    row: SessionRow,
    end: datetime,
    *,
    mono_end: float | None,
    boot_id: str | None,
    tolerance_s: float = CLOCK_TOLERANCE_S,
) -> CdrTimes:
    """The session's start times for its CDR, checked against the monotonic clock.

    The end is trusted (the latest reading of the wall clock, after any NTP step). When the
    session is from this boot (``boot_id``; monotonic time is comparable only within one boot)
    and has monotonic marks, a start whose wall span to the end differs from the monotonic span
    by more than ``tolerance_s`` (or runs backwards) is moved to ``end - monotonic span``.
    Without marks, a start after the end is clamped to it. Either way ``corrected`` says so.
    """
    same_boot = mono_end is not None and boot_id is not None and row.boot_id == boot_id
    corrected = False

    def check(wall: datetime, mono: float | None) -> datetime:
        nonlocal corrected
        if same_boot and mono is not None and mono_end is not None:
            span = max(0.0, mono_end - mono)
            if abs((end - wall).total_seconds() - span) > tolerance_s:
                corrected = True
                return end - timedelta(seconds=span)
        if wall > end:
            corrected = True
            return end
        return wall

    start = check(row.session_start, row.mono_start)
    charging = row.charging_start
    if charging is not None:
        charging = check(charging, row.mono_charging_start)
        if charging < start:  # one corrected, the other not (no mark): keep them in order
            corrected = True
            charging = start
    return CdrTimes(start, charging, corrected)


class Delivery:
    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        backend: Backend,
        clock: Clock,
        *,
        boot_id: str | None = None,
        metering: SignedMetering | None = None,
    ) -> None:
        self._config = config
        self._metering = metering  # signed records are committed with their CDR
        self._store = store
        self._backend = backend
        self._clock = clock
        self._boot_id = boot_id  # CDR times are checked against monotonic marks of this boot
        # session id -> monotonic time of its last send: the back-off runs on it, so a wall
        # clock stepped back does not stall re-sends (none after a restart: due at once)
        self._attempt_mono: dict[str, float] = {}
        self._in_flight: set[int] = set()  # queued events handed over, not yet acknowledged
        self._acked: set[int] = set()  # acknowledged, still in the store until forget_acked()

    # ---------------------------------------------------------------- session events
    def session_event(
        self,
        session_id: str,
        evse_id: str,
        kind: SessionEventKind,
        reason: str | None = None,
        *,
        offline: bool = False,
    ) -> None:
        """Commit the event to the durable queue, then send what is queued, in order."""
        self.queue(session_id, evse_id, kind, reason, offline=offline)
        self.flush_events()

    def queue(
        self,
        session_id: str,
        evse_id: str,
        kind: SessionEventKind,
        reason: str | None = None,
        *,
        offline: bool = False,
    ) -> None:
        """Commit the event (joining the caller's unit of work, if one is open); it leaves the
        queue only when the backend has acknowledged it (:meth:`confirmed`)."""
        msg = SessionEvent(
            session_id=session_id,
            evse_id=evse_id,
            event=kind,
            ts=self._clock.now(),
            reason=_reason(reason),
            offline=offline or None,
        )
        self._store.queue_event(SESSION_TOPIC, dump(msg).decode(), self._clock.now())

    def flush_events(self) -> int:
        """Hand the queued events that are not yet in flight to the backend, oldest first,
        until the queue is done or the link refuses one (the rest waits, in order)."""
        if not self._backend.connected:
            return 0
        sent = 0
        after = 0
        while batch := self._store.queued_events(limit=EVENT_BATCH, after=after):
            for seq, kind, payload in batch:
                after = seq
                if seq in self._in_flight or seq in self._acked:
                    continue
                event = _load(SessionEvent, payload, f"queued {kind} event {seq}")
                if event is None:  # logged; it can never be sent
                    self._store.drop_events([seq])
                    continue
                if not self._backend.session_event(event, seq):
                    return sent
                self._in_flight.add(seq)
                sent += 1
        return sent

    def confirmed(self, refs: list[int]) -> None:
        """The backend has these events: they leave the durable queue, in batches (a crash
        before the batch is committed only sends them again: at least once, never lost)."""
        done = [ref for ref in refs if ref in self._in_flight]
        self._in_flight.difference_update(done)
        self._acked.update(done)
        if len(self._acked) >= EVENT_BATCH:
            self.forget_acked()

    def forget_acked(self) -> None:
        """Delete the acknowledged events from the store (one commit); housekeeping calls it
        every tick, so an idle station's queue is empty within a second."""
        if self._acked:
            self._store.drop_events(sorted(self._acked))
            self._acked.clear()

    def link_lost(self) -> None:
        """What was in flight without an acknowledgement is sent again on the next link."""
        self._in_flight.clear()

    def _events_handed_over(self) -> bool:
        """Every queued event is with the backend: a CDR sent now cannot overtake one."""
        return self._store.queued_event_count() == len(self._in_flight) + len(self._acked)

    # ---------------------------------------------------------------- CDRs
    def settle(
        self,
        row: SessionRow,
        reason: StopReason,
        end: datetime,
        meter_stop: float,
        *,
        signed: SignedEnd | None = None,
    ) -> Cdr:
        """Persist the end of a charging session with its CDR, then tell the backend."""
        cdr = self.commit_end(row, reason, end, meter_stop, signed=signed)
        self.announce_end(row, cdr)
        return cdr

    def commit_end(
        self,
        row: SessionRow,
        reason: StopReason,
        end: datetime,
        meter_stop: float,
        *,
        signed: SignedEnd | None = None,
    ) -> Cdr:
        """One commit: the session's end, its CDR (with its signed records) and the 'stopped'
        event."""
        with self._store.unit():
            cdr = self.record_end(row, reason, end, meter_stop, signed=signed)
            if self._metering is not None:
                self._metering.save_end(row.session_id, signed)
            kind = SessionEventKind.STOPPED
            self.queue(row.session_id, row.evse_id, kind, reason.value, offline=row.offline)
        return cdr

    def record_end(
        self,
        row: SessionRow,
        reason: StopReason,
        end: datetime,
        meter_stop: float,
        *,
        mono_end: float | None = None,
        signed: SignedEnd | None = None,
    ) -> Cdr:
        """Commit the end of a charging session with its CDR, in one transaction. ``end`` is
        the clock's reading now; ``mono_end`` its monotonic twin (default: read here). A
        session settled at a stored time has no monotonic marks (recovery drops them).
        ``signed``: the meter's signed records; their values are what the CDR bills."""
        meter_start = row.meter_start_kwh if row.meter_start_kwh is not None else meter_stop
        if signed is not None and signed.begin_kwh is not None:
            meter_start = signed.begin_kwh
        if signed is not None and signed.end_kwh is not None:
            meter_stop = signed.end_kwh
        meter_stop = max(meter_stop, meter_start)
        mono = self._clock.monotonic() if mono_end is None else mono_end
        cdr = self.build_cdr(row, reason, end, meter_start, meter_stop, mono_end=mono)
        if signed is not None:
            cdr = cdr.model_copy(update={"signed_meter_values": signed.values})
        self._store.end_session(
            row.session_id,
            end=end,
            reason=reason.value,
            meter_stop_kwh=meter_stop,
            cdr_payload=dump(cdr).decode(),
        )
        log.info(
            "session %s ended (%s): %.3f kWh, CDR queued",
            row.session_id,
            reason.value,
            cdr.energy_kwh,
        )
        return cdr

    def announce_end(self, row: SessionRow, cdr: Cdr) -> None:
        """The committed end goes out: the 'stopped' event, then the CDR."""
        self.flush_events()
        if self._events_handed_over():  # else it follows the queued events
            self._send(row.session_id, cdr)

    def build_cdr(
        self,
        row: SessionRow,
        reason: StopReason,
        end: datetime,
        meter_start: float,
        meter_stop: float,
        *,
        mono_end: float | None = None,
    ) -> Cdr:
        times = cdr_times(row, end, mono_end=mono_end, boot_id=self._boot_id)
        if times.corrected:
            log.warning(
                "session %s: the wall clock was stepped during the session: CDR times"
                " corrected from the monotonic clock (start %s -> %s, end %s)",
                row.session_id,
                rfc3339(row.session_start),
                rfc3339(times.session_start),
                rfc3339(end),
            )
        return Cdr(
            session_id=row.session_id,
            evse_id=row.evse_id,
            operator_id=self._config.station.operator_id,
            location=self._config.station.location,
            contract_id=row.contract_id,
            token=row.token,  # type: ignore[arg-type]
            session_start=times.session_start,
            session_end=end,
            charging_start=times.charging_start,
            charging_end=end if times.charging_start is not None else None,
            meter_start_kwh=meter_start,
            meter_stop_kwh=meter_stop,
            energy_kwh=meter_stop - meter_start,
            stop_reason=reason,
            offline=row.offline,
            clock_corrected=True if times.corrected else None,
        )

    def resend(self, *, force: bool = False) -> int:
        """Send pending CDRs oldest first: all of them (``force``, on reconnect), else those
        due by their back-off."""
        if not self._backend.connected or not self._events_handed_over():
            return 0  # CDRs go after the session events queued before them
        now, mono = self._clock.now(), self._clock.monotonic()
        sent = 0
        pending = self._store.pending_cdrs(limit=RESEND_BATCH)
        if len(pending) < RESEND_BATCH:  # all of them: forget the marks of acknowledged ones
            ids = {e.session_id for e in pending}
            self._attempt_mono = {k: v for k, v in self._attempt_mono.items() if k in ids}
        with self._store.unit():  # the attempts of a whole batch: one commit, not one each
            for entry in pending:
                if not force and not self._due(entry, mono):
                    continue
                cdr = _load(Cdr, entry.payload, f"CDR {entry.session_id}")
                if cdr is None:
                    continue  # logged; it stays in the outbox for a technician to look at
                if not self._backend.cdr(cdr):
                    break
                self._store.mark_attempt(entry.session_id, now)
                self._attempt_mono[entry.session_id] = mono
                sent += 1
        return sent

    def acknowledged(self, session_ids: list[str]) -> None:
        """CDRs the backend acknowledged: settled in one commit."""
        now = self._clock.now()
        with self._store.unit():
            for session_id in session_ids:
                outcome = self._store.ack_cdr(session_id, now)
                if outcome == "acked":
                    log.info("CDR %s acknowledged", session_id)
                else:
                    log.info("CDR ack for %s ignored (%s)", session_id, outcome)

    def _due(self, entry: OutboxEntry, mono: float) -> bool:
        """By the back-off, in monotonic time (the stored ``last_attempt_at`` is wall time,
        for display only: a clock step must not stall re-sends)."""
        last = self._attempt_mono.get(entry.session_id)
        if entry.last_attempt_at is None or last is None:
            return True  # never sent, or not by this process (restarted): due at once
        mqtt = self._config.mqtt
        doubling = float(2 ** max(0, entry.attempts - 1))
        backoff = min(mqtt.cdr_retry_initial_s * doubling, mqtt.cdr_retry_max_s)
        return mono - last >= backoff

    def _send(self, session_id: str, cdr: Cdr) -> None:
        if self._backend.cdr(cdr):
            self._store.mark_attempt(session_id, self._clock.now())
            self._attempt_mono[session_id] = self._clock.monotonic()


M = TypeVar("M", SessionEvent, Cdr)


def _load(model: type[M], payload: str, what: str) -> M | None:
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        log.error("%s cannot be read back: %s", what, err)
        return None


def _reason(reason: str | None) -> SessionReason | None:
    """A session event's reason as the contract's enum; one the contract does not know (a
    bug: tests/test_asyncapi.py checks every reason the code gives) goes out as
    ``other``, logged, rather than losing the event."""
    if reason is None:
        return None
    try:
        return SessionReason(reason)
    except ValueError:
        log.error("session event reason %r is not in the contract: sent as 'other'", reason)
        return SessionReason.OTHER
