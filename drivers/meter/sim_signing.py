"""The sim meter with a signing module: OCMF records of its own register, signed with a
secp256r1 key from a PEM file, as a real signing meter would sign them.

Each transaction gets a signed begin record (``TX`` B) and a signed end record (``TX`` E);
the pagination counter (``PG`` ``T<n>``) counts every record the meter signed and is kept
beside the key (``<key_file>.pagination``), so it keeps counting across agent restarts like a
meter's own counter. :meth:`prepare` loads (or creates, mode 0600) the key: no I/O happens in
the constructor.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.errors import DriverError
from drivers.meter.base import SignedRecord, TransactionIdent
from drivers.meter.ocmf import (
    MeterIdentity,
    build_payload,
    load_or_create_key,
    parse,
    public_key_hex,
    register_kwh,
    sign,
)
from drivers.meter.sim import SimMeter

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

FIRMWARE = "sim-1"


class SigningSimMeter(SimMeter):
    """Implements :class:`drivers.meter.base.SigningMeter` on top of :class:`SimMeter`."""

    def __init__(self, *args: Any, key_file: str | Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_file = Path(key_file)
        self._counter_file = Path(f"{key_file}.pagination")
        self._key: EllipticCurvePrivateKey | None = None
        self._public_key = ""
        self._identity: MeterIdentity | None = None
        self._pagination = 0
        self._sign_lock = threading.Lock()

    def prepare(self) -> None:
        """Load the key (create it at first start) and the pagination counter."""
        key = load_or_create_key(self._key_file)
        self._key = key
        self._public_key = public_key_hex(key)
        serial = hashlib.sha256(bytes.fromhex(self._public_key)).hexdigest()[:12].upper()
        self._identity = MeterIdentity(
            vendor="station-agent", model="sim", serial=serial, firmware=FIRMWARE
        )
        try:
            self._pagination = int(self._counter_file.read_text().strip())
        except FileNotFoundError:
            self._pagination = 0
        except (OSError, ValueError) as err:
            raise DriverError(f"sim meter counter {self._counter_file} unreadable: {err}") from err

    @property
    def signs(self) -> bool:
        return True

    def public_key(self) -> str:
        if not self._public_key:
            raise DriverError("sim meter key not loaded (prepare() was not called)")
        return self._public_key

    def begin_transaction(self, ident: TransactionIdent) -> SignedRecord:
        return self._sign(ident, "B")

    def end_transaction(self, ident: TransactionIdent) -> SignedRecord:
        return self._sign(ident, "E")

    def _sign(self, ident: TransactionIdent, tx: str) -> SignedRecord:
        if self._key is None or self._identity is None:
            raise DriverError("sim meter key not loaded (prepare() was not called)")
        reading = self.read()  # raises while the meter is failing: nothing is signed
        with self._sign_lock:
            self._pagination += 1
            payload = build_payload(
                meter=self._identity,
                ident=ident,
                pagination=self._pagination,
                tx=tx,
                value_kwh=register_kwh(reading.energy_kwh),
                ts=self._clock.now(),
            )
            record = sign(payload, self._key)
            self._save_counter()
        return parse(record)

    def _save_counter(self) -> None:
        tmp = self._counter_file.with_name(f".{self._counter_file.name}.tmp")
        try:
            tmp.write_text(f"{self._pagination}\n")
            os.replace(tmp, self._counter_file)
        except OSError as err:
            raise DriverError(f"sim meter counter {self._counter_file}: {err}") from err
