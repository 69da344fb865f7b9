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
