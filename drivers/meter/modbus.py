"""Energy meters read over Modbus TCP or RTU (pymodbus synchronous client).

The endpoint and its client are :mod:`drivers.modbus_endpoint` (shared with
:class:`drivers.relay.modbus_relay.ModbusRelay`). Nothing is imported from pymodbus and no I/O
happens until the first request.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import datetime
from typing import Unpack

from drivers.clock import Clock, SystemClock
from drivers.errors import ConfigError, DriverError
from drivers.health import Health
from drivers.meter.base import MeterReading
from drivers.meter.registers import Register, RegisterMap, WordOrder, decode, register_map
from drivers.modbus_endpoint import EndpointOptions, Transport, open_link

log = logging.getLogger(__name__)


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
        device_id: int = 1,
        word_order: WordOrder | None = None,
        max_failures: int = 3,
        voltage_range: tuple[float, float] = (100.0, 300.0),
        clock: Clock | None = None,
        **endpoint: Unpack[EndpointOptions],
    ) -> None:
        try:
            self._map: RegisterMap = register_map(model)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from err
        if word_order not in (None, "big", "little"):
            raise ConfigError(f"word_order must be 'big' or 'little', not {word_order!r}")
        if max_failures < 1:
            raise ConfigError("max_failures must be at least 1")
        self._link = open_link(transport, device_id, endpoint)
        self._endpoint = self._link.endpoint
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

    @property
    def simulated(self) -> bool:
        return False

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
