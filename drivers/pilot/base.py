"""The control pilot protocol, its states and the duty-cycle mapping (IEC 61851-1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

from drivers.health import Health

MIN_CURRENT_A = 6.0  # below this a PWM offer is not valid: the car must stop (pause)
MAX_CURRENT_A = 80.0  # the highest current the duty cycle can signal


class PilotState(StrEnum):
    """A no vehicle, B connected, C charging requested, D with ventilation, E/F error."""

    A = "A"
    B = "B"
    C = "C"
    D = "D"
    E = "E"
    F = "F"

    @property
    def connected(self) -> bool:
        """A car is there (B, C, D); unknown for the error states E and F."""
        return self in (PilotState.B, PilotState.C, PilotState.D)

    @property
    def requests_power(self) -> bool:
        """The car asks for energy: the contactor may close (C, D)."""
        return self in (PilotState.C, PilotState.D)

    @property
    def error(self) -> bool:
        return self in (PilotState.E, PilotState.F)


PilotCallback = Callable[[PilotState], None]


def duty_cycle_percent(amps: float) -> float:
    """The PWM duty cycle (percent) that offers ``amps``; 0 A is no PWM (0 %, "do not charge").

    6-51 A: duty = A / 0.6; 51-80 A: duty = A / 2.5 + 64. Anything else is refused: a current
    between 0 and 6 A cannot be offered (the arbiter pauses such an EVSE instead), nor one
    above 80 A.
    """
    if not math.isfinite(amps) or amps < 0:
        raise ValueError(f"offered current must be a finite number >= 0, not {amps!r}")
    if amps == 0:
        return 0.0
    if amps < MIN_CURRENT_A:
        raise ValueError(f"{amps} A is below the {MIN_CURRENT_A:g} A minimum (offer 0 to pause)")
    if amps <= 51.0:
        return round(amps / 0.6, 4)
    if amps <= MAX_CURRENT_A:
        return round(amps / 2.5 + 64.0, 4)
    raise ValueError(f"{amps} A is above the {MAX_CURRENT_A:g} A the pilot can signal")


def check_offer(amps: float) -> float:
    """``amps`` if it is a valid offer (0, or 6-80 A), else ValueError."""
    duty_cycle_percent(amps)
    return amps


class Pilot(Protocol):
    def start(self, on_change: PilotCallback) -> None:
        """Begin watching; ``on_change(state)`` is called on every change of the pilot state."""
        ...

    def stop(self) -> None: ...

    def state(self) -> PilotState:
        """The last known pilot state (F while the device cannot be read)."""
        ...

    def set_current(self, amps: float) -> None:
        """Offer ``amps`` (0 = do not charge, else 6-80 A). Never blocks on the device."""
        ...

    def offered(self) -> float:
        """The current offered now (what the device confirmed, as far as it reports it)."""
        ...

    def health(self) -> Health: ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...
