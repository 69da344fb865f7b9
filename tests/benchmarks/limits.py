"""9. The current arbiter: the cost of one round, and a long simulation on an injected clock.

Method: ``agent.limits.arbitrate`` + ``rate_limit`` (what ``agent/current.py`` runs every loop
round, once a second and after every item) timed in this process with ``time.perf_counter``
for 2, 8 and 64 charging EVSEs (median and p99 over 2,000 rounds; 200 in ``--quick``). Then a
simulation of a 63 A connection shared by 8 simulated cars (``drivers.pilot.sim.SimPilot``)
whose own maximums differ (10-32 A), stepped one simulated second at a time for one hour
(10 minutes in ``--quick``): a car's draw counts once its offer was steady 6 s, as in the
agent. Reported: how often offers changed after the first minute, the highest total offered,
the share of the budget the cars actually drew.

    python -m tests.benchmarks.limits [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time

from agent.limits import Applied, Budget, EvseDemand, Memory, arbitrate, rate_limit
from drivers.pilot.sim import SimPilot
from tests.benchmarks.common import Result

SETTLE_S = 6.0


def _round_cost(n: int, rounds: int) -> tuple[float, float]:
    demands = [EvseDemand(evse_id=f"E{i}", wants=True, limit_a=32.0) for i in range(n)]
    memory, applied = Memory(), {}
    samples = []
    for r in range(rounds):
        t0 = time.perf_counter()
        out, memory = arbitrate(demands, Budget(total_a=6.0 * n * 1.5), memory, float(r))
        applied = rate_limit(applied, {k: a.offered_a for k, a in out.items()}, 9.0 * n, float(r))
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def simulate(seconds: int, maxima: list[float], total: float) -> dict[str, float]:
    cars = [SimPilot(car_max_a=m, plugged=True) for m in maxima]
    ids = [f"E{i}" for i in range(len(cars))]
    memory, applied = Memory(), {}
    changes_late, peak, drawn = 0, 0.0, 0.0
    previous: dict[str, float] = {}
    for t in range(seconds):
        demands = []
        for evse_id, car in zip(ids, cars, strict=True):
            cur = applied.get(evse_id, Applied(0.0, -1e9))
            settled = t - cur.changed_at >= SETTLE_S and cur.offered_a > 0
            demands.append(
                EvseDemand(
                    evse_id=evse_id,
                    wants=True,
                    limit_a=32.0,
                    offered_a=cur.offered_a,
                    measured_a=car.draw_a() if settled else None,
                )
            )
        out, memory = arbitrate(demands, Budget(total_a=total), memory, float(t))
        applied = rate_limit(applied, {k: a.offered_a for k, a in out.items()}, total, float(t))
        offers = {k: a.offered_a for k, a in applied.items()}
        for evse_id, car in zip(ids, cars, strict=True):
            car.set_current(offers[evse_id])
        if t >= 60 and offers != previous:
            changes_late += 1
        previous = offers
        peak = max(peak, sum(offers.values()))
        drawn += sum(car.draw_a() for car in cars)
    return {
        "offer_changes_after_60s": changes_late,
        "peak_offered_a": peak,
        "mean_drawn_share": drawn / seconds / total,
        "final_offers": sum(previous.values()),
    }


def run_limits(quick: bool) -> Result:
    res = Result("9. Current arbiter (tests/benchmarks/limits.py)")
    t0 = time.monotonic()
    rounds = 200 if quick else 2000
    for n in (2, 8, 64):
        p50, p99 = _round_cost(n, rounds)
        res.data[f"round_us_{n}"] = {"p50": p50, "p99": p99}
        res.row(
            f"arbiter + rate limit, {n} EVSEs, one round", f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"
        )
    seconds = 600 if quick else 3600
    maxima = [10.0, 13.0, 16.0, 16.0, 20.0, 32.0, 32.0, 11.0]
    sim = simulate(seconds, maxima, 63.0)
    res.data["simulation"] = sim
    res.row(
        f"8 cars (10-32 A) on 63 A, {seconds // 60} simulated min",
        f"{sim['offer_changes_after_60s']:.0f} offer changes after 60 s, peak "
        f"{sim['peak_offered_a']:.0f} A offered, {sim['mean_drawn_share']:.0%} of the budget drawn",
        "no swinging, never above 63 A",
        sim["peak_offered_a"] <= 63.0 and sim["offer_changes_after_60s"] == 0,
    )
    res.seconds = time.monotonic() - t0
    return res


if __name__ == "__main__":
    result = run_limits("--quick" in sys.argv)
    for row in result.rows:
        print(f"{row.measure}: {row.result}")
