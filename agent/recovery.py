"""Start-up recovery: what becomes of the sessions the store still holds open.

Charging, same boot, car still plugged, EVSE available: the session resumes (same id, relay
closed again, one CDR for the whole session). Charging but the car is gone, or the station lost
power (the boot id changed): it ends at its last committed time and meter reading, with a CDR.
A session that never charged is cancelled. A session the station stopped while its store was
failing (:class:`InterruptedSessions`) is settled, never resumed. :func:`plan` is pure; the
controller carries it out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.delivery import Delivery
from agent.messages import TOKEN_ADAPTER, SessionEventKind, StopReason, token_key
from agent.metering import SignedMetering
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
    rows: Iterable[SessionRow],
    *,
    boot_id: str | None,
    can_resume: Callable[[str], bool],
    interrupted: frozenset[str] = frozenset(),
    reset: StopReason | None = None,
) -> Plan:
    """``can_resume(evse_id)``: the EVSE exists, is available, idle and has a car plugged;
    ``interrupted``: sessions the station stopped while it could not write that down;
    ``reset``: a backend reset committed before this restart: its sessions end with it."""
    out = Plan()
    for row in rows:
        power_loss = bool(boot_id and row.boot_id and row.boot_id != boot_id)
        if row.state != "charging":
            out.cancel.append(row)
        elif row.session_id in interrupted:
            out.settle.append(Settle(row=row, reason=StopReason.FAULT))
        elif reset is not None:
            out.settle.append(Settle(row=row, reason=reset))
        elif not power_loss and can_resume(row.evse_id):
            out.resume.append((row.evse_id, session_info(row)))
        else:
            reason = StopReason.POWER_LOSS if power_loss else StopReason.EV_DISCONNECTED
            out.settle.append(Settle(row=row, reason=reason))
    return out


class InterruptedSessions:
    """Sessions stopped while the store could not record it (disk full, I/O error), noted in
    the runtime directory (a tmpfs under systemd, not the full disk) so that a restart settles
    them instead of resuming them. A reboot clears it; a power cut settles them anyway."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, session_ids: Iterable[str]) -> None:
        ids = sorted(self.read() | set(session_ids))
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(ids))
            os.replace(tmp, self.path)
        except OSError as err:
            log.critical("cannot note the interrupted sessions in %s: %s", self.path, err)

    def read(self) -> frozenset[str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return frozenset()
        except (OSError, ValueError) as err:
            log.error("%s unreadable (%s): ignored", self.path, err)
            return frozenset()
        return frozenset(str(x) for x in data) if isinstance(data, list) else frozenset()

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def close_out(
    plan: Plan, store: Store, delivery: Delivery, metering: SignedMetering | None = None
) -> None:
    """Settle the sessions that cannot resume (with their CDR) and cancel the ones that never
    charged; the resumed ones are the controller's (they go through the table). A signing
    meter is asked for the end record of a settled session (its register has not moved since
    the relays opened)."""
    for settle in plan.settle:
        # it ends at a stored wall time that has no monotonic twin: its CDR is checked for
        # inverted times only (clamped and flagged), not against the monotonic marks
        row = replace(settle.row, mono_start=None, mono_charging_start=None)
        end = row.meter_last_at or row.updated_at
        meter_stop = row.meter_last_kwh if row.meter_last_kwh is not None else 0.0
        signed = None if metering is None else metering.end(row.session_id, row.evse_id, row.token)
        delivery.settle(row, settle.reason, end, meter_stop, signed=signed)
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
