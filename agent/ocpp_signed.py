"""Signed meter records (OCMF) in OCPP messages (pure; tables in the README).

The records come from the station's store (:meth:`agent.ocpp_state.StationView.signed`), as
committed by :mod:`agent.metering`: the start record with the charging start, the end record
with the CDR and the ``stopped`` event, so a stop message always finds its end record. They go
out exactly as stored; the signature covers their bytes.

- 1.6: a ``SampledValue`` with ``format=SignedData`` whose ``value`` is the whole record (the
  schema sets no length limit), context ``Transaction.Begin`` or ``Transaction.End``.
- 2.0.1: ``signedMeterValue`` on the energy sample of TransactionEvent Started (``start``) and
  Ended (``stop``): ``signedMeterData`` is the record base64-encoded and ``publicKey`` the DER
  key base64-encoded (the schema says "Base64 encoded"), ``encodingMethod`` ``OCMF``,
  ``signingMethod`` the record's ``SA``. A field over the schema's limit is left out (logged);
  the CDR still has the record.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import datetime
from typing import Any

from agent.clock import rfc3339
from agent.errors import DriverError
from agent.ocpp_map import ENERGY
from drivers.meter.ocmf import SIGNATURE_ALGORITHM, split

log = logging.getLogger(__name__)

SIGNED_DATA = "SignedData"
ENCODING_OCMF = "OCMF"
# TransactionEventRequest.json, SignedMeterValueType
MAX_SIGNED_DATA_201 = 2500
MAX_METHOD_201 = 50
MAX_PUBLIC_KEY_201 = 2500


def signed_sample_16(record: str, context: str) -> dict[str, Any]:
    """A 1.6 SampledValue carrying one record (``value`` is the record, unchanged)."""
    return {
        "value": record,
        "context": context,
        "format": SIGNED_DATA,
        "measurand": ENERGY,
        "location": "Outlet",
        "unit": "Wh",
    }


def signed_meter_value_16(record: str, at: datetime, context: str) -> dict[str, Any]:
    """A 1.6 MeterValue with one signed sample."""
    return {"timestamp": rfc3339(at), "sampledValue": [signed_sample_16(record, context)]}


def signing_method(record: str) -> str:
    """The record's signature algorithm (``SA``; OCMF's default when it is absent)."""
    try:
        signature = json.loads(split(record)[1])
    except (DriverError, ValueError):
        return SIGNATURE_ALGORITHM
    sa = signature.get("SA") if isinstance(signature, dict) else None
    return str(sa) if sa else SIGNATURE_ALGORITHM


def signed_meter_value_201(record: str, public_key_hex: str | None) -> dict[str, str] | None:
    """2.0.1 ``SignedMeterValueType`` of one record; None (logged) when it cannot fit."""
    data = base64.b64encode(record.encode()).decode()
    try:
        key = base64.b64encode(bytes.fromhex(public_key_hex or "")).decode()
    except (ValueError, binascii.Error):
        log.error("signed meter value: the stored public key is not hex; sent without it")
        key = ""
    method = signing_method(record)
    if len(data) > MAX_SIGNED_DATA_201 or len(method) > MAX_METHOD_201:
        log.error(
            "signed meter value: the record (%d characters in base64) does not fit OCPP 2.0.1's"
            " signedMeterData (at most %d); not sent (the CDR has it)",
            len(data),
            MAX_SIGNED_DATA_201,
        )
        return None
    if len(key) > MAX_PUBLIC_KEY_201:
        log.error("signed meter value: the public key is too long for OCPP 2.0.1; sent without")
        key = ""
    return {
        "signedMeterData": data,
        "signingMethod": method,
        "encodingMethod": ENCODING_OCMF,
        "publicKey": key,
    }
