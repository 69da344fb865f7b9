"""The driver layer as a whole: the import rule (``drivers/`` imports nothing from ``agent/``),
the one exception tree, size limits, and that every driver implements its whole Protocol -
``Relay.check_feedback``/``reset`` with the documented semantics on every relay driver,
``simulated`` on every device, ``RfidReader.read_once`` on every reader."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import select
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.simulator import DataType, SimData, SimDevice

import agent.clock
import agent.errors
import agent.identifiers
import agent.privacy
import drivers
import drivers.clock
import drivers.errors
import drivers.identifiers
import drivers.privacy
from drivers.clock import FakeClock
from drivers.display.base import Display
from drivers.display.framebuffer import FramebufferDisplay
from drivers.display.png import PngDisplay
from drivers.display.sim import SimDisplay
from drivers.display.terminal import TerminalDisplay
from drivers.errors import DriverError
from drivers.health import Health
from drivers.meter.base import Meter
from drivers.meter.iskra import IskraMeter
from drivers.meter.modbus import ModbusMeter
from drivers.meter.sim import SimMeter
from drivers.meter.sim_signing import SigningSimMeter
from drivers.pilot.base import Pilot
from drivers.pilot.evse_din import EvseDinPilot
from drivers.pilot.plug import PilotPlug
from drivers.pilot.sim import SimPilot
from drivers.plug.base import PlugSensor
from drivers.plug.gpio import GpioPlug
from drivers.plug.sim import SimPlug
from drivers.qr.base import QrReader
from drivers.qr.camera import CameraQrReader
from drivers.qr.files import FilesQrReader
from drivers.qr.sim import SimQrReader
from drivers.relay.base import Relay
from drivers.relay.feedback import STUCK_OPEN, WELDED, RelayFault, RelayFaultKind
from drivers.relay.gpio import GpioRelay
from drivers.relay.modbus_relay import ModbusRelay
from drivers.relay.serial_relay import SerialRelay
from drivers.relay.sim import SimRelay
from drivers.rfid.base import CardRead, CardType, RfidReader
from drivers.rfid.null import NullRfidReader
from drivers.rfid.pn532 import Pn532Reader
from drivers.rfid.sim import SimRfidReader
from tests.test_relay_drivers import (
    COIL,
    FEEDBACK_INPUT,
    Contactor,
    FakeChip,
    ModbusServerThread,
)

DRIVERS_DIR = Path(drivers.__file__).resolve().parent


# --------------------------------------------------------------------------- import rule


def agent_imports(source: str) -> list[str]:
    """Every import of the ``agent`` package in ``source`` (also lazy and TYPE_CHECKING ones)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            arg = node.args[0]
            if func.endswith(("import_module", "__import__")) and isinstance(arg, ast.Constant):
                names = [str(arg.value)]
        if names:
            assert isinstance(node, ast.stmt | ast.expr)
            found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] == "agent"]
    return found


def driver_sources() -> list[Path]:
    return sorted(DRIVERS_DIR.rglob("*.py"))


def test_import_scanner_catches_every_form() -> None:
    source = (
        "from __future__ import annotations\n"
        "import agent\n"
        "import agent.errors as e\n"
        "from agent.clock import Clock\n"
        "from agent import privacy\n"
        "def f():\n"
        "    from agent.identifiers import is_evse_id\n"
        "    importlib.import_module('agent.store')\n"
        "import agentur, drivers.agent\n"  # not the agent package
        "from drivers.errors import DriverError\n"
    )
    assert [hit.split(": ")[1] for hit in agent_imports(source)] == [
        "agent",
        "agent.errors",
        "agent.clock",
        "agent",
        "agent.identifiers",
        "agent.store",
    ]


