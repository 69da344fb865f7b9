"""The energy meter protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from drivers.health import Health


@dataclass(frozen=True)
class MeterReading:
    energy_kwh: float  # total imported energy register
    power_w: float | None = None
    voltage_v: float | None = None


class Meter(Protocol):
    def read(self) -> MeterReading:
        """One reading. Raises DriverError when the meter cannot be read."""
        ...

    def shutdown(self) -> None: ...

    def health(self) -> Health: ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...


# ---------------------------------------------------------------- signed readings (optional)
@dataclass(frozen=True, kw_only=True)
class TransactionIdent:
    """What a signing meter writes into its records about the session: the token's type as an
    OCMF identification type (``IT``: ``ISO14443``, ``EMAID``, ...), the token's id masked
    (never the full id: the record is shown to whoever checks the bill), the EVSE id (``CI``)
    and whether the station's clock is synchronised (the ``TM`` sync state)."""

    evse_id: str
    id_type: str
    id_masked: str
    time_synced: bool = True


@dataclass(frozen=True, kw_only=True)
class SignedRecord:
    """One record exactly as the meter gave it (``OCMF|{payload}|{signature}``; the signature
    covers the payload's exact bytes, so it is never re-serialised) and the energy values of its
    transaction readings in kWh: ``begin_kwh`` from its ``TX`` B reading, ``end_kwh`` from its
    end reading (``E``/``L``/``R``/``A``/``P``), each None when the record has none."""

    record: str
    begin_kwh: float | None = None
    end_kwh: float | None = None


class SigningMeter(Meter, Protocol):
    """The optional capability of a meter that signs its readings (OCMF).

    ``begin_transaction`` returns the signed start record, or None for a meter that signs the
    start and the end together in one record at the end (Iskra WM3M4C);
    ``end_transaction`` returns the end record. Both raise DriverError when the meter cannot
    sign. ``public_key`` is the hex DER SubjectPublicKeyInfo the records verify against.
    """

    @property
    def signs(self) -> bool:
        """True when signing is switched on (a sim meter may run unsigned)."""
        ...

    def begin_transaction(self, ident: TransactionIdent) -> SignedRecord | None: ...

    def end_transaction(self, ident: TransactionIdent) -> SignedRecord: ...

    def public_key(self) -> str: ...


def signing(meter: Meter) -> SigningMeter | None:
    """The meter's signing capability, or None for a meter that does not sign."""
    if getattr(meter, "signs", False) is True:
        return meter  # type: ignore[return-value]
    return None
