"""OCPP 1.6J calls from the CSMS, answered on behalf of the station.

Each handler turns a CSMS call into what the station already understands (a command of the
MQTT contract's kinds: remote start/stop, availability, local list) and answers with the
station's verdict, or reads what it needs from the adapter (configuration keys, the local
list version). A call the station cannot serve gets a CALLERROR: the ``ocpp`` package answers
unknown actions (NotSupported), actions without a handler here (NotImplemented) and payloads
against the schema (FormationViolation, ...); handlers raise PropertyConstraintViolation for a
connector this station does not have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ocpp.charge_point import ChargePoint as BaseChargePoint
from ocpp.exceptions import PropertyConstraintViolationError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result

from agent.backend import ResetKind
from agent.messages import (
    AnyCommand,
    CommandResponse,
    CommandStatus,
    LocalListEntry,
    RemoteStart,
    RemoteStop,
    SetAvailability,
    UpdateLocalList,
)
from agent.ocpp_link import FrameLog
from agent.ocpp_map import list_entry
from agent.ocpp_profiles import ChargingProfiles

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
TRIGGERS = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues")


def handles(action: str) -> Callable[[F], F]:
    decorator: Callable[[F], F] = on(action)
    return decorator


class Station(Protocol):
    """What the handlers need from the adapter (:class:`agent.backend_ocpp.OcppBackend`)."""

    def evse_of(self, connector: int) -> str | None: ...

    def evse_ids(self) -> list[str]: ...

    async def run_command(self, command: AnyCommand, action: str) -> CommandResponse | None: ...

    def session_of_transaction(self, transaction_id: int) -> str | None: ...

    def local_list_version(self) -> int: ...

    def configuration(self, keys: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]: ...

    def change_configuration(self, key: str, value: str) -> str: ...

    def trigger(self, message: str, connector: int | None) -> None: ...

    def admit(self, raw: str) -> bool: ...

    async def run_reset(self, kind: ResetKind, call_id: str) -> bool: ...

    def transactions_running(self) -> bool: ...

    @property
    def profiles(self) -> ChargingProfiles: ...


def _accepted(answer: CommandResponse | None) -> bool:
    return answer is not None and answer.status is CommandStatus.ACCEPTED


class StationSide(BaseChargePoint):  # type: ignore[misc]
    """What the charge point of either version shares: the station behind it, the frame log,
    the inbound rate limit (``class StationCp16(StationSide, ChargePoint)``)."""

    def __init__(self, cp_id: str, connection: Any, station: Station, timeout: float) -> None:
        super().__init__(
            cp_id,
            connection,
            response_timeout=timeout,
            logger=FrameLog(logging.getLogger("agent.ocpp.frames"), cp_id),
        )
        self._station = station

    async def route_message(self, raw_msg: str) -> None:
        """A CSMS call over the inbound rate limit is dropped before it is parsed."""
        if self._station.admit(raw_msg):
            await super().route_message(raw_msg)


class StationCp16(StationSide, ChargePoint):  # type: ignore[misc]
    def _evse(self, connector: int) -> str:
        evse = self._station.evse_of(connector)
        if evse is None:
            raise PropertyConstraintViolationError(
                details={"cause": f"connectorId {connector}: this station has no such connector"}
            )
        return evse

    @handles("RemoteStartTransaction")
    async def on_remote_start(
        self, id_tag: str, call_unique_id: str, connector_id: int | None = None, **_: Any
    ) -> call_result.RemoteStartTransaction:
        if connector_id is None:
            evses = self._station.evse_ids()
            if len(evses) != 1:
                log.warning(
                    "RemoteStartTransaction without connectorId refused (%d EVSEs)", len(evses)
                )
                return call_result.RemoteStartTransaction(status="Rejected")
            evse = evses[0]
        else:
            evse = self._evse(connector_id)
        cmd = RemoteStart(
            v=1,
            command="remote_start",
            command_id=call_unique_id,
            evse_id=evse,
            contract_id=id_tag,
        )
        answer = await self._station.run_command(cmd, "RemoteStartTransaction")
        return call_result.RemoteStartTransaction(
            status="Accepted" if _accepted(answer) else "Rejected"
        )

    @handles("RemoteStopTransaction")
    async def on_remote_stop(
        self, transaction_id: int, call_unique_id: str
    ) -> call_result.RemoteStopTransaction:
        session_id = self._station.session_of_transaction(transaction_id)
        if session_id is None:
            log.warning("RemoteStopTransaction for unknown transaction %s", transaction_id)
            return call_result.RemoteStopTransaction(status="Rejected")
        cmd = RemoteStop(
            v=1, command="remote_stop", command_id=call_unique_id, session_id=session_id
        )
        answer = await self._station.run_command(cmd, "RemoteStopTransaction")
        return call_result.RemoteStopTransaction(
            status="Accepted" if _accepted(answer) else "Rejected"
        )

    @handles("ChangeAvailability")
    async def on_change_availability(
        self, connector_id: int, type: str, call_unique_id: str
    ) -> call_result.ChangeAvailability:
        evses = self._station.evse_ids() if connector_id == 0 else [self._evse(connector_id)]
        ok = True
        for n, evse in enumerate(evses):
            cmd = SetAvailability(
                v=1,
                command="set_availability",
                command_id=f"{call_unique_id}:{n}",
                evse_id=evse,
                available=type == "Operative",
            )
            ok = _accepted(await self._station.run_command(cmd, "ChangeAvailability")) and ok
        return call_result.ChangeAvailability(status="Accepted" if ok else "Rejected")

    @handles("SendLocalList")
    async def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        call_unique_id: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
    ) -> call_result.SendLocalList:
        if list_version < 1:
            return call_result.SendLocalList(status="Failed")
        entries = [_entry(e) for e in local_authorization_list or []]
        cmd = UpdateLocalList(
            v=1,
            command="update_local_list",
            command_id=call_unique_id,
            version=list_version,
            mode="full" if update_type == "Full" else "differential",
            entries=entries,
        )
        answer = await self._station.run_command(cmd, "SendLocalList")
        if _accepted(answer):
            return call_result.SendLocalList(status="Accepted")
        if answer is not None and "version" in (answer.reason or ""):
            return call_result.SendLocalList(status="VersionMismatch")
        return call_result.SendLocalList(status="Failed")

    @handles("GetLocalListVersion")
    def on_get_local_list_version(self) -> call_result.GetLocalListVersion:
        return call_result.GetLocalListVersion(list_version=self._station.local_list_version())

    @handles("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        known, unknown = self._station.configuration(key)
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @handles("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(
            status=self._station.change_configuration(key, value)
        )

    @handles("TriggerMessage")
    def on_trigger_message(
        self, requested_message: str, connector_id: int | None = None
    ) -> call_result.TriggerMessage:
        if connector_id is not None and connector_id != 0:
            self._evse(connector_id)
        if requested_message not in TRIGGERS:
            return call_result.TriggerMessage(status="NotImplemented")
        self._station.trigger(requested_message, connector_id)
        return call_result.TriggerMessage(status="Accepted")

    @handles("SetChargingProfile")
    async def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> call_result.SetChargingProfile:
        """Onto the station's current limits (:mod:`agent.ocpp_profiles`), committed first."""
        if connector_id != 0:
            self._evse(connector_id)
        status = await self._station.profiles.set(connector_id, cs_charging_profiles)
        return call_result.SetChargingProfile(status=status)

    @handles("ClearChargingProfile")
    async def on_clear_charging_profile(self, **criteria: Any) -> call_result.ClearChargingProfile:
        criteria.pop("call_unique_id", None)
        status = await self._station.profiles.clear(criteria)
        return call_result.ClearChargingProfile(status=status)

    @handles("Reset")
    async def on_reset(self, type: str, call_unique_id: str) -> call_result.Reset:
        """Accepted once the station committed the reset (:mod:`agent.reset`): its sessions
        end (SoftReset / HardReset), then the agent exits and systemd restarts it."""
        kind = ResetKind.SOFT if type == "Soft" else ResetKind.HARD
        ok = await self._station.run_reset(kind, call_unique_id)
        return call_result.Reset(status="Accepted" if ok else "Rejected")

    @handles("UnlockConnector")
    def on_unlock_connector(self, connector_id: int) -> call_result.UnlockConnector:
        self._evse(connector_id)
        return call_result.UnlockConnector(status="NotSupported")  # no lock on our sockets

    @handles("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        log.info("DataTransfer from the CSMS (vendor %r) rejected", vendor_id)
        return call_result.DataTransfer(status="Rejected")


def _entry(item: dict[str, Any]) -> LocalListEntry:
    """A SendLocalList entry (snake_case keys, as the ``ocpp`` package hands them over); one
    without idTagInfo (a removal in a differential update) is stored as refused."""
    info = item.get("id_tag_info") or {}
    expiry = info.get("expiry_date")
    return list_entry(
        item["id_tag"],
        info.get("status", "Invalid"),
        datetime.fromisoformat(expiry) if expiry else None,
        info.get("parent_id_tag"),
    )
