"""Per-EVSE execution: the devices of one charge point and the effects on them.

:class:`PowerPath` switches the relay, reads the meter, supervises both between switches and
polls the meter off the main loop. It never changes an EVSE's state: what it finds out comes
back as table events (a :class:`~agent.session.FaultRaised`, a
:class:`~agent.session.FaultCleared`) for the loop to dispatch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.clock import Clock
from agent.config import EvseConfig, StoreConfig
from agent.errors import DriverError
from agent.limits import Allocation
from agent.messages import EvseState
from agent.session import Event, Evse, FaultCleared, FaultKind, FaultRaised
from drivers.display.base import Display
from drivers.meter.base import Meter, MeterReading
from drivers.pilot.base import Pilot
from drivers.plug.base import PlugSensor
from drivers.qr.base import QrReader
from drivers.relay.base import Relay
from drivers.relay.feedback import RelayFault
from drivers.rfid.base import RfidReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeterSample:
    """A periodic reading taken off the main loop (a slow or dead meter never stalls it)."""

    evse_id: str
    reading: MeterReading | None


@dataclass(kw_only=True)
class EvseRuntime:
    """One charge point: its devices, its table state and what the screen and meter showed."""

    config: EvseConfig
    relay: Relay
    meter: Meter
    plug: PlugSensor
    state: Evse
    message: str | None = None  # the last Notify, until the state changes
    last_meter_store: float = 0.0  # monotonic: last reading committed to the store
    last_meter_read: float = 0.0  # monotonic: last reading started
    last_energy_kwh: float | None = None
    last_meter_publish: float = 0.0  # monotonic: last P/meter
    meter_busy: bool = False  # a background reading is under way
    pilot: Pilot | None = None  # a control pilot (then ``plug`` is the pilot too)
    allocation: Allocation | None = None  # what the arbiter offers it (with a pilot)
    last_power_w: float | None = None  # the last reading's power, for the arbiter
    last_power_mono: float = float("-inf")  # when that reading was taken

    @property
    def evse_id(self) -> str:
        return self.config.id


class Metrics:
    """Latency samples (ms) of the agent's own share of a tap, kept for benchmarks/diagnostics."""

    def __init__(self, size: int = 5000) -> None:
        self.samples: dict[str, deque[float]] = {}
        self._size = size

    def add(self, name: str, started: float | None) -> None:
        if started is not None:
            elapsed = (time.perf_counter() - started) * 1000.0
            self.samples.setdefault(name, deque(maxlen=self._size)).append(elapsed)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, values in self.samples.items():
            data = sorted(values)
            if not data:
                continue

            def pct(p: float, data: list[float] = data) -> float:
                return round(data[min(len(data) - 1, int(p * len(data)))], 3)

            out[name] = {
                "n": len(data),
                "p50": pct(0.5),
                "p95": pct(0.95),
                "p99": pct(0.99),
                "max": round(data[-1], 3),
            }
        return out


@dataclass(kw_only=True)
class PowerPath:
    clock: Clock
    post_sample: Callable[[MeterSample], None]
    pool: ThreadPoolExecutor

    # ---------------------------------------------------------------- relay
    def open_relay(self, rt: EvseRuntime, why: str) -> Event | None:
        """Open the contactor; a fault it reveals is returned once (it latches)."""
        try:
            rt.relay.open()
        except RelayFault as err:
            fault = FaultKind.of_relay(err.kind)
            if rt.state.fault != fault:
                log.critical("%s: %s after opening (%s): EVSE faulted", rt.evse_id, err, why)
                return FaultRaised(fault)
        except DriverError as err:
            log.critical("%s: relay did not open (%s): %s", rt.evse_id, why, err)
            if rt.state.fault != FaultKind.RELAY_FAILED:
                return FaultRaised(FaultKind.RELAY_FAILED)
        return None

    def close_relay(self, rt: EvseRuntime, session_id: str) -> Event | None:
        try:
            rt.relay.close()
        except DriverError as err:
            log.error("%s: relay did not close for %s: %s", rt.evse_id, session_id, err)
            return FaultRaised(FaultKind.of_relay(err.kind))
        return None

    # ---------------------------------------------------------------- meter
    def read_meter(self, rt: EvseRuntime) -> MeterReading | None:
        """A reading now, in the loop (session start and end need the exact register)."""
        try:
            reading = rt.meter.read()
        except DriverError as err:
            log.error("%s: meter read failed: %s", rt.evse_id, err)
            return None
        rt.last_energy_kwh = reading.energy_kwh
        return reading

    def poll_meter(self, rt: EvseRuntime) -> None:
        """Read the meter in the background; the sample comes back through the loop's queue."""
        if rt.meter_busy:
            return
        rt.meter_busy = True
        rt.last_meter_read = self.clock.monotonic()
        self.pool.submit(self._background_read, rt.evse_id, rt.meter)

    def _background_read(self, evse_id: str, meter: Meter) -> None:
        try:
            reading: MeterReading | None = meter.read()
        except DriverError as err:
            log.error("%s: meter read failed: %s", evse_id, err)
            reading = None
        self.post_sample(MeterSample(evse_id, reading))

    def meter_due(self, rt: EvseRuntime, meter_interval_s: float) -> bool:
        """While charging: time for a reading (to show, or to commit)."""
        mono = self.clock.monotonic()
        return (
            mono - rt.last_meter_store >= meter_interval_s
            or mono - rt.last_meter_read >= rt.config.meter.poll_interval_s
        )

    # ---------------------------------------------------------------- supervision
    def tick(self, evses: Iterable[EvseRuntime], store: StoreConfig) -> list[tuple[str, Event]]:
        """Housekeeping: meter readings that are due while charging (in the background), and
        supervision of every EVSE's devices."""
        events: list[tuple[str, Event]] = []
        for rt in evses:
            if rt.state.phase is EvseState.CHARGING and self.meter_due(rt, store.meter_interval_s):
                self.poll_meter(rt)
            events.extend((rt.evse_id, event) for event in self.supervise(rt))
        return events

    def supervise(self, rt: EvseRuntime) -> list[Event]:
        """Between switches: a contact that welds or drops out, a meter that stopped answering
        or answers again."""
        events: list[Event] = []
        health = rt.relay.check_feedback()
        if not health.ok and rt.state.fault is None:
            log.critical("%s: relay supervision: %s (%s)", rt.evse_id, health.fault, health.detail)
            events.append(FaultRaised(FaultKind.of_relay(health.fault)))
            return events
        mono = self.clock.monotonic()
        failed = rt.state.fault is FaultKind.METER_FAILED
        if failed and mono - rt.last_meter_read >= rt.config.meter.poll_interval_s:
            self.poll_meter(rt)  # probe: a meter that answers again heals the fault
        meter_health = rt.meter.health()
        if not meter_health.ok and rt.state.fault is None:
            log.error("%s: meter unhealthy: %s", rt.evse_id, meter_health.detail)
            events.append(FaultRaised(FaultKind.METER_FAILED))
        elif meter_health.ok and failed:
            log.info("%s: meter answers again: fault cleared", rt.evse_id)
            events.append(FaultCleared())
        return events


@dataclass(frozen=True, kw_only=True)
class StationDrivers:
    """Every device of the station, as built from the configuration."""

    rfid: RfidReader
    display: Display
    relays: dict[str, Relay]
    meters: dict[str, Meter]
    plugs: dict[str, PlugSensor]
    qr: QrReader | None = None
    pilots: dict[str, Pilot] = field(default_factory=dict)  # EVSEs with a control pilot
    grid_meter: Meter | None = None  # [station.grid_meter]: the building's connection
