"""Current control through the whole controller, in process: real drivers built from the config
(sim pilots with sim cars, sim meters, sim relays), a real SQLite store, the fake backend, and an
injected clock stepped one simulated second at a time (no sleeping).

The issue's "done means" scenarios: two cars sharing 32 A at 16 A each; three cars on 16 A (two
at 8 A, the third paused, in rotation); a station limit of 10 A pausing one of two (and lifted
when it expires); a stale grid meter giving the fallback; and ten simulated minutes with two
cars of different maximums without the offers swinging.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.backend import CommandIn
from agent.clock import FakeClock, rfc3339
from agent.config import parse_config
from agent.controller import Controller
from agent.hardware import build_drivers
from agent.messages import parse_command
from agent.store import Store
from drivers.meter.sim import SimMeter
from drivers.pilot.base import PilotState
from drivers.pilot.sim import SimPilot
from tests.fakes import FakeBackend
from tests.helpers import station_config

CARDS = ["04A224B2C13C80", "04B1B2B3B4B5B6", "04C1C2C3C4C5C6"]


def evse_table(
    i: int, tmp: Path, *, max_a: float = 32.0, car_max_a: float = 32.0
) -> dict[str, Any]:
    return {
        "id": f"DE*ICE*E000001*{i + 1}",
        "relay": {"driver": "sim", "log_file": str(tmp / f"relay{i + 1}.log")},
        "meter": {"driver": "sim", "power_kw": 0.0},
        "pilot": {"driver": "sim", "car_max_a": car_max_a},
        "max_current_a": max_a,
    }


class Station:
    """One controller on a fake clock; ``run(s)`` steps it ``s`` simulated seconds."""

    def __init__(self, tmp: Path, evses: list[dict[str, Any]], **station: Any) -> None:
        data = station_config(tmp, "mqtt://127.0.0.1:1", "t", evses=len(evses))
        data["evse"] = evses
        data["station"].update(station, allow_unset_clock=True)
        data["auth"]["offline_policy"] = "accept_all"
        self.config = parse_config(data, tmp / "config.toml")
        self.clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        self.store = Store(tmp / "state")
        self.store.open()
        self.backend = FakeBackend(connected=False)  # taps are decided offline: accept_all
        drivers = build_drivers(self.config, self.clock)
        self.ctl = Controller(self.config, drivers, self.store, self.backend, clock=self.clock)
        self.ctl.open_relays("start")
        self.ctl.start()
        self.drain()
        self.offers: list[dict[str, float]] = []  # per simulated second
        self.commands = 0

    @property
    def ids(self) -> list[str]:
        return list(self.ctl.evses)

    def pilot(self, n: int) -> SimPilot:
        pilot = self.ctl.evses[self.ids[n]].pilot
        assert isinstance(pilot, SimPilot)
        return pilot

    def drain(self) -> None:
        """Handle every queued item, and wait for background meter readings to come back."""
        lanes = self.ctl.loop.lanes
        while True:
            item = lanes.get(0)
            if item is None and any(rt.meter_busy for rt in self.ctl.evses.values()):
                item = lanes.get(5)
            if item is None:
                return
            self.ctl.handle(item)

    def run(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1.0)
            self.ctl._housekeeping()
            self.drain()
            if self.ctl.current._grid_busy:  # the grid meter's background reading
                for _ in range(500):
                    if not self.ctl.current._grid_busy:
                        break
                    self.ctl.loop.lanes.get(0.01)
            self.offers.append(self.offered())

    def charge(self, n: int, car_max_a: float | None = None) -> None:
        """Plug a car into EVSE ``n`` and tap a card: a charging session."""
        self.pilot(n).plug(car_max_a)
        self.drain()
        self.ctl.drivers.rfid.tap(CARDS[n])  # type: ignore[attr-defined]
        self.drain()
        assert self.status(n)["state"] == "charging"

    def status(self, n: int) -> dict[str, Any]:
        st = self.ctl.status().model_dump(mode="json")
        return dict(st["evses"][n])

    def offered(self) -> dict[str, float]:
        return {i: self.ctl.evses[i].pilot.offered() for i in self.ids}  # type: ignore[union-attr]

    def command(self, **fields: Any) -> dict[str, Any]:
        self.commands += 1
        cmd_id = f"cmd-{self.commands}"
        cmd = parse_command({"v": 1, "command_id": cmd_id, **fields})
        self.ctl.post_backend(CommandIn(command=cmd, digest=json.dumps(fields)))
        self.drain()
        answers = self.backend.of("command_result") + self.backend.refused_of("command_result")
        res = next(r for r in answers if r.command_id == cmd_id)  # committed, then sent
        return dict(res.model_dump(mode="json"))

    def close(self) -> None:
        self.ctl.shutdown()
        self.store.close()


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Any]:
    made: list[Station] = []

    def make(evses: list[dict[str, Any]], **station: Any) -> Station:
        s = Station(tmp_path, evses, **station)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_two_cars_share_32_a_at_16_a_each_and_the_relay_follows_the_pilot(
    station: Any, tmp_path: Path
) -> None:
    s = station([evse_table(i, tmp_path) for i in range(2)], grid_limit_a=32.0)
    s.pilot(0).plug()
    s.drain()
    assert s.status(0)["pilot"] == "B" and s.status(0)["state"] == "preparing"
    assert s.status(0)["offered_a"] == 0 and not s.status(0)["relay_closed"]
    s.charge(0)
    s.run(1)
    first = s.status(0)
    assert first["offered_a"] == 32 and first["pilot"] == "C" and first["relay_closed"]
    s.charge(1)  # the first must come down before the second gets anything
    sid = s.status(1)["session_id"]
    s.run(6)
    for n in (0, 1):
        st = s.status(n)
        assert (st["offered_a"], st["pilot"], st["relay_closed"]) == (16, "C", True), st
        assert (st["limit_a"], st["limit_source"]) == (32, "evse")
    assert max(sum(o.values()) for o in s.offers) <= 32
    assert s.pilot(1).draw_a() == 16
    # the car leaves: A opens the relay at once and ends the session (a CDR)
    s.pilot(1).unplug()
    s.drain()
    assert s.status(1)["state"] == "available" and not s.status(1)["relay_closed"]
    row = s.store.get_session(sid)
    assert row is not None and row.stop_reason == "ev_disconnected"
    s.run(6)
    assert s.status(0)["offered_a"] == 32


def test_without_a_pilot_nothing_changes(station: Any, tmp_path: Path) -> None:
    plain = evse_table(1, tmp_path)
    del plain["pilot"]
    s = station([evse_table(0, tmp_path), plain], grid_limit_a=32.0)
    st = s.status(1)
    assert "pilot" not in json.loads(s.ctl.status().model_dump_json(exclude_none=True))["evses"][1]
    assert st["offered_a"] is None and st["pilot"] is None
    s.ctl.evses[s.ids[1]].plug.set(True)  # type: ignore[attr-defined]
    s.drain()
    s.ctl.drivers.rfid.tap(CARDS[1])  # type: ignore[attr-defined]
    s.drain()
    assert s.status(1)["state"] == "charging" and s.status(1)["relay_closed"]


def test_three_cars_on_16_a_two_at_8_a_the_third_paused_in_rotation(
    station: Any, tmp_path: Path
) -> None:
    s = station(
        [evse_table(i, tmp_path) for i in range(3)], grid_limit_a=16.0, pause_rotation_s=60.0
    )
    for n in range(3):
        s.charge(n)
        s.run(6)
    s.run(6)
    offers = sorted(s.offered().values())
    assert offers == [0, 8, 8]
    paused = [n for n in range(3) if s.status(n)["offered_a"] == 0]
    assert len(paused) == 1
    st = s.status(paused[0])
    assert st["state"] == "charging" and st["pilot"] == "B" and not st["relay_closed"]
    assert st["session_id"] is not None  # the session goes on
    # over three rotation periods every car gets its turn; never more than 16 A in total
    served: set[str] = set()
    for _ in range(3 * 70):
        s.run(1)
        served |= {i for i, a in s.offered().items() if a > 0}
    assert served == set(s.ids)
    assert all(sum(o.values()) <= 16 for o in s.offers)
    assert all(a == 0 or a >= 6 for o in s.offers for a in o.values())


def test_station_limit_10_a_pauses_one_of_two_until_it_expires(
    station: Any, tmp_path: Path
) -> None:
    s = station([evse_table(i, tmp_path) for i in range(2)], grid_limit_a=32.0)
    s.charge(0)
    s.charge(1)
    s.run(6)
    until = rfc3339(s.clock.now() + timedelta(seconds=120))
    res = s.command(command="set_current_limit", limit_a=10, valid_until=until)
    assert res["status"] == "accepted"
    assert s.store.settings("current_limit:")  # committed
    s.run(1)  # lowering is immediate where the budget dropped
    assert sorted(s.offered().values()) == [0, 10]
    assert {s.status(n)["limit_source"] for n in (0, 1)} == {"station"}
    assert {s.status(n)["limit_a"] for n in (0, 1)} == {10}
    s.run(125)  # valid_until passed: the configured 32 A again
    assert s.offered() == {s.ids[0]: 16, s.ids[1]: 16}
    assert not s.store.settings("current_limit:")


def test_limit_commands_out_of_range_are_rejected_with_a_reason(
    station: Any, tmp_path: Path
) -> None:
    s = station([evse_table(0, tmp_path, max_a=16.0)], grid_limit_a=32.0)
    e1 = s.ids[0]
    past = rfc3339(s.clock.now() - timedelta(seconds=1))
    for fields, why in [
        ({"limit_a": 3}, "below the 6 A minimum"),
        ({"limit_a": -1}, "negative"),
        ({"limit_a": 40}, "grid_limit_a"),
        ({"limit_a": 20, "evse_id": e1}, "max_current_a"),
        ({"limit_a": 10, "evse_id": "DE*ICE*E000009*9"}, "unknown evse_id"),
        ({"limit_a": 10, "valid_until": past}, "in the past"),
    ]:
        res = s.command(command="set_current_limit", **fields)
        assert res["status"] == "rejected" and why in res["reason"], (fields, res)
    assert not s.store.settings("current_limit:")
    assert s.command(command="set_current_limit", limit_a=0, evse_id=e1)["status"] == "accepted"
    s.charge(0)
    s.run(6)
    st = s.status(0)
    assert (st["offered_a"], st["limit_a"], st["limit_source"]) == (0, 0, "evse")
    assert st["state"] == "charging"


def building(s: Station, base: dict[str, float]) -> SimMeter:
    """The grid meter measures the building: ``base["a"]`` per phase plus the cars' draw."""
    grid = s.ctl.drivers.grid_meter
    assert isinstance(grid, SimMeter)
    cars = [s.pilot(n) for n in range(len(s.ids))]

    def feed(_: float = 0.0) -> None:
        grid.set_power_kw((base["a"] + sum(c.draw_a() for c in cars)) * 0.69)

    for car in cars:
        car.on_draw(feed)
    feed()
    grid.set_flowing(True)
    return grid


