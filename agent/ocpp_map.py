"""Pure mappings between the station's words and OCPP 1.6J's (tables in the README).

No I/O here: the adapter (:mod:`agent.backend_ocpp`) calls these, the tests check them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from agent.clock import rfc3339
from agent.messages import (
    UID_PATTERN,
    AuthStatus,
    EvseState,
    EvseStatus,
    LocalListEntry,
    StopReason,
    normalize_contract_id,
)

ID_TAG_MAX = 20  # OCPP 1.6 IdToken: CiString20Type
ENERGY = "Energy.Active.Import.Register"

# our EVSE state -> 1.6 ChargePointStatus (charging with the relay open: SuspendedEVSE)
STATUS_16: dict[EvseState, str] = {
    EvseState.AVAILABLE: "Available",
    EvseState.PREPARING: "Preparing",
    EvseState.AUTHORIZING: "Preparing",
    EvseState.AUTHORIZED: "Preparing",
    EvseState.CHARGING: "Charging",
    EvseState.FINISHING: "Finishing",
    EvseState.UNAVAILABLE: "Unavailable",
    EvseState.FAULTED: "Faulted",
}

# a fault's words -> 1.6 ChargePointErrorCode (first match; otherwise InternalError)
FAULT_CODES_16: tuple[tuple[str, str], ...] = (
    ("relay", "PowerSwitchFailure"),
    ("contactor", "PowerSwitchFailure"),
    ("weld", "PowerSwitchFailure"),
    ("meter", "PowerMeterFailure"),
    ("reader", "ReaderFailure"),
    ("rfid", "ReaderFailure"),
    ("temperature", "HighTemperature"),
    ("overcurrent", "OverCurrentFailure"),
    ("ground", "GroundFailure"),
)

STOP_REASON_16: dict[StopReason, str] = {
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.EV_DISCONNECTED: "EVDisconnected",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.DEAUTHORIZED: "DeAuthorized",
    StopReason.SOFT_RESET: "SoftReset",
    StopReason.HARD_RESET: "HardReset",
    StopReason.FAULT: "Other",
    StopReason.OTHER: "Other",
}

AUTH_STATUS_16: dict[str, AuthStatus] = {
    "Accepted": AuthStatus.ACCEPTED,
    "Blocked": AuthStatus.BLOCKED,
    "Expired": AuthStatus.EXPIRED,
    "Invalid": AuthStatus.REJECTED,
    "ConcurrentTx": AuthStatus.REJECTED,
}

LIST_STATUS_16: dict[str, AuthStatus] = AUTH_STATUS_16

_UID = re.compile(UID_PATTERN)


def connector_status_16(evse: EvseStatus) -> tuple[str, str, str | None]:
    """(status, errorCode, info) of one EVSE for a StatusNotification."""
    status = STATUS_16[evse.state]
    if evse.state is EvseState.CHARGING and not evse.relay_closed:
        status = "SuspendedEVSE"
    if evse.state is not EvseState.FAULTED:
        return status, "NoError", None
    fault = (evse.fault or "fault").lower()
    code = next((c for word, c in FAULT_CODES_16 if word in fault), "InternalError")
    return status, code, (evse.fault or "fault")[:50]


def stop_reason_16(reason: str | None) -> str:
    try:
        return STOP_REASON_16[StopReason(reason or "other")]
    except ValueError:
        return "Other"


def id_tag(token: dict[str, Any]) -> str:
    """The idTag of a stored token: an RFID UID in upper-case hex, a contract id as given
    (without separators when it would not fit in 20 characters)."""
    if token.get("type") == "rfid":
        return str(token["uid"]).upper()
    contract = str(token.get("contract_id", ""))
    if len(contract) <= ID_TAG_MAX:
        return contract
    return normalize_contract_id(contract)[:ID_TAG_MAX]


def auth_status(status: str) -> AuthStatus:
    return AUTH_STATUS_16.get(status, AuthStatus.REJECTED)


def list_entry(
    tag: str, status: str, expiry: datetime | None, parent: str | None
) -> LocalListEntry:
    """A SendLocalList entry as an entry of the station's local list: a hex UID as a card,
    anything else as a contract id (eMAID)."""
    upper = tag.upper()
    mapped = LIST_STATUS_16.get(status, AuthStatus.REJECTED)
    if _UID.match(upper):
        return LocalListEntry(uid=upper, status=mapped, contract_id=parent, expires_at=expiry)
    return LocalListEntry(emaid=tag, status=mapped, contract_id=parent, expires_at=expiry)


def energy_wh(kwh: float | None) -> int:
    return round((kwh or 0.0) * 1000)


def sampled_energy(kwh: float, at: datetime, context: str) -> dict[str, Any]:
    """One MeterValue with the energy register in Wh (1.6 MeterValue / SampledValue)."""
    return {
        "timestamp": rfc3339(at),
        "sampledValue": [
            {
                "value": str(energy_wh(kwh)),
                "context": context,
                "measurand": ENERGY,
                "unit": "Wh",
                "location": "Outlet",
            }
        ],
    }
