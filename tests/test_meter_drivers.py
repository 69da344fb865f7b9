"""Energy meters: register maps, ModbusMeter against a real pymodbus server (TCP on loopback for
every model and word order, RTU over a pseudo-terminal pair), plausibility checks, failure
counting and recovery; the simulated meter."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.clock import FakeClock
from agent.errors import ConfigError, DriverError
from drivers.meter.modbus import ModbusMeter
from drivers.meter.registers import MODELS, Register, RegisterMap, decode, encode, register_map
from drivers.meter.sim import SimMeter
from drivers.relay.sim import SimRelay

# --------------------------------------------------------------------------- register maps


def test_register_maps_as_documented() -> None:
    sdm = register_map("SDM630")
    assert sdm.function == "input" and sdm.word_order == "big"
    assert (sdm.voltage_v, sdm.power_w, sdm.energy_kwh) == (
        Register(0x0000, "float32", unit="V"),
        Register(0x0034, "float32", unit="W"),
        Register(0x0048, "float32", unit="kWh"),
    )
    assert register_map("sdm72").energy_kwh.address == 0x0048
    assert register_map("sdm72v1").voltage_v is None
    abb = register_map("ABB-B23")
    assert abb is register_map("b23")
    assert abb.function == "holding"
    energy = abb.energy_kwh
    assert (energy.address, energy.dtype, energy.count) == (0x5000, "uint64", 4)
    assert (abb.power_w and abb.power_w.address, abb.voltage_v and abb.voltage_v.address) == (
        0x5B14,
        0x5B00,
    )
    with pytest.raises(KeyError):
        register_map("sdm999")


def test_decode_known_words() -> None:
    f32 = Register(0, "float32")
    assert decode([0x4366, 0x8000], f32, "big") == 230.5  # 0x43668000 = 230.5
    assert decode([0x8000, 0x4366], f32, "little") == 230.5
    energy = Register(0, "uint64", scale=0.01)
    assert decode([0, 0, 0x0001, 0xE240], energy, "big") == pytest.approx(1234.56)
    assert decode([0xE240, 0x0001, 0, 0], energy, "little") == pytest.approx(1234.56)
    power = Register(0, "int32", scale=0.01)
    assert decode([0xFFFF, 0xFF9C], power, "big") == pytest.approx(-1.0)
    assert math.isnan(decode([0xFFFF, 0xFFFF], Register(0, "uint32", scale=0.1), "big"))
    assert math.isnan(decode([0x7FFF, 0xFFFF], power, "big"))
    with pytest.raises(ValueError):
        decode([1], f32, "big")


@given(
    value=st.floats(min_value=0, max_value=1e7, allow_nan=False, width=32),
    order=st.sampled_from(["big", "little"]),
)
def test_encode_decode_float32_roundtrip(value: float, order: Any) -> None:
    reg = Register(0, "float32")
    assert decode(encode(value, reg, order), reg, order) == value


@given(raw=st.integers(min_value=0, max_value=2**63), order=st.sampled_from(["big", "little"]))
def test_encode_decode_uint64_roundtrip(raw: int, order: Any) -> None:
    reg = Register(0, "uint64", scale=0.01)
    assert decode(encode(raw * 0.01, reg, order), reg, order) == pytest.approx(raw * 0.01)


# --------------------------------------------------------------------------- pymodbus server


class MeterServer:
    """A pymodbus server thread whose device holds one meter model's registers."""

    def __init__(
        self,
        rmap: RegisterMap,
        order: Any,
        values: dict[str, float],
        make_server: Callable[[Any], Any] | None = None,
    ) -> None:
        self.rmap, self.order = rmap, order
        self.fc = 4 if rmap.function == "input" else 3
        table = [
            SimData(
                reg.address, values=encode(values[name], reg, order), datatype=DataType.REGISTERS
            )
            for name, reg in self._registers()
            if name in values
        ]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        dummy = [SimData(0xF000, values=[0], datatype=DataType.REGISTERS)]
        holding, inputs = (table, dummy) if self.fc == 3 else (dummy, table)
        blocks = (bits, list(bits), holding, inputs)
        device = SimDevice(id=1, simdata=blocks)
        factory = make_server or (lambda dev: ModbusTcpServer(dev, address=("127.0.0.1", 0)))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.server: Any = None

        async def main() -> None:
            self.server = factory(device)
            await self.server.serve_forever(background=True)
            ready.set()
            await self.server.serving

        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(main(),), daemon=True
        )
        self.thread.start()
        assert ready.wait(5), "Modbus server did not start"

    def _registers(self) -> list[tuple[str, Register]]:
        pairs = [
            ("energy_kwh", self.rmap.energy_kwh),
            ("power_w", self.rmap.power_w),
            ("voltage_v", self.rmap.voltage_v),
        ]
        return [(name, reg) for name, reg in pairs if reg is not None]

    @property
    def port(self) -> int:
        return int(self.server.transport.sockets[0].getsockname()[1])

    def set(self, name: str, value: float) -> None:
        reg = dict(self._registers())[name]
        words = encode(value, reg, self.order)
        fut = asyncio.run_coroutine_threadsafe(
            self.server.context.async_setValues(1, self.fc, reg.address, words), self.loop
        )
        assert fut.result(5) is None

    def set_words(self, name: str, words: list[int]) -> None:
        reg = dict(self._registers())[name]
        fut = asyncio.run_coroutine_threadsafe(
            self.server.context.async_setValues(1, self.fc, reg.address, words), self.loop
        )
        assert fut.result(5) is None

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(5)
        self.thread.join(5)
        self.loop.close()