def test_a_stale_grid_meter_gives_the_fallback(station: Any, tmp_path: Path) -> None:
    s = station(
        [evse_table(i, tmp_path) for i in range(2)],
        grid_limit_a=40.0,
        grid_meter={"driver": "sim", "power_kw": 6.9, "poll_interval_s": 5.0},
    )
    grid = building(s, {"a": 10.0})  # the rest of the building: 10 A per phase
    s.charge(0)
    s.charge(1)
    s.run(12)
    assert s.offered() == {s.ids[0]: 15, s.ids[1]: 15}  # 40 A - 10 A, shared
    assert s.status(0)["limit_source"] == "grid" and s.status(0)["limit_a"] == 30
    grid.set_failing(True)  # the grid meter goes silent
    s.run(55)
    assert s.status(0)["limit_source"] == "grid"
    s.run(10)  # its last reading is now older than 60 s
    for n in (0, 1):
        st = s.status(n)
        assert (st["offered_a"], st["limit_a"], st["limit_source"]) == (6, 6, "fallback"), st
    grid.set_failing(False)
    s.run(12)
    assert s.status(0)["limit_source"] == "grid"


def test_ten_simulated_minutes_two_cars_of_different_maximums_do_not_oscillate(
    station: Any, tmp_path: Path
) -> None:
    """A car that takes 10 A of 16 leaves 6 A that the other car gets, and then nothing moves:
    the offers stay still for the rest of the ten minutes (openWB/core #1605 is about this)."""
    s = station(
        [evse_table(0, tmp_path, car_max_a=10.0), evse_table(1, tmp_path, car_max_a=32.0)],
        grid_limit_a=32.0,
    )
    s.charge(0)
    s.charge(1)
    s.run(600)
    changes = [
        t for t in range(1, len(s.offers)) if s.offers[t] != s.offers[t - 1]
    ]  # seconds at which some offer changed
    settled = s.offers[-1]
    print(f"\n10-minute simulation: offers changed at t={changes} s, settled at {settled}")
    assert settled == {s.ids[0]: 11, s.ids[1]: 21}
    assert changes and changes[-1] < 60, changes
    assert all(sum(o.values()) <= 32 for o in s.offers)
    draws = (s.pilot(0).draw_a(), s.pilot(1).draw_a())
    assert draws == (10, 21)
    kwh = [s.ctl.evses[i].meter.read().energy_kwh for i in s.ids]  # the sim meters count it
    assert kwh[0] == pytest.approx(10 * 0.69 * 10 / 60, rel=0.1)
    assert kwh[1] > kwh[0] * 1.8


