"""Build the drivers a configuration asks for. Real drivers' libraries are imported lazily."""

from __future__ import annotations

from agent.clock import Clock
from agent.config import AgentConfig, DisplayConfig, EvseConfig, RfidConfig
from agent.controller import StationDrivers
from agent.errors import ConfigError
from drivers.display.base import Display
from drivers.meter.base import Meter
from drivers.plug.base import PlugSensor
from drivers.relay.base import Relay
from drivers.rfid.base import RfidReader


def build_rfid(cfg: RfidConfig, clock: Clock) -> RfidReader:
    if cfg.driver == "sim":
        from drivers.rfid.sim import SimRfidReader

        return SimRfidReader()
    if cfg.driver == "none":
        from drivers.rfid.null import NullRfidReader

        return NullRfidReader()
    raise ConfigError(f"rfid.driver {cfg.driver!r} is not available in this build")


def build_display(cfg: DisplayConfig) -> Display:
    from drivers.display.sim import SimDisplay

    if cfg.driver in ("sim", "none"):
        return SimDisplay()
    raise ConfigError(f"display.driver {cfg.driver!r} is not available in this build")


def build_evse(cfg: EvseConfig, clock: Clock) -> tuple[Relay, Meter, PlugSensor]:
    from drivers.meter.sim import SimMeter
    from drivers.plug.sim import SimPlug
    from drivers.relay.sim import SimRelay

    relay = SimRelay(
        log_file=str(cfg.relay.log_file) if cfg.relay.log_file else None, clock=clock
    )
    meter = SimMeter(
        power_kw=cfg.meter.power_kw,
        initial_kwh=cfg.meter.initial_kwh,
        time_factor=cfg.meter.time_factor,
        clock=clock,
    )
    plug = SimPlug(plugged=cfg.plug.plugged)

    # energy flows while the contactor is closed and a car is connected
    relay.on_change(lambda closed: meter.set_flowing(closed and plug.is_plugged()))
    plug.on_change(lambda plugged: meter.set_flowing(plugged and relay.is_closed()))
    return relay, meter, plug


def build_drivers(config: AgentConfig, clock: Clock) -> StationDrivers:
    relays: dict[str, Relay] = {}
    meters: dict[str, Meter] = {}
    plugs: dict[str, PlugSensor] = {}
    for ec in config.evse:
        relays[ec.id], meters[ec.id], plugs[ec.id] = build_evse(ec, clock)
    return StationDrivers(
        rfid=build_rfid(config.rfid, clock),
        display=build_display(config.display),
        relays=relays,
        meters=meters,
        plugs=plugs,
    )
