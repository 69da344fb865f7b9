"""One Modbus endpoint (TCP or RTU) and its lazily connected pymodbus client.

Shared by every Modbus driver (:class:`drivers.meter.modbus.ModbusMeter`,
:class:`drivers.relay.modbus_relay.ModbusRelay`): the endpoint keyword arguments
(:class:`EndpointOptions`), their validation (:class:`ModbusEndpoint`), the device id check and
the client (:class:`ModbusLink`: pymodbus ``ModbusTcpClient``/``ModbusSerialClient``, error
translation to :class:`~drivers.errors.DriverError`) live here once. Nothing is imported from
pymodbus and no I/O happens until the first request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from drivers.errors import ConfigError, DriverError

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

    def write_registers(self, address: int, values: list[int], device_id: int) -> None:
        """Holding registers from ``address`` on (function 0x10; one register: 0x06)."""
        if len(values) == 1:
            self.call("write_register", address, values[0], device_id=device_id)
        else:
            self.call("write_registers", address, values, device_id=device_id)


class EndpointOptions(TypedDict, total=False):
    """The endpoint keyword arguments every Modbus driver takes (defaults: :class:`ModbusEndpoint`).

    ``host`` (TCP), ``port`` (TCP port number, or the serial device path for RTU), ``baudrate``,
    ``parity`` (N/E/O), ``stopbits``, ``bytesize`` (RTU line settings), ``timeout_s`` and
    ``retries`` (per request).
    """

    host: str | None
    port: str | int | None
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    timeout_s: float
    retries: int


def open_link(transport: Transport, device_id: int, options: EndpointOptions) -> ModbusLink:
    """Validate the endpoint and the device id and return its (not yet connected) link.

    Raises :class:`~drivers.errors.ConfigError` for a bad transport, endpoint or device id.
    """
    if not 0 <= device_id <= 247:
        raise ConfigError(f"Modbus device id {device_id} is outside 0..247")
    return ModbusLink(ModbusEndpoint(transport=transport, **options))
