"""An EVSE controller board of the EVSE DIN / SimpleEVSE family over Modbus RTU.

Register map (holding registers, read with function 3, written with function 16; see
``hardware/EVSE-DIN.md`` for the sources): 1000 configured current (A, 0 = do not charge),
1001 current the PWM signals now (A), 1002 vehicle state (1 ready = A, 2 EV present = B,
3 charging = C, 4 charging with ventilation = D, 5 failure = E), 1005 firmware revision.

A thread polls the vehicle state every ``poll_interval_s`` and writes the wanted current when it
differs from register 1000 (at once when :meth:`set_current` wakes it: the caller never waits
for the bus). A board that does not answer is state F (EVSE not available) until it answers
again: the agent opens the contactor.
"""

from __future__ import annotations

import logging
import threading
from typing import Unpack

from drivers.errors import DriverError
from drivers.health import Health
from drivers.modbus_endpoint import EndpointOptions, Transport, open_link
from drivers.pilot.base import PilotCallback, PilotState, check_offer

log = logging.getLogger(__name__)

REG_CURRENT = 1000
REG_ACTUAL = 1001
REG_VEHICLE = 1002
REG_FIRMWARE = 1005
VEHICLE_STATES = {
    1: PilotState.A,
    2: PilotState.B,
    3: PilotState.C,
    4: PilotState.D,
    5: PilotState.E,
}


class EvseDinPilot:
    """Implements :class:`drivers.pilot.base.Pilot` for an EVSE DIN / SimpleEVSE board."""

    def __init__(
        self,
        transport: Transport = "rtu",
        *,
        device_id: int = 1,
        poll_interval_s: float = 0.5,
        **endpoint: Unpack[EndpointOptions],
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be > 0")
        self._link = open_link(transport, device_id, endpoint)
        self._device_id = device_id
        self._poll_s = poll_interval_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._callback: PilotCallback | None = None
        self._wanted = 0.0
        self._confirmed = 0.0
        self._state = PilotState.F  # nothing read yet
        self._error: str | None = "not read yet"
        self.firmware: int | None = None

    # ------------------------------------------------------------------ Pilot
    def start(self, on_change: PilotCallback) -> None:
        with self._lock:
            self._callback = on_change
            if self._thread is not None:
                return
        first = self.poll_once()  # the state is known when start() returns
        thread = threading.Thread(target=self._run, args=(first,), name="pilot", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(5)
        self._link.close()

    def state(self) -> PilotState:
        with self._lock:
            return self._state

    def set_current(self, amps: float) -> None:
        check_offer(amps)
        with self._lock:
            self._wanted = float(amps)
        self._wake.set()

    def offered(self) -> float:
        with self._lock:
            return self._confirmed

    def health(self) -> Health:
        with self._lock:
            if self._error is None:
                return Health.healthy()
            return Health(
                ok=False,
                fault="pilot_failed",
                detail=f"EVSE DIN board at {self._link.endpoint.where()}: {self._error}",
            )

    @property
    def simulated(self) -> bool:
        return False

    # ------------------------------------------------------------------ the bus
    def poll_once(self) -> PilotState:
        """One cycle: write the wanted current if the board has another, read the state.
        A failure makes the state F. Returns the state (the poll thread reports changes)."""
        try:
            if self.firmware is None:
                self.firmware = self._link.read_registers(
                    "holding", REG_FIRMWARE, 1, self._device_id
                )[0]
                log.info("EVSE DIN board firmware %s", self.firmware)
            configured, _actual, vehicle = self._link.read_registers(
                "holding", REG_CURRENT, 3, self._device_id
            )
            with self._lock:
                wanted = self._wanted
            if configured != round(wanted):
                self._link.call(
                    "write_registers", REG_CURRENT, [round(wanted)], device_id=self._device_id
                )
                configured = round(wanted)
            state = VEHICLE_STATES.get(vehicle)
            if state is None:
                raise DriverError(f"vehicle state register holds {vehicle}, not 1-5")
            error = None
        except DriverError as err:
            state, error, configured = PilotState.F, str(err), 0
        with self._lock:
            if error is not None and self._error is None:
                log.error("EVSE DIN board: %s", error)
            self._error = error
            self._confirmed = float(configured)
            self._state = state
        return state

    def _run(self, first: PilotState) -> None:
        last = first
        while not self._stopping.is_set():
            self._wake.clear()  # a set_current() from now on wakes the next wait
            state = self.poll_once()
            if state != last:
                last = state
                with self._lock:
                    callback = self._callback
                if callback is not None:
                    callback(state)
            self._wake.wait(self._poll_s)
