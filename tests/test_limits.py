"""The pure parts of current control: the duty-cycle mapping (a table), the arbiter's invariants
(hypothesis), its rotation, its caps, and the rate limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.limits import (
    Applied,
    Budget,
    EvseDemand,
    LimitSource,
    Memory,
    arbitrate,
    next_cap,
    rate_limit,
)
from drivers.pilot.base import PilotState, check_offer, duty_cycle_percent

# ---------------------------------------------------------------------------- duty cycle


@pytest.mark.parametrize(
    ("amps", "duty"),
    [
        (0, 0.0),  # no PWM: do not charge
        (6, 10.0),
        (10, 16.6667),
        (13, 21.6667),
        (16, 26.6667),
        (20, 33.3333),
        (25, 41.6667),
        (32, 53.3333),
        (40, 66.6667),
        (51, 85.0),  # the last value of the first segment
        (52, 84.8),  # 52 / 2.5 + 64
        (63, 89.2),
        (70, 92.0),
        (80, 96.0),
    ],
)
def test_duty_cycle_table(amps: float, duty: float) -> None:
    assert duty_cycle_percent(amps) == pytest.approx(duty, abs=1e-4)


@pytest.mark.parametrize("amps", [0.5, 5.99, -1, 80.5, math.nan, math.inf])
def test_currents_that_cannot_be_offered(amps: float) -> None:
    with pytest.raises(ValueError):
        duty_cycle_percent(amps)
    with pytest.raises(ValueError):
        check_offer(amps)


def test_pilot_states() -> None:
    assert [s.value for s in PilotState if s.connected] == ["B", "C", "D"]
    assert [s.value for s in PilotState if s.requests_power] == ["C", "D"]
    assert [s.value for s in PilotState if s.error] == ["E", "F"]


# ---------------------------------------------------------------------------- the arbiter


def demand(i: int, *, limit: float = 32.0, wants: bool = True, **kw: object) -> EvseDemand:
    return EvseDemand(evse_id=f"E{i}", wants=wants, limit_a=limit, **kw)  # type: ignore[arg-type]


def offers(demands: list[EvseDemand], total: float | None, now: float = 0.0) -> dict[str, float]:
    out, _ = arbitrate(demands, Budget(total_a=total), Memory(), now)
    return {k: a.offered_a for k, a in out.items()}


def test_scenarios_from_the_issue() -> None:
    assert offers([demand(0), demand(1)], 32) == {"E0": 16, "E1": 16}
    assert sorted(offers([demand(i) for i in range(3)], 16).values()) == [0, 8, 8]
    assert sorted(offers([demand(0), demand(1)], 10).values()) == [0, 10]
    # an EVSE's own limit is never exceeded; what it cannot take goes to the others
    assert offers([demand(0, limit=10), demand(1)], 32) == {"E0": 10, "E1": 22}
    # nobody charging: nothing offered; no station limit: each its own limit
    assert offers([demand(0, wants=False)], 32) == {"E0": 0}
    assert offers([demand(0, limit=16), demand(1, limit=32)], None) == {"E0": 16, "E1": 32}


def test_limit_and_its_source() -> None:
    out, _ = arbitrate(
        [demand(0, limit=16), demand(1, limit=6, limit_source=LimitSource.FALLBACK)],
        Budget(total_a=10, source=LimitSource.GRID),
        Memory(),
        0.0,
    )
    assert (out["E0"].limit_a, out["E0"].source) == (10, LimitSource.GRID)
    assert (out["E1"].limit_a, out["E1"].source) == (6, LimitSource.FALLBACK)


def test_paused_evses_take_turns() -> None:
    """Three cars, room for two: each pause lasts at most one rotation period, and the one
    served longest is the one paused next."""
    demands = [demand(i) for i in range(3)]
    memory = Memory()
    served_at: list[set[str]] = []
    for t in range(0, 1000, 10):
        out, memory = arbitrate(demands, Budget(total_a=16), memory, float(t), rotate_after_s=100)
        served_at.append({k for k, a in out.items() if a.offered_a > 0})
        assert sorted(a.offered_a for a in out.values()) == [0, 8, 8]
    pauses: dict[str, int] = {}
    longest = dict.fromkeys(["E0", "E1", "E2"], 0)
    for served in served_at:
        for k in longest:
            pauses[k] = 0 if k in served else pauses.get(k, 0) + 1
            longest[k] = max(longest[k], pauses[k])
    assert all(1 <= n * 10 <= 110 for n in longest.values()), longest


def test_caps_have_a_hysteresis_band() -> None:
    assert next_cap(None, 16, 10, 32) == 11  # takes clearly less: capped
    assert next_cap(11, 11, 10, 32) == 11  # inside the band: unchanged
    assert next_cap(11, 11, 10.6, 32) == 13  # takes nearly all: more
    assert next_cap(31, 31, 31, 32) is None  # back at its limit: no cap
    assert next_cap(None, 16, 15, 32) is None  # takes what it gets
    assert next_cap(11, 0, 0, 32) == 11  # paused: nothing learnt
    assert next_cap(None, 16, None, 32) is None  # no settled measurement


demand_lists = st.lists(
    st.builds(
        lambda i, wants, limit, cap_measured, offered: (i, wants, limit, cap_measured, offered),
        st.integers(0, 0),
        st.booleans(),
        st.floats(min_value=0, max_value=80, allow_nan=False),
        st.none() | st.floats(min_value=0, max_value=80, allow_nan=False),
        st.sampled_from([0.0, 6.0, 10.0, 16.0, 32.0]),
    ),
    min_size=0,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    raw=demand_lists,
    total=st.none() | st.floats(min_value=0, max_value=200, allow_nan=False),
    rounds=st.integers(1, 4),
)
def test_arbiter_invariants(
    raw: list[tuple[int, bool, float, float | None, float]], total: float | None, rounds: int
) -> None:
    demands = [
        EvseDemand(
            evse_id=f"E{n}",
            wants=wants,
            limit_a=limit,
            offered_a=offered,
            measured_a=measured,
        )
        for n, (_, wants, limit, measured, offered) in enumerate(raw)
    ]
    memory = Memory()
    for r in range(rounds):
        out, memory = arbitrate(demands, Budget(total_a=total), memory, r * 400.0)
        given_a = {k: a.offered_a for k, a in out.items()}
        assert set(given_a) == {d.evse_id for d in demands}
        for d in demands:
            a = given_a[d.evse_id]
            assert a == 0 or a >= 6, "never between 0 and 6 A"
            assert a <= d.limit_a, "never above the EVSE's limit"
            assert d.wants or a == 0, "nothing for an EVSE that does not charge"
        if total is not None:
            assert sum(given_a.values()) <= total + 1e-9, "never more than the budget"
        fit = [d for d in demands if d.wants and d.limit_a >= 6]
        room = len(fit) if total is None else min(len(fit), int(total // 6))
        assert sum(1 for a in given_a.values() if a > 0) == room, "as many served as fit"
        uncapped = [
            given_a[d.evse_id]
            for d in fit
            if given_a[d.evse_id] > 0
            and given_a[d.evse_id] < math.floor(d.limit_a)
            and memory.turns[d.evse_id].cap_a is None
        ]
        if uncapped:  # fair share: those held below their limit get the same, to 1 A
            assert max(uncapped) - min(uncapped) <= 1


# ---------------------------------------------------------------------------- rate limit


def test_rate_limit_waits_5_s_except_to_zero() -> None:
    cur = {"E0": Applied(16.0, 100.0)}
    assert rate_limit(cur, {"E0": 10.0}, None, 103.0) == cur  # too soon
    assert rate_limit(cur, {"E0": 10.0}, None, 105.0) == {"E0": Applied(10.0, 105.0)}
    assert rate_limit(cur, {"E0": 0.0}, None, 100.5) == {"E0": Applied(0.0, 100.5)}
    # a new EVSE starts at once
    assert rate_limit({}, {"E1": 16.0}, 32, 0.0) == {"E1": Applied(16.0, 0.0)}


def test_rate_limit_holds_raises_while_a_lowering_waits() -> None:
    cur = {"E0": Applied(32.0, 100.0), "E1": Applied(0.0, -1e9)}
    out = rate_limit(cur, {"E0": 16.0, "E1": 16.0}, 32, 102.0)
    assert out == cur  # E1 must wait for E0 to come down
    out = rate_limit(cur, {"E0": 16.0, "E1": 16.0}, 32, 105.0)
    assert out == {"E0": Applied(16.0, 105.0), "E1": Applied(16.0, 105.0)}
    # the budget itself dropped: the lowering happens at once
    out = rate_limit(cur, {"E0": 10.0, "E1": 0.0}, 10, 101.0)
    assert out["E0"] == Applied(10.0, 101.0)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.1, max_value=8, allow_nan=False),
            st.lists(st.sampled_from([0.0, 6.0, 8.0, 10.0, 16.0, 32.0]), min_size=3, max_size=3),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_rate_limit_properties(steps: list[tuple[float, list[float]]]) -> None:
    total = 32.0
    cur: dict[str, Applied] = {}
    now = 0.0
    for dt, values in steps:
        now += dt
        targets = {f"E{i}": v for i, v in enumerate(values)}
        if sum(values) > total:  # the arbiter never asks for more than the budget
            continue
        out = rate_limit(cur, targets, total, now)
        assert sum(a.offered_a for a in out.values()) <= total
        for k, a in out.items():
            before = cur.get(k)
            if before is not None and a.offered_a != before.offered_a:
                assert a.changed_at == now
                assert a.offered_a in (0.0, targets[k]) or a.offered_a < before.offered_a
                if a.offered_a > before.offered_a:
                    assert now - before.changed_at >= 5.0, "raised within 5 s"
        cur = out
