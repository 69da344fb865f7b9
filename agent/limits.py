"""The current arbiter: pure functions from limits, EVSE states, measured currents and time to
the current offered to each EVSE (no I/O, no clock: time arrives as an argument).

:func:`arbitrate` shares the station's budget (per phase) fairly among the EVSEs that charge:

- never above an EVSE's own limit, nor above what its car is seen to take (``cap_a``, with
  hysteresis so that the offer does not swing: see :func:`next_cap`);
- never between 0 and 6 A: EVSEs that cannot get 6 A are paused (0 A), in a rotation
  (:data:`ROTATE_AFTER_S`) so that no car waits forever;
- never more in total than the budget.

:func:`rate_limit` then lets an EVSE's offer change at most every 5 s (a change to 0 at once),
without ever letting the applied offers exceed the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

MIN_A = 6.0
ROTATE_AFTER_S = 300.0  # a paused EVSE gets its turn after at most this long
RATE_LIMIT_S = 5.0  # an offer changes at most this often (to 0: at once)
CAP_LOWER_MARGIN_A = 1.5  # a car taking this much less than offered is capped
CAP_RAISE_MARGIN_A = 0.5  # a capped car taking nearly its cap gets more
CAP_STEP_A = 2.0


class LimitSource(StrEnum):
    """What sets an EVSE's ``limit_a`` in ``P/status``."""

    EVSE = "evse"  # its rating or an EVSE limit from the backend
    STATION = "station"  # [station] grid_limit_a or a station-wide limit from the backend
    GRID = "grid"  # the grid meter's headroom
    FALLBACK = "fallback"  # the grid meter went stale: fallback_limit_a


@dataclass(frozen=True, kw_only=True)
class EvseDemand:
    evse_id: str
    wants: bool  # a charging session with a car connected
    limit_a: float  # the EVSE's own limit (rating, EVSE limit command, fallback)
    limit_source: LimitSource = LimitSource.EVSE
    offered_a: float = 0.0  # what it is offered now
    measured_a: float | None = None  # what its car takes, measured after the offer settled


@dataclass(frozen=True, kw_only=True)
class Budget:
    """The station-wide budget per phase (None: no station-wide limit) and its source."""

    total_a: float | None
    source: LimitSource = LimitSource.STATION


@dataclass(frozen=True, kw_only=True)
class Turn:
    """What the arbiter remembers of one EVSE between rounds."""

    served_since: float | None = None  # start of its current turn
    streak_since: float | None = None  # start of its uninterrupted service
    waiting_since: float | None = None  # when it began to wait (paused)
    cap_a: float | None = None  # what its car is seen to take at most


@dataclass(frozen=True)
class Memory:
    turns: Mapping[str, Turn] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Allocation:
    offered_a: float
    limit_a: float
    source: LimitSource


# ---------------------------------------------------------------------------- caps
def next_cap(
    cap: float | None, offered: float, measured: float | None, limit: float
) -> float | None:
    """What the car is taken to accept at most, from what it draws of what it is offered.

    Lowered to what it draws + 1 A when it takes clearly less than offered; raised by 2 A when
    it takes nearly all of its cap; unchanged in between (the hysteresis band that keeps the
    offer still). None: no cap (the car takes what it gets)."""
    if measured is None or offered < MIN_A:
        return cap
    if measured < offered - CAP_LOWER_MARGIN_A:
        return max(MIN_A, math.floor(measured) + 1.0)
    if cap is not None and measured >= cap - CAP_RAISE_MARGIN_A:
        raised = cap + CAP_STEP_A
        return None if raised >= limit else raised
    return cap


# ---------------------------------------------------------------------------- sharing
def _ceiling(d: EvseDemand, turn: Turn) -> float:
    return min(d.limit_a, turn.cap_a) if turn.cap_a is not None else d.limit_a


def _fair_share(served: Sequence[tuple[str, float]], total: float | None) -> dict[str, float]:
    """Water filling: equal shares, an EVSE below its share keeps its ceiling and the rest is
    shared by the others; whole amperes, rounded down, then the amperes the rounding left over
    one each to those still below their ceiling."""
    out: dict[str, float] = {}
    remaining = math.inf if total is None else total
    ordered = sorted(served, key=lambda item: (item[1], item[0]))
    for i, (evse_id, ceiling) in enumerate(ordered):
        share = remaining / (len(ordered) - i)
        give = min(ceiling, share)
        out[evse_id] = float(math.floor(give))
        remaining -= give
    if total is not None:
        spare = math.floor(total - sum(out.values()))
        for evse_id, ceiling in sorted(served, key=lambda item: item[0]):
            if spare >= 1 and out[evse_id] + 1 <= ceiling:
                out[evse_id] += 1
                spare -= 1
    return out


