"""Signed metering: the OCMF records of signing meters, from the meter to the CDR.

At the start of charging a signing meter begins its transaction; the start record it returns
(if it signs the start separately) is committed in the same transaction as the charging start,
so it survives a restart. At the end the meter signs the end record; it is committed, byte for
byte as the meter gave it, in the same transaction as the CDR, and the CDR's
``meter_start_kwh``/``meter_stop_kwh`` are the signed values. A meter that cannot sign at the
end leaves the reason in ``signed_meter_values.error``; the CDR is sent anyway. Meters that do
not sign are left alone (their CDRs have no ``signed_meter_values``).

Where an adapter (OCPP) finds the records: :meth:`SignedMetering.stored` for a session
(``start``, ``stop``, ``public_key``, ``error``), or ``Cdr.signed_meter_values``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import DriverError, StoreError
from agent.messages import TOKEN_ADAPTER, RfidToken, SignedMeterValues
from agent.store import Store
from drivers.meter.base import Meter, SignedRecord, TransactionIdent, signing
from drivers.meter.ocmf import parse
from drivers.privacy import mask

log = logging.getLogger(__name__)

OCMF = "OCMF"


@dataclass(frozen=True, kw_only=True)
class SignedStart:
    """What the meter gave at the start: its record (None when it signs start and end
    together at the end), the public key, or why it could not sign."""

    record: SignedRecord | None = None
    public_key: str | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class SignedEnd:
    """The CDR's ``signed_meter_values`` and the signed kWh the CDR bills (None: not signed)."""

    values: SignedMeterValues
    begin_kwh: float | None = None
    end_kwh: float | None = None


def ident_for(evse_id: str, token: Mapping[str, Any], time_synced: bool) -> TransactionIdent:
    """The session's identification as it goes into a record: the token's OCMF type and its
    masked id (ASCII: meters take ASCII), the EVSE id, the clock's sync state."""
    parsed = TOKEN_ADAPTER.validate_python(dict(token))
    if isinstance(parsed, RfidToken):
        id_type, raw = "ISO14443", parsed.uid
    else:
        id_type, raw = "EMAID", parsed.contract_id
    return TransactionIdent(
        evse_id=evse_id,
        id_type=id_type,
        id_masked=mask(raw).replace("…", "..."),
        time_synced=time_synced,
    )


class SignedMetering:
    """Begin and end signed transactions and keep their records (table ``signed_values``)."""

    def __init__(
        self, store: Store, meters: Mapping[str, Meter], clock_synced: Callable[[], bool]
    ) -> None:
        self._store = store
        self._meters = meters
        self._clock_synced = clock_synced

    def signs(self, evse_id: str) -> bool:
        meter = self._meters.get(evse_id)
        return meter is not None and signing(meter) is not None

    # ---------------------------------------------------------------- start
    def begin(self, evse_id: str, token: Mapping[str, Any]) -> SignedStart | None:
        """Begin the meter's transaction (None for a meter that does not sign)."""
        meter = signing(self._meters[evse_id]) if evse_id in self._meters else None
        if meter is None:
            return None
        try:
            record = meter.begin_transaction(ident_for(evse_id, token, self._clock_synced()))
            key = meter.public_key()
        except DriverError as err:
            log.error("%s: the meter did not begin a signed transaction: %s", evse_id, err)
            return SignedStart(error=f"the meter did not sign the start: {err}")
        return SignedStart(record=record, public_key=key)

    def save_start(self, session_id: str, start: SignedStart | None) -> None:
        """Commit the start (joins the caller's unit: the charging start's transaction)."""
        if start is None:
            return
        with self._store.unit():
            self._store.db.execute(
                "INSERT INTO signed_values (session_id, format, start_record, public_key,"
                " error) VALUES (?, ?, ?, ?, ?) ON CONFLICT(session_id) DO UPDATE SET"
                " start_record=excluded.start_record, public_key=excluded.public_key,"
                " error=excluded.error",
                (
                    session_id,
                    OCMF,
                    start.record.record if start.record else None,
                    start.public_key,
                    start.error,
                ),
            )

    # ---------------------------------------------------------------- end
    def end(
        self, session_id: str, evse_id: str, token: Mapping[str, Any], *, ask: bool = True
    ) -> SignedEnd | None:
        """The end record for the CDR (None for a meter that does not sign). ``ask=False``:
        the meter is known to be dead; it is not asked (its time-out would stall the loop)."""
        meter = signing(self._meters[evse_id]) if evse_id in self._meters else None
        stored = self.stored(session_id)
        if meter is None and stored is None:
            return None
        start = stored or SignedMeterValues()
        begin_kwh = _begin_kwh(start.start)
        if meter is None or not ask:
            why = "the meter stopped answering during the session: no end record"
            return SignedEnd(values=_with_error(start, why), begin_kwh=begin_kwh)
        try:
            record = meter.end_transaction(ident_for(evse_id, token, self._clock_synced()))
            key = meter.public_key()
        except DriverError as err:
            log.error("%s: the meter did not sign the end of %s: %s", evse_id, session_id, err)
            why = f"the meter did not sign the end: {err}"
            return SignedEnd(values=_with_error(start, why), begin_kwh=begin_kwh)
        if record.begin_kwh is not None:  # one record with both readings (Iskra)
            begin_kwh = record.begin_kwh
        values = start.model_copy(update={"stop": record.record, "public_key": key})
        return SignedEnd(values=values, begin_kwh=begin_kwh, end_kwh=record.end_kwh)

    def save_end(self, session_id: str, end: SignedEnd | None) -> None:
        """Commit the end record (joins the caller's unit: the CDR's transaction)."""
        if end is None:
            return
        v = end.values
        with self._store.unit():
            self._store.db.execute(
                "INSERT INTO signed_values (session_id, format, start_record, stop_record,"
                " public_key, error) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(session_id) DO"
                " UPDATE SET stop_record=excluded.stop_record, public_key=excluded.public_key,"
                " error=excluded.error",
                (session_id, OCMF, v.start, v.stop, v.public_key, v.error),
            )

    def stored(self, session_id: str) -> SignedMeterValues | None:
        """The session's signed values as committed (for the CDR, stationctl, adapters)."""
        try:
            row = self._store.db.execute(
                "SELECT start_record, stop_record, public_key, error FROM signed_values"
                " WHERE session_id=?",
                (session_id,),
            ).fetchone()
        except sqlite3.Error as err:
            raise StoreError(f"store read failed: {err}") from err
        if row is None:
            return None
        return SignedMeterValues(start=row[0], stop=row[1], public_key=row[2], error=row[3])


def _with_error(values: SignedMeterValues, why: str) -> SignedMeterValues:
    error = f"{values.error}; {why}" if values.error else why
    return values.model_copy(update={"error": error})


def _begin_kwh(record: str | None) -> float | None:
    if record is None:
        return None
    try:
        return parse(record).begin_kwh
    except DriverError as err:
        log.error("stored start record unreadable: %s", err)
        return None
