"""A fleet on a clustered broker: stations (daemon processes) spread over a three-node NATS
cluster (MQTT listener + JetStream), sessions running, one node killed (SIGKILL).

Every station the node carried reconnects to a surviving node (the next in its list) after a
jittered delay inside the configured window; the others stay where they are; every session
event and every CDR arrives at the backend (counted against each station's own store); every
station's retained status is current (online, the node in use, the outbox empty) on the node it
is connected to (other nodes: see the README's "Fleet deployment"). The long form with 200
stations is the fleet benchmark's failover scenario.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.backend_sim import BackendSim
from agent.store import DB_NAME
from tests.helpers import UID_A, Daemon, station_config, wait_until
from tests.nats_cluster import INSTALL_HINT, NatsCluster, nats_binary

STATIONS = 3  # one per node; the benchmark's quick form (CI) runs 30, the full one 200
# the first window after a loss is 0.2-0.4 s; keepalive as in production (the tests' 5 s drops
# links to surviving nodes too, whose read loop NATS blocks for 4 s per stream it cannot reach)
RECONNECT = {"reconnect_min_s": 0.2, "reconnect_max_s": 2.0, "keepalive_s": 30}
KILLED = 0  # node n1

# not in the default run: the cluster's own recovery decides how long this takes (pyproject)
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if nats_binary() is None:
        pytest.fail(f"the fleet test needs NATS Server: {INSTALL_HINT}", pytrace=False)
    with NatsCluster(tmp_path_factory.mktemp("nats")) as c:
        yield c


def rotated(urls: list[str], k: int) -> list[str]:
    """Station k prefers node k % 3: the fleet is spread over the cluster."""
    i = k % len(urls)
    return urls[i:] + urls[:i]


def retained_statuses(
    url: str, prefix: str, expected: int, timeout: float = 20.0
) -> dict[str, Any]:
    """A new subscriber on ``url``: the retained status of every station (retain flag set)."""
    got: dict[str, Any] = {}
    lock = threading.Lock()
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{uuid.uuid4().hex[:8]}")

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            with lock:
                got[msg.topic.split("/")[1]] = json.loads(msg.payload)

    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/status", 1)
    client.on_message = on_message
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    try:
        with contextlib.suppress(AssertionError):  # the caller judges what is missing
            wait_until(lambda: len(got) >= expected, timeout, f"retained statuses on {url}")
        with lock:
            return dict(got)
    finally:
        client.disconnect()
        client.loop_stop()


def store_sessions(d: Daemon) -> set[str]:
    """The sessions the station's own store holds (its SQLite file, read directly)."""
    db = Path(d.config["station"]["state_dir"]) / DB_NAME
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return {row[0] for row in con.execute("SELECT session_id FROM sessions")}


