"""Fleet failover: N stations spread over a three-node NATS cluster, sessions running, one node
killed (SIGKILL). Part of ``--only fleet``; quick: 30 stations, full: 200.

* Cluster: :class:`tests.nats_cluster.NatsCluster` (NATS Server, MQTT listener, JetStream, three
  routed nodes on loopback, NATS's default MQTT settings: streams and consumers R3).
* Stations: ``station-agent run`` children, ``mqtt.urls`` rotated so that station k prefers node
  k % 3, ``reconnect_min_s`` 1, ``reconnect_max_s`` 8 (full jitter; the first window after a loss
  is 1-2 s, doubling per failed attempt), started in parallel batches of 25, car plugged.
* Backend: :class:`agent.backend_sim.BackendSim` in this process on node 3 (a node that
  survives; NATS's MQTT has no MQTT 5 shared subscriptions, so the worker processes of the
  Mosquitto fleet benchmark do not apply): it accepts every token, acks every CDR and stamps
  every arrival with ``time.monotonic()``.
* Load: every station starts a session by a tap once per ``interval`` (10 s; offsets spread over
  it) and stops it 2 s later, from before the kill until ``after_s`` after it; then every open
  session is stopped and the run waits until every station's outbox is empty.
* Reconnects: for each station node 1 carried, the time from the kill to its first status with a
  higher ``broker.failovers`` arriving at the backend, the jittered delay it reports
  (``broker.reconnect_delay_s``), and the attempts its log shows. Histogram in 1 s bins.
* Counted: every session in every station's SQLite store must have reached the backend with
  ``authorized``, ``started`` and ``stopped`` and its CDR; duplicates are counted too.
* Auth round trip (tap sent -> ``started`` arriving at the backend, an upper bound as in the fleet
  benchmark): before the kill, and during the failover window (kill .. all moved stations back)
  for the stations that were not moved; taps on moved stations while they are cut off are
  decided offline (no key on the local list: not started) and counted apart.
* Retained status: a fresh subscriber on each surviving node reads every station's retained
  status; stale (another node, a non-empty outbox, another EVSE state than the station's own)
  and missing ones are counted, once right after the drain and again until they converge.

If the moved stations are not all back within ``GIVE_UP_S`` (180 s), the killed node is started
again (as an operator would) and the run goes on: the report says so, and "nothing lost" is
then checked after the recovery.

Anything lost (a session event, a CDR, a station that did not come back) is an error: the
benchmark run exits non-zero (CI runs the quick form).
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.backend_sim import BackendSim, Received
from agent.store import DB_NAME
from tests.benchmarks.common import UID_A, Result, Station, dist, pct, workdir
from tests.benchmarks.tap import evse_config
from tests.nats_cluster import NatsCluster

BATCH = 25
KILLED = 0
RECONNECT = {"reconnect_min_s": 1.0, "reconnect_max_s": 8.0}
GIVE_UP_S = 180.0  # no full recovery by then: the killed node is started again


def start_stations(tmp: Path, urls: list[str], prefix: str, n: int) -> list[Station]:
    stations: list[Station] = []
    for first in range(0, n, BATCH):
        batch = []
        for k in range(first, min(n, first + BATCH)):
            i = k % len(urls)
            st = Station(
                tmp / f"st{k}",
                urls[0],
                prefix,
                station_id=f"FO-{k:04d}",
                evse=evse_config(),
                mqtt={"urls": urls[i:] + urls[:i], "auth_timeout_s": 5.0, **RECONNECT},
            )
            del st.config["mqtt"]["url"]
            batch.append(st)
        for st in batch:
            st.spawn()
        for st in batch:
            st.wait_ready(timeout=120)
            st.ctl("sim.plug")
        stations.extend(batch)
    return stations


class Taps:
    """Start/stop taps on a schedule; records (station, kind, time sent)."""

    def __init__(self, stations: list[Station], interval: float, stop_after: float) -> None:
        self.stations = stations
        self.interval = interval
        self.stop_after = stop_after
        self.sent: list[tuple[str, str, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _tap(self, st: Station, kind: str) -> None:
        t = time.monotonic()
        try:
            st.ctl("sim.tap", uid=UID_A)
        except Exception:  # noqa: BLE001 - counted and reported
            self.errors += 1
            return
        self.sent.append((st.station_id, kind, t))

    def _run(self) -> None:
        n = len(self.stations)
        t0 = time.monotonic() + 0.2
        plan = [(t0 + self.interval * i / n, i, "start") for i in range(n)]
        heapq.heapify(plan)
        with ThreadPoolExecutor(32) as pool:
            while plan and not self._stop.is_set():
                at, i, kind = heapq.heappop(plan)
                delay = at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                pool.submit(self._tap, self.stations[i], kind)
                if kind == "start":
                    heapq.heappush(plan, (at + self.stop_after, i, "stop"))
                else:
                    heapq.heappush(plan, (at - self.stop_after + self.interval, i, "start"))


def store_sessions(st: Station) -> set[str]:
    db = Path(st.config["station"]["state_dir"]) / DB_NAME
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return {row[0] for row in con.execute("SELECT session_id FROM sessions")}


def retained(url: str, prefix: str, expected: int, timeout: float) -> dict[str, Any]:
    """A fresh subscriber's view of every station's retained status on one node."""
    got: dict[str, Any] = {}
    lock = threading.Lock()
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ret-{uuid.uuid4().hex[:8]}")

    def on_message(cl: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            with lock:
                got[msg.topic.split("/")[1]] = json.loads(msg.payload)

    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{prefix}/+/status", 1)
    c.on_message = on_message
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < expected:
        time.sleep(0.05)  # polling interval; the condition is the count
    c.disconnect()
    c.loop_stop()
    with lock:
        return dict(got)


def stale_statuses(view: dict[str, Any], own: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for sid, st in own.items():
        r = view.get(sid)
        if (
            r is None
            or r.get("online") is not True
            or r.get("broker", {}).get("url") != st["link"]["url"]
            or r["outbox"]["pending"] != st["outbox"]["pending"]
            or [e["state"] for e in r["evses"]] != [e["state"] for e in st["evses"]]
        ):
            out.append(sid)
    return out


def histogram(values: list[float], width: float = 1.0) -> dict[str, int]:
    counts = Counter(int(v // width) for v in values)
    return {f"{b * width:g}-{(b + 1) * width:g} s": counts[b] for b in sorted(counts)}


def run_failover(quick: bool, n: int | None = None) -> Result:
    res = Result("7b. Fleet failover (NATS cluster, one node killed)")
    n = n or (30 if quick else 200)
    interval, stop_after = 10.0, 2.0
    prefix = f"fo{uuid.uuid4().hex[:6]}"
    with workdir("fleet-failover") as tmp:
        cluster = NatsCluster(tmp / "nats")
        cluster.start()
        backend = BackendSim(cluster.urls[2], prefix=prefix)
        stations: list[Station] = []
        try:
            backend.start(timeout=30)
            data = _scenario(
                cluster,
                backend=backend,
                stations=stations,
                tmp=tmp,
                prefix=prefix,
                n=n,
                interval=interval,
                stop_after=stop_after,
            )
        finally:
            stoppers = [threading.Thread(target=s.stop) for s in stations]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join()
            backend.stop()
            cluster.stop()
    res.data = data
    print(f"  fleet failover data: {json.dumps(data, default=str)}", file=sys.stderr)
    _rows(res, data)
    lost = data["lost"]
    if any(lost.values()):
        raise RuntimeError(f"fleet failover lost something: {lost}")
    return res


def _scenario(
    cluster: NatsCluster,
    *,
    backend: BackendSim,
    stations: list[Station],
    tmp: Path,
    prefix: str,
    n: int,
    interval: float,
    stop_after: float,
) -> dict[str, Any]:
    urls = cluster.urls
    t0 = time.monotonic()
    stations.extend(start_stations(tmp, urls, prefix, n))
    start_s = time.monotonic() - t0
    before = {s.station_id: s.ctl("status")["link"] for s in stations}
    moved = [s for s in stations if before[s.station_id]["url"] == urls[KILLED]]
    taps = Taps(stations, interval, stop_after)
    taps.start()
    time.sleep(interval + 1)  # the load runs for one full interval before the kill (pacing)
    leaders = cluster.stream_leaders()
    log_at = {s.station_id: len(s.log()) for s in moved}
    t_kill = time.monotonic()
    cluster.kill(KILLED)
    back = _wait_back(backend, moved, urls[KILLED], t_kill, timeout=GIVE_UP_S)
    restarted_after = None
    if len(back) < len(moved):  # the cluster did not recover: bring the node back, as an
        restarted_after = round(time.monotonic() - t_kill, 1)  # operator would
        cluster.restart(KILLED)
        t_restart = time.monotonic()
        rest = [s for s in moved if s.station_id not in back]
        back.update(_wait_back(backend, rest, None, t_restart, timeout=300))
    t_all_back = max(back.values(), default=t_kill)
    time.sleep(interval)  # the load goes on for one more interval on the survivors (pacing)
    taps.stop()
    _end_sessions(stations)
    busy = _wait_drained(stations, timeout=180)
    drained = not busy
    counts = _count(stations, backend, busy)
    own = {s.station_id: s.ctl("status") for s in stations}
    views = {u: retained(u, prefix, n, 10) for u in urls if u != urls[KILLED]}
    stale_first = {u: stale_statuses(v, own) for u, v in views.items()}
    t_conv = time.monotonic()
    converged: dict[str, float | None] = {}
    for u in views:
        while stale_first[u] and time.monotonic() - t_conv < 60:
            if not stale_statuses(retained(u, prefix, n, 5), own):
                break
        still = stale_statuses(retained(u, prefix, n, 5), own) if stale_first[u] else []
        converged[u] = None if still else round(time.monotonic() - t_conv, 1)
    delays = [float(s.ctl("status")["link"]["reconnect_delay_s"] or 0) for s in moved]
    attempts = [s.log()[log_at[s.station_id] :].count("next attempt:") for s in moved]
    auth = _auth(backend, taps.sent, {s.station_id for s in moved}, t_kill, t_all_back)
    return {
        "stations": n,
        "moved": len(moved),
        "start_s": round(start_s, 1),
        "stream_leaders_before_kill": leaders,
        "killed": cluster.nodes[KILLED].name,
        "back": len(back),
        "reconnect_s": dist([t - t_kill for t in back.values()]),
        "reconnect_histogram": histogram([t - t_kill for t in back.values()]),
        "reconnect_delay_s": dist(delays),
        "delay_histogram": histogram(delays, 0.25),
        "attempts": dict(Counter(attempts)),
        "failover_window_s": round(t_all_back - t_kill, 1),
        "node_restarted_after_s": restarted_after,
        "drained": drained,
        "counts": counts,
        "auth": auth,
        "tap_errors": taps.errors,
        "retained_stale_after_drain": {u: len(v) for u, v in stale_first.items()},
        "retained_converged_after_s": converged,
        "republished_statuses": sum(
            s.log().count("kept another one: published again") for s in stations
        ),
        "lost": {
            "stations_not_back": len(moved) - len(back),
            "sessions_without_all_events": counts["sessions_without_all_events"],
            "cdrs_missing": counts["cdrs_missing"],
        },
        # not lost (nothing leaves a store before its acknowledgement), but not shown arriving
        "undelivered_in_stores": counts["undelivered_in_stores"],
    }


def _wait_back(
    backend: BackendSim,
    moved: list[Station],
    killed_url: str | None,
    since: float,
    timeout: float,
) -> dict[str, float]:
    """Station -> arrival of its first status after ``since`` through a node other than
    ``killed_url`` (None: through any node)."""
    want = {s.station_id for s in moved}
    back: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    seen = 0
    while len(back) < len(want) and time.monotonic() < deadline:
        recs: list[Received] = backend.received[seen:]
        seen += len(recs)
        for r in recs:
            if r.suffix != "status" or r.station_id not in want or r.station_id in back:
                continue
            url = r.data.get("broker", {}).get("url")
            if r.t > since and url is not None and url != killed_url:
                back[r.station_id] = r.t
        time.sleep(0.05)  # polling interval; the condition is the set of stations back
    return back


def _end_sessions(stations: list[Station]) -> None:
    def end(s: Station) -> None:
        if s.evse()["state"] in ("charging", "authorized", "authorizing"):
            s.ctl("sim.tap", uid=UID_A)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(end, stations))


def _wait_drained(stations: list[Station], timeout: float) -> list[Station]:
    """The stations still busy (an outbox not empty, a session not ended) when the timeout
    ran out; empty once every station has drained."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [
            s
            for s in stations
            if s.ctl("status")["outbox"]["pending"]
            or s.evse()["state"] in ("charging", "authorized", "authorizing")
        ]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.2)  # polling interval


