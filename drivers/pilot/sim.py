"""A simulated control pilot with a simulated car behind it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from drivers.health import Health
from drivers.pilot.base import MIN_CURRENT_A, PilotCallback, PilotState, check_offer

DrawCallback = Callable[[float], None]


class SimPilot:
    """Implements :class:`drivers.pilot.base.Pilot`.

    The car (``car_max_a``: what its on-board charger takes at most) is plugged in with
    :meth:`plug` (state B). Offered at least 6 A it asks for energy (C) and draws
    ``min(offered, car_max_a)``; offered less it pauses (B, 0 A). Unplugged: A. ``force(state)``
    pins a state (a technician's test, an error E/F) until :meth:`release`. Every change of state
    goes to the ``start()`` callback, every change of the drawn current to the ``on_draw``
    listeners (the sim meter counts it).
    """

    def __init__(self, car_max_a: float = 32.0, *, plugged: bool = False) -> None:
        if car_max_a < 0:
            raise ValueError("car_max_a must be >= 0")
        self._lock = threading.Lock()
        self._car_max_a = car_max_a
        self._plugged = plugged
        self._offered = 0.0
        self._forced: PilotState | None = None
        self._callback: PilotCallback | None = None
        self._draw_listeners: list[DrawCallback] = []
        self._state, self._draw = self._derive()

    def _derive(self) -> tuple[PilotState, float]:
        if self._forced is not None:
            return self._forced, 0.0
        if not self._plugged:
            return PilotState.A, 0.0
        if self._offered < MIN_CURRENT_A or self._car_max_a < MIN_CURRENT_A:
            return PilotState.B, 0.0
        return PilotState.C, min(self._offered, self._car_max_a)

    def _update(self, change: Callable[[], None]) -> None:
        with self._lock:
            change()
            before = (self._state, self._draw)
            self._state, self._draw = self._derive()
            state_cb = self._callback if self._state != before[0] else None
            draw_cbs = list(self._draw_listeners) if self._draw != before[1] else []
            state, draw = self._state, self._draw
        if state_cb is not None:
            state_cb(state)
        for listener in draw_cbs:
            listener(draw)

    # ------------------------------------------------------------------ the car
    def plug(self, car_max_a: float | None = None) -> None:
        def change() -> None:
            self._plugged = True
            if car_max_a is not None:
                self._car_max_a = car_max_a

        self._update(change)

    def unplug(self) -> None:
        self._update(lambda: setattr(self, "_plugged", False))

    def set_car_max(self, car_max_a: float) -> None:
        self._update(lambda: setattr(self, "_car_max_a", car_max_a))

    def force(self, state: PilotState) -> None:
        self._update(lambda: setattr(self, "_forced", state))

    def release(self) -> None:
        self._update(lambda: setattr(self, "_forced", None))

    def on_draw(self, listener: DrawCallback) -> None:
        with self._lock:
            self._draw_listeners.append(listener)

    def draw_a(self) -> float:
        with self._lock:
            return self._draw

    def plugged(self) -> bool:
        with self._lock:
            return self._plugged

    # ------------------------------------------------------------------ Pilot
    def start(self, on_change: PilotCallback) -> None:
        with self._lock:
            self._callback = on_change

    def stop(self) -> None:
        with self._lock:
            self._callback = None

    def state(self) -> PilotState:
        with self._lock:
            return self._state

    def set_current(self, amps: float) -> None:
        check_offer(amps)
        self._update(lambda: setattr(self, "_offered", float(amps)))

    def offered(self) -> float:
        with self._lock:
            return self._offered

    def health(self) -> Health:
        return Health.healthy()

    @property
    def simulated(self) -> bool:
        return True
