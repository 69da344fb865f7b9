"""Delivery: session events and CDRs from the store to the backend, in order, durably.

A session event goes out at once when the link is up and nothing is queued before it; else it
waits in the store's event queue and is sent, oldest first, when the link returns. A CDR is
committed with the end of its session (one transaction) and re-sent with capped, doubling
back-off until the backend acknowledges it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TypeVar

from pydantic import ValidationError

from agent.backend import Backend
from agent.clock import Clock
from agent.config import AgentConfig
from agent.messages import Cdr, SessionEvent, SessionEventKind, StopReason, dump
from agent.store import OutboxEntry, SessionRow, Store

log = logging.getLogger(__name__)

EVENT_BATCH = 500
RESEND_BATCH = 1000
SESSION_TOPIC = "session"  # the kind of queued item (the only one so far)


class Delivery:
    def __init__(self, config: AgentConfig, store: Store, backend: Backend, clock: Clock) -> None:
        self._config = config
        self._store = store
        self._backend = backend
        self._clock = clock

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
        msg = SessionEvent(
            session_id=session_id,
            evse_id=evse_id,
            event=kind,
            ts=self._clock.now(),
            reason=reason,
            offline=offline or None,
        )
        self.publish_or_queue(msg)

    def publish_or_queue(self, event: SessionEvent) -> None:
        """Publish now, or keep it in the store and send it, in order, when the link returns."""
        if self._store.queued_event_count() == 0 and self._backend.session_event(event):
            return
        self._store.queue_event(SESSION_TOPIC, dump(event).decode(), self._clock.now())

    def flush_events(self) -> int:
        """Publish the queued events oldest first, in batches, until the queue is empty or the
        link refuses one (the rest stays queued, in order)."""
        sent = 0
        while True:
            batch = self._store.queued_events(limit=EVENT_BATCH)
            done: list[int] = []
            for seq, kind, payload in batch:
                event = _load(SessionEvent, payload, f"queued {kind} event {seq}")
                if event is not None and not self._backend.session_event(event):
                    break
                done.append(seq)  # sent, or unreadable (logged): either way it leaves
            if done:
                self._store.drop_events(done)
                sent += len(done)
            if not batch or len(done) < len(batch):
                return sent

    # ---------------------------------------------------------------- CDRs
    def settle(
        self,
        row: SessionRow,
        reason: StopReason,
        end: datetime,
        meter_stop: float,
        *,
        announce: bool = True,
    ) -> Cdr:
        """Persist the end of a charging session with its CDR (one transaction), then tell the
        backend: the 'stopped' event (``announce``) and the CDR itself."""
        meter_start = row.meter_start_kwh if row.meter_start_kwh is not None else meter_stop
        meter_stop = max(meter_stop, meter_start)
        cdr = self.build_cdr(row, reason, end, meter_start, meter_stop)
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
        if announce:
            self.session_event(
                row.session_id,
                row.evse_id,
                SessionEventKind.STOPPED,
                reason.value,
                offline=row.offline,
            )
        if self._store.queued_event_count() == 0:  # else it follows the queued events
            self._send(row.session_id, cdr)
        return cdr

    def build_cdr(
        self,
        row: SessionRow,
        reason: StopReason,
        end: datetime,
        meter_start: float,
        meter_stop: float,
    ) -> Cdr:
        return Cdr(
            session_id=row.session_id,
            evse_id=row.evse_id,
            operator_id=self._config.station.operator_id,
            location=self._config.station.location,
            contract_id=row.contract_id,
            token=row.token,  # type: ignore[arg-type]
            session_start=row.session_start,
            session_end=end,
            charging_start=row.charging_start,
            charging_end=end if row.charging_start is not None else None,
            meter_start_kwh=meter_start,
            meter_stop_kwh=meter_stop,
            energy_kwh=meter_stop - meter_start,
            stop_reason=reason,
            offline=row.offline,
        )

    def resend(self, *, force: bool = False) -> int:
        """Send pending CDRs oldest first: all of them (``force``, on reconnect), else those
        due by their back-off."""
        if not self._backend.connected:
            return 0
        now = self._clock.now()
        sent = 0
        for entry in self._store.pending_cdrs(limit=RESEND_BATCH):
            if not force and not self._due(entry, now):
                continue
            cdr = _load(Cdr, entry.payload, f"CDR {entry.session_id}")
            if cdr is None:
                continue  # logged; it stays in the outbox for a technician to look at
            if not self._backend.cdr(cdr):
                break
            self._store.mark_attempt(entry.session_id, now)
            sent += 1
        return sent

    def acknowledged(self, session_id: str) -> None:
        outcome = self._store.ack_cdr(session_id, self._clock.now())
        if outcome == "acked":
            log.info("CDR %s acknowledged", session_id)
        else:
            log.info("CDR ack for %s ignored (%s)", session_id, outcome)

    def _due(self, entry: OutboxEntry, now: datetime) -> bool:
        if entry.last_attempt_at is None:
            return True
        mqtt = self._config.mqtt
        doubling = float(2 ** max(0, entry.attempts - 1))
        backoff = min(mqtt.cdr_retry_initial_s * doubling, mqtt.cdr_retry_max_s)
        return (now - entry.last_attempt_at).total_seconds() >= backoff

    def _send(self, session_id: str, cdr: Cdr) -> None:
        if self._backend.cdr(cdr):
            self._store.mark_attempt(session_id, self._clock.now())


M = TypeVar("M", SessionEvent, Cdr)


def _load(model: type[M], payload: str, what: str) -> M | None:
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        log.error("%s cannot be read back: %s", what, err)
        return None