def test_node_killed_every_station_fails_over_and_nothing_is_lost(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    urls = cluster.urls
    backend = BackendSim(urls[2], prefix=prefix)  # the backend sits on a node that survives
    backend.start(timeout=30)
    stations = [
        Daemon(
            tmp_path / f"s{k}",
            station_config(
                tmp_path / f"s{k}",
                urls[0],
                prefix,
                station_id=f"FL-{k:03d}",
                mqtt={"urls": rotated(urls, k), **RECONNECT},
            ),
            log_level="info",
        )
        for k in range(STATIONS)
    ]
    for d in stations:  # `url` came from station_config: a cluster gives `urls` alone
        del d.config["mqtt"]["url"]
    pool = ThreadPoolExecutor(16)
    try:
        for d in stations:
            d.spawn()
        list(pool.map(lambda d: d.wait_ready(timeout=60), stations))
        # where each station is: its preferred node, unless that refused it at start (a node
        # under load may time out creating a subscription's JetStream consumer: the station
        # then moved on to its next node, as it should)
        before = {id(d): d.ctl("status")["link"] for d in stations}
        moved = [d for d in stations if before[id(d)]["url"] == urls[KILLED]]
        assert moved, "the killed node must carry a station"

        # sessions running on every station
        list(pool.map(lambda d: d.ctl("sim.plug"), stations))
        list(pool.map(lambda d: d.ctl("sim.tap", uid=UID_A), stations))
        list(pool.map(lambda d: d.wait_state("charging", timeout=30), stations))

        log_at = {id(d): len(d.log()) for d in moved}
        cluster.kill(KILLED)
        # half of the moved stations end their session while they are cut off / reconnecting
        list(pool.map(lambda d: d.ctl("sim.tap", uid=UID_A), moved[::2]))

        def on_survivor(d: Daemon) -> dict[str, Any]:
            link: dict[str, Any] = wait_until(
                lambda: (
                    (lk := d.ctl("status")["link"])["connected"]
                    and lk["url"] != urls[KILLED]
                    and lk
                ),
                60,
                f"{d.config['station']['id']} back on a surviving node",
            )
            return link

        links = list(pool.map(on_survivor, stations))
        for d, link in zip(stations, links, strict=True):
            old = before[id(d)]
            if d in moved:
                assert link["failovers"] > old["failovers"]
                assert 0.2 <= link["reconnect_delay_s"] <= 2.0  # inside the jitter windows
            else:  # untouched: no flapping towards anything
                assert (link["url"], link["failovers"]) == (old["url"], old["failovers"])
        # the first choice after the loss: the first other node in the station's own list
        for d in moved:
            nxt = next(u for u in d.config["mqtt"]["urls"] if u != urls[KILLED])
            tries = [ln for ln in d.log()[log_at[id(d)] :].splitlines() if "next attempt:" in ln]
            assert tries and nxt in tries[0], (d.config["station"]["id"], tries[:1])

        # the rest of the sessions end after the failover
        list(
            pool.map(
                lambda d: d.ctl("sim.tap", uid=UID_A), [d for d in stations if d not in moved[::2]]
            )
        )
        list(pool.map(lambda d: d.wait_state("finishing", timeout=30), stations))
        wait_until(
            lambda: all(d.ctl("status")["outbox"]["pending"] == 0 for d in stations),
            60,
            "every CDR acknowledged",
        )

        # counted: every session of every station, every event, every CDR
        sessions = {s for d in stations for s in store_sessions(d)}
        assert len(sessions) == STATIONS
        events: dict[str, set[str]] = {}
        for r in backend.received:
            if r.suffix == "session" and isinstance(r.data, dict):
                events.setdefault(r.data["session_id"], set()).add(r.data["event"])
        assert set(events) == sessions
        assert all(ev == {"authorized", "started", "stopped"} for ev in events.values()), events
        assert set(backend.cdrs) == sessions

        # the retained status is right on every surviving node (a fresh subscriber's view)
        own = {d.config["station"]["id"]: d.ctl("status") for d in stations}

        def stale(url: str) -> list[str]:
            statuses = retained_statuses(url, prefix, STATIONS)
            return [
                sid
                for sid, st in own.items()
                if sid not in statuses
                or statuses[sid]["online"] is not True
                or statuses[sid]["broker"]["url"] != st["link"]["url"]
                or statuses[sid]["outbox"]["pending"] != 0
                or [e["state"] for e in statuses[sid]["evses"]] != ["finishing"]
            ]

        # On the node each station is connected to, its read-back guarantees it. Another node
        # may miss a retained message stored while its own copy of the retained stream was
        # re-electing (seen here, NATS 2.9): the station cannot read other nodes, so that is
        # measured by the benchmark and stated in the README, not asserted here.
        for url in {st["link"]["url"] for st in own.values()}:
            mine = {sid for sid, st in own.items() if st["link"]["url"] == url}
            wait_until(
                lambda u=url, m=mine: not set(stale(u)) & m,
                30,
                f"current retained statuses of the stations on {url}",
            )
    finally:
        pool.shutdown()
        stoppers = [threading.Thread(target=d.stop) for d in stations]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        backend.stop()