GOOD = {"energy_kwh": 1234.5, "power_w": 7360.25, "voltage_v": 231.5}


@pytest.fixture
def sdm630() -> Iterator[MeterServer]:
    srv = MeterServer(register_map("sdm630"), "big", GOOD)
    yield srv
    srv.stop()


def tcp_meter(srv: MeterServer, **kwargs: Any) -> ModbusMeter:
    return ModbusMeter(
        srv.rmap.model, "tcp", host="127.0.0.1", port=srv.port, timeout_s=1.0, **kwargs
    )


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize("model", ["sdm630", "sdm72", "sdm72v1", "abb_b23"])
def test_reads_every_model_and_word_order_over_tcp(model: str, order: str) -> None:
    rmap = MODELS[model]
    srv = MeterServer(rmap, order, GOOD)
    try:
        meter = tcp_meter(srv, word_order=order)
        reading = meter.read()
        assert reading.energy_kwh == pytest.approx(1234.5)
        assert reading.power_w == pytest.approx(7360.25)
        if rmap.voltage_v is None:
            assert reading.voltage_v is None
        else:
            assert reading.voltage_v == pytest.approx(231.5)
        assert meter.health().ok
        # the other word order gives garbage, which the plausibility checks reject
        other = "little" if order == "big" else "big"
        wrong = tcp_meter(srv, word_order=other)
        if rmap.voltage_v is not None:
            with pytest.raises(DriverError, match="implausible"):
                wrong.read()
        meter.shutdown()
        wrong.shutdown()
    finally:
        srv.stop()


def test_default_word_order_and_measured_read_time(sdm630: MeterServer) -> None:
    meter = tcp_meter(sdm630)
    meter.read()  # connect
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        meter.read()
    per_reading_ms = (time.perf_counter() - start) * 1000 / n
    print(f"Modbus TCP: {per_reading_ms:.2f} ms per reading (3 requests)")
    assert per_reading_ms < 200
    meter.shutdown()


