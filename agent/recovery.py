"""Start-up recovery: what becomes of the sessions the store still holds open.

Charging, same boot, car still plugged, EVSE available: the session resumes (same id, relay
closed again, one CDR for the whole session). Charging but the car is gone, or the station lost
power (the boot id changed): it ends at its last committed time and meter reading, with a CDR.
A session that never charged is cancelled. :func:`plan` is pure; the controller carries it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.delivery import Delivery
from agent.messages import TOKEN_ADAPTER, SessionEventKind, StopReason, token_key
from agent.session import SessionInfo
from agent.store import SessionRow, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Settle:
    row: SessionRow
    reason: StopReason


@dataclass(frozen=True)
class Plan:
    resume: list[tuple[str, SessionInfo]] = field(default_factory=list)  # (evse id, session)
    settle: list[Settle] = field(default_factory=list)  # charging sessions that end, with CDR
    cancel: list[SessionRow] = field(default_factory=list)  # sessions that never charged


def session_info(row: SessionRow) -> SessionInfo:
    token = TOKEN_ADAPTER.validate_python(row.token)
    return SessionInfo(
        session_id=row.session_id,
        token=token,
        token_key=token_key(token),
        contract_id=row.contract_id,
        offline=row.offline,
    )


def plan(
    rows: Iterable[SessionRow], *, boot_id: str | None, can_resume: Callable[[str], bool]
) -> Plan:
    """``can_resume(evse_id)``: the EVSE exists, is available, idle and has a car plugged."""
    out = Plan()
    for row in rows:
        power_loss = bool(boot_id and row.boot_id and row.boot_id != boot_id)
        if row.state != "charging":
            out.cancel.append(row)
        elif not power_loss and can_resume(row.evse_id):
            out.resume.append((row.evse_id, session_info(row)))
        else:
            reason = StopReason.POWER_LOSS if power_loss else StopReason.EV_DISCONNECTED
            out.settle.append(Settle(row=row, reason=reason))
    return out


def close_out(plan: Plan, store: Store, delivery: Delivery) -> None:
    """Settle the sessions that cannot resume (with their CDR) and cancel the ones that never
    charged; the resumed ones are the controller's (they go through the table)."""
    for settle in plan.settle:
        row = settle.row
        end = row.meter_last_at or row.updated_at
        meter_stop = row.meter_last_kwh if row.meter_last_kwh is not None else 0.0
        delivery.settle(row, settle.reason, end, meter_stop)
        log.warning(
            "session %s was charging when the agent stopped: ended (%s)",
            row.session_id,
            settle.reason.value,
        )
    for row in plan.cancel:
        store.end_session(row.session_id, end=row.updated_at, reason="restart")
        delivery.session_event(
            row.session_id, row.evse_id, SessionEventKind.STOPPED, "restart", offline=row.offline
        )
        log.warning(
            "session %s was waiting for a car when the agent stopped: cancelled", row.session_id
        )