def test_a_pilot_error_opens_the_relay_at_once(station: Any, tmp_path: Path) -> None:
    s = station([evse_table(0, tmp_path)], grid_limit_a=32.0)
    s.charge(0)
    s.run(2)
    assert s.status(0)["relay_closed"]
    s.pilot(0).force(PilotState.E)
    s.drain()
    st = s.status(0)
    assert (st["pilot"], st["relay_closed"], st["state"]) == ("E", False, "charging")
    s.run(1)
    assert s.status(0)["offered_a"] == 0
    s.pilot(0).release()
    s.run(7)
    st = s.status(0)
    assert (st["pilot"], st["relay_closed"], st["offered_a"]) == ("C", True, 32)


def test_a_technicians_pilot_test_on_an_idle_evse(station: Any, tmp_path: Path) -> None:
    """``stationctl pilot set``: the offer reaches the pilot, the relay stays open, the budget
    still holds, and a session takes over from the test."""
    s = station([evse_table(i, tmp_path) for i in range(2)], grid_limit_a=16.0)
    rt0 = s.ctl.evses[s.ids[0]]
    s.charge(1)
    s.run(1)
    assert s.offered() == {s.ids[0]: 0, s.ids[1]: 16}
    s.pilot(0).plug()
    s.drain()
    assert s.ctl.current.set_test_offer(rt0, 10) == pytest.approx(16.6667, abs=1e-4)
    s.run(1)  # the budget holds: no room until the charging EVSE comes down (it does not)
    assert s.offered() == {s.ids[0]: 0, s.ids[1]: 16}
    with pytest.raises(ValueError, match="minimum"):
        s.ctl.current.set_test_offer(rt0, 4)
    s.pilot(1).unplug()
    s.run(6)
    st = s.status(0)
    assert (st["offered_a"], st["pilot"], st["relay_closed"]) == (10, "C", False)
    s.ctl.drivers.rfid.tap(CARDS[0])  # a session on the tested EVSE ends the test
    s.drain()
    s.run(6)
    assert s.offered() == {s.ids[0]: 16, s.ids[1]: 0}
    assert s.status(0)["relay_closed"]
    with pytest.raises(ValueError, match="not idle"):
        s.ctl.current.set_test_offer(rt0, 10)


