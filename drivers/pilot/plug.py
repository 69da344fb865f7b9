"""The pilot as the plug sensor: a car is connected in state B, C or D."""

from __future__ import annotations

from drivers.health import Health
from drivers.pilot.base import Pilot
from drivers.plug.base import PlugCallback


class PilotPlug:
    """Implements :class:`drivers.plug.base.PlugSensor` over a :class:`Pilot`.

    It reports nothing by itself: the pilot's own state changes carry the plug changes (one
    callback, so that the pilot state and the plug never arrive out of order).
    """

    def __init__(self, pilot: Pilot) -> None:
        self.pilot = pilot

    def start(self, on_change: PlugCallback) -> None:
        return None  # the pilot's callback reports plug changes

    def stop(self) -> None:
        return None

    def is_plugged(self) -> bool:
        return self.pilot.state().connected

    def health(self) -> Health:
        return self.pilot.health()

    @property
    def simulated(self) -> bool:
        return self.pilot.simulated