def test_implausible_readings_are_rejected_counted_and_recovered(
    sdm630: MeterServer, caplog: pytest.LogCaptureFixture
) -> None:
    meter = tcp_meter(sdm630, max_failures=3)
    assert meter.read().energy_kwh == pytest.approx(1234.5)

    sdm630.set("energy_kwh", 1200.0)  # backwards
    with pytest.raises(DriverError, match="backwards"):
        meter.read()
    assert meter.health().ok  # one failure is not yet a fault
    sdm630.set("energy_kwh", 1235.0)
    sdm630.set("voltage_v", 50.0)
    with pytest.raises(DriverError, match="voltage"):
        meter.read()
    sdm630.set("voltage_v", 400.0)
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="drivers.meter.modbus"),
        pytest.raises(DriverError, match="voltage"),
    ):
        meter.read()
    health = meter.health()
    assert not health.ok and health.fault == "meter_failed"
    assert health.detail is not None
    assert "SDM630" in health.detail and f"127.0.0.1:{sdm630.port}" in health.detail
    assert "check" in health.detail
    assert any("%" in str(r.msg) and "unusable reading" in r.getMessage() for r in caplog.records)
    assert meter.info()["failures_in_a_row"] == 3

    sdm630.set("voltage_v", 229.0)
    reading = meter.read()  # recovery
    assert reading.energy_kwh == pytest.approx(1235.0)
    assert meter.health().ok

    sdm630.set("energy_kwh", float("nan"))
    with pytest.raises(DriverError, match="energy"):
        meter.read()
    sdm630.set("energy_kwh", 1236.0)
    sdm630.set("power_w", float("inf"))
    with pytest.raises(DriverError, match="power"):
        meter.read()
    sdm630.set("power_w", 0.0)
    assert meter.read().power_w == 0.0
    # the rejected readings did not move the reference: 1236 > 1235 is accepted
    assert meter.info()["last_energy_kwh"] == pytest.approx(1236.0)
    meter.shutdown()


def test_abb_not_available_marker_is_rejected() -> None:
    srv = MeterServer(register_map("abb_b23"), "big", GOOD)
    try:
        meter = tcp_meter(srv)
        meter.read()
        srv.set_words("voltage_v", [0xFFFF, 0xFFFF])
        with pytest.raises(DriverError, match="voltage"):
            meter.read()
        meter.shutdown()
    finally:
        srv.stop()


def test_unreachable_meter_fails_then_recovers(sdm630: MeterServer) -> None:
    meter = ModbusMeter(
        "sdm630",
        "tcp",
        host="127.0.0.1",
        port=sdm630.port,
        timeout_s=0.3,
        retries=0,
        max_failures=2,
    )
    assert meter.read().voltage_v == pytest.approx(231.5)
    port = sdm630.port
    sdm630.stop()
    for _ in range(2):
        with pytest.raises(DriverError):
            meter.read()
    assert meter.health().fault == "meter_failed"
    # a new server on the same port: the meter reconnects by itself
    revived = MeterServer(
        register_map("sdm630"),
        "big",
        GOOD,
        make_server=lambda dev: ModbusTcpServer(dev, address=("127.0.0.1", port)),
    )
    try:
        assert meter.read().energy_kwh == pytest.approx(1234.5)
        assert meter.health().ok
    finally:
        meter.shutdown()
        revived.stop()


def test_exception_response_is_a_failure() -> None:
    # the server lacks the voltage register: the device answers "illegal data address"
    srv = MeterServer(register_map("sdm630"), "big", {"energy_kwh": 1.0, "power_w": 0.0})
    try:
        meter = tcp_meter(srv, max_failures=1)
        with pytest.raises(DriverError, match="illegal data address"):
            meter.read()
        assert meter.health().fault == "meter_failed"
        meter.shutdown()
    finally:
        srv.stop()


