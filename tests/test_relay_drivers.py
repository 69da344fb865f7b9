"""Relay drivers: feedback verification (welded / stuck open), GPIO (fake chip and the real gpiod
module at its boundary), serial boards on a pty, Modbus coils against a real pymodbus server, and
the simulated relay."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.clock import FakeClock, parse_rfc3339
from agent.errors import ConfigError, DriverError
from drivers.gpio_lines import GpiodLineFactory
from drivers.relay.feedback import RelayFault, verify_feedback
from drivers.relay.gpio import GpioRelay
from drivers.relay.modbus_relay import ModbusRelay
from drivers.relay.serial_relay import SerialRelay, build_command
from drivers.relay.sim import SimRelay

# --------------------------------------------------------------------------- fake GPIO chip


@dataclass
class Contactor:
    """A physical contactor behind a fake chip: feedback follows the coil after ``delay_s``."""

    clock: FakeClock
    delay_s: float = 0.02
    mode: str = "normal"  # normal | welded | stuck_open
    coil: bool = False
    coil_changed_at: float = 0.0

    def drive(self, value: bool) -> None:
        if value != self.coil:
            self.coil = value
            self.coil_changed_at = self.clock.monotonic()

    def contact_closed(self) -> bool:
        if self.mode == "welded":
            return True
        if self.mode == "stuck_open":
            return False
        settled = self.clock.monotonic() - self.coil_changed_at >= self.delay_s
        return self.coil if settled else not self.coil


@dataclass
class FakeLine:
    chip: FakeChip
    offset: int
    direction: str
    released: bool = False

    def set_value(self, value: bool) -> None:
        assert not self.released, "set on a released line"
        assert self.direction == "output"
        self.chip.writes.append((self.offset, value))
        self.chip.contactor.drive(value)

    def get_value(self) -> bool:
        assert not self.released, "read of a released line"
        if self.chip.read_error is not None:
            raise self.chip.read_error
        if self.direction == "output":
            return self.chip.contactor.coil
        return self.chip.contactor.contact_closed()

    def release(self) -> None:
        self.released = True


@dataclass
class FakeChip:
    """A LineFactory: records every request and routes lines to one contactor."""

    contactor: Contactor
    requests: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    lines: list[FakeLine] = field(default_factory=list)
    writes: list[tuple[int, bool]] = field(default_factory=list)
    read_error: OSError | None = None

    def output(self, chip_path: str, offset: int, *, active_low: bool) -> FakeLine:
        self.requests.append(("output", chip_path, offset, {"active_low": active_low}))
        line = FakeLine(self, offset, "output")
        self.lines.append(line)
        return line

    def input(self, chip_path: str, offset: int, *, active_low: bool, bias: str) -> FakeLine:
        self.requests.append(("input", chip_path, offset, {"active_low": active_low, "bias": bias}))
        line = FakeLine(self, offset, "input")
        self.lines.append(line)
        return line


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_gpio_relay(
    clock: FakeClock, *, mode: str = "normal", delay_s: float = 0.02, feedback: bool = True
) -> tuple[GpioRelay, FakeChip]:
    chip = FakeChip(Contactor(clock, delay_s=delay_s, mode=mode))
    relay = GpioRelay(
        "/dev/gpiochip0",
        17,
        feedback_line=27 if feedback else None,
        feedback_active_low=True,
        feedback_bias="pull_up",
        clock=clock,
        sleep=clock.advance,
        line_factory=chip,
    )
    return relay, chip


# --------------------------------------------------------------------------- verify_feedback


def test_verify_feedback_follows_within_timeout_without_real_sleep(clock: FakeClock) -> None:
    reads = iter([False, False, False, True])
    start = clock.monotonic()
    fault = verify_feedback(
        lambda: next(reads), True, timeout_s=0.2, clock=clock, sleep=clock.advance, poll_s=0.005
    )
    assert fault is None
    assert clock.monotonic() - start == pytest.approx(0.015)


def test_verify_feedback_welded_and_stuck_open(clock: FakeClock) -> None:
    start = clock.monotonic()
    welded = verify_feedback(lambda: True, False, timeout_s=0.2, clock=clock, sleep=clock.advance)
    assert isinstance(welded, RelayFault) and welded.kind == "relay_welded"
    assert isinstance(welded, DriverError)
    assert clock.monotonic() - start == pytest.approx(0.2)
    stuck = verify_feedback(lambda: False, True, timeout_s=0.2, clock=clock, sleep=clock.advance)
    assert stuck is not None and stuck.kind == "relay_stuck_open"


def test_verify_feedback_without_feedback_and_with_zero_timeout(clock: FakeClock) -> None:
    none = verify_feedback(lambda: None, True, timeout_s=0.2, clock=clock, sleep=clock.advance)
    assert none is None
    calls: list[int] = []

    def read() -> bool:
        calls.append(1)
        return True

    fault = verify_feedback(read, False, timeout_s=0.0, clock=clock, sleep=clock.advance)
    assert fault is not None and fault.kind == "relay_welded"
    assert len(calls) == 1


# --------------------------------------------------------------------------- GpioRelay (fake chip)


def test_gpio_relay_is_lazy_and_switches(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock)
    assert chip.requests == []  # no I/O in the constructor
    relay.close()
    assert chip.requests == [
        ("output", "/dev/gpiochip0", 17, {"active_low": False}),
        ("input", "/dev/gpiochip0", 27, {"active_low": True, "bias": "pull_up"}),
    ]
    assert relay.is_closed() and relay.feedback_closed() is True
    assert chip.writes == [(17, True)]
    relay.open()
    assert not relay.is_closed() and relay.feedback_closed() is False
    assert chip.writes == [(17, True), (17, False)]
    assert relay.health().ok


def test_gpio_relay_waits_for_slow_feedback(clock: FakeClock) -> None:
    relay, _ = make_gpio_relay(clock, delay_s=0.12)
    start = clock.monotonic()
    relay.close()
    assert 0.12 <= clock.monotonic() - start < 0.2
    assert relay.health().ok


def test_gpio_relay_detects_welded_contact(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock)
    relay.close()
    chip.contactor.mode = "welded"  # the contacts weld while carrying current
    with pytest.raises(RelayFault) as exc:
        relay.open()
    assert exc.value.kind == "relay_welded"
    assert chip.writes[-1] == (17, False)  # the coil was released regardless
    assert not relay.is_closed()
    health = relay.health()
    assert not health.ok and health.fault == "relay_welded"
    assert health.detail is not None and "line 17" in health.detail
    # latched: closing is refused, and the line is not driven
    writes = len(chip.writes)
    with pytest.raises(RelayFault):
        relay.close()
    assert len(chip.writes) == writes
    # reset is refused while the feedback still reads closed
    with pytest.raises(RelayFault):
        relay.reset()
    assert relay.health().fault == "relay_welded"
    # after repair the feedback reads open: reset succeeds and the relay works again
    chip.contactor.mode = "normal"
    relay.reset()
    assert relay.health().ok
    relay.close()
    assert relay.is_closed()


def test_gpio_relay_stuck_open_drives_the_coil_back_off(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock, mode="stuck_open")
    with pytest.raises(RelayFault) as exc:
        relay.close()
    assert exc.value.kind == "relay_stuck_open"
    assert chip.writes == [(17, True), (17, False)]
    assert not relay.is_closed()
    assert relay.health().fault == "relay_stuck_open"
    relay.reset()  # the feedback reads open, so the operator may reset
    assert relay.health().ok


def test_gpio_relay_check_feedback_between_switches(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock)
    relay.close()
    assert relay.check_feedback().ok
    chip.contactor.mode = "stuck_open"  # e.g. the coil supply failed while charging
    health = relay.check_feedback()
    assert health.fault == "relay_stuck_open"
    assert not relay.is_closed() and chip.writes[-1] == (17, False)


def test_gpio_relay_without_feedback(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock, mode="welded", feedback=False)
    relay.close()
    relay.open()  # nothing to verify against
    assert relay.feedback_closed() is None
    assert [r[0] for r in chip.requests] == ["output"]
    assert relay.health().ok


def test_gpio_relay_shutdown_opens_and_releases(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock)
    relay.close()
    relay.shutdown()
    assert chip.writes[-1] == (17, False)
    assert all(line.released for line in chip.lines)
    relay.shutdown()  # idempotent
    relay.open()  # still safe
    with pytest.raises(DriverError):
        relay.close()
    assert not relay.is_closed()


def test_gpio_relay_shutdown_with_welded_contact_still_releases(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock)
    relay.close()
    chip.contactor.mode = "welded"
    relay.shutdown()  # does not raise, but records the fault
    assert relay.health().fault == "relay_welded"
    assert all(line.released for line in chip.lines)


def test_gpio_relay_feedback_read_error_is_unavailable(clock: FakeClock) -> None:
    relay, chip = make_gpio_relay(clock)
    chip.read_error = OSError(5, "Input/output error")
    with pytest.raises(DriverError):
        relay.close()
    health = relay.health()
    assert health.fault == "relay_unavailable"
    assert chip.writes[-1] == (17, False)
    chip.read_error = None
    relay.close()
    assert relay.health().ok


# --------------------------------------------------------------------------- real gpiod module


class FakeRequest:
    def __init__(self) -> None:
        self.values: dict[int, Any] = {}
        self.released = 0

    def set_value(self, offset: int, value: Any) -> None:
        self.values[offset] = value

    def get_value(self, offset: int) -> Any:
        return self.values[offset]

    def release(self) -> None:
        self.released += 1


def test_gpiod_adapter_passes_exact_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    gpiod = pytest.importorskip("gpiod")
    calls: list[tuple[str, str | None, dict[Any, Any]]] = []
    requests: list[FakeRequest] = []

    def fake_request_lines(
        path: str, config: dict[Any, Any], consumer: str | None = None, **kwargs: Any
    ) -> FakeRequest:
        assert not kwargs
        calls.append((path, consumer, config))
        req = FakeRequest()
        for offset, settings in config.items():
            req.values[offset] = (
                settings.output_value
                if settings.direction == gpiod.line.Direction.OUTPUT
                else gpiod.line.Value.ACTIVE
            )
        requests.append(req)
        return req

    monkeypatch.setattr(gpiod, "request_lines", fake_request_lines)
    relay = GpioRelay(
        "/dev/gpiochip0",
        17,
        active_low=True,
        feedback_line=27,
        feedback_active_low=True,
        feedback_bias="pull_up",
        feedback_timeout_ms=0,
    )
    assert calls == []
    relay.close()
    assert [(path, consumer, list(config)) for path, consumer, config in calls] == [
        ("/dev/gpiochip0", "station-agent", [17]),
        ("/dev/gpiochip0", "station-agent", [27]),
    ]
    out_settings = calls[0][2][17]
    assert isinstance(out_settings, gpiod.LineSettings)
    assert out_settings.direction == gpiod.line.Direction.OUTPUT
    assert out_settings.active_low is True
    assert out_settings.output_value == gpiod.line.Value.INACTIVE
    in_settings = calls[1][2][27]
    assert in_settings.direction == gpiod.line.Direction.INPUT
    assert in_settings.active_low is True
    assert in_settings.bias == gpiod.line.Bias.PULL_UP
    assert requests[0].values[17] == gpiod.line.Value.ACTIVE
    assert relay.feedback_closed() is True
    requests[1].values[27] = gpiod.line.Value.INACTIVE
    assert relay.feedback_closed() is False
    relay.shutdown()
    assert requests[0].values[17] == gpiod.line.Value.INACTIVE
    assert [r.released for r in requests] == [1, 1]


def test_gpiod_adapter_reports_a_missing_chip(tmp_path: Path) -> None:
    pytest.importorskip("gpiod")
    relay = GpioRelay(str(tmp_path / "gpiochip9"), 17)  # the real gpiod, no chip there
    with pytest.raises(DriverError, match="gpiochip9"):
        relay.close()
    health = relay.health()
    assert not health.ok and health.fault == "relay_unavailable"
    with pytest.raises(DriverError, match="bias"):
        GpiodLineFactory().input(str(tmp_path / "x"), 1, active_low=False, bias="sideways")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SerialRelay on a pty


def test_build_command_lcus_family() -> None:
    assert build_command("A0 {ch} 01 {sum}", 1) == bytes.fromhex("A00101A2")
    assert build_command("A0 {ch} 00 {sum}", 1) == bytes.fromhex("A00100A1")
    assert build_command("A0 {ch} 01 {sum}", 2) == bytes.fromhex("A00201A3")
    wrapped = (0xA0 + 0xF0 + 0x01) & 0xFF
    assert build_command("a0{ch}01{sum}", 0xF0) == bytes([0xA0, 0xF0, 0x01, wrapped])
    assert build_command("FF 01 01", 7) == bytes.fromhex("FF0101")
    for bad in ("", "A0 {ch} 1", "A0 {chan}", "A0 {sum} {sum}", "ZZ"):
        with pytest.raises(ConfigError):
            build_command(bad, 1)
    with pytest.raises(ConfigError):
        build_command("A0 {ch}", 256)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    os.close(master)
    os.close(slave)


def read_exactly(fd: int, n: int, timeout_s: float = 2.0) -> bytes:
    data = b""
    while len(data) < n:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            break
        data += os.read(fd, n - len(data))
    return data


def assert_nothing_more(fd: int) -> None:
    ready, _, _ = select.select([fd], [], [], 0.05)
    assert not ready, f"unexpected bytes {os.read(fd, 64)!r}"


def test_serial_relay_writes_exact_bytes(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    relay = SerialRelay(path, channel=2)
    relay.close()
    assert read_exactly(master, 4) == bytes.fromhex("A00201A3")
    relay.open()
    assert read_exactly(master, 4) == bytes.fromhex("A00200A2")
    assert_nothing_more(master)
    assert relay.health().ok
    relay.shutdown()  # opens once more, then releases the port
    assert read_exactly(master, 4) == bytes.fromhex("A00200A2")


def test_serial_relay_custom_commands(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    relay = SerialRelay(
        path, channel=3, close_command="FE 05 00 {ch} FF 00", open_command="FE 05 00 {ch} 00 00"
    )
    relay.close()
    relay.open()
    assert read_exactly(master, 12) == bytes.fromhex("FE050003FF00FE0500030000")
    relay.shutdown()


def test_serial_relay_with_feedback_detects_welding(
    pty_pair: tuple[int, str], clock: FakeClock
) -> None:
    master, path = pty_pair
    contact = {"closed": True}
    relay = SerialRelay(path, feedback=lambda: contact["closed"], clock=clock, sleep=clock.advance)
    relay.close()
    with pytest.raises(RelayFault) as exc:
        relay.open()
    assert exc.value.kind == "relay_welded"
    assert read_exactly(master, 8) == bytes.fromhex("A00101A2A00100A1")
    relay.shutdown()


def test_serial_relay_missing_port(tmp_path: Path) -> None:
    relay = SerialRelay(str(tmp_path / "ttyUSB9"))  # lazy: no error yet
    with pytest.raises(DriverError, match="ttyUSB9"):
        relay.close()
    assert relay.health().fault == "relay_unavailable"
    assert not relay.is_closed()


# --------------------------------------------------------------------------- ModbusRelay (TCP)


class ModbusServerThread:
    """A pymodbus TCP server on a free loopback port, run by an asyncio loop in a thread."""

    def __init__(self, make_device: Callable[[ModbusServerThread], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Any = None
        ready = threading.Event()

        async def main() -> None:
            self.server = ModbusTcpServer(make_device(self), address=("127.0.0.1", 0))
            await self.server.serve_forever(background=True)
            ready.set()
            await self.server.serving

        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(main(),), daemon=True
        )
        self.thread.start()
        assert ready.wait(5), "Modbus server did not start"
        server: Any = self.server
        self.port: int = server.transport.sockets[0].getsockname()[1]

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def get(self, fc: int, address: int, count: int = 1) -> Any:
        return self.run(self.server.context.async_getValues(1, fc, address, count))

    def set(self, fc: int, address: int, values: list[Any]) -> None:
        assert self.run(self.server.context.async_setValues(1, fc, address, values)) is None

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.server.shutdown())
        self.thread.join(5)
        self.loop.close()


COIL, FEEDBACK_INPUT = 3, 5


@pytest.fixture
def relay_module() -> Iterator[tuple[ModbusServerThread, dict[str, bool]]]:
    """A Modbus relay module: coil 3 switches a contactor whose mirror contact is input 5."""
    state = {"welded": False}

    def make_device(srv: ModbusServerThread) -> Any:
        async def action(
            fc: int,
            _start: int,
            _addr: int,
            _count: int,
            _regs: list[int],
            values: list[Any] | None,
        ) -> None:
            if fc == 5 and values is not None:  # write single coil: the contactor follows
                closed = bool(values[0]) or state["welded"]
                await srv.server.context.async_setValues(1, 2, FEEDBACK_INPUT, [closed])

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        regs = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
        return SimDevice(id=1, simdata=(bits, list(bits), regs, list(regs)), action=action)

    srv = ModbusServerThread(make_device)
    yield srv, state
    srv.stop()


def test_modbus_relay_switches_coil_and_verifies_input(
    relay_module: tuple[ModbusServerThread, dict[str, bool]],
) -> None:
    srv, _ = relay_module
    relay = ModbusRelay(
        "tcp",
        host="127.0.0.1",
        port=srv.port,
        coil=COIL,
        feedback_input=FEEDBACK_INPUT,
        timeout_s=1.0,
    )
    relay.close()
    assert srv.get(1, COIL) == [True]
    assert relay.is_closed() and relay.feedback_closed() is True
    relay.open()
    assert srv.get(1, COIL) == [False]
    assert relay.feedback_closed() is False
    assert relay.health().ok
    relay.shutdown()


def test_modbus_relay_detects_welded_contact(
    relay_module: tuple[ModbusServerThread, dict[str, bool]],
) -> None:
    srv, state = relay_module
    relay = ModbusRelay(
        "tcp",
        host="127.0.0.1",
        port=srv.port,
        coil=COIL,
        feedback_input=FEEDBACK_INPUT,
        feedback_timeout_ms=100,
    )
    relay.close()
    state["welded"] = True
    with pytest.raises(RelayFault) as exc:
        relay.open()
    assert exc.value.kind == "relay_welded"
    assert srv.get(1, COIL) == [False]
    assert relay.health().fault == "relay_welded"
    state["welded"] = False
    srv.set(2, FEEDBACK_INPUT, [False])
    relay.reset()
    assert relay.health().ok
    relay.shutdown()


def test_modbus_relay_unreachable_and_exception_response(
    relay_module: tuple[ModbusServerThread, dict[str, bool]],
) -> None:
    srv, _ = relay_module
    bad_address = ModbusRelay("tcp", host="127.0.0.1", port=srv.port, coil=4000)
    with pytest.raises(DriverError, match="illegal data address"):
        bad_address.close()
    assert bad_address.health().fault == "relay_unavailable"
    bad_address.shutdown()
    srv.stop()
    relay = ModbusRelay("tcp", host="127.0.0.1", port=srv.port, coil=COIL, timeout_s=0.3)
    with pytest.raises(DriverError):
        relay.close()
    assert relay.health().fault == "relay_unavailable"


def test_modbus_relay_config_errors() -> None:
    with pytest.raises(ConfigError):
        ModbusRelay("tcp")  # no host
    with pytest.raises(ConfigError):
        ModbusRelay("rtu", port=502)
    with pytest.raises(ConfigError):
        ModbusRelay("tcp", host="x", device_id=300)


# --------------------------------------------------------------------------- SimRelay


def test_sim_relay_log_listeners_and_file(tmp_path: Path, clock: FakeClock) -> None:
    log_file = tmp_path / "relay.log"
    relay = SimRelay(str(log_file), clock=clock)
    seen: list[bool] = []
    relay.on_change(seen.append)
    relay.open()  # already open: no switch
    relay.close()
    clock.advance(1.5)
    relay.close()  # no change
    relay.open()
    assert seen == [True, False]
    assert [closed for _, closed in relay.switch_log] == [True, False]
    lines = log_file.read_text().splitlines()
    assert lines == [
        "2026-01-01T12:00:00.000+00:00 close",
        "2026-01-01T12:00:01.500+00:00 open",
    ]
    assert parse_rfc3339(lines[1].split()[0]) == relay.switch_log[1][0]


def test_sim_relay_feedback_modes(clock: FakeClock) -> None:
    relay = SimRelay(clock=clock)
    relay.close()
    assert relay.feedback_closed() is True
    relay.set_feedback_mode("welded")
    with pytest.raises(RelayFault) as exc:
        relay.open()
    assert exc.value.kind == "relay_welded"
    assert relay.health().fault == "relay_welded"
    assert relay.feedback_closed() is True
    relay.set_feedback_mode("normal")
    relay.reset()
    relay.set_feedback_mode("stuck_open")
    with pytest.raises(RelayFault) as exc2:
        relay.close()
    assert exc2.value.kind == "relay_stuck_open"
    assert not relay.is_closed()
    assert [closed for _, closed in relay.switch_log] == [True, False, True, False]
    no_fb = SimRelay(has_feedback=False)
    no_fb.set_feedback_mode("welded")
    no_fb.close()
    no_fb.open()
    assert no_fb.feedback_closed() is None and no_fb.health().ok
    with pytest.raises(ValueError):
        relay.set_feedback_mode("melted")  # type: ignore[arg-type]


def test_sim_relay_failure_mode() -> None:
    relay = SimRelay()
    relay.set_failing(True)
    with pytest.raises(DriverError):
        relay.close()
    assert relay.health().fault == "relay_unavailable"
    relay.set_failing(False)
    relay.close()
    assert relay.health().ok and relay.is_closed()


def test_sim_relay_log_survives_a_crash(tmp_path: Path) -> None:
    log_file = tmp_path / "relay.log"
    code = (
        "import os, sys\n"
        "from drivers.relay.sim import SimRelay\n"
        "r = SimRelay(sys.argv[1])\n"
        "r.close(); r.open(); r.close()\n"
        "os._exit(9)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(log_file)],
        env=env,
        timeout=30,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr
    lines = log_file.read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["close", "open", "close"]
    for line in lines:
        parse_rfc3339(line.split()[0])
