"""A simulated energy meter: integrates a constant power while current is flowing."""

from __future__ import annotations

import os
import threading

from drivers.clock import Clock, SystemClock
from drivers.errors import DriverError
from drivers.health import Health
from drivers.meter.base import MeterReading


class SimMeter:
    """Implements :class:`drivers.meter.base.Meter`.

    Energy grows by ``power_kw`` per hour of simulated time while flowing; ``time_factor``
    simulated seconds pass per clock second (60 = one minute of charging per second).
    ``set_flowing`` first integrates the interval up to now with the previous state, so energy is
    exact across changes; wire it to a relay with ``sim_relay.on_change(sim_meter.set_flowing)``.
    ``set_failing(True)`` makes ``read()`` raise and ``health()`` report ``meter_failed``.
    """

    def __init__(
        self,
        power_kw: float = 11.0,
        initial_kwh: float = 0.0,
        time_factor: float = 1.0,
        voltage_v: float = 230.0,
        clock: Clock | None = None,
        *,
        state_file: str | None = None,
    ) -> None:
        if power_kw < 0 or initial_kwh < 0 or time_factor <= 0:
            raise ValueError("power_kw and initial_kwh must be >= 0, time_factor > 0")
        self._state_file = state_file
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._power_kw = power_kw
        self._energy_kwh = initial_kwh
        self._time_factor = time_factor
        self._voltage_v = voltage_v
        self._flowing = False
        self._last = self._clock.monotonic()
        self._failing = False
        self.reads = 0

    def _integrate(self) -> None:
        now = self._clock.monotonic()
        elapsed = max(now - self._last, 0.0)
        self._last = now
        if self._flowing:
            self._energy_kwh += self._power_kw * elapsed * self._time_factor / 3600.0
            self._save()

    def load_state(self) -> None:
        """With ``state_file``: continue from the register value a previous process left,
        as a real meter would (it keeps counting across agent restarts)."""
        if self._state_file is None:
            return
        try:
            with open(self._state_file, encoding="ascii") as fh:
                value = float(fh.read().strip())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise DriverError(f"sim meter state {self._state_file} unreadable: {err}") from err
        with self._lock:
            self._energy_kwh = max(self._energy_kwh, value)

    def _save(self) -> None:
        if self._state_file is None:
            return
        tmp = f"{self._state_file}.tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{self._energy_kwh:.9f}\n")
        os.replace(tmp, self._state_file)

    def set_flowing(self, flowing: bool) -> None:
        with self._lock:
            self._integrate()
            self._flowing = bool(flowing)

    def is_flowing(self) -> bool:
        with self._lock:
            return self._flowing

    def set_power_kw(self, power_kw: float) -> None:
        if power_kw < 0:
            raise ValueError("power_kw must be >= 0")
        with self._lock:
            self._integrate()
            self._power_kw = power_kw

    def set_failing(self, failing: bool) -> None:
        with self._lock:
            self._failing = failing

    def read(self) -> MeterReading:
        with self._lock:
            self._integrate()
            if self._failing:
                raise DriverError("simulated meter failure")
            self.reads += 1
            return MeterReading(
                energy_kwh=self._energy_kwh,
                power_w=self._power_kw * 1000.0 if self._flowing else 0.0,
                voltage_v=self._voltage_v,
            )

    @property
    def simulated(self) -> bool:
        return True

    def health(self) -> Health:
        with self._lock:
            if self._failing:
                return Health(ok=False, fault="meter_failed", detail="simulated meter failure")
            return Health.healthy()

    def shutdown(self) -> None:
        with self._lock:
            self._integrate()
