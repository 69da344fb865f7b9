"""Identifiers at a charging station: station id, EvseID, OperatorID, RFID UID, contract id.

Defined in :mod:`drivers.identifiers` (the drivers import nothing from the agent); everything
public is re-exported here.
"""

from __future__ import annotations

from drivers.identifiers import (
    EVSE_ID_RE,
    OPERATOR_ID_RE,
    STATION_ID_RE,
    ContractId,
    din_check_char,
    is_evse_id,
    is_operator_id,
    is_station_id,
    iso_check_char,
    normalize_uid,
    parse_contract_id,
    try_parse_contract_id,
)

__all__ = [
    "EVSE_ID_RE",
    "OPERATOR_ID_RE",
    "STATION_ID_RE",
    "ContractId",
    "din_check_char",
    "is_evse_id",
    "is_operator_id",
    "is_station_id",
    "iso_check_char",
    "normalize_uid",
    "parse_contract_id",
    "try_parse_contract_id",
]
