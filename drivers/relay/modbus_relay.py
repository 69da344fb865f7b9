"""A contactor switched by a coil of a Modbus TCP or RTU relay module.

The feedback (mirror) contact may be wired to one of the module's digital inputs, read as a
discrete input. The endpoint keyword arguments (host, port, baudrate, parity, ...) are
:class:`drivers.modbus_endpoint.EndpointOptions`; the pymodbus client is created and connected on
first use.

Note: a Modbus relay on the same RS-485 bus as the meter must not open the serial port a second
time; that sharing is not handled here (give the relay module its own adapter or use TCP).
"""

from __future__ import annotations

from typing import Unpack

from drivers.clock import Clock
from drivers.errors import ConfigError, DriverError
from drivers.modbus_endpoint import EndpointOptions, Transport, open_link
from drivers.relay.feedback import DEFAULT_FEEDBACK_TIMEOUT_MS, FeedbackRelay, Sleep


class ModbusRelay(FeedbackRelay):
    def __init__(
        self,
        transport: Transport = "tcp",
        *,
        device_id: int = 1,
        coil: int = 0,
        feedback_input: int | None = None,
        feedback_timeout_ms: float = DEFAULT_FEEDBACK_TIMEOUT_MS,
        poll_ms: float = 20.0,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        **endpoint: Unpack[EndpointOptions],
    ) -> None:
        super().__init__(
            feedback_timeout_ms=feedback_timeout_ms, poll_ms=poll_ms, clock=clock, sleep=sleep
        )
        if coil < 0 or (feedback_input is not None and feedback_input < 0):
            raise ConfigError("Modbus coil and input addresses must not be negative")
        self._link = open_link(transport, device_id, endpoint)
        self._endpoint = self._link.endpoint
        self._device_id = device_id
        self._coil = coil
        self._feedback_input = feedback_input

    @property
    def simulated(self) -> bool:
        return False

    def describe(self) -> str:
        text = (
            f"Modbus relay at {self._endpoint.where()} device {self._device_id} coil {self._coil}"
        )
        if self._feedback_input is not None:
            text += f", feedback input {self._feedback_input}"
        return text

    def _drive(self, closed: bool) -> None:
        try:
            self._link.call("write_coil", self._coil, closed, device_id=self._device_id)
        except DriverError as err:
            raise DriverError(f"{err}; {self._endpoint.what_to_check()}") from err

    def _read_feedback(self) -> bool | None:
        if self._feedback_input is None:
            return None
        response = self._link.call(
            "read_discrete_inputs", self._feedback_input, count=1, device_id=self._device_id
        )
        bits = list(response.bits)
        if not bits:
            raise DriverError(f"{self.describe()}: empty discrete-input response")
        return bool(bits[0])

    def _release(self) -> None:
        self._link.close()