def test_drivers_import_nothing_from_agent() -> None:
    sources = driver_sources()
    assert len(sources) > 30, "the scan must see the whole drivers/ tree"
    offenders = {
        str(path.relative_to(DRIVERS_DIR)): hits
        for path in sources
        if (hits := agent_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"drivers/ must not import agent/: {offenders}"


# --------------------------------------------------------------------------- errors and basics


@pytest.mark.parametrize("name", ["AgentError", "ConfigError", "DriverError", "ProtocolError"])
def test_one_exception_tree(name: str) -> None:
    assert getattr(agent.errors, name) is getattr(drivers.errors, name)
    assert name in agent.errors.__all__


def test_agent_only_errors_derive_from_the_shared_base() -> None:
    for cls in (agent.errors.BackendError, agent.errors.StoreError):
        assert issubclass(cls, drivers.errors.AgentError)
        assert not issubclass(cls, DriverError)
    assert issubclass(RelayFault, agent.errors.DriverError)
    with pytest.raises(agent.errors.AgentError):
        raise RelayFault(WELDED, "x")


def test_driver_error_kind_is_declared_and_keyword_only() -> None:
    plain = DriverError("meter gone")
    assert plain.kind is None and str(plain) == "meter gone"
    named = DriverError("reader gone", kind="reader_unavailable")
    assert named.kind == "reader_unavailable" and named.args == ("reader gone",)
    two = DriverError("a", "b")  # positional arguments stay exception args, never the kind
    assert two.kind is None and two.args == ("a", "b")
    fault = RelayFault(STUCK_OPEN, "coil dead")
    assert fault.kind == "relay_stuck_open" and fault.kind is RelayFaultKind.STUCK_OPEN
    assert fault.detail == "coil dead" and str(fault) == "relay_stuck_open: coil dead"


@pytest.mark.parametrize(
    ("agent_module", "drivers_module", "names"),
    [
        (
            agent.clock,
            drivers.clock,
            ["Clock", "SystemClock", "FakeClock", "rfc3339", "parse_rfc3339"],
        ),
        (agent.privacy, drivers.privacy, ["mask", "mask_token"]),
        (agent.identifiers, drivers.identifiers, list(drivers.identifiers.__all__)),
    ],
)
def test_agent_basics_are_reexports(
    agent_module: Any, drivers_module: Any, names: list[str]
) -> None:
    for name in names:
        assert getattr(agent_module, name) is getattr(drivers_module, name), name
        assert name in agent_module.__all__


# --------------------------------------------------------------------------- relay rigs


class Rig(ABC):
    """One relay driver wired to a contactor whose mirror contact the test controls."""

    relay: Relay

    @abstractmethod
    def set_contact(self, mode: str) -> None:
        """``normal`` (follows the coil), ``welded`` (always closed), ``stuck_open``."""

    @abstractmethod
    def coil(self) -> bool:
        """What the driver last commanded on the device itself."""

    def cleanup(self) -> None:
        self.relay.shutdown()


class SimRig(Rig):
    def __init__(self, clock: FakeClock, feedback: bool) -> None:
        self.sim = SimRelay(clock=clock, has_feedback=feedback)
        self.relay = self.sim

    def set_contact(self, mode: str) -> None:
        self.sim.set_feedback_mode(mode)  # type: ignore[arg-type]

    def coil(self) -> bool:
        return bool(self.sim.switch_log) and self.sim.switch_log[-1][1]


class GpioRig(Rig):
    def __init__(self, clock: FakeClock, feedback: bool) -> None:
        self.chip = FakeChip(Contactor(clock))
        self.relay = GpioRelay(
            "/dev/gpiochip0",
            17,
            feedback_line=27 if feedback else None,
            clock=clock,
            sleep=clock.advance,
            line_factory=self.chip,
        )

    def set_contact(self, mode: str) -> None:
        self.chip.contactor.mode = mode

    def coil(self) -> bool:
        return self.chip.contactor.coil


class SerialRig(Rig):
    """An LCUS board on a pty; the contact follows the last command the board received."""

    def __init__(self, clock: FakeClock, feedback: bool) -> None:
        self.master, self.slave = os.openpty()
        self.mode = "normal"
        self._coil = False
        self.relay = SerialRelay(
            os.ttyname(self.slave),
            feedback=self.contact if feedback else None,
            feedback_timeout_ms=20,
            clock=clock,
            sleep=clock.advance,
        )

    def contact(self) -> bool:
        self.coil()
        return self.mode == "welded" or (self.mode == "normal" and self._coil)

    def set_contact(self, mode: str) -> None:
        self.mode = mode

    def coil(self) -> bool:
        data = b""
        while select.select([self.master], [], [], 0.05)[0]:
            data += os.read(self.master, 64)
        if len(data) >= 4:
            self._coil = data[-4:] == bytes.fromhex("A00101A2")
        return self._coil

    def cleanup(self) -> None:
        super().cleanup()
        os.close(self.master)
        os.close(self.slave)


class ModbusRig(Rig):
    """A real pymodbus server: the discrete input follows the coil as the contact mode says."""

    def __init__(self, clock: FakeClock, feedback: bool) -> None:
        self.mode = "normal"
        self.srv = ModbusServerThread(self._device)
        self.relay = ModbusRelay(
            "tcp",
            host="127.0.0.1",
            port=self.srv.port,
            coil=COIL,
            feedback_input=FEEDBACK_INPUT if feedback else None,
            feedback_timeout_ms=50,
            poll_ms=10,
            clock=clock,
            sleep=clock.advance,
        )

    def _contact(self, coil: bool) -> bool:
        return self.mode == "welded" or (self.mode == "normal" and coil)

    def _device(self, srv: ModbusServerThread) -> Any:
        async def action(
            fc: int, _start: int, _addr: int, _count: int, _regs: list[int], values: Any
        ) -> None:
            if fc == 5 and values is not None:  # write single coil: the contactor follows
                contact = self._contact(bool(values[0]))
                await srv.server.context.async_setValues(1, 2, FEEDBACK_INPUT, [contact])

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        regs = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
        return SimDevice(id=1, simdata=(bits, list(bits), regs, list(regs)), action=action)

    def set_contact(self, mode: str) -> None:
        self.mode = mode
        self.srv.set(2, FEEDBACK_INPUT, [self._contact(self.coil())])

    def coil(self) -> bool:
        return bool(self.srv.get(1, COIL)[0])

    def cleanup(self) -> None:
        super().cleanup()
        self.srv.stop()


RIGS: dict[str, Callable[[FakeClock, bool], Rig]] = {
    "sim": SimRig,
    "gpio": GpioRig,
    "serial": SerialRig,
    "modbus": ModbusRig,
}


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    made = RIGS[request.param](FakeClock(), True)
    yield made
    made.cleanup()


@pytest.fixture(params=sorted(RIGS))
def rig_without_feedback(request: pytest.FixtureRequest) -> Iterator[Rig]:
    made = RIGS[request.param](FakeClock(), False)
    yield made
    made.cleanup()


def test_every_relay_driver_has_a_rig() -> None:
    relay_classes = {c for c in concrete_driver_classes() if "check_feedback" in dir(c)}
    assert relay_classes == {SimRelay, GpioRelay, SerialRelay, ModbusRelay}
    assert len(RIGS) == len(relay_classes)


def test_check_feedback_is_healthy_while_the_contact_follows(rig: Rig) -> None:
    rig.relay.close()
    assert rig.relay.check_feedback() == Health.healthy()
    rig.relay.open()
    assert rig.relay.check_feedback() == Health.healthy()
    assert rig.relay.feedback_closed() is False


def test_check_feedback_latches_a_contact_that_welds_between_switches(rig: Rig) -> None:
    rig.relay.close()
    rig.relay.open()
    rig.set_contact("welded")
    health = rig.relay.check_feedback()
    assert not health.ok and health.fault == "relay_welded" and health.detail
    rig.set_contact("normal")
    assert rig.relay.check_feedback() == health  # latched until reset()
    assert rig.relay.health() == health
    with pytest.raises(RelayFault) as exc:
        rig.relay.close()  # refused while latched
    assert exc.value.kind == "relay_welded"
    assert not rig.coil()


def test_check_feedback_opens_a_contactor_that_dropped_out(rig: Rig) -> None:
    rig.relay.close()
    assert rig.coil()
    rig.set_contact("stuck_open")
    health = rig.relay.check_feedback()
    assert health.fault == "relay_stuck_open"
    assert not rig.relay.is_closed()
    assert not rig.coil(), "the coil must be driven off after a drop-out"


def test_reset_is_refused_while_welded_and_clears_once_open(rig: Rig) -> None:
    rig.relay.close()
    rig.set_contact("welded")
    with pytest.raises(RelayFault) as opened:
        rig.relay.open()
    assert opened.value.kind == "relay_welded"
    with pytest.raises(RelayFault) as refused:
        rig.relay.reset()
    assert refused.value.kind == "relay_welded" and "reset refused" in str(refused.value)
    assert rig.relay.health().fault == "relay_welded"
    rig.set_contact("normal")
    rig.relay.reset()
    assert rig.relay.health() == Health.healthy()
    rig.relay.close()  # works again
    assert rig.relay.is_closed() and rig.coil()
    rig.relay.open()


def test_reset_clears_a_stuck_open_fault(rig: Rig) -> None:
    rig.set_contact("stuck_open")
    with pytest.raises(RelayFault) as exc:
        rig.relay.close()
    assert exc.value.kind == "relay_stuck_open"
    assert not rig.coil()
    rig.relay.reset()  # the feedback reads open: allowed
    assert rig.relay.check_feedback().ok


def test_reset_without_a_latched_fault_is_a_no_op(rig: Rig) -> None:
    rig.relay.reset()
    assert rig.relay.health() == Health.healthy()
    rig.relay.close()
    rig.relay.reset()  # no fault: the closed contactor stays closed
    assert rig.relay.is_closed() and rig.coil()
    rig.relay.open()


def test_without_feedback_check_feedback_is_health(rig_without_feedback: Rig) -> None:
    relay = rig_without_feedback.relay
    assert relay.feedback_closed() is None
    relay.close()
    rig_without_feedback.set_contact("stuck_open")  # cannot be seen without a mirror contact
    assert relay.check_feedback() == relay.health() == Health.healthy()
    assert relay.is_closed()
    relay.open()
    relay.reset()
    assert relay.check_feedback().ok


def test_check_feedback_reports_an_unreadable_feedback_and_does_not_raise() -> None:
    clock = FakeClock()
    gpio = GpioRig(clock, True)
    gpio.relay.close()
    gpio.chip.read_error = OSError(5, "Input/output error")
    health = gpio.relay.check_feedback()
    assert health.fault == "relay_unavailable" and "Input/output error" in str(health.detail)
    gpio.chip.read_error = None
    gpio.cleanup()


def test_check_feedback_reports_a_sim_device_error_through_health() -> None:
    relay = SimRelay(clock=FakeClock())
    relay.set_failing(True)
    with pytest.raises(DriverError) as exc:
        relay.close()
    assert exc.value.kind is None  # a plain device failure names no fault: callers default
    assert relay.check_feedback() == relay.health()
    assert relay.health().fault == "relay_unavailable"


# --------------------------------------------------------------------------- simulated


def concrete_driver_classes() -> set[type]:
    """Every concrete class under drivers/ with a public ``health()`` (the device drivers)."""
    found: set[type] = set()
    for info in pkgutil.walk_packages([str(DRIVERS_DIR)], prefix="drivers."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or inspect.isabstract(cls):
                continue
            if getattr(cls, "_is_protocol", False) or not callable(getattr(cls, "health", None)):
                continue
            found.add(cls)
    found.discard(importlib.import_module("drivers.display.render").ScreenState)  # a helper
    return found


def make_rfid() -> list[RfidReader]:
    return [SimRfidReader(), NullRfidReader(), Pn532Reader("/dev/ttyUSB-none")]


def make_qr(tmp_path: Path) -> list[QrReader]:
    return [SimQrReader(), FilesQrReader(tmp_path), CameraQrReader(0)]


def make_relays() -> list[Relay]:
    return [
        SimRelay(),
        GpioRelay("/dev/gpiochip0", 17),
        SerialRelay("/dev/ttyUSB-none"),
        ModbusRelay("tcp", host="192.0.2.1"),
    ]


def make_meters(tmp_path: Path) -> list[Meter]:
    return [
        SimMeter(),
        ModbusMeter("sdm630", "tcp", host="192.0.2.1"),
        SigningSimMeter(key_file=tmp_path / "meter-key.pem"),  # no I/O before prepare()
        IskraMeter("tcp", host="192.0.2.1"),
    ]


def make_plugs() -> list[PlugSensor]:
    return [SimPlug(), GpioPlug("/dev/gpiochip0", 22), PilotPlug(EvseDinPilot(port="/dev/none"))]


def make_pilots() -> list[Pilot]:
    return [SimPilot(), EvseDinPilot("rtu", port="/dev/ttyUSB-none")]


def make_displays(tmp_path: Path) -> list[Display]:
    return [
        SimDisplay(),
        PngDisplay(tmp_path / "screen.png"),
        TerminalDisplay(),
        FramebufferDisplay("/dev/fb-none"),
    ]


PROTOCOLS: list[tuple[type, Callable[[Path], list[Any]]]] = [
    (RfidReader, lambda _p: make_rfid()),
    (QrReader, make_qr),
    (Relay, lambda _p: make_relays()),
    (Meter, make_meters),
    (PlugSensor, lambda _p: make_plugs()),
    (Pilot, lambda _p: make_pilots()),
    (Display, make_displays),
]
SIM_DRIVERS = {
    SimRfidReader, SimQrReader, SimRelay, SimMeter, SigningSimMeter, SimPlug, SimDisplay, SimPilot
}  # fmt: skip


def all_devices(tmp_path: Path) -> list[Any]:
    return [device for _, make in PROTOCOLS for device in make(tmp_path)]


def test_the_device_lists_cover_every_driver(tmp_path: Path) -> None:
    assert {type(d) for d in all_devices(tmp_path)} == concrete_driver_classes()


def test_simulated_is_true_exactly_for_the_sim_drivers(tmp_path: Path) -> None:
    devices = all_devices(tmp_path)
    simulated = {type(d) for d in devices if d.simulated is True}
    real = {type(d) for d in devices if d.simulated is False}
    assert simulated == SIM_DRIVERS
    assert real == {type(d) for d in devices} - SIM_DRIVERS
    assert NullRfidReader in real


def test_simulated_is_a_read_only_property(tmp_path: Path) -> None:
    for device in all_devices(tmp_path):
        assert isinstance(inspect.getattr_static(type(device), "simulated"), property)
        with pytest.raises(AttributeError):
            device.simulated = True


@pytest.mark.parametrize(("protocol", "make"), PROTOCOLS, ids=lambda p: getattr(p, "__name__", ""))
def test_every_driver_implements_its_whole_protocol(
    protocol: type, make: Callable[[Path], list[Any]], tmp_path: Path
) -> None:
    members = [name for name in vars(protocol) if not name.startswith("_")]
    assert "health" in members and "simulated" in members
    for device in make(tmp_path):
        for name in members:
            declared = inspect.getattr_static(protocol, name)
            actual = inspect.getattr_static(type(device), name, None)
            assert actual is not None, f"{type(device).__name__} lacks {protocol.__name__}.{name}"
            if isinstance(declared, property):
                assert isinstance(actual, property), f"{type(device).__name__}.{name}"
            else:
                assert callable(getattr(device, name)), f"{type(device).__name__}.{name}"


def test_relay_and_reader_protocols_declare_the_new_members() -> None:
    assert {"check_feedback", "reset", "simulated"} <= set(vars(Relay))
    assert {"read_once", "simulated"} <= set(vars(RfidReader))
    params = inspect.signature(RfidReader.read_once).parameters
    assert list(params) == ["self", "timeout_s"]


# --------------------------------------------------------------------------- read_once


def test_every_reader_has_read_once_with_the_protocol_signature() -> None:
    for reader in make_rfid():
        params = list(inspect.signature(reader.read_once).parameters)
        assert params == ["timeout_s"], type(reader).__name__


def test_sim_reader_read_once_returns_the_next_tap_without_consuming_it() -> None:
    reader = SimRfidReader()
    seen: list[CardRead] = []
    reader.start(seen.append)
    timer = threading.Timer(0.05, reader.tap, args=("04A224B2", CardType.ULTRALIGHT))
    timer.start()
    got = reader.read_once(5.0)
    timer.join()
    assert got is not None
    card, seconds = got
    assert card == CardRead("04A224B2", CardType.ULTRALIGHT)
    assert 0.0 < seconds < 5.0
    assert seen == [card]  # on_card still got it


def test_sim_reader_read_once_times_out_with_none() -> None:
    reader = SimRfidReader()
    assert reader.read_once(0.05) is None
    reader.tap("04A224B2")  # nobody waiting any more: nothing is kept for a later call
    assert reader.read_once(0.01) is None


def test_null_reader_read_once_says_why_it_cannot_read() -> None:
    with pytest.raises(DriverError, match=r'no RFID reader is fitted \(rfid.driver = "none"\)'):
        NullRfidReader().read_once(1.0)


def test_pn532_read_once_raises_driver_error_for_an_unusable_path() -> None:
    reader = Pn532Reader("tty:USB0:acr122")
    with pytest.raises(DriverError, match="not pn532"):
        reader.read_once(0.1)
    assert not reader.running