def test_config_keys_are_checked(tmp_path: Path) -> None:
    from agent.config import EvseConfig, StationConfig
    from agent.errors import ConfigError
    from agent.hardware import build_pilot
    from drivers.pilot.evse_din import EvseDinPilot

    base = {"id": "ST-1", "operator_id": "DE*ICE", "location": "x"}
    assert StationConfig.model_validate(base).fallback_limit_a == 6
    for bad, why in [
        ({"fallback_limit_a": 3}, "at least 6 A"),
        ({"grid_meter": {"driver": "sim"}}, "needs grid_limit_a"),
        ({"grid_limit_a": -1}, "greater than or equal"),
    ]:
        with pytest.raises(ValueError, match=why):
            StationConfig.model_validate({**base, **bad})
    evse = {"id": "DE*ICE*E000001*1"}
    with pytest.raises(ValueError, match="phases"):
        EvseConfig.model_validate({**evse, "phases": 2})
    with pytest.raises(ValueError, match="max_current_a"):
        EvseConfig.model_validate({**evse, "max_current_a": 100})
    cfg = EvseConfig.model_validate(
        {**evse, "pilot": {"driver": "evse_din", "port": "/dev/ttyUSB9", "device_id": 3}}
    )
    assert cfg.pilot is not None
    pilot = build_pilot(cfg.pilot)  # no I/O until started
    assert isinstance(pilot, EvseDinPilot) and pilot.state() is PilotState.F
    data = station_config(tmp_path, "mqtt://127.0.0.1:1", "t")
    data["station"]["grid_meter"] = {"driver": "sim"}
    with pytest.raises(ConfigError, match="station: grid_meter needs grid_limit_a"):
        parse_config(data, tmp_path / "config.toml")


