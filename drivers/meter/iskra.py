"""Iskra WM3M4 / WM3M4C: a three-phase meter that signs its transactions (OCMF) over Modbus.

The register set is in ``hardware/meters/iskra-wm3m4c.md`` (from the Iskra user manual the
EVerest driver ``RsIskraMeter`` follows). A transaction: the clock and the user/EVSE metadata
are written, the command register gets ``B``; at the end the stop command, then the meter
signs one record holding both the begin and the end reading, which is read back with its
signature. The meter hands out the payload and the signature separately; the payload is kept
byte for byte. Nothing is imported from pymodbus and no I/O happens until the first request.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar, Unpack

from drivers.clock import Clock, SystemClock
from drivers.errors import ConfigError, DriverError
from drivers.health import Health
from drivers.meter.base import MeterReading, SignedRecord, TransactionIdent
from drivers.meter.ocmf import SECP256R1_SPKI_PREFIX, assemble, parse
from drivers.modbus_endpoint import EndpointOptions, Transport, open_link

log = logging.getLogger(__name__)
T = TypeVar("T")

# input registers
REG_MODEL, REG_SERIAL = 1, 9  # ASCII, 8 and 4 registers
REG_VOLTAGE_L1 = 107  # T5
REG_POWER_TOTAL = 140  # T6
REG_ENERGY_IMPORT_EXP, REG_ENERGY_IMPORT = 414, 418  # int16 decade exponent; int32 Wh
# holding registers
REG_STATE = 7000  # 0 idle, 1 active, 2 active after power failure, 3 active after reset
REG_COMMAND = 7051
REG_SIGNATURE_STATUS = 7052  # 0/1/2 not ready, 15 OK, >= 128 an error
REG_UTC_OFFSET, REG_TIME_HIGH, REG_TIME_LOW = 7053, 7054, 7055
REG_METADATA_LEN, REG_METADATA = 7056, 7100
REG_SIGNED_LEN, REG_SIGNED = 7057, 7612
REG_SIGNATURE_LEN, REG_SIGNATURE = 7058, 8188
REG_ALGORITHM = 7059
REG_TIME_STATUS = 7071  # 2 = synchronised (written by the station), 0 = lost with power
REG_PUBLIC_KEY = 8124  # 32 registers: X || Y of the secp256r1 point
CMD_BEGIN, CMD_END = 0x4200, 0x7200
STATUS_OK = 15
STATUS_PENDING = frozenset({0, 1, 2})
MAX_READ = 100  # registers per request (Modbus allows 125)


def text_words(text: str) -> list[int]:
    """ASCII, two bytes per register, high byte first (the last one padded with 0)."""
    raw = text.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def words_bytes(words: list[int], length: int) -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in words)[:length]


def t5(words: list[int]) -> float:
    """Unsigned 24-bit value with a signed decade exponent in the top byte."""
    exp = int.from_bytes(bytes([words[0] >> 8]), "big", signed=True)
    value = ((words[0] & 0xFF) << 16) | words[1]
    return value * 10.0**exp


def t6(words: list[int]) -> float:
    """Signed 24-bit value with a signed decade exponent in the top byte."""
    exp = int.from_bytes(bytes([words[0] >> 8]), "big", signed=True)
    raw = bytes([words[0] & 0xFF]) + words[1].to_bytes(2, "big")
    return int.from_bytes(raw, "big", signed=True) * 10.0**exp


class IskraMeter:
    """Implements :class:`drivers.meter.base.SigningMeter` for the Iskra WM3M4/WM3M4C."""

    def __init__(
        self,
        transport: Transport = "rtu",
        *,
        device_id: int = 33,
        max_failures: int = 3,
        sign_timeout_s: float = 15.0,
        clock: Clock | None = None,
        **endpoint: Unpack[EndpointOptions],
    ) -> None:
        if max_failures < 1 or sign_timeout_s <= 0:
            raise ConfigError("max_failures must be at least 1 and sign_timeout_s positive")
        self._link = open_link(transport, device_id, endpoint)
        self._device_id = device_id
        self._max_failures = max_failures
        self._sign_timeout_s = sign_timeout_s
        self._clock: Clock = clock or SystemClock()
        self._io_lock = threading.Lock()
        self._failures = 0
        self._last_error: str | None = None
        self._public_key: str | None = None

    # ---------------------------------------------------------------- Meter
    @property
    def simulated(self) -> bool:
        return False

    @property
    def signs(self) -> bool:
        return True

    def describe(self) -> str:
        return f"Iskra WM3M4C (device id {self._device_id}) at {self._link.endpoint.where()}"

    def read(self) -> MeterReading:
        with self._io_lock:
            return self._counted(self._read)

    def health(self) -> Health:
        if self._failures >= self._max_failures:
            detail = (
                f"{self.describe()}: {self._failures} requests in a row failed (last: "
                f"{self._last_error}); {self._link.endpoint.what_to_check()}"
            )
            return Health(ok=False, fault="meter_failed", detail=detail)
        return Health.healthy()

    def shutdown(self) -> None:
        self._link.close()

    # ---------------------------------------------------------------- signing
    def public_key(self) -> str:
        if self._public_key is None:
            with self._io_lock:
                words = self._counted(lambda: self._holding(REG_PUBLIC_KEY, 32))
            self._public_key = SECP256R1_SPKI_PREFIX + words_bytes(words, 64).hex().upper()
        return self._public_key

    def begin_transaction(self, ident: TransactionIdent) -> SignedRecord | None:
        """Start the meter's transaction; it signs begin and end together at the end."""
        with self._io_lock:
            self._counted(lambda: self._begin(ident))
        return None

    def end_transaction(self, ident: TransactionIdent) -> SignedRecord:
        with self._io_lock:
            return self._counted(lambda: self._end(ident))

    # ---------------------------------------------------------------- internals
    def _counted(self, fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except DriverError as err:
            self._failures += 1
            self._last_error = str(err)
            log.warning("meter %s: %s (%d in a row)", self.describe(), err, self._failures)
            raise
        self._failures = 0
        return result

    def _input(self, address: int, count: int) -> list[int]:
        return self._link.read_registers("input", address, count, self._device_id)

    def _holding(self, address: int, count: int) -> list[int]:
        words: list[int] = []
        while len(words) < count:
            n = min(MAX_READ, count - len(words))
            words += self._link.read_registers("holding", address + len(words), n, self._device_id)
        return words

    def _write(self, address: int, values: list[int]) -> None:
        for i in range(0, len(values), MAX_READ):
            self._link.write_registers(address + i, values[i : i + MAX_READ], self._device_id)

    def _read(self) -> MeterReading:
        raw_exp = self._input(REG_ENERGY_IMPORT_EXP, 1)[0]
        exp = raw_exp - 0x10000 if raw_exp & 0x8000 else raw_exp
        counter = self._input(REG_ENERGY_IMPORT, 2)
        wh = int.from_bytes(words_bytes(counter, 4), "big", signed=True) * 10.0**exp
        power = t6(self._input(REG_POWER_TOTAL, 2))
        voltage = t5(self._input(REG_VOLTAGE_L1, 2))
        if not math.isfinite(wh) or wh < 0:
            raise DriverError(f"implausible energy {wh} Wh")
        return MeterReading(energy_kwh=wh / 1000.0, power_w=power, voltage_v=voltage)

    def _state(self) -> int:
        return self._holding(REG_STATE, 1)[0]

    def _set_time(self, synced: bool) -> None:
        seconds = int(self._clock.now().timestamp())
        self._write(REG_TIME_HIGH, [(seconds >> 16) & 0xFFFF, seconds & 0xFFFF])
        self._write(REG_UTC_OFFSET, [0])  # the station keeps UTC
        self._write(REG_TIME_STATUS, [2 if synced else 1])

    def _write_metadata(self, ident: TransactionIdent) -> None:
        metadata = {
            "FV": "1.0",
            "GI": "station-agent",
            "GS": "",
            "GV": "",
            "PG": "",
            "MV": "",
            "MM": "",
            "MS": "",
            "MF": "",
            "IS": True,
            "IF": [],
            "IT": ident.id_type,
            "ID": ident.id_masked.replace("|", " "),
            "CT": "EVSEID",
            "CI": ident.evse_id.replace("|", " "),
            "RD": [],
        }
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=True)
        self._write(REG_METADATA, text_words(text))
        self._write(REG_METADATA_LEN, [len(text)])

    def _wait(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise DriverError(f"meter did not {what} within {timeout_s:g} s")
            time.sleep(0.01)  # the meter's own pace: its registers are polled

    def _signature_done(self) -> bool:
        status = self._holding(REG_SIGNATURE_STATUS, 1)[0]
        if status == STATUS_OK:
            return True
        if status in STATUS_PENDING:
            return False
        raise DriverError(f"meter reports signature status {status} (an error, see the manual)")

    def _begin(self, ident: TransactionIdent) -> None:
        if self._state() != 0:
            log.error("meter %s: a transaction is still open: ending it first", self.describe())
            self._write(REG_COMMAND, [CMD_END])
            self._wait("end the stale transaction", lambda: self._state() == 0, 1.0)
        self._set_time(ident.time_synced)
        self._write(REG_ALGORITHM, [0])
        self._write_metadata(ident)
        self._write(REG_COMMAND, [CMD_BEGIN])
        self._wait("start the transaction", lambda: self._state() == 1, 1.0)
        self._wait("sign the begin", self._signature_done, self._sign_timeout_s)

    def _end(self, ident: TransactionIdent) -> SignedRecord:
        state = self._state()
        if state == 0:
            raise DriverError("the meter has no open transaction to end")
        if state == 2:  # after a power failure it needs its clock and metadata again
            self._set_time(ident.time_synced)
            self._write_metadata(ident)
        self._write(REG_COMMAND, [CMD_END])
        self._wait("end the transaction", lambda: self._state() == 0, 1.0)
        self._wait("sign the end", self._signature_done, self._sign_timeout_s)
        sig_len = self._holding(REG_SIGNATURE_LEN, 1)[0]
        signature = words_bytes(self._holding(REG_SIGNATURE, (sig_len + 1) // 2), sig_len)
        data_len = self._holding(REG_SIGNED_LEN, 1)[0]
        payload = words_bytes(self._holding(REG_SIGNED, (data_len + 1) // 2), data_len)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DriverError(f"signed data is not UTF-8: {err}") from err
        return parse(assemble(text, signature.hex()))
