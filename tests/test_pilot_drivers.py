"""Pilot drivers: the sim pilot and its car; the EVSE DIN board driver against a real pymodbus
RTU server on a pseudo-terminal pair (as the meters are tested)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.clock import FakeClock
from agent.config import EvseConfig
from agent.errors import ConfigError
from agent.hardware import build_evse
from drivers.meter.sim import SimMeter
from drivers.pilot.base import Pilot, PilotState
from drivers.pilot.evse_din import EvseDinPilot
from drivers.pilot.plug import PilotPlug
from drivers.pilot.sim import SimPilot
from drivers.plug.base import PlugSensor
from tests.helpers import wait_until
from tests.test_meter_drivers import pty_bridge  # noqa: F401  (a fixture)

# ---------------------------------------------------------------------------- sim


def test_sim_pilot_and_its_car() -> None:
    pilot = SimPilot(car_max_a=10.0)
    seen: list[PilotState] = []
    draws: list[float] = []
    pilot.start(seen.append)
    pilot.on_draw(draws.append)
    assert pilot.state() is PilotState.A
    pilot.plug()
    pilot.set_current(16)
    assert (pilot.state(), pilot.draw_a(), pilot.offered()) == (PilotState.C, 10.0, 16.0)
    pilot.set_current(6)
    assert pilot.draw_a() == 6.0
    with pytest.raises(ValueError):
        pilot.set_current(4)  # not a valid offer: unchanged
    assert pilot.offered() == 6.0
    pilot.set_current(0)  # paused: the car goes back to B and draws nothing
    assert (pilot.state(), pilot.draw_a()) == (PilotState.B, 0.0)
    pilot.set_current(32)
    pilot.force(PilotState.E)
    assert (pilot.state(), pilot.draw_a()) == (PilotState.E, 0.0)
    pilot.release()
    pilot.set_car_max(20.0)
    assert pilot.draw_a() == 20.0
    pilot.unplug()
    assert seen == ["B", "C", "B", "C", "E", "C", "A"]
    assert draws == [10.0, 6.0, 0.0, 10.0, 0.0, 10.0, 20.0, 0.0]
    checked: Pilot = pilot
    assert checked.simulated and checked.health().ok


def test_the_pilot_is_the_plug_sensor_and_the_sim_meter_counts_the_car() -> None:
    cfg = EvseConfig.model_validate(
        {"id": "DE*ICE*E000001*1", "pilot": {"driver": "sim", "car_max_a": 16}, "phases": 1}
    )
    relay, meter, plug = build_evse(cfg, clock=FakeClock())
    assert isinstance(plug, PilotPlug) and isinstance(meter, SimMeter)
    sensor: PlugSensor = plug
    pilot = plug.pilot
    assert isinstance(pilot, SimPilot)
    assert not sensor.is_plugged()
    pilot.plug()
    assert sensor.is_plugged()
    pilot.set_current(10)
    relay.close()
    reading = meter.read()
    assert reading.power_w == pytest.approx(10 * 230.0)  # 1 phase, 10 A
    pilot.set_current(0)
    assert meter.read().power_w == 0.0
    relay.open()


# ---------------------------------------------------------------------------- EVSE DIN


class EvseDinBoard:
    """A pymodbus RTU server holding an EVSE DIN board's registers (1000-1006)."""

    def __init__(self, port: str) -> None:
        # 1000 configured A, 1001 actual A, 1002 vehicle state, 1003 PP limit, 1004 turn off,
        # 1005 firmware, 1006 EVSE state
        holding = [SimData(1000, values=[0, 0, 1, 32, 0, 18, 1], datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        inputs = [SimData(0xF000, values=[0], datatype=DataType.REGISTERS)]
        device = SimDevice(id=1, simdata=(bits, list(bits), holding, inputs))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.server: Any = None

        async def main() -> None:
            self.server = ModbusSerialServer(device, port=port, baudrate=9600)
            await self.server.serve_forever(background=True)
            ready.set()
            await self.server.serving

        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(main(),), daemon=True
        )
        self.thread.start()
        assert ready.wait(5), "Modbus server did not start"

    def set(self, address: int, value: int) -> None:
        fut = asyncio.run_coroutine_threadsafe(
            self.server.context.async_setValues(1, 3, address, [value]), self.loop
        )
        fut.result(5)

    def get(self, address: int) -> int:
        fut = asyncio.run_coroutine_threadsafe(
            self.server.context.async_getValues(1, 3, address, 1), self.loop
        )
        return int(fut.result(5)[0])

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(5)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def board(pty_bridge: tuple[str, str]) -> Iterator[tuple[EvseDinBoard, str]]:  # noqa: F811
    server_port, client_port = pty_bridge
    srv = EvseDinBoard(server_port)
    yield srv, client_port
    srv.stop()


def test_evse_din_board_over_rtu(board: tuple[EvseDinBoard, str]) -> None:
    srv, port = board
    pilot = EvseDinPilot("rtu", port=port, device_id=1, poll_interval_s=0.05, timeout_s=0.5)
    seen: list[PilotState] = []
    pilot.start(seen.append)
    try:
        assert pilot.state() is PilotState.A and pilot.firmware == 18  # known when start returns
        srv.set(1002, 2)  # a car: B
        wait_until(lambda: seen[-1:] == [PilotState.B], 5, "state B")
        pilot.set_current(16)  # written by the poll thread, the caller does not wait
        wait_until(lambda: srv.get(1000) == 16, 5, "register 1000 = 16")
        wait_until(lambda: pilot.offered() == 16.0, 5, "16 A confirmed")
        srv.set(1002, 3)
        wait_until(lambda: seen[-1:] == [PilotState.C], 5, "state C")
        srv.set(1002, 4)
        wait_until(lambda: seen[-1:] == [PilotState.D], 5, "state D")
        pilot.set_current(0)
        wait_until(lambda: srv.get(1000) == 0, 5, "register 1000 = 0")
        srv.set(1002, 9)  # not a vehicle state: treated as F, unhealthy
        wait_until(lambda: seen[-1:] == [PilotState.F], 5, "state F")
        assert not pilot.health().ok and "not 1-5" in (pilot.health().detail or "")
        srv.set(1002, 5)
        wait_until(lambda: seen[-1:] == [PilotState.E], 5, "state E")
        assert pilot.health().ok
        srv.set(1000, 10)  # someone else changed the current: set back to what is wanted
        wait_until(lambda: srv.get(1000) == 0, 5, "register 1000 restored")
        with pytest.raises(ValueError):
            pilot.set_current(5)
    finally:
        pilot.stop()
    assert seen == ["B", "C", "D", "F", "E"]


def test_evse_din_board_that_does_not_answer_is_state_f(tmp_path: Any) -> None:
    pilot = EvseDinPilot("rtu", port=str(tmp_path / "no-such-tty"), timeout_s=0.1)
    assert pilot.state() is PilotState.F  # nothing read yet (the constructor does no I/O)
    assert pilot.poll_once() is PilotState.F
    health = pilot.health()
    assert not health.ok and health.fault == "pilot_failed"
    with pytest.raises(ConfigError):
        EvseDinPilot("rtu", port="/dev/ttyX", device_id=300)
