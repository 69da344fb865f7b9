"""OCPP 2.0.1 as a dialect of the OCPP adapter (:class:`agent.backend_ocpp.OcppBackend`).

EVSE n of the configuration is OCPP EVSE n with connector 1. A session is one transaction whose
``transactionId`` is our session id (in 2.0.1 the station names its transactions, so an offline
start needs no id from the CSMS). ``started`` -> TransactionEvent Started (seqNo 0, the meter
at the start as ``Transaction.Begin``), meter samples -> Updated, ``stopped`` -> Ended (the
meter as ``Transaction.End``, the stop reason). seqNo is committed before each message goes out;
``offline`` is true for a session the station authorised on its own and for any event generated
before the current connection came up. A signing meter's records ride on the energy sample:
the start record on Started's ``Transaction.Begin``, the end record (committed with the CDR and
the ``stopped`` event) on Ended's ``Transaction.End`` (:mod:`agent.ocpp_signed`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ocpp.v201 import call

from agent.clock import rfc3339
from agent.messages import AuthStatus, Cdr, EvseState, SessionEvent, SessionEventKind, StatusMessage
from agent.ocpp201_cp import StationCp201
from agent.ocpp_map import ENERGY, energy_wh, id_tag
from agent.ocpp_signed import signed_meter_value_201
from agent.ocpp_state import TxRow
from agent.ocpp_tx import masked, settled

if TYPE_CHECKING:
    from agent.backend_ocpp import OcppBackend

log = logging.getLogger(__name__)

STATUS_201: dict[EvseState, str] = {
    EvseState.AVAILABLE: "Available",
    EvseState.PREPARING: "Occupied",
    EvseState.AUTHORIZING: "Occupied",
    EvseState.AUTHORIZED: "Occupied",
    EvseState.CHARGING: "Occupied",
    EvseState.FINISHING: "Occupied",
    EvseState.UNAVAILABLE: "Unavailable",
    EvseState.FAULTED: "Faulted",
}
# our stop reason -> (TransactionEvent Ended triggerReason, stoppedReason)
STOP_201: dict[str, tuple[str, str]] = {
    "local": ("StopAuthorized", "Local"),
    "remote": ("RemoteStop", "Remote"),
    "ev_disconnected": ("EVCommunicationLost", "EVDisconnected"),
    "power_loss": ("AbnormalCondition", "PowerLoss"),
    "deauthorized": ("Deauthorized", "DeAuthorized"),
    "soft_reset": ("ResetCommand", "ImmediateReset"),
    "hard_reset": ("ResetCommand", "ImmediateReset"),
    "fault": ("AbnormalCondition", "Other"),
    "other": ("AbnormalCondition", "Other"),
}
AUTH_201: dict[str, AuthStatus] = {
    "Accepted": AuthStatus.ACCEPTED,
    "Blocked": AuthStatus.BLOCKED,
    "Expired": AuthStatus.EXPIRED,
    "Unknown": AuthStatus.UNKNOWN,
}
CONTEXT_TRIGGER = {
    "Sample.Periodic": "MeterValuePeriodic",
    "Sample.Clock": "MeterValueClock",
    "Trigger": "Trigger",
}


def id_token_201(token: dict[str, Any]) -> dict[str, str]:
    """An RFID UID as an ``ISO14443`` idToken, a contract id as ``eMAID``."""
    kind = "ISO14443" if token.get("type") == "rfid" else "eMAID"
    return {"idToken": id_tag(token), "type": kind}


def meter_value_201(
    kwh: float | None, at: datetime, context: str, signed: dict[str, str] | None = None
) -> dict[str, Any]:
    """The energy register in Wh; ``signed``: its ``signedMeterValue`` (a meter's record)."""
    sample: dict[str, Any] = {
        "value": energy_wh(kwh),
        "context": context,
        "measurand": ENERGY,
        "location": "Outlet",
        "unitOfMeasure": {"unit": "Wh"},
    }
    if signed is not None:
        sample["signedMeterValue"] = signed
    return {"timestamp": rfc3339(at), "sampledValue": [sample]}


class Dialect201:
    subprotocol = "ocpp2.0.1"
    triggers = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues")

    def __init__(self, backend: OcppBackend) -> None:
        self._b = backend

    def make_cp(self, ws: Any) -> Any:
        return StationCp201(self._b.station_id, ws, self._b, self._b.ocpp.call_timeout_s)

    async def boot(self, cp: Any) -> tuple[str, int]:
        ocpp = self._b.ocpp
        station = {
            "model": ocpp.model,
            "vendorName": ocpp.vendor,
            "serialNumber": self._b.station_id[:25],
            "firmwareVersion": self._b.version,
        }
        res = await cp.call(
            call.BootNotification(charging_station=station, reason="PowerUp"), suppress=False
        )
        return str(res.status), int(res.interval)

    async def heartbeat(self, cp: Any) -> None:
        await cp.call(call.Heartbeat(), suppress=False)

    def statuses(self, status: StatusMessage) -> dict[int, tuple[str, ...]]:
        wanted: dict[int, tuple[str, ...]] = {}
        for evse in status.evses:
            n = self._b.connector_or_none(evse.evse_id)
            if n is not None:
                wanted[n] = (STATUS_201[evse.state],)
        return wanted

    async def send_status(self, cp: Any, connector: int, value: tuple[str, ...]) -> None:
        await cp.call(
            call.StatusNotification(
                timestamp=rfc3339(self._b.clock.now()),
                connector_status=value[0],
                evse_id=connector,
                connector_id=1,
            ),
            suppress=False,
        )

    async def authorize(self, cp: Any, token: dict[str, Any]) -> tuple[str, str | None]:
        res = await cp.call(call.Authorize(id_token=id_token_201(token)), suppress=False)
        info = res.id_token_info or {}
        status = AUTH_201.get(str(info.get("status")), AuthStatus.REJECTED)
        return status.value, info.get("cache_expiry_date_time")

    def cdr_settled(self, cdr: Cdr) -> bool:
        return settled(self._b.state, cdr)

    def _offline(self, event: SessionEvent) -> bool:
        up = self._b.up_since
        return bool(event.offline) or up is None or event.ts < up

    async def message(self, cp: Any, event: SessionEvent) -> None:
        if event.event is SessionEventKind.STARTED:
            await self._started(cp, event)
        elif event.event is SessionEventKind.STOPPED:
            await self._ended(cp, event)

    async def _started(self, cp: Any, event: SessionEvent) -> None:
        state, sid = self._b.state, event.session_id
        if state.tx(sid) is not None:
            return  # answered before: not sent twice
        facts = self._b.view.session(sid)
        if facts is None:
            log.error("session %s is not in the store: no TransactionEvent", sid)
            return
        n = self._b.connector_of(event.evse_id)
        remote = facts.token.get("type") == "remote"
        begin = meter_value_201(
            facts.meter_start_kwh, event.ts, "Transaction.Begin", self._signed(sid, "start")
        )
        res = await cp.call(
            call.TransactionEvent(
                event_type="Started",
                timestamp=rfc3339(event.ts),
                trigger_reason="RemoteStart" if remote else "Authorized",
                seq_no=0,
                transaction_info={"transactionId": sid, "chargingState": "Charging"},
                meter_value=[begin],
                offline=self._offline(event),
                evse={"id": n, "connectorId": 1},
                id_token=id_token_201(facts.token),
            ),
            suppress=False,
        )
        status = (res.id_token_info or {}).get("status")  # optional in 2.0.1: none = fine
        refused = None if status in (None, "Accepted") else str(status)
        state.started(sid, sid, n, self._b.clock.now(), refused)
        log.info("transaction %s started (idToken %s: %s)", sid, masked(facts.token), status)
        if refused is not None:  # TxCtrlr.StopTxOnInvalidId (true): the station stops it
            self._b.deauthorize(sid, refused)

    async def _ended(self, cp: Any, event: SessionEvent) -> None:
        state, sid = self._b.state, event.session_id
        tx = state.tx(sid)
        if tx is None and (started := self._b.view.started_event(sid)) is not None:
            await self._started(cp, started)  # it charged, but OCPP never heard: start first
            tx = state.tx(sid)
        if tx is None or tx.stopped:
            return
        facts = self._b.view.session(sid)
        meter = None if facts is None else (facts.meter_last_kwh or facts.meter_start_kwh)
        trigger, reason = STOP_201.get(event.reason or "other", STOP_201["other"])
        end = meter_value_201(meter, event.ts, "Transaction.End", self._signed(sid, "stop"))
        await cp.call(
            call.TransactionEvent(
                event_type="Ended",
                timestamp=rfc3339(event.ts),
                trigger_reason=trigger,
                seq_no=state.take_seq(sid),
                transaction_info={
                    "transactionId": sid,
                    "chargingState": "Idle",
                    "stoppedReason": reason,
                },
                meter_value=[end],
                offline=self._offline(event),
                evse={"id": tx.connector, "connectorId": 1},
            ),
            suppress=False,
        )
        state.stopped(sid)
        log.info("transaction %s ended (%s)", sid, reason)

    def _signed(self, session_id: str, which: str) -> dict[str, str] | None:
        """The ``signedMeterValue`` of the session's ``start`` or ``stop`` record, if any."""
        signed = self._b.view.signed(session_id)
        record = None if signed is None else getattr(signed, which)
        if signed is None or record is None:
            return None
        return signed_meter_value_201(record, signed.public_key)

    async def meter_values(
        self, cp: Any, tx: TxRow, kwh: float, at: datetime, context: str
    ) -> None:
        await cp.call(
            call.TransactionEvent(
                event_type="Updated",
                timestamp=rfc3339(at),
                trigger_reason=CONTEXT_TRIGGER.get(context, "Trigger"),
                seq_no=self._b.state.take_seq(tx.session_id),
                transaction_info={"transactionId": tx.session_id, "chargingState": "Charging"},
                meter_value=[meter_value_201(kwh, at, context)],
                evse={"id": tx.connector, "connectorId": 1},
            ),
            suppress=False,
        )