def test_constructor_does_no_io_and_validates() -> None:
    meter = ModbusMeter("sdm630", "tcp", host="192.0.2.1", port=1502)  # TEST-NET: never reached
    assert meter.health().ok and meter.info()["failures_in_a_row"] == 0
    meter.shutdown()
    ModbusMeter("sdm630", "rtu", port="/dev/does-not-exist", baudrate=9600, parity="E")
    with pytest.raises(ConfigError):
        ModbusMeter("nope", "tcp", host="x")
    with pytest.raises(ConfigError):
        ModbusMeter("sdm630", "rtu")  # no serial port
    with pytest.raises(ConfigError):
        ModbusMeter("sdm630", "rtu", port="/dev/x", parity="X")
    with pytest.raises(ConfigError):
        ModbusMeter("sdm630", "udp", host="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ModbusMeter("sdm630", "tcp", host="x", word_order="middle")  # type: ignore[arg-type]


def test_missing_serial_port_is_a_failure(tmp_path: Any) -> None:
    meter = ModbusMeter(
        "sdm630", "rtu", port=str(tmp_path / "ttyUSB7"), max_failures=1, timeout_s=0.2
    )
    with pytest.raises(DriverError):
        meter.read()
    detail = meter.health().detail or ""
    assert "ttyUSB7" in detail and "RS-485" in detail


# --------------------------------------------------------------------------- RTU over a pty pair


@pytest.fixture
def pty_bridge() -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals joined back to back: bytes written to one slave appear on the other."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (m1, m2):
        tty.setraw(fd)

    def pump(src: int, dst: int) -> None:
        while True:
            try:
                data = os.read(src, 1024)
            except OSError:
                return
            if not data:
                return
            os.write(dst, data)

    for src, dst in ((m1, m2), (m2, m1)):
        threading.Thread(target=pump, args=(src, dst), daemon=True).start()
    yield os.ttyname(s1), os.ttyname(s2)
    for fd in (s1, s2, m1, m2):
        os.close(fd)


def test_rtu_over_pty_with_pymodbus_serial_server(pty_bridge: tuple[str, str]) -> None:
    server_port, client_port = pty_bridge
    srv = MeterServer(
        register_map("sdm630"),
        "big",
        GOOD,
        make_server=lambda dev: ModbusSerialServer(dev, port=server_port, baudrate=9600),
    )
    try:
        meter = ModbusMeter(
            "sdm630", "rtu", port=client_port, baudrate=9600, parity="N", device_id=1, timeout_s=1.0
        )
        reading = meter.read()
        assert reading.energy_kwh == pytest.approx(1234.5)
        assert reading.voltage_v == pytest.approx(231.5)
        n = 10
        start = time.perf_counter()
        for _ in range(n):
            meter.read()
        per_reading_ms = (time.perf_counter() - start) * 1000 / n
        print(f"Modbus RTU over pty: {per_reading_ms:.1f} ms per reading (3 requests)")
        assert meter.health().ok
        srv.set("energy_kwh", 1000.0)
        with pytest.raises(DriverError, match="backwards"):
            meter.read()
        meter.shutdown()
    finally:
        srv.stop()


# --------------------------------------------------------------------------- SimMeter


def test_sim_meter_integrates_exactly_across_changes() -> None:
    clock = FakeClock()
    meter = SimMeter(power_kw=11.0, initial_kwh=100.0, clock=clock)
    clock.advance(600)
    assert meter.read().energy_kwh == 100.0  # not flowing
    meter.set_flowing(True)
    clock.advance(1800)
    r = meter.read()
    assert r.energy_kwh == pytest.approx(105.5)
    assert r.power_w == 11000.0 and r.voltage_v == 230.0
    clock.advance(1800)
    meter.set_flowing(False)  # the half hour before the change still counts
    clock.advance(3600)
    r = meter.read()
    assert r.energy_kwh == pytest.approx(111.0)
    assert r.power_w == 0.0
    meter.set_flowing(True)
    meter.set_power_kw(7.4)
    clock.advance(3600)
    assert meter.read().energy_kwh == pytest.approx(118.4)


def test_sim_meter_time_factor_failure_mode_and_relay_wiring() -> None:
    clock = FakeClock()
    meter = SimMeter(power_kw=6.0, time_factor=60.0, voltage_v=228.0, clock=clock)
    relay = SimRelay(clock=clock)
    relay.on_change(meter.set_flowing)
    relay.close()
    clock.advance(60)  # one minute at x60 = one hour
    relay.open()
    clock.advance(60)
    assert meter.read().energy_kwh == pytest.approx(6.0)
    assert not meter.is_flowing()
    meter.set_failing(True)
    with pytest.raises(DriverError):
        meter.read()
    assert meter.health().fault == "meter_failed"
    meter.set_failing(False)
    assert meter.read().voltage_v == 228.0 and meter.health().ok
    with pytest.raises(ValueError):
        SimMeter(power_kw=-1)
