"""Current control: the limits that apply, the grid meter, and the offers sent to the pilots.

:class:`CurrentControl` sits beside the loop like the other components. Each round
(:meth:`update`, after every item and on every tick) it expires limits whose ``valid_until``
passed, works out the station's budget (configured or commanded limit, grid meter headroom,
fallback while the grid meter is stale), runs the pure arbiter (:func:`agent.limits.arbitrate`)
and the rate limit (:func:`agent.limits.rate_limit`) and sets the pilots' offers. It never
changes an EVSE's table state itself: an offer that started or stopped is returned as an
:class:`~agent.session.OfferChanged` event for the controller to dispatch, and a car that starts
or stops asking for energy answers through its pilot, whose change comes back through the loop.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime

from agent.clock import Clock, rfc3339
from agent.config import AgentConfig
from agent.errors import DriverError
from agent.evse import EvseRuntime
from agent.limits import (
    Applied,
    Budget,
    EvseDemand,
    LimitSource,
    Memory,
    arbitrate,
    rate_limit,
)
from agent.messages import EvseState, SetCurrentLimit
from agent.session import OfferChanged, PilotSignal
from agent.store import Store
from drivers.meter.base import Meter
from drivers.pilot.base import MIN_CURRENT_A, PilotCallback, duty_cycle_percent

log = logging.getLogger(__name__)

STALE_AFTER_S = 60.0  # a grid reading older than this: the fallback applies
SETTLE_S = 6.0  # a car's draw counts only once its offer has been steady this long
ALIGN_S = 3.0  # an EVSE reading and a grid reading this close belong together
PAUSE_GRACE_S = 3.0  # a charging car offered 0 A must stop asking (B) within this
NOMINAL_V = 230.0
SETTING_PREFIX = "current_limit:"
STATION = "station"  # the scope of a station-wide limit


@dataclass(frozen=True)
class Override:
    """A limit set by a command, until ``valid_until`` (None: until replaced)."""

    limit_a: float
    valid_until: datetime | None

    def to_json(self) -> str:
        until = rfc3339(self.valid_until) if self.valid_until else None
        return json.dumps({"limit_a": self.limit_a, "valid_until": until})

    @classmethod
    def from_json(cls, text: str) -> Override:
        data = json.loads(text)
        until = data.get("valid_until")
        return cls(float(data["limit_a"]), datetime.fromisoformat(until) if until else None)


class CurrentControl:
    def __init__(
        self,
        *,
        config: AgentConfig,
        store: Store,
        clock: Clock,
        pool: ThreadPoolExecutor,
        grid_meter: Meter | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._pool = pool
        self._grid_meter = grid_meter
        self._overrides: dict[str, Override] = {}
        self._memory = Memory()
        self._applied: dict[str, Applied] = {}
        self._grid_lock = threading.Lock()
        self._grid: tuple[float, float] | None = None  # (amps per phase, monotonic when read)
        self._grid_busy = False
        self._grid_last_poll = -math.inf
        self._rest: float | None = None  # the rest of the building's current, last estimate
        self._tests: dict[str, float] = {}  # technician's test offers on idle EVSEs
        self.budget = Budget(total_a=config.station.grid_limit_a)

    # ------------------------------------------------------------------ pilots
    @staticmethod
    def start_pilots(
        evses: Mapping[str, EvseRuntime], on_pilot: Callable[[str], PilotCallback]
    ) -> list[tuple[str, PilotSignal]]:
        """Start watching every pilot; their states now, as table events (before recovery:
        the pilot is the plug sensor)."""
        events = []
        for evse_id, rt in evses.items():
            if rt.pilot is not None:
                rt.pilot.start(on_pilot(evse_id))
                events.append((evse_id, PilotSignal(rt.pilot.state())))
        return events

    @staticmethod
    def stop_pilots(evses: Iterable[EvseRuntime]) -> None:
        """At shutdown (the relays are open): no PWM, then stop watching."""
        for rt in evses:
            if rt.pilot is not None:
                try:
                    rt.pilot.set_current(0)
                except DriverError as err:
                    log.error("%s: pilot not set to 0 A: %s", rt.evse_id, err)
                rt.pilot.stop()

    # ------------------------------------------------------------------ limits
    def load(self) -> None:
        """The limits commanded before a restart (committed with their command's answer)."""
        for key, text in self._store.settings(SETTING_PREFIX).items():
            try:
                self._overrides[key.removeprefix(SETTING_PREFIX)] = Override.from_json(text)
            except (ValueError, KeyError, TypeError) as err:
                log.error("stored current limit %s unreadable, ignored: %s", key, err)

    def check(self, cmd: SetCurrentLimit, pilots: Sequence[str]) -> str | None:
        """Why ``cmd`` cannot be taken on, or None."""
        limit = cmd.limit_a
        if limit < 0:
            return f"limit_a {limit:g} A is negative"
        if 0 < limit < MIN_CURRENT_A:
            return f"limit_a {limit:g} A is below the {MIN_CURRENT_A:g} A minimum (0 pauses)"
        if cmd.valid_until is not None and cmd.valid_until <= self._clock.now():
            return "valid_until is in the past"
        if cmd.evse_id is None:
            grid = self._config.station.grid_limit_a
            if grid is not None and limit > grid:
                return f"limit_a {limit:g} A is above the connection's grid_limit_a {grid:g} A"
            return None if limit <= 10000 else f"limit_a {limit:g} A is out of range"
        evse = next((e for e in self._config.evse if e.id == cmd.evse_id), None)
        if evse is None:
            return f"unknown evse_id {cmd.evse_id}"
        if cmd.evse_id not in pilots:
            return f"EVSE {cmd.evse_id} has no control pilot: its current cannot be limited"
        if limit > evse.max_current_a:
            return f"limit_a {limit:g} A is above the EVSE's max_current_a {evse.max_current_a:g} A"
        return None

    def record(self, cmd: SetCurrentLimit) -> None:
        """Store the limit (in the caller's unit: committed with the command's answer)."""
        scope = cmd.evse_id or STATION
        override = Override(cmd.limit_a, cmd.valid_until)
        self._store.set_setting(SETTING_PREFIX + scope, override.to_json())
        self._overrides[scope] = override
        log.info(
            "current limit %s: %g A%s",
            scope,
            cmd.limit_a,
            f" until {rfc3339(cmd.valid_until)}" if cmd.valid_until else "",
        )

    def _expire(self, now: datetime) -> None:
        for scope, override in list(self._overrides.items()):
            if override.valid_until is not None and override.valid_until <= now:
                log.info("current limit %s (%g A) expired", scope, override.limit_a)
                self._store.set_setting(SETTING_PREFIX + scope, None)
                del self._overrides[scope]

    def set_test_offer(self, rt: EvseRuntime, amps: float) -> float:
        """``stationctl pilot set``: offer ``amps`` on an idle EVSE (0 ends the test); the
        relay stays open. Returns the duty cycle (percent) the pilot signals."""
        if rt.pilot is None:
            raise ValueError(f"EVSE {rt.evse_id} has no control pilot")
        if rt.state.session is not None:
            raise ValueError(f"EVSE {rt.evse_id} is not idle ({rt.state.phase.value})")
        duty = duty_cycle_percent(amps)  # ValueError for 0 < amps < 6 or > 80
        if amps:
            self._tests[rt.evse_id] = amps
        else:
            self._tests.pop(rt.evse_id, None)
        log.warning("%s: technician's pilot test: %g A (duty %.1f %%)", rt.evse_id, amps, duty)
        return duty

    # ------------------------------------------------------------------ grid meter
    def tick(self) -> None:
        """Read the grid meter in the background when due."""
        meter = self._grid_meter
        grid_cfg = self._config.station.grid_meter
        if meter is None or grid_cfg is None or self._grid_busy:
            return
        mono = self._clock.monotonic()
        if mono - self._grid_last_poll < grid_cfg.poll_interval_s:
            return
        self._grid_busy = True
        self._grid_last_poll = mono
        self._pool.submit(self.read_grid)

    def read_grid(self) -> None:
        """One grid meter reading (thread-safe): the current per phase, from the total power."""
        assert self._grid_meter is not None
        try:
            reading = self._grid_meter.read()
            volts = reading.voltage_v or NOMINAL_V
            amps = max(reading.power_w or 0.0, 0.0) / (volts * 3)
            with self._grid_lock:
                self._grid = (amps, self._clock.monotonic())
        except DriverError as err:
            log.error("grid meter read failed: %s", err)
        finally:
            self._grid_busy = False

    def _grid_amps(self, mono: float) -> tuple[float, float] | None:
        """The grid meter's current per phase and when it was read, or None when stale."""
        with self._grid_lock:
            grid = self._grid
        if grid is None or mono - grid[1] > STALE_AFTER_S:
            return None
        return grid

    def _rest_of_building(
        self, pilots: Sequence[EvseRuntime], grid: tuple[float, float], mono: float
    ) -> float:
        """What the building draws besides the EVSEs with a pilot (per phase).

        The grid reading minus what the EVSEs' meters measured, but only when the readings
        belong together: every offer steady for ``SETTLE_S`` before them and the EVSE readings
        within ``ALIGN_S`` of the grid reading. Otherwise the last such estimate stands, raised
        at once when the grid reading minus the most the EVSEs can draw (their offer, or more
        if measured) proves more. So the estimate never swings with readings taken mid-change
        (which made the offers oscillate), and it errs on the safe side."""
        amps, read_at = grid
        last_change = max((a.changed_at for a in self._applied.values()), default=-math.inf)
        consistent = read_at >= last_change + SETTLE_S
        own = upper = 0.0
        for rt in pilots:
            applied = self._applied.get(rt.evse_id, Applied(0.0, -math.inf))
            fresh = rt.last_power_w is not None and mono - rt.last_power_mono <= STALE_AFTER_S
            measured = (rt.last_power_w or 0.0) / (NOMINAL_V * rt.config.phases) if fresh else 0.0
            upper += max(applied.offered_a, measured)
            if rt.state.phase is EvseState.CHARGING:
                aligned = fresh and abs(rt.last_power_mono - read_at) <= ALIGN_S
                consistent = consistent and aligned
                own += measured
        bound = max(amps - upper, 0.0)
        if consistent:
            self._rest = max(amps - own, 0.0)
        else:
            self._rest = bound if self._rest is None else max(self._rest, bound)
        return self._rest

    # ------------------------------------------------------------------ the round
    def _measured(self, rt: EvseRuntime, mono: float) -> float | None:
        applied = self._applied.get(rt.evse_id)
        if rt.last_power_w is None or applied is None or rt.state.phase is not EvseState.CHARGING:
            return None
        if rt.last_power_mono < applied.changed_at + SETTLE_S or mono - rt.last_power_mono > 60:
            return None
        return rt.last_power_w / (NOMINAL_V * rt.config.phases)

    def _budget(self, pilots: Sequence[EvseRuntime], mono: float) -> tuple[Budget, bool]:
        """The station's budget and whether the grid meter is stale (fallback)."""
        station = self._overrides.get(STATION)
        total = station.limit_a if station is not None else self._config.station.grid_limit_a
        budget = Budget(total_a=total, source=LimitSource.STATION)
        if self._grid_meter is None:
            return budget, False
        grid = self._grid_amps(mono)
        if grid is None:
            return budget, True
        limit = self._config.station.grid_limit_a or 0.0
        headroom = max(limit - self._rest_of_building(pilots, grid, mono), 0.0)
        headroom = math.floor(headroom * 100 + 1e-6) / 100  # no float dust in limit_a
        if total is None or headroom < total:
            return Budget(total_a=headroom, source=LimitSource.GRID), False
        return budget, False

    def _demand(self, rt: EvseRuntime, mono: float, stale: bool) -> EvseDemand:
        override = self._overrides.get(rt.evse_id)
        limit = rt.config.max_current_a if override is None else override.limit_a
        source = LimitSource.EVSE
        fallback = self._config.station.fallback_limit_a
        if stale and fallback < limit:
            limit, source = fallback, LimitSource.FALLBACK
        st = rt.state
        pilot = st.pilot
        wants = st.phase is EvseState.CHARGING and pilot is not None and pilot.connected
        applied = self._applied.get(rt.evse_id)
        return EvseDemand(
            evse_id=rt.evse_id,
            wants=wants,
            limit_a=limit,
            limit_source=source,
            offered_a=applied.offered_a if applied else 0.0,
            measured_a=self._measured(rt, mono),
        )

    def update(self, evses: Sequence[EvseRuntime]) -> list[tuple[str, OfferChanged]]:
        """One round: limits, budget, arbiter, rate limit, offers to the pilots. Returns the
        table events for offers that started, or stopped (after the grace time while charging)."""
        pilots = [rt for rt in evses if rt.pilot is not None]
        if not pilots:
            return []
        self._expire(self._clock.now())
        mono = self._clock.monotonic()
        budget, stale = self._budget(pilots, mono)
        self.budget = budget
        demands = [self._demand(rt, mono, stale) for rt in pilots]
        allocations, self._memory = arbitrate(
            demands,
            budget,
            self._memory,
            mono,
            rotate_after_s=self._config.station.pause_rotation_s,
        )
        targets = {evse_id: a.offered_a for evse_id, a in allocations.items()}
        for rt in pilots:  # a session ends a technician's test
            test = self._tests.get(rt.evse_id)
            if test is not None and rt.state.session is None:
                targets[rt.evse_id] = test
            else:
                self._tests.pop(rt.evse_id, None)
        applied = rate_limit(self._applied, targets, budget.total_a, mono)
        for rt in pilots:
            now_applied = applied[rt.evse_id]
            if now_applied != self._applied.get(rt.evse_id):
                self._offer(rt, now_applied.offered_a)
            rt.allocation = replace(allocations[rt.evse_id], offered_a=now_applied.offered_a)
        self._applied = applied
        return [(rt.evse_id, event) for rt in pilots if (event := self._offer_event(rt, mono))]

    def _offer_event(self, rt: EvseRuntime, mono: float) -> OfferChanged | None:
        applied = self._applied[rt.evse_id]
        on = applied.offered_a > 0
        if on == rt.state.offer_on:
            return None
        charging = rt.state.phase is EvseState.CHARGING
        if not on and charging and mono - applied.changed_at < PAUSE_GRACE_S:
            return None  # the car has this long to stop asking by itself
        return OfferChanged(on)

    def _offer(self, rt: EvseRuntime, amps: float) -> None:
        assert rt.pilot is not None
        try:
            rt.pilot.set_current(amps)
        except (DriverError, ValueError) as err:
            log.error("%s: pilot did not take %g A: %s", rt.evse_id, amps, err)
            return
        log.info("%s: offering %g A", rt.evse_id, amps)
