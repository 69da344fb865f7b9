"""Build the drivers a configuration asks for. Real drivers' libraries are imported lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.clock import Clock
from agent.config import (
    AgentConfig,
    DisplayConfig,
    EvseConfig,
    GpioRelayConfig,
    IskraMeterConfig,
    MeterConfig,
    PilotConfig,
    PlugConfig,
    QrConfig,
    RelayConfig,
    RfidConfig,
    SerialRelayConfig,
    SimMeterConfig,
    SimPilotConfig,
    SimPlugConfig,
    SimRelayConfig,
)
from agent.controller import StationDrivers
from drivers.display.base import Display
from drivers.meter.base import Meter
from drivers.meter.sim import SimMeter
from drivers.pilot.base import Pilot
from drivers.pilot.plug import PilotPlug
from drivers.pilot.sim import SimPilot
from drivers.plug.base import PlugSensor
from drivers.plug.sim import SimPlug
from drivers.qr.base import QrReader
from drivers.relay.base import Relay
from drivers.relay.sim import SimRelay
from drivers.rfid.base import RfidReader


def build_rfid(cfg: RfidConfig, clock: Clock) -> RfidReader:
    if cfg.driver == "pn532":
        from drivers.rfid.pn532 import Pn532Reader

        assert cfg.path is not None  # validated
        return Pn532Reader(
            cfg.path,
            poll_interval_s=cfg.poll_interval_s,
            debounce_s=cfg.debounce_s,
            clock=clock,
            mode=cfg.mode,
            liveness_s=cfg.liveness_s,
        )
    if cfg.driver == "none":
        from drivers.rfid.null import NullRfidReader

        return NullRfidReader()
    from drivers.rfid.sim import SimRfidReader

    return SimRfidReader()


def build_display(cfg: DisplayConfig, url_template: str) -> Display:
    if cfg.driver == "png":
        from drivers.display.png import PngDisplay

        assert cfg.path is not None  # validated
        return PngDisplay(cfg.path, cfg.width or 800, cfg.height or 480, url_template)
    if cfg.driver == "terminal":
        from drivers.display.terminal import TerminalDisplay

        return TerminalDisplay(url_template=url_template)
    if cfg.driver == "framebuffer":
        from drivers.display.framebuffer import FramebufferDisplay

        return FramebufferDisplay(
            cfg.device, width=cfg.width, height=cfg.height, url_template=url_template
        )
    from drivers.display.sim import SimDisplay

    return SimDisplay()


def build_qr(cfg: QrConfig, clock: Clock) -> QrReader | None:
    """The camera stack (OpenCV, pyzbar) is imported only when a camera is configured."""
    if cfg.driver == "none":
        return None
    if cfg.driver == "sim":
        from drivers.qr.sim import SimQrReader

        return SimQrReader(cfg.debounce_s, clock)
    if cfg.driver == "files":
        from drivers.qr.files import FilesQrReader

        assert cfg.directory is not None  # validated
        return FilesQrReader(cfg.directory, cfg.debounce_s, clock=clock)
    from drivers.qr.camera import CameraQrReader

    device: str | int = int(cfg.device) if cfg.device.isdigit() else cfg.device
    return CameraQrReader(device, cfg.width, cfg.height, cfg.scan_fps, cfg.debounce_s, clock)


def _kwargs(cfg: BaseModel) -> dict[str, Any]:
    """A device table's keys are its driver's keyword arguments (minus ``driver``)."""
    return cfg.model_dump(exclude={"driver", "poll_interval_s"})


def build_relay(cfg: RelayConfig, clock: Clock) -> Relay:
    if isinstance(cfg, SimRelayConfig):
        from drivers.relay.sim import SimRelay

        return SimRelay(log_file=str(cfg.log_file) if cfg.log_file else None, clock=clock)
    if isinstance(cfg, GpioRelayConfig):
        from drivers.relay.gpio import GpioRelay

        return GpioRelay(**_kwargs(cfg), clock=clock)
    if isinstance(cfg, SerialRelayConfig):
        from drivers.relay.serial_relay import SerialRelay

        return SerialRelay(**_kwargs(cfg), clock=clock)
    from drivers.relay.modbus_relay import ModbusRelay

    return ModbusRelay(**_kwargs(cfg), clock=clock)


def build_meter(cfg: MeterConfig, clock: Clock) -> Meter:
    if isinstance(cfg, SimMeterConfig):
        return _sim_meter(cfg, clock)
    if isinstance(cfg, IskraMeterConfig):
        from drivers.meter.iskra import IskraMeter

        return IskraMeter(**_kwargs(cfg), clock=clock)
    from drivers.meter.modbus import ModbusMeter

    return ModbusMeter(**_kwargs(cfg), clock=clock)


def _sim_meter(cfg: SimMeterConfig, clock: Clock) -> SimMeter:
    kwargs: dict[str, Any] = {
        "power_kw": cfg.power_kw,
        "initial_kwh": cfg.initial_kwh,
        "time_factor": cfg.time_factor,
        "clock": clock,
        "state_file": str(cfg.state_file) if cfg.state_file else None,
    }
    if cfg.signing and cfg.key_file is not None:
        from drivers.meter.sim_signing import SigningSimMeter

        signing = SigningSimMeter(**kwargs, key_file=cfg.key_file)
        signing.prepare()
        meter: SimMeter = signing
    else:
        meter = SimMeter(**kwargs)
    meter.load_state()
    return meter


def build_plug(cfg: PlugConfig, clock: Clock) -> PlugSensor:
    if isinstance(cfg, SimPlugConfig):
        return _sim_plug(cfg.plugged, cfg.state_file)
    from drivers.plug.gpio import GpioPlug

    return GpioPlug(**_kwargs(cfg), clock=clock)


def build_pilot(cfg: PilotConfig) -> Pilot:
    if isinstance(cfg, SimPilotConfig):
        return SimPilot(car_max_a=cfg.car_max_a)
    from drivers.pilot.evse_din import EvseDinPilot

    return EvseDinPilot(**_kwargs(cfg), poll_interval_s=cfg.poll_interval_s)


def _wire_sim_car(pilot: SimPilot, meter: SimMeter, phases: int) -> None:
    """The sim meter counts what the simulated car really draws."""

    def draw(amps: float) -> None:
        meter.set_power_kw(amps * 230.0 * phases / 1000.0)

    draw(pilot.draw_a())
    pilot.on_draw(draw)


def build_evse(cfg: EvseConfig, clock: Clock) -> tuple[Relay, Meter, PlugSensor]:
    """The EVSE's relay, meter and plug sensor; with a ``pilot`` the plug sensor is the pilot
    (a :class:`PilotPlug`, whose ``pilot`` is the pilot driver)."""
    relay = build_relay(cfg.relay, clock)
    meter = build_meter(cfg.meter, clock)
    plug: PlugSensor
    if cfg.pilot is not None:
        pilot = build_pilot(cfg.pilot)
        plug = PilotPlug(pilot)
        if isinstance(pilot, SimPilot) and isinstance(meter, SimMeter):
            _wire_sim_car(pilot, meter, cfg.phases)
    else:
        plug = build_plug(cfg.plug, clock)
    if isinstance(relay, SimRelay) and isinstance(meter, SimMeter):
        # simulated energy flows while the contactor is closed and a car is connected
        sim_meter = meter
        relay.on_change(lambda closed: sim_meter.set_flowing(closed and plug.is_plugged()))
        if isinstance(plug, SimPlug):
            plug.on_change(lambda plugged: sim_meter.set_flowing(plugged and relay.is_closed()))
    return relay, meter, plug


def _sim_plug(plugged: bool, state_file: Path | None) -> SimPlug:
    """A sim plug; with ``state_file`` the car's presence survives an agent restart."""
    if state_file is not None and state_file.exists():
        plugged = state_file.read_text().strip() == "plugged"
    plug = SimPlug(plugged=plugged)
    if state_file is not None:
        path = state_file

        def save(now_plugged: bool) -> None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("plugged\n" if now_plugged else "unplugged\n")
            os.replace(tmp, path)

        plug.on_change(save)
    return plug


def build_drivers(config: AgentConfig, clock: Clock) -> StationDrivers:
    relays: dict[str, Relay] = {}
    meters: dict[str, Meter] = {}
    plugs: dict[str, PlugSensor] = {}
    pilots: dict[str, Pilot] = {}
    for ec in config.evse:
        relays[ec.id], meters[ec.id], plugs[ec.id] = build_evse(ec, clock)
        plug = plugs[ec.id]
        if isinstance(plug, PilotPlug):
            pilots[ec.id] = plug.pilot
    grid = config.station.grid_meter
    return StationDrivers(
        rfid=build_rfid(config.rfid, clock),
        display=build_display(config.display, config.qr.url_template),
        qr=build_qr(config.qr, clock),
        relays=relays,
        meters=meters,
        plugs=plugs,
        pilots=pilots,
        grid_meter=None if grid is None else build_meter(grid, clock),
    )
