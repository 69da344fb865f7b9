"""Fleet: N stations (separate daemon processes) against one Mosquitto and a backend whose
workers share the load through an MQTT 5 shared subscription; 1 vs 4 workers.

* Stations: ``station-agent run`` child processes (sim drivers, car plugged), started in
  parallel batches of 25; more are added only while ``MemAvailable`` stays above 1.5 GB (the
  count reached is reported).
* Backend: 1 or 4 worker processes (:mod:`tests.benchmarks.fleet_backend`), each its own paho
  client (MQTT 5) subscribed to ``$share/backend/fleet/+/auth/req`` (and ``.../+/cdr``),
  accepting every token at once. A fresh set of workers per phase.
* Load: every station starts a session by a tap once per ``interval`` (10 s), the station
  offsets spread evenly over the interval, and stops it by tapping the same card 2 s later
  (so the broker also carries the session events, the CDRs and their acks). Taps are sent
  over each station's control socket from a 32-thread pool; a scheduler keeps the plan.
* Auth round trip (the figure reported against the target): ``sim.tap`` sent (benchmark
  process, ``time.monotonic()``) -> the station's ``started`` event received by a monitor
  client in the benchmark process. It spans control socket, agent, auth/req to a worker, the
  worker's answer, the agent closing the relay and the ``started`` event back: an upper bound
  of the station's auth/req -> auth/res round trip, which is not observable from outside. The
  workers also report the one-way ``auth/req`` latency (request ``ts`` field -> receipt;
  1 ms resolution).
* Broker CPU: ``utime + stime`` of the mosquitto process over the phase, % of one core; the
  stations' summed CPU over the same window is given for context (on 2 cores the machine, not
  the broker, is what saturates first).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import Mosquitto
from agent.link import set_nodelay
from tests.benchmarks.common import (
    CLK_TCK,
    REPO,
    UID_A,
    Result,
    Station,
    child_env,
    cpu_ticks,
    dist,
    pct,
    rss_kb,
    workdir,
)
from tests.benchmarks.tap import evse_config

PREFIX = "fleet"
BATCH = 25
MIN_FREE_KB = 1_500_000
TARGET_P99_MS = 100.0
STOP_AFTER_S = 2.0  # quick: 1.0


class Monitor:
    """Records the arrival of every ``started`` session event, per station."""

    def __init__(self, url: str) -> None:
        self.started: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        u = urlsplit(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-monitor")
        self.client.on_socket_open = lambda c, ud, sock: set_nodelay(sock)
        self.client.on_connect = lambda c, ud, f, rc, p: c.subscribe(f"{PREFIX}/+/session", 1)
        self.client.on_subscribe = lambda c, ud, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=60)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("fleet monitor: no SUBACK")

    def _on_message(self, c: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        if b'"started"' not in msg.payload:
            return
        station = msg.topic.split("/", 2)[1]
        with self._lock:
            self.started.setdefault(station, []).append(t)

    def first_after(self, station: str, t0: float, within: float) -> float | None:
        with self._lock:
            times = self.started.get(station, [])
            return next((t for t in times if t0 < t < t0 + within), None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Workers:
    def __init__(self, url: str, n: int, tmp: Path) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        for i in range(n):
            out = tmp / f"worker{i}.json"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.benchmarks.fleet_backend",
                    "--broker",
                    url,
                    "--prefix",
                    PREFIX,
                    "--name",
                    f"backend-w{i}-{time.monotonic_ns()}",
                    "--out",
                    str(out),
                ],
                cwd=REPO,
                env=child_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append((proc, out))
        for proc, _ in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("fleet backend worker did not start")

    def stop(self) -> list[dict[str, Any]]:
        stats = []
        for proc, _ in self.procs:
            proc.terminate()
        for proc, out in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError, ValueError):
                stats.append(json.loads(out.read_text()))
        return stats


def _mem_available_kb() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def grow(stations: list[Station], target: int, tmp: Path, url: str) -> dict[str, Any]:
    """Start stations in parallel batches until ``target`` run (or memory runs short)."""
    t0 = time.monotonic()
    added = 0
    limited = False
    while len(stations) < target:
        if _mem_available_kb() < MIN_FREE_KB:
            limited = True
            break
        batch: list[Station] = []
        for _ in range(min(BATCH, target - len(stations))):
            sid = f"FL-{len(stations) + len(batch) + 1:04d}"
            batch.append(
                Station(
                    tmp / sid,
                    url,
                    PREFIX,
                    station_id=sid,
                    evse=evse_config(),
                    mqtt={"auth_timeout_s": 10.0},
                )
            )
        for st in batch:
            st.spawn()
        for st in batch:
            st.wait_ready(timeout=120)
            st.ctl("sim.plug")
        stations.extend(batch)
        added += len(batch)
    return {"added": added, "seconds": round(time.monotonic() - t0, 1), "memory_limited": limited}


def run_phase(
    stations: list[Station],
    mosq: Mosquitto,
    monitor: Monitor,
    *,
    n_workers: int,
    duration: float,
    interval: float,
    tmp: Path,
    stop_after: float = STOP_AFTER_S,
) -> dict[str, Any]:
    workers = Workers(mosq.url, n_workers, tmp)
    plan: list[tuple[float, int, str, int]] = []
    spread = min(interval, duration)
    seq = 0
    t_start = time.monotonic() + 0.3
    for i in range(len(stations)):
        off = spread * i / len(stations)
        k = 0
        while off + k * interval < duration:
            at = t_start + off + k * interval
            heapq.heappush(plan, (at, seq, "start", i))
            heapq.heappush(plan, (at + stop_after, seq + 1, "stop", i))
            seq += 2
            k += 1
    taps: list[tuple[str, float]] = []
    late: list[float] = []
    errors: list[str] = []

    def do(kind: str, i: int, planned: float) -> None:
        st = stations[i]
        t0 = time.monotonic()
        late.append((t0 - planned) * 1000)
        try:
            st.ctl("sim.tap", uid=UID_A)
        except Exception as err:  # noqa: BLE001 - counted and reported
            errors.append(f"{st.station_id}: {err}")
            return
        if kind == "start":
            taps.append((st.station_id, t0))

    pids = [st.pid for st in stations]
    assert mosq.proc is not None
    b0 = cpu_ticks(mosq.proc.pid)
    s0 = sum(cpu_ticks(p) for p in pids)
    w0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        while plan:
            at, _, kind, i = heapq.heappop(plan)
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(do, kind, i, at)
    wall = time.monotonic() - w0
    b1 = cpu_ticks(mosq.proc.pid)
    s1 = sum(cpu_ticks(p) for p in pids)
    time.sleep(0.5)  # the last 'started' events
    stats = workers.stop()
    rtt = []
    missing = 0
    for sid, t0 in taps:
        t = monitor.first_after(sid, t0, stop_after)
        if t is None:
            missing += 1
        else:
            rtt.append((t - t0) * 1000)
    one_way = [x for s in stats for x in s.get("req_one_way_ms", [])]
    return {
        "stations": len(stations),
        "workers": n_workers,
        "taps": len(taps),
        "started": len(rtt),
        "missing": missing,
        "errors": errors[:5],
        "n_errors": len(errors),
        "tap_to_started_ms": dist(rtt),
        "auth_req_one_way_ms": {
            "p50": pct(one_way, 0.5),
            "p99": pct(one_way, 0.99),
            "max": max(one_way, default=float("nan")),
            "n": len(one_way),
        },
        "auth_per_worker": [s.get("auth", 0) for s in stats],
        "cdr_per_worker": [s.get("cdr", 0) for s in stats],
        "broker_cpu_percent": round((b1 - b0) / CLK_TCK / wall * 100, 2),
        "stations_cpu_percent": round((s1 - s0) / CLK_TCK / wall * 100, 1),
        "phase_s": round(wall, 1),
        "scheduler_late_ms_p99": round(pct(late, 0.99), 2),
        "taps_per_s": round(len(taps) / wall, 1),
    }


def run_fleet(quick: bool, sizes: list[int] | None = None) -> Result:
    res = Result("7. Fleet")
    sizes = sizes or ([10] if quick else [10, 50, 200])
    interval = 10.0
    duration = 2.0 if quick else 20.0
    stop_after = 1.0 if quick else STOP_AFTER_S
    phases: list[dict[str, Any]] = []
    growth: list[dict[str, Any]] = []
    stations: list[Station] = []
    mosq = Mosquitto()
    mosq.start()
    with workdir("fleet") as tmp:
        monitor = Monitor(mosq.url)
        try:
            for n in sizes:
                g = grow(stations, n, tmp, mosq.url)
                g["stations"] = len(stations)
                g["stations_rss_mb_total"] = round(sum(rss_kb(s.pid) for s in stations) / 1024)
                growth.append(g)
                time.sleep(0.5)
                for w in (1, 4):
                    ph = run_phase(
                        stations,
                        mosq,
                        monitor,
                        n_workers=w,
                        duration=duration,
                        interval=interval,
                        tmp=tmp,
                        stop_after=stop_after,
                    )
                    ph["broker_rss_mb"] = (
                        round(rss_kb(mosq.proc.pid) / 1024, 1) if mosq.proc else None
                    )
                    phases.append(ph)
                    print(
                        f"  fleet N={ph['stations']} workers={w}: "
                        f"tap->started p99 {ph['tap_to_started_ms'].get('p99')} ms, "
                        f"broker CPU {ph['broker_cpu_percent']} %",
                        file=sys.stderr,
                    )
                if g["memory_limited"]:
                    break
        finally:
            monitor.close()
            stoppers = [threading.Thread(target=s.stop) for s in stations]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join()
            mosq.close()
    res.data = {"interval_s": interval, "phase_s": duration, "growth": growth, "phases": phases}
    _failover(res, quick)
    for ph in phases:
        d = ph["tap_to_started_ms"]
        ow = ph["auth_req_one_way_ms"]
        big = ph["stations"] >= 200
        res.row(
            f"N={ph['stations']}, {ph['workers']} worker(s): tap -> 'started' (auth round trip, "
            "upper bound)",
            (
                f"p50 {d['p50']:.1f} / p99 {d['p99']:.1f} ms (n={d['n']}, missing "
                f"{ph['missing']}); auth/req one-way p50 {ow['p50']:.0f} / p99 {ow['p99']:.0f} ms; "
                f"broker CPU {ph['broker_cpu_percent']:.1f} %, stations CPU "
                f"{ph['stations_cpu_percent']:.0f} %; auths per worker {ph['auth_per_worker']}"
            )
            if d.get("n")
            else f"no samples (missing {ph['missing']})",
            f"p99 < {TARGET_P99_MS:.0f} ms at 200" if big else "",
            (d.get("n", 0) > 0 and d["p99"] < TARGET_P99_MS and ph["missing"] == 0)
            if big
            else None,
        )
    if growth:
        last = growth[-1]
        res.row(
            "stations started (as separate processes)",
            f"{last['stations']} (RSS total {last['stations_rss_mb_total']} MB"
            f"{'; memory-limited' if last['memory_limited'] else ''}); start times per "
            "step: " + ", ".join(f"+{g['added']} in {g['seconds']} s" for g in growth),
        )
    return res


def _failover(res: Result, quick: bool) -> None:
    """The failover scenario on a clustered broker (tests/benchmarks/fleet_failover.py): its
    rows join this result; anything it lost is this result's error (the run exits non-zero)."""
    from tests.benchmarks.fleet_failover import run_failover

    try:
        sub = run_failover(quick)
    except Exception as err:  # noqa: BLE001 - reported as the benchmark's error
        res.error = f"fleet failover: {type(err).__name__}: {err}"
        return
    res.rows.extend(sub.rows)
    res.data["failover"] = sub.data