def _count(stations: list[Station], backend: BackendSim, busy: list[Station]) -> dict[str, Any]:
    """Counted against the stations' own stores. A station still busy at the end (its outbox
    not yet drained, through a cluster that has not recovered) holds what the backend has not
    seen yet: that is undelivered, still in its store, not lost; lost is what a drained
    station's store has and the backend never got."""
    sessions = {sid for s in stations for sid in store_sessions(s)}
    held = {sid for s in busy for sid in store_sessions(s)}
    events: dict[str, Counter[str]] = {}
    for r in list(backend.received):
        if r.suffix == "session" and isinstance(r.data, dict):
            events.setdefault(r.data["session_id"], Counter())[r.data["event"]] += 1
    incomplete = [
        s for s in sessions if not {"authorized", "started", "stopped"} <= set(events.get(s, {}))
    ]
    return {
        "sessions": len(sessions),
        "session_events": sum(sum(c.values()) for c in events.values()),
        "duplicate_events": sum(v - 1 for c in events.values() for v in c.values() if v > 1),
        "cdrs": len(set(backend.cdrs) & sessions),
        "cdr_duplicates": backend.cdr_duplicates,
        "sessions_without_all_events": len(set(incomplete) - held),
        "cdrs_missing": len(sessions - held - set(backend.cdrs)),
        "undelivered_in_stores": {
            "stations": len(busy),
            "sessions_without_all_events": len(set(incomplete) & held),
            "cdrs": len((sessions & held) - set(backend.cdrs)),
        },
    }


