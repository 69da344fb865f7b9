"""The event loop's parts: the timer heap (on a fake clock) and the two-lane queue."""

from __future__ import annotations

import threading
import time

import pytest

from agent.clock import FakeClock
from agent.loop import Lanes, TimerFired, Timers
from agent.session import Timer

E1 = "DE*ICE*E000001*1"
E2 = "DE*ICE*E000001*2"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timers(clock: FakeClock) -> Timers:
    return Timers(clock)


# ---------------------------------------------------------------- Timers
def test_no_timer(timers: Timers) -> None:
    assert timers.next_in() is None
    assert timers.due() == []


def test_a_timer_fires_once_at_its_deadline(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.AUTH, "req-1", 5.0)
    assert timers.running(E1, Timer.AUTH)
    assert timers.next_in() == 5.0
    clock.advance(4.999)
    assert timers.due() == []
    assert timers.next_in() == pytest.approx(0.001)
    clock.advance(0.001)
    assert timers.due() == [TimerFired(E1, Timer.AUTH, "req-1")]
    assert not timers.running(E1, Timer.AUTH)
    assert timers.due() == []  # once
    assert timers.next_in() is None


def test_next_in_is_never_negative(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.AUTH, "req-1", 1.0)
    clock.advance(30)
    assert timers.next_in() == 0.0


def test_due_in_deadline_order(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.CONNECTION, "S-1", 30.0)
    timers.start(E2, Timer.AUTH, "req-2", 5.0)
    timers.start(E1, Timer.AUTH, "req-1", 10.0)
    timers.start(E2, Timer.CONNECTION, "S-2", 10.0)  # same deadline: in start order
    assert timers.next_in() == 5.0
    clock.advance(10)
    assert timers.due() == [
        TimerFired(E2, Timer.AUTH, "req-2"),
        TimerFired(E1, Timer.AUTH, "req-1"),
        TimerFired(E2, Timer.CONNECTION, "S-2"),
    ]
    assert timers.next_in() == 20.0
    clock.advance(20)
    assert timers.due() == [TimerFired(E1, Timer.CONNECTION, "S-1")]


def test_timers_are_per_evse_and_kind(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.AUTH, "a", 1.0)
    timers.start(E2, Timer.AUTH, "b", 1.0)
    timers.start(E1, Timer.CONNECTION, "c", 1.0)
    timers.cancel(E1, Timer.AUTH)
    assert timers.running(E2, Timer.AUTH) and timers.running(E1, Timer.CONNECTION)
    clock.advance(1)
    assert [f.key for f in timers.due()] == ["b", "c"]


def test_starting_again_replaces(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.AUTH, "req-1", 5.0)
    clock.advance(3)
    timers.start(E1, Timer.AUTH, "req-2", 5.0)  # deadline now t=8, with the new key
    clock.advance(2)  # t=5: the old deadline passes without firing
    assert timers.due() == []
    assert timers.running(E1, Timer.AUTH)
    clock.advance(3)  # t=8
    assert timers.due() == [TimerFired(E1, Timer.AUTH, "req-2")]


def test_replacing_with_a_sooner_deadline(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.CONNECTION, "S-1", 60.0)
    timers.start(E1, Timer.CONNECTION, "S-2", 1.0)
    assert timers.next_in() == 1.0
    clock.advance(60)
    assert timers.due() == [TimerFired(E1, Timer.CONNECTION, "S-2")]


def test_cancel(timers: Timers, clock: FakeClock) -> None:
    timers.start(E1, Timer.AUTH, "req-1", 5.0)
    timers.cancel(E1, Timer.AUTH)
    timers.cancel(E2, Timer.AUTH)  # nothing running there: no error
    assert not timers.running(E1, Timer.AUTH)
    clock.advance(10)
    assert timers.due() == []
    timers.start(E1, Timer.AUTH, "req-2", 5.0)  # a cancelled timer can start again
    clock.advance(5)
    assert timers.due() == [TimerFired(E1, Timer.AUTH, "req-2")]


def test_next_in_ignores_cancelled_and_replaced_timers(timers: Timers) -> None:
    timers.start(E1, Timer.AUTH, "req-1", 5.0)
    timers.cancel(E1, Timer.AUTH)
    assert timers.next_in() is None
    timers.start(E1, Timer.CONNECTION, "S-1", 5.0)
    timers.start(E1, Timer.CONNECTION, "S-1", 50.0)
    assert timers.next_in() == 50.0


# ---------------------------------------------------------------- Lanes
def test_local_items_first_even_when_posted_later() -> None:
    lanes: Lanes[str] = Lanes()
    lanes.put("b1", local=False)
    lanes.put("b2", local=False)
    lanes.put("l1", local=True)
    lanes.put("b3", local=False)
    lanes.put("l2", local=True)
    assert lanes.sizes() == (2, 3)
    got = [lanes.get(0.0) for _ in range(5)]
    assert got == ["l1", "l2", "b1", "b2", "b3"]
    assert lanes.sizes() == (0, 0)


def test_a_local_item_overtakes_a_backend_flood() -> None:
    lanes: Lanes[int] = Lanes()
    for i in range(1000):
        lanes.put(i, local=False)
    assert lanes.get(0.0) == 0
    lanes.put(-1, local=True)
    assert lanes.get(0.0) == -1
    assert lanes.get(0.0) == 1


def test_get_returns_none_after_the_timeout() -> None:
    lanes: Lanes[str] = Lanes()
    started = time.monotonic()
    assert lanes.get(0.05) is None
    assert time.monotonic() - started >= 0.04
    assert lanes.get(0.0) is None


def test_get_wakes_for_an_item_from_another_thread() -> None:
    lanes: Lanes[str] = Lanes()
    poster = threading.Timer(0.05, lambda: lanes.put("card", local=True))
    poster.start()
    try:
        started = time.monotonic()
        assert lanes.get(10.0) == "card"
        assert time.monotonic() - started < 5.0  # woken by the put, not by the timeout
    finally:
        poster.cancel()
        poster.join()