def _choose(
    candidates: Sequence[EvseDemand], turns: Mapping[str, Turn], fit: int, now: float, rotate: float
) -> list[EvseDemand]:
    """The ``fit`` EVSEs served this round: those in a running turn first, then the longest
    waiting, then those whose turn is over (the longest served last)."""
    waiting = fit < len(candidates)

    def key(d: EvseDemand) -> tuple[int, float, str]:
        t = turns.get(d.evse_id, Turn())
        if t.served_since is None:
            return (1, now if t.waiting_since is None else t.waiting_since, d.evse_id)
        if waiting and now - t.served_since >= rotate:
            streak = t.served_since if t.streak_since is None else t.streak_since
            return (2, -streak, d.evse_id)
        return (0, t.served_since, d.evse_id)

    return sorted(candidates, key=key)[:fit]


def _next_turn(turn: Turn, served: bool, renewed: bool, now: float) -> Turn:
    if not served:
        waiting = now if turn.waiting_since is None else turn.waiting_since
        return Turn(waiting_since=waiting, cap_a=turn.cap_a)
    if turn.served_since is None:
        return Turn(served_since=now, streak_since=now, cap_a=turn.cap_a)
    return replace(turn, served_since=now) if renewed else turn


def arbitrate(
    demands: Sequence[EvseDemand],
    budget: Budget,
    memory: Memory,
    now: float,
    *,
    rotate_after_s: float = ROTATE_AFTER_S,
) -> tuple[dict[str, Allocation], Memory]:
    """The offer for every EVSE in ``demands`` and the memory for the next round."""
    turns: dict[str, Turn] = {}
    for d in demands:
        t = memory.turns.get(d.evse_id, Turn())
        if d.wants:
            turns[d.evse_id] = replace(
                t, cap_a=next_cap(t.cap_a, d.offered_a, d.measured_a, d.limit_a)
            )
    candidates = [d for d in demands if d.wants and d.limit_a >= MIN_A]
    total = budget.total_a
    fit = len(candidates) if total is None else min(len(candidates), int(max(total, 0) // MIN_A))
    served = _choose(candidates, turns, fit, now, rotate_after_s)
    shares = _fair_share([(d.evse_id, _ceiling(d, turns[d.evse_id])) for d in served], total)
    out: dict[str, Allocation] = {}
    for d in demands:
        evse_limited = total is None or d.limit_a <= total
        limit = d.limit_a if evse_limited else float(total or 0.0)
        source = d.limit_source if evse_limited else budget.source
        out[d.evse_id] = Allocation(
            offered_a=shares.get(d.evse_id, 0.0), limit_a=limit, source=source
        )
        if d.evse_id in turns:
            t = turns[d.evse_id]
            renewed = t.served_since is not None and now - t.served_since >= rotate_after_s
            turns[d.evse_id] = _next_turn(
                t, d.evse_id in shares, renewed and fit < len(candidates), now
            )
    return out, Memory(turns)


# ---------------------------------------------------------------------------- rate limit
@dataclass(frozen=True)
class Applied:
    """The offer an EVSE's pilot signals and when it last changed (monotonic seconds)."""

    offered_a: float
    changed_at: float


def rate_limit(
    current: Mapping[str, Applied],
    targets: Mapping[str, float],
    total: float | None,
    now: float,
    *,
    min_interval_s: float = RATE_LIMIT_S,
) -> dict[str, Applied]:
    """Move every offer towards its target at most every ``min_interval_s`` (to 0 at once).

    While a lowering is held back, raises wait too if together they would exceed ``total``; if
    the held offers alone exceed it (the budget itself dropped), the lowerings happen at once."""
    never = Applied(0.0, -math.inf)
    out: dict[str, Applied] = {}
    for evse_id, target in targets.items():
        cur = current.get(evse_id, never)
        if target == cur.offered_a:
            out[evse_id] = cur
        elif target == 0 or now - cur.changed_at >= min_interval_s:
            out[evse_id] = Applied(target, now)
        else:
            out[evse_id] = cur
    if total is None or sum(a.offered_a for a in out.values()) <= total:
        return out
    for evse_id, applied in out.items():  # raises wait for the lowerings
        cur = current.get(evse_id, never)
        if applied.offered_a > cur.offered_a:
            out[evse_id] = cur
    if sum(a.offered_a for a in out.values()) > total:  # the budget dropped: lower at once
        for evse_id, target in targets.items():
            if target < out[evse_id].offered_a:
                out[evse_id] = Applied(target, now)
    return out