def _auth(
    backend: BackendSim,
    sent: list[tuple[str, str, float]],
    moved: set[str],
    t_kill: float,
    t_back: float,
) -> dict[str, Any]:
    started: dict[str, list[float]] = {}
    for r in list(backend.received):
        if r.suffix == "session" and r.data.get("event") == "started":
            started.setdefault(r.station_id, []).append(r.t)
    groups: dict[str, list[float]] = {"before": [], "during_unmoved": [], "during_moved": []}
    not_started: Counter[str] = Counter()
    for sid, kind, t in sent:
        if kind != "start":
            continue
        group = "before" if t < t_kill else "during_moved" if sid in moved else "during_unmoved"
        if t > t_back + 2.0 and group != "before":
            continue
        hit = next((x for x in started.get(sid, []) if t < x < t + 2.0), None)
        if hit is None:
            not_started[group] += 1
        else:
            groups[group].append((hit - t) * 1000)
    return {
        g: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v), "not_started": not_started[g]}
        for g, v in groups.items()
    }


def _rows(res: Result, d: dict[str, Any]) -> None:
    rc = d["reconnect_s"]
    res.row(
        f"N={d['stations']} over 3 nodes, {d['killed']} killed: stations back on a surviving node",
        f"{d['back']}/{d['moved']}"
        + (
            f" (the cluster did not recover: node restarted after {d['node_restarted_after_s']} s)"
            if d["node_restarted_after_s"]
            else ""
        )
        + "; kill -> first status through another node p50 "
        f"{rc.get('p50', float('nan')):.1f} / max {rc.get('max', float('nan')):.1f} s; "
        f"histogram {d['reconnect_histogram']}",
        "all",
        d["back"] == d["moved"],
    )
    dl = d["reconnect_delay_s"]
    res.row(
        "jittered delay before the successful attempt (window 1-2 s, doubling per failure)",
        f"p50 {dl.get('p50', float('nan')):.2f} / max {dl.get('max', float('nan')):.2f} s; "
        f"attempts per station {d['attempts']}",
    )
    c = d["counts"]
    res.row(
        "sessions / session events / CDRs (counted against every station's store)",
        f"{c['sessions']} sessions, {c['session_events']} events ({c['duplicate_events']} dup), "
        f"{c['cdrs']} CDRs ({c['cdr_duplicates']} dup); lost: {d['lost']}; "
        f"still in the stations' stores (not yet delivered): {d['undelivered_in_stores']}",
        "nothing lost",
        not any(d["lost"].values()),
    )
    a = d["auth"]
    res.row(
        "tap -> 'started' (auth round trip, upper bound)",
        f"before the kill p99 {a['before']['p99']:.0f} ms (n={a['before']['n']}); during the "
        f"failover ({d['failover_window_s']} s), unmoved stations p99 "
        f"{a['during_unmoved']['p99']:.0f} ms (n={a['during_unmoved']['n']}, not started "
        f"{a['during_unmoved']['not_started']}); moved stations: "
        f"{a['during_moved']['n']} started, {a['during_moved']['not_started']} not",
    )
    res.row(
        "retained status on each surviving node (stale or missing)",
        f"after the drain {d['retained_stale_after_drain']}; converged after "
        f"{d['retained_converged_after_s']} s; statuses republished by stations "
        f"{d['republished_statuses']}",
    )