def test_a_car_that_ignores_the_pause_is_cut_off_after_the_grace_time(
    station: Any, tmp_path: Path
) -> None:
    s = station([evse_table(0, tmp_path)], grid_limit_a=32.0)
    s.charge(0)
    s.run(1)
    assert s.status(0)["relay_closed"]
    s.pilot(0).force(PilotState.C)  # the car keeps asking whatever it is offered
    assert s.command(command="set_current_limit", limit_a=0)["status"] == "accepted"
    s.run(2)
    st = s.status(0)
    assert (st["offered_a"], st["pilot"], st["relay_closed"]) == (0, "C", True)  # grace
    s.run(2)
    assert not s.status(0)["relay_closed"]  # cut off: the contactor opens
    assert s.status(0)["state"] == "charging"  # the session goes on
    assert s.command(command="set_current_limit", limit_a=32)["status"] == "accepted"
    s.run(6)
    st = s.status(0)
    assert (st["offered_a"], st["relay_closed"]) == (32, True)


def test_a_commanded_limit_survives_a_restart_until_it_expires(tmp_path: Path) -> None:
    evses = [evse_table(i, tmp_path) for i in range(2)]
    first = Station(tmp_path, evses, grid_limit_a=32.0)
    until = rfc3339(first.clock.now() + timedelta(minutes=10))
    assert (
        first.command(command="set_current_limit", limit_a=10, valid_until=until)["status"]
        == "accepted"
    )
    first.close()
    again = Station(tmp_path, evses, grid_limit_a=32.0)
    try:
        again.charge(0)
        again.charge(1)
        again.run(6)
        assert sorted(again.offered().values()) == [0, 10]
        assert again.status(0)["limit_source"] == "station"
        again.clock.advance(600)  # past valid_until
        again.run(6)
        assert again.offered() == {again.ids[0]: 16, again.ids[1]: 16}
    finally:
        again.close()


def test_a_board_that_does_not_answer_is_pilot_f_and_a_station_fault(
    station: Any, tmp_path: Path
) -> None:
    board = evse_table(0, tmp_path)
    board["pilot"] = {"driver": "evse_din", "port": str(tmp_path / "no-tty"), "timeout_s": 0.1}
    s = station([board], grid_limit_a=32.0)
    st = s.status(0)
    assert (st["pilot"], st["plugged"], st["offered_a"]) == ("F", False, 0)
    assert s.ctl.status().faults == ["pilot:pilot_failed"]


@pytest.mark.parametrize("grid_poll_s", [5.0, 3.0, 7.0])
def test_a_grid_meter_that_sees_the_cars_too_gives_steady_offers(
    station: Any, tmp_path: Path, grid_poll_s: float
) -> None:
    """The grid meter measures the whole building, the cars included (read every 3, 5 or 7 s,
    the EVSE meters every 5 s): the headroom subtracts what the EVSEs' meters measure, without
    the offers swinging; when the rest of the building draws more, the cars come down within
    one grid reading, and the offers settle again."""
    s = station(
        [evse_table(0, tmp_path, car_max_a=10.0), evse_table(1, tmp_path, car_max_a=32.0)],
        grid_limit_a=40.0,
        grid_meter={"driver": "sim", "power_kw": 0.0, "poll_interval_s": grid_poll_s},
    )
    base = {"a": 8.0}  # the rest of the building
    grid = building(s, base)
    s.charge(0)
    s.charge(1)
    s.run(300)
    assert sorted(s.offers[-1].values()) == [11, 21]
    base["a"] = 20.0  # an oven goes on
    grid.set_power_kw((base["a"] + s.pilot(0).draw_a() + s.pilot(1).draw_a()) * 0.69)
    s.run(300)
    changes = [t for t in range(1, len(s.offers)) if s.offers[t] != s.offers[t - 1]]
    print(f"\ngrid every {grid_poll_s:g} s: offers changed at t={changes} s, then {s.offers[-1]}")
    assert all(sum(o.values()) <= 40 - 8 for o in s.offers[20:300])
    assert all(sum(o.values()) <= 40 - 20 for o in s.offers[300 + int(grid_poll_s) + 1 :])
    assert [t for t in changes if 60 < t < 300] == []  # still before the oven
    assert [t for t in changes if t > 420] == []  # and still again after it
    assert sum(s.offers[-1].values()) >= 18  # the headroom is used
