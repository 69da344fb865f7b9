"""OCPP 1.6 smart charging onto the station's current limits (:mod:`agent.current`).

A CSMS's charging profiles become the ``set_current_limit`` commands the station already
understands, so that a limit is committed by the core before SetChargingProfile is answered:

- ``ChargePointMaxProfile`` (connector 0) -> the station limit;
- ``TxDefaultProfile`` -> the EVSE limit of its connector (connector 0: every EVSE with a pilot;
  a connector's own profile wins over connector 0's);
- ``TxProfile`` -> the EVSE limit while its transaction runs (it wins over TxDefault), dropped
  with the transaction.

Within a purpose the highest ``stackLevel`` in force wins; the arbiter takes the lowest of the
EVSE and station limits. The limit is the schedule period in force (amperes; watts divided by
230 V x the period's ``numberPhases``, default the EVSE's phases), sent with its end (the next
period, the schedule's ``duration``, the profile's ``validTo``) + :data:`OVERLAP_S` as
``valid_until``: the next period is sent right at the boundary and replaces it, so the
configured limit never shows through in between (and a limit still lapses if it cannot be); a limit
between 0 and 6 A becomes 0 (the car pauses), one above the EVSE's rating or the connection's
``grid_limit_a`` is capped there. Profiles are re-evaluated every second: the next period is
sent when one ends. No profile in force: the configured value is sent, lapsing
:data:`OVERLAP_S` later, after which the configured limit itself applies (nothing is kept).

Refused (``Rejected``): a connector without a control pilot, ``Recurring`` schedules, a
``Relative`` ChargePointMax profile, a TxProfile without a running transaction on its
connector, a first period that does not start at 0, a rate unit other than A or W.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.config import AgentConfig
from agent.errors import StoreError
from agent.messages import CommandResponse, CommandStatus, SetCurrentLimit
from agent.ocpp_state import OcppState, StationView
from drivers.pilot.base import MIN_CURRENT_A

log = logging.getLogger(__name__)

NOMINAL_V = 230.0
MAX_STACK_LEVEL = 10  # ChargeProfileMaxStackLevel
MAX_PERIODS = 24  # ChargingScheduleMaxPeriods
MAX_PROFILES = 32  # MaxChargingProfilesInstalled
STATION = 0  # the scope of the station limit (connector 0)
OVERLAP_S = 2.0  # a limit's valid_until is its period's end + this: no gap at the boundary
NO_STATION_LIMIT_A = 10000.0  # what "no station-wide limit" is as a station limit
CHARGE_POINT_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX = "TxProfile"

Desired = tuple[float, datetime | None] | None  # (amperes, valid_until); None: nothing in force
RunCommand = Callable[[SetCurrentLimit, str], Awaitable[CommandResponse | None]]


@dataclass(frozen=True, kw_only=True)
class Profile:
    id: int
    connector: int
    purpose: str
    stack_level: int
    transaction_id: str | None
    kind: str  # Absolute | Relative
    start: datetime | None
    valid_from: datetime | None
    valid_to: datetime | None
    duration_s: int | None
    unit: str  # A | W
    periods: tuple[tuple[int, float, int | None], ...]  # (startPeriod s, limit, numberPhases)


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def parse(raw: dict[str, Any], connector: int) -> Profile | str:
    """A 1.6 csChargingProfiles (snake_case, as the ``ocpp`` package hands it over), or why the
    station cannot honour it."""
    sched = raw.get("charging_schedule") or {}
    kind = str(raw.get("charging_profile_kind"))
    purpose = str(raw.get("charging_profile_purpose"))
    if purpose not in (CHARGE_POINT_MAX, TX_DEFAULT, TX):
        return f"purpose {purpose} is not supported"
    if kind not in ("Absolute", "Relative"):
        return f"{kind} schedules are not supported"
    if purpose == CHARGE_POINT_MAX and (connector != STATION or kind != "Absolute"):
        return "a ChargePointMaxProfile must be Absolute, on connector 0"
    if purpose == TX and connector == STATION:
        return "a TxProfile needs its connector"
    unit = str(sched.get("charging_rate_unit"))
    if unit not in ("A", "W"):
        return f"charging rate unit {unit}"
    periods = sorted(
        (int(p["start_period"]), float(p["limit"]), p.get("number_phases"))
        for p in sched.get("charging_schedule_period") or []
    )
    if not periods or periods[0][0] != 0:
        return "the first schedule period must start at 0"
    if len(periods) > MAX_PERIODS:
        return f"{len(periods)} schedule periods (at most {MAX_PERIODS})"
    if not 0 <= int(raw["stack_level"]) <= MAX_STACK_LEVEL:
        return f"stackLevel {raw['stack_level']} (at most {MAX_STACK_LEVEL})"
    tx = raw.get("transaction_id")
    return Profile(
        id=int(raw["charging_profile_id"]),
        connector=connector,
        purpose=purpose,
        stack_level=int(raw["stack_level"]),
        transaction_id=None if tx is None else str(tx),
        kind=kind,
        start=_time(sched.get("start_schedule")),
        valid_from=_time(raw.get("valid_from")),
        valid_to=_time(raw.get("valid_to")),
        duration_s=sched.get("duration"),
        unit=unit,
        periods=tuple(periods),
    )


def in_force(
    p: Profile, now: datetime, base: datetime | None, phases: int
) -> tuple[float, datetime | None] | None:
    """The limit in amperes of the period in force at ``now`` and when it ends, or None.
    ``base``: the start of a Relative schedule (its transaction's charging start)."""
    if (p.valid_from and now < p.valid_from) or (p.valid_to and now >= p.valid_to):
        return None
    start = base if p.kind == "Relative" else (p.start or base or now)
    if start is None or now < start:
        return None
    elapsed = (now - start).total_seconds()
    if p.duration_s is not None and elapsed >= p.duration_s:
        return None
    current = [q for q in p.periods if q[0] <= elapsed][-1]
    later = [q[0] for q in p.periods if q[0] > elapsed]
    ends = [p.valid_to] if p.valid_to else []
    ends += [start + timedelta(seconds=s) for s in later[:1]]
    if p.duration_s is not None:
        ends.append(start + timedelta(seconds=p.duration_s))
    _, limit, n = current
    amps = limit if p.unit == "A" else limit / (NOMINAL_V * (n or phases))
    return amps, min(ends) if ends else None


PURPOSES_201 = {"ChargingStationMaxProfile": CHARGE_POINT_MAX}


def from_201(profile: dict[str, Any]) -> dict[str, Any] | str:
    """A 2.0.1 ChargingProfile (snake_case) in the 1.6 shape :func:`parse` reads, or why the
    station cannot honour it (several schedules, an external-constraints purpose)."""
    schedules = profile.get("charging_schedule") or []
    if len(schedules) != 1:
        return f"{len(schedules)} charging schedules (one is supported)"
    purpose = str(profile.get("charging_profile_purpose"))
    out = {k: v for k, v in profile.items() if k not in ("id", "charging_schedule")}
    out.update(
        charging_profile_id=profile.get("id"),
        charging_profile_purpose=PURPOSES_201.get(purpose, purpose),
        charging_schedule=schedules[0],
    )
    return out


class ChargingProfiles:
    """The adapter's profiles (``ocpp.sqlite3``) and the limits they ask for (asyncio thread)."""

    def __init__(
        self,
        config: AgentConfig,
        state: OcppState,
        view: StationView,
        now: Callable[[], datetime],
        run_command: RunCommand,
    ) -> None:
        self._config = config
        self._state = state
        self._view = view
        self._now = now
        self._run = run_command
        self._evses = config.evse_ids()
        self._pilots = {n for n, e in enumerate(config.evse, start=1) if e.pilot is not None}
        self._sent: dict[int, Desired] = {}
        self._lock = asyncio.Lock()  # one evaluation at a time (the CSMS's calls, the ticks)

    async def run(self) -> None:
        """Re-evaluated every second and at each period's end, online or not: the next
        schedule period goes to the station when one ends, a TxProfile is dropped with its
        transaction."""
        while True:
            try:
                await self.apply()
            except (StoreError, sqlite3.Error) as err:
                log.error("charging profiles: %s", err)
            await asyncio.sleep(self.next_change_s())

    # ------------------------------------------------------------------ CSMS calls
    async def set(self, connector: int, raw: dict[str, Any]) -> str:
        if connector != STATION and connector not in self._pilots:
            log.warning("SetChargingProfile refused: connector %d has no control pilot", connector)
            return "Rejected"
        if connector == STATION and not self._pilots:
            log.warning("SetChargingProfile refused: no EVSE has a control pilot")
            return "Rejected"
        profile = parse(raw, connector)
        if isinstance(profile, str):
            log.warning("SetChargingProfile refused: %s", profile)
            return "Rejected"
        if profile.purpose == TX:
            running = self._tx_of(profile)
            if running is None:
                log.warning("TxProfile refused: no transaction runs on connector %d", connector)
                return "Rejected"
            raw = {**raw, "transaction_id": running[1]}  # bound to it: dropped with it
        if len(self._state.profiles()) >= MAX_PROFILES and not self._replaces(profile):
            log.warning("SetChargingProfile refused: %d profiles installed", MAX_PROFILES)
            return "Rejected"
        sched = raw.get("charging_schedule") or {}
        if profile.kind == "Absolute" and sched.get("start_schedule") is None:
            start = self._now().isoformat()  # no start given: it starts now, once
            raw = {**raw, "charging_schedule": {**sched, "start_schedule": start}}
        self._state.save_profile(
            profile.id, connector, profile.purpose, profile.stack_level, json.dumps(raw)
        )
        if not await self.apply():
            self._state.delete_profiles(profile_id=profile.id)
            await self.apply()
            return "Rejected"
        log.info(
            "charging profile %d (%s, stack %d) on connector %d accepted",
            profile.id,
            profile.purpose,
            profile.stack_level,
            connector,
        )
        return "Accepted"

    async def clear(self, criteria: dict[str, Any]) -> str:
        """ClearChargingProfile (1.6 names, snake_case): by ``id``, else by ``connector_id``,
        ``charging_profile_purpose``, ``stack_level``."""
        profile_id, connector = criteria.get("id"), criteria.get("connector_id")
        purpose, stack_level = criteria.get("charging_profile_purpose"), criteria.get("stack_level")
        removed = self._state.delete_profiles(
            profile_id=profile_id, connector=connector, purpose=purpose, stack_level=stack_level
        )
        if not removed:
            return "Unknown"
        log.info("%d charging profile(s) cleared", removed)
        await self.apply()
        return "Accepted"

    # ------------------------------------------------------------------ limits
    async def apply(self) -> bool:
        """Send the limits that changed; False if the station refused one. A TxProfile whose
        transaction ended is dropped."""
        async with self._lock:
            return await self._apply()

    async def _apply(self) -> bool:
        for p in self._profiles():
            if p.purpose == TX and self._tx_of(p) is None:
                self._state.delete_profiles(profile_id=p.id)
                log.info("TxProfile %d dropped: its transaction ended", p.id)
        ok = True
        for scope, want in self.desired().items():
            if self._sent.get(scope) == want:
                continue
            cmd = self._command(scope, want)
            answer = await self._run(cmd, "SetChargingProfile")
            if answer is not None and answer.status is CommandStatus.ACCEPTED:
                self._sent[scope] = want
            else:
                ok = False
                log.error("current limit %s refused: %s", cmd.limit_a, answer and answer.reason)
        return ok

    def next_change_s(self, most: float = 1.0) -> float:
        """Seconds until the end of the first period the station has now (at most ``most``):
        the next one is sent right at the boundary."""
        now = self._now()
        ends = [w[1] for w in self._sent.values() if w is not None and w[1] is not None]
        soonest = min(((e - now).total_seconds() for e in ends), default=most)
        return min(most, max(0.01, soonest))

    def desired(self) -> dict[int, Desired]:
        now = self._now()
        profiles = self._profiles()
        charging = {f.evse_id: f for f in self._view.charging()}
        out: dict[int, Desired] = {STATION: self._best(profiles, CHARGE_POINT_MAX, 0, now, None)}
        for n in sorted(self._pilots):
            evse = self._config.evse[n - 1]
            facts = charging.get(evse.id)
            base = None if facts is None else facts.charging_start
            tx = [p for p in profiles if p.purpose == TX and p.connector == n]
            tx = [
                p
                for p in tx
                if facts is not None and (self._tx_of(p) or ("",))[0] == facts.session_id
            ]
            want = self._pick(tx, now, base, evse.phases)
            for conn in (n, STATION):
                if want is None:
                    own = [p for p in profiles if p.purpose == TX_DEFAULT and p.connector == conn]
                    want = self._pick(own, now, base, evse.phases)
            out[n] = want
        return out

    def _best(
        self, profiles: list[Profile], purpose: str, conn: int, now: datetime, base: datetime | None
    ) -> Desired:
        chosen = [p for p in profiles if p.purpose == purpose and p.connector == conn]
        return self._pick(chosen, now, base, 3)

    @staticmethod
    def _pick(
        profiles: list[Profile], now: datetime, base: datetime | None, phases: int
    ) -> Desired:
        for p in sorted(profiles, key=lambda p: -p.stack_level):
            got = in_force(p, now, base, phases)
            if got is not None:
                return got
        return None

    def _command(self, scope: int, want: Desired) -> SetCurrentLimit:
        if scope == STATION:
            cap = self._config.station.grid_limit_a or NO_STATION_LIMIT_A
        else:
            cap = self._config.evse[scope - 1].max_current_a
        # nothing in force: the configured value, lapsing OVERLAP_S from now (nothing stays)
        amps, until = (cap, self._now()) if want is None else want
        amps = min(math.floor(amps * 10) / 10, cap)
        if 0 < amps < MIN_CURRENT_A:
            amps = 0.0  # the car cannot charge below 6 A: it pauses
        return SetCurrentLimit(
            v=1,
            command="set_current_limit",
            command_id=f"ocpp-profile-{uuid.uuid4()}",
            limit_a=amps,
            evse_id=None if scope == STATION else self._evses[scope - 1],
            valid_until=None if until is None else until + timedelta(seconds=OVERLAP_S),
        )

    def _profiles(self) -> list[Profile]:
        out = []
        for connector, body in self._state.profiles():
            parsed = parse(json.loads(body), connector)
            if isinstance(parsed, Profile):
                out.append(parsed)
        return out

    def _replaces(self, new: Profile) -> bool:
        return any(
            p.id == new.id
            or (p.connector, p.purpose, p.stack_level)
            == (new.connector, new.purpose, new.stack_level)
            for p in self._profiles()
        )

    def _tx_of(self, p: Profile) -> tuple[str, str] | None:
        """(session id, transaction id) of the running transaction a TxProfile belongs to (its
        ``transactionId``, or the one on its connector), or None."""
        for row in self._state.open_transactions():
            if row.connector != p.connector:
                continue
            if p.transaction_id is None or p.transaction_id == row.transaction_id:
                facts = self._view.session(row.session_id)
                if facts is not None and facts.state == "charging":
                    return row.session_id, row.transaction_id
        return None
