"""Energy meters read over Modbus TCP or RTU (pymodbus synchronous client).

:class:`ModbusLink` (one lazily connected pymodbus client plus error translation) is shared with
:class:`drivers.relay.modbus_relay.ModbusRelay`. Nothing is imported from pymodbus and no I/O
happens until the first request.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agent.clock import Clock, SystemClock
from agent.errors import ConfigError, DriverError
from drivers.health import Health
from drivers.meter.base import MeterReading
from drivers.meter.registers import Register, RegisterMap, WordOrder, decode, register_map

log = logging.getLogger(__name__)

Transport = Literal["tcp", "rtu"]

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}


@dataclass(frozen=True)
class ModbusEndpoint:
    """Where a Modbus device is: ``tcp`` (host, port) or ``rtu`` (serial port, line settings)."""

    transport: Transport = "tcp"
    host: str | None = None
    port: str | int | None = None  # TCP port number, or the serial device path for RTU
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 1.0
    retries: int = 1

    def __post_init__(self) -> None:
        if self.transport == "tcp":
            if not self.host:
                raise ConfigError("Modbus TCP needs a host")
            if self.port is not None and not isinstance(self.port, int):
                raise ConfigError(f"Modbus TCP port must be a number, not {self.port!r}")
        elif self.transport == "rtu":
            if not isinstance(self.port, str) or not self.port:
                raise ConfigError("Modbus RTU needs the serial port path in port")
            if self.parity not in ("N", "E", "O"):
                raise ConfigError(f"parity must be N, E or O, not {self.parity!r}")
            if self.stopbits not in (1, 2):
                raise ConfigError(f"stopbits must be 1 or 2, not {self.stopbits!r}")
        else:
            raise ConfigError(f"Modbus transport must be 'tcp' or 'rtu', not {self.transport!r}")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ConfigError("Modbus timeout_s must be positive and retries not negative")

    @property
    def tcp_port(self) -> int:
        return self.port if isinstance(self.port, int) else 502

    def where(self) -> str:
        if self.transport == "tcp":
            return f"tcp://{self.host}:{self.tcp_port}"
        return f"{self.port} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"

    def what_to_check(self) -> str:
        if self.transport == "tcp":
            return "check the network link, host and port, and the device id"
        return (
            "check power to the device, the RS-485 A/B wiring and termination, the USB adapter "
            "and the line settings (baud rate, parity, stop bits) and device id"
        )


def _modbus_exception_type() -> type[Exception]:
    try:
        from pymodbus.exceptions import ModbusException
    except ImportError as err:
        raise DriverError("pymodbus is not installed; install station-agent[power]") from err
    exc_type: type[Exception] = ModbusException
    return exc_type


class ModbusLink:
    """One pymodbus sync client, connected on first use and dropped after any error."""

    def __init__(self, endpoint: ModbusEndpoint) -> None:
        self.endpoint = endpoint
        self._client: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        ep = self.endpoint
        try:
            from pymodbus.client import (
                ModbusSerialClient,
                ModbusTcpClient,
            )
        except ImportError as err:
            raise DriverError("pymodbus is not installed; install station-agent[power]") from err
        if ep.transport == "tcp":
            client: Any = ModbusTcpClient(
                str(ep.host), port=ep.tcp_port, timeout=ep.timeout_s, retries=ep.retries
            )
        else:
            client = ModbusSerialClient(
                str(ep.port),
                baudrate=ep.baudrate,
                bytesize=ep.bytesize,
                parity=ep.parity,
                stopbits=ep.stopbits,
                timeout=ep.timeout_s,
                retries=ep.retries,
            )
        if not client.connect():
            client.close()
            raise DriverError(f"cannot connect to {ep.where()}")
        self._client = client
        return client

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except (OSError, RuntimeError) as err:
                log.debug("closing Modbus client %s: %s", self.endpoint.where(), err)

    def call(self, method: str, *args: Any, device_id: int, **kwargs: Any) -> Any:
        """Run one client request; raise DriverError on any failure or exception response."""
        modbus_exception = _modbus_exception_type()
        with self._lock:
            try:
                client = self._connect()
                response = getattr(client, method)(*args, device_id=device_id, **kwargs)
            except DriverError:
                self._drop()
                raise
            except (modbus_exception, OSError, ValueError) as err:
                self._drop()
                raise DriverError(f"{method} at {self.endpoint.where()}: {err}") from err
            if response is None or response.isError():
                code = getattr(response, "exception_code", None)
                name = _EXCEPTION_NAMES.get(code or 0, "error")
                raise DriverError(
                    f"{method} at {self.endpoint.where()} device {device_id}: "
                    f"exception code {code} ({name})"
                )
            return response

    def read_registers(
        self, function: Literal["input", "holding"], address: int, count: int, device_id: int
    ) -> list[int]:
        method = "read_input_registers" if function == "input" else "read_holding_registers"
        response = self.call(method, address, count=count, device_id=device_id)
        words = list(response.registers)
        if len(words) < count:
            raise DriverError(
                f"{method} at {self.endpoint.where()}: asked for {count} registers at "
                f"{address:#06x}, got {len(words)}"
            )
        return words[:count]


class ModbusMeter:
    """Implements :class:`drivers.meter.base.Meter` for the models in ``registers.MODELS``.

    A reading that fails or is implausible (energy going backwards, NaN/inf, voltage outside
    ``voltage_range``) raises :class:`DriverError`, is logged and counted; after ``max_failures``
    in a row :meth:`health` reports ``meter_failed``. A good reading resets the count.
    """

    def __init__(
        self,
        model: str,
        transport: Transport = "tcp",
        *,
        host: str | None = None,
        port: str | int | None = None,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        device_id: int = 1,
        word_order: WordOrder | None = None,
        timeout_s: float = 1.0,
        retries: int = 1,
        max_failures: int = 3,
        voltage_range: tuple[float, float] = (100.0, 300.0),
        clock: Clock | None = None,
    ) -> None:
        try:
            self._map: RegisterMap = register_map(model)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from err
        if not 0 <= device_id <= 247:
            raise ConfigError(f"Modbus device id {device_id} is outside 0..247")
        if word_order not in (None, "big", "little"):
            raise ConfigError(f"word_order must be 'big' or 'little', not {word_order!r}")
        if max_failures < 1:
            raise ConfigError("max_failures must be at least 1")
        self._endpoint = ModbusEndpoint(
            transport=transport,
            host=host,
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            timeout_s=timeout_s,
            retries=retries,
        )
        self._link = ModbusLink(self._endpoint)
        self._device_id = device_id
        self._word_order: WordOrder = word_order or self._map.word_order
        self._max_failures = max_failures
        self._vmin, self._vmax = voltage_range
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()  # state: failures, last reading
        self._io_lock = threading.Lock()  # the bus: one reading at a time
        self._failures = 0
        self._last_error: str | None = None
        self._last_energy: float | None = None
        self._last_good_at: datetime | None = None

    @property
    def model(self) -> str:
        return self._map.model

    def describe(self) -> str:
        return f"{self._map.description} (device id {self._device_id}) at {self._endpoint.where()}"

    def read(self) -> MeterReading:
        # one reading at a time (_io_lock); health() and info() only wait for the short state
        # updates (_lock), never for a meter that takes its whole time-out to not answer
        with self._io_lock:
            try:
                reading = self._read_raw()
                self._check(reading)
            except DriverError as err:
                with self._lock:
                    self._count_failure(err)
                raise
            with self._lock:
                if self._failures >= self._max_failures:
                    log.warning("meter %s: readings are good again", self.describe())
                self._failures = 0
                self._last_error = None
                self._last_energy = reading.energy_kwh
                self._last_good_at = self._clock.now()
            return reading

    def _count_failure(self, err: DriverError) -> None:
        self._failures += 1
        self._last_error = str(err)
        log.warning(
            "meter %s: unusable reading (%d in a row): %s", self.describe(), self._failures, err
        )
        if self._failures == self._max_failures:
            log.error("meter %s: %s", self.describe(), self._health_detail())

    def health(self) -> Health:
        with self._lock:
            if self._failures >= self._max_failures:
                return Health(ok=False, fault="meter_failed", detail=self._health_detail())
            return Health.healthy()

    def info(self) -> dict[str, object]:
        with self._lock:
            return {
                "driver": "modbus",
                "model": self._map.model,
                "where": self._endpoint.where(),
                "device_id": self._device_id,
                "word_order": self._word_order,
                "failures_in_a_row": self._failures,
                "last_error": self._last_error,
                "last_energy_kwh": self._last_energy,
                "last_good_at": self._last_good_at.isoformat() if self._last_good_at else None,
            }

    def shutdown(self) -> None:
        self._link.close()

    # -- internals -------------------------------------------------------------------------
    def _health_detail(self) -> str:
        return (
            f"{self._map.description} (device id {self._device_id}) at "
            f"{self._endpoint.where()}: {self._failures} readings in a row failed "
            f"(last: {self._last_error}); {self._endpoint.what_to_check()}"
        )

    def _value(self, reg: Register) -> float:
        words = self._link.read_registers(
            self._map.function, reg.address, reg.count, self._device_id
        )
        return decode(words, reg, self._word_order)

    def _read_raw(self) -> MeterReading:
        energy = self._value(self._map.energy_kwh)
        power = self._value(self._map.power_w) if self._map.power_w else None
        voltage = self._value(self._map.voltage_v) if self._map.voltage_v else None
        return MeterReading(energy_kwh=energy, power_w=power, voltage_v=voltage)

    def _check(self, r: MeterReading) -> None:
        values = (("energy", r.energy_kwh), ("power", r.power_w), ("voltage", r.voltage_v))
        for name, value in values:
            if value is not None and not math.isfinite(value):
                raise DriverError(f"implausible {name} {value!r} (not a finite number)")
        if r.energy_kwh < 0:
            raise DriverError(f"implausible energy {r.energy_kwh} kWh (negative)")
        if self._last_energy is not None and r.energy_kwh < self._last_energy:
            raise DriverError(
                f"implausible energy {r.energy_kwh} kWh: went backwards from "
                f"{self._last_energy} kWh (meter replaced or wrong register/word order?)"
            )
        if r.voltage_v is not None and not self._vmin <= r.voltage_v <= self._vmax:
            raise DriverError(
                f"implausible voltage {r.voltage_v:.1f} V (expected {self._vmin:.0f}-"
                f"{self._vmax:.0f} V; wrong word order or phase without supply?)"
            )
