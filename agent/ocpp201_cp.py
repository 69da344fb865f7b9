"""OCPP 2.0.1 calls from the CSMS, answered on behalf of the station (see :mod:`ocpp16_cp`:
same commands, same verdicts; the ``ocpp`` package answers what has no handler here with
NotImplemented, what is not 2.0.1 with NotSupported, and schema violations)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from ocpp.exceptions import PropertyConstraintViolationError
from ocpp.v201 import ChargePoint, call_result
from pydantic import ValidationError

from agent.backend import ResetKind
from agent.messages import (
    CommandResponse,
    CommandStatus,
    LocalListEntry,
    RemoteStart,
    RemoteStop,
    SetAvailability,
    UpdateLocalList,
)
from agent.ocpp16_cp import TRIGGERS, StationSide, handles
from agent.ocpp_map import list_entry
from agent.ocpp_profiles import PURPOSES_201, from_201

log = logging.getLogger(__name__)

# (component, variable) -> the station's configuration key (agent.ocpp_config)
VARIABLES: dict[tuple[str, str], str] = {
    ("OCPPCommCtrlr", "HeartbeatInterval"): "HeartbeatInterval",
    ("OCPPCommCtrlr", "WebSocketPingInterval"): "WebSocketPingInterval",
    ("SampledDataCtrlr", "TxUpdatedInterval"): "MeterValueSampleInterval",
    ("AlignedDataCtrlr", "Interval"): "ClockAlignedDataInterval",
    ("AuthCtrlr", "LocalAuthorizeOffline"): "LocalAuthorizeOffline",
    ("AuthCtrlr", "LocalPreAuthorize"): "LocalPreAuthorize",
    ("AuthCtrlr", "OfflineTxForUnknownIdEnabled"): "AllowOfflineTxForUnknownId",
    ("AuthCtrlr", "AuthorizeRemoteStart"): "AuthorizeRemoteTxRequests",
    ("LocalAuthListCtrlr", "Enabled"): "LocalAuthListEnabled",
    ("TxCtrlr", "StopTxOnEVSideDisconnect"): "StopTransactionOnEVSideDisconnect",
    ("TxCtrlr", "EVConnectionTimeOut"): "ConnectionTimeOut",
    ("TxCtrlr", "StopTxOnInvalidId"): "StopTransactionOnInvalidId",
}
SET_STATUS = {"Accepted": "Accepted", "Rejected": "Rejected", "NotSupported": "UnknownVariable"}


def _accepted(answer: CommandResponse | None) -> bool:
    return answer is not None and answer.status is CommandStatus.ACCEPTED


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return (item["component"]["name"], item["variable"]["name"])


class StationCp201(StationSide, ChargePoint):  # type: ignore[misc]
    def _evse(self, n: int) -> str:
        evse = self._station.evse_of(n)
        if evse is None:
            raise PropertyConstraintViolationError(
                details={"cause": f"evse {n}: this station has no such EVSE"}
            )
        return evse

    @handles("RequestStartTransaction")
    async def on_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, call_unique_id: str, **kw: Any
    ) -> call_result.RequestStartTransaction:
        n = kw.get("evse_id")
        evses = self._station.evse_ids()
        if n is None and len(evses) != 1:
            return call_result.RequestStartTransaction(status="Rejected")
        evse = evses[0] if n is None else self._evse(n)
        sid = str(uuid.uuid4())  # our session id is the OCPP transactionId
        cmd = RemoteStart(
            v=1,
            command="remote_start",
            command_id=call_unique_id,
            evse_id=evse,
            contract_id=id_token["id_token"],
            session_id=sid,
        )
        ok = _accepted(await self._station.run_command(cmd, "RequestStartTransaction"))
        return call_result.RequestStartTransaction(status="Accepted" if ok else "Rejected")

    @handles("RequestStopTransaction")
    async def on_request_stop(
        self, transaction_id: str, call_unique_id: str, **_: Any
    ) -> call_result.RequestStopTransaction:
        try:
            cmd = RemoteStop(
                v=1, command="remote_stop", command_id=call_unique_id, session_id=transaction_id
            )
        except ValidationError:
            return call_result.RequestStopTransaction(status="Rejected")
        ok = _accepted(await self._station.run_command(cmd, "RequestStopTransaction"))
        return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected")

    @handles("ChangeAvailability")
    async def on_change_availability(
        self, operational_status: str, call_unique_id: str, evse: dict[str, Any] | None = None
    ) -> call_result.ChangeAvailability:
        targets = self._station.evse_ids() if not evse else [self._evse(evse["id"])]
        ok = True
        for n, evse_id in enumerate(targets):
            cmd = SetAvailability(
                v=1,
                command="set_availability",
                command_id=f"{call_unique_id}:{n}",
                evse_id=evse_id,
                available=operational_status == "Operative",
            )
            ok = _accepted(await self._station.run_command(cmd, "ChangeAvailability")) and ok
        return call_result.ChangeAvailability(status="Accepted" if ok else "Rejected")

    @handles("SendLocalList")
    async def on_send_local_list(
        self,
        version_number: int,
        update_type: str,
        call_unique_id: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
    ) -> call_result.SendLocalList:
        if version_number < 1:
            return call_result.SendLocalList(status="Failed")
        cmd = UpdateLocalList(
            v=1,
            command="update_local_list",
            command_id=call_unique_id,
            version=version_number,
            mode="full" if update_type == "Full" else "differential",
            entries=[_entry(e) for e in local_authorization_list or []],
        )
        answer = await self._station.run_command(cmd, "SendLocalList")
        if _accepted(answer):
            return call_result.SendLocalList(status="Accepted")
        if answer is not None and "version" in (answer.reason or ""):
            return call_result.SendLocalList(status="VersionMismatch")
        return call_result.SendLocalList(status="Failed")

    @handles("GetLocalListVersion")
    def on_get_local_list_version(self) -> call_result.GetLocalListVersion:
        return call_result.GetLocalListVersion(version_number=self._station.local_list_version())

    @handles("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]]) -> Any:
        out = []
        for item in get_variable_data:
            result = {"component": item["component"], "variable": item["variable"]}
            key = VARIABLES.get(_key(item))
            known = self._station.configuration([key])[0] if key else []
            if not known:
                result["attributeStatus"] = "UnknownVariable"
            else:
                result.update(attributeStatus="Accepted", attributeValue=known[0]["value"])
            out.append(result)
        return call_result.GetVariables(get_variable_result=out)

    @handles("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]]) -> Any:
        out = []
        for item in set_variable_data:
            key = VARIABLES.get(_key(item))
            verdict = "NotSupported"
            if key is not None:
                verdict = self._station.change_configuration(key, str(item["attribute_value"]))
            out.append(
                {
                    "attributeStatus": SET_STATUS[verdict],
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return call_result.SetVariables(set_variable_result=out)

    @handles("TriggerMessage")
    def on_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None
    ) -> call_result.TriggerMessage:
        n = None if not evse else evse["id"]
        if n is not None:
            self._evse(n)
        if requested_message not in TRIGGERS:
            return call_result.TriggerMessage(status="NotImplemented")
        self._station.trigger(requested_message, n)
        return call_result.TriggerMessage(status="Accepted")

    @handles("SetChargingProfile")
    async def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> call_result.SetChargingProfile:
        """Onto the station's current limits, as in 1.6 (:mod:`agent.ocpp_profiles`)."""
        if evse_id != 0:
            self._evse(evse_id)
        raw = from_201(charging_profile)
        if isinstance(raw, str):
            log.warning("SetChargingProfile refused: %s", raw)
            return call_result.SetChargingProfile(status="Rejected")
        status = await self._station.profiles.set(evse_id, raw)
        return call_result.SetChargingProfile(status=status)

    @handles("ClearChargingProfile")
    async def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> call_result.ClearChargingProfile:
        crit = charging_profile_criteria or {}
        purpose = crit.get("charging_profile_purpose")
        criteria = {
            "id": charging_profile_id,
            "connector_id": crit.get("evse_id"),
            "charging_profile_purpose": PURPOSES_201.get(purpose, purpose) if purpose else None,
            "stack_level": crit.get("stack_level"),
        }
        status = await self._station.profiles.clear(criteria)
        return call_result.ClearChargingProfile(status=status)

    @handles("Reset")
    async def on_reset(
        self, type: str, call_unique_id: str, evse_id: int | None = None
    ) -> call_result.Reset:
        """Immediate: running transactions end (ImmediateReset), then the agent restarts;
        OnIdle: once they have ended (Scheduled while any runs). Only the whole station."""
        if evse_id is not None:
            self._evse(evse_id)
            log.warning("Reset of EVSE %d refused: only the whole station restarts", evse_id)
            return call_result.Reset(status="Rejected")
        kind = ResetKind.ON_IDLE if type == "OnIdle" else ResetKind.HARD
        busy = kind is ResetKind.ON_IDLE and self._station.transactions_running()
        if not await self._station.run_reset(kind, call_unique_id):
            return call_result.Reset(status="Rejected")
        return call_result.Reset(status="Scheduled" if busy else "Accepted")

    @handles("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        log.info("DataTransfer from the CSMS (vendor %r) rejected", vendor_id)
        return call_result.DataTransfer(status="Rejected")


def _entry(item: dict[str, Any]) -> LocalListEntry:
    """A 2.0.1 AuthorizationData (snake_case keys, as the ``ocpp`` package hands them over)."""
    info = item.get("id_token_info") or {}
    expiry = info.get("cache_expiry_date_time")
    status = info.get("status", "Invalid")
    return list_entry(
        item["id_token"]["id_token"],
        "Invalid" if status == "Unknown" else status,
        datetime.fromisoformat(expiry) if expiry else None,
        None,
    )
