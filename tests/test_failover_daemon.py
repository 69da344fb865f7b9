"""Failover of one station daemon between two brokers named in ``mqtt.urls`` (two Mosquittos on
loopback: not a cluster, which is enough to see what the station does; the clustered broker is
in tests/test_fleet_cluster.py and the fleet benchmark).

The station connects to its preferred node, moves to the next one when that is lost (after a
jittered delay inside the configured window, shown in ``stationctl status`` and ``P/status``),
stays there when the preferred node comes back (no flapping), and goes back to it only when
the second node fails in turn. A session that ends while the station is cut off loses nothing.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backend_sim import BackendSim
from agent.broker import Mosquitto
from tests.helpers import REPO, UID_A, Daemon, station_config, wait_msg, wait_until

WINDOW = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}  # after a loss: 0.2-0.4 s


@pytest.fixture
def two_brokers() -> Iterator[tuple[Mosquitto, Mosquitto]]:
    a, b = Mosquitto(), Mosquitto()
    a.start()
    b.start()
    yield a, b
    a.close()
    b.close()


def link(d: Daemon) -> dict[str, object]:
    return dict(d.ctl("status")["link"])


def connected_to(d: Daemon, url: str) -> dict[str, object]:
    return wait_until(
        lambda: (lk := link(d))["connected"] and lk["url"] == url and lk, 15, f"link to {url}"
    )


def test_fails_over_to_the_next_node_and_back_only_on_a_later_failure(
    two_brokers: tuple[Mosquitto, Mosquitto], tmp_path: Path
) -> None:
    a, b = two_brokers
    prefix = f"t{uuid.uuid4().hex[:10]}"
    backends = [BackendSim(a.url, prefix=prefix), BackendSim(b.url, prefix=prefix)]
    for sim in backends:
        sim.start()
    cfg = station_config(tmp_path, a.url, prefix, mqtt={"urls": [a.url, b.url], **WINDOW})
    del cfg["mqtt"]["url"]
    d = Daemon(tmp_path, cfg)
    try:
        d.start()
        first = connected_to(d, a.url)
        assert (first["node"], first["nodes"], first["failovers"]) == (1, 2, 0)
        assert first["reconnect_delay_s"] is None  # the first connection waits for nothing
        status = wait_msg(backends[0], "status", online=True)
        assert status["broker"] == {
            "url": a.url,
            "node": 1,
            "nodes": 2,
            "reconnect_delay_s": None,
            "failovers": 0,
        }

        d.ctl("sim.plug")
        d.ctl("sim.tap", uid=UID_A)
        d.wait_state("charging")
        a.stop()  # node 1 lost, with the session running
        d.ctl("sim.tap", uid=UID_A)  # the session ends while the station may be cut off
        second = connected_to(d, b.url)
        assert second["node"] == 2 and second["failovers"] == 1
        assert 0.2 <= float(second["reconnect_delay_s"]) <= 0.4  # type: ignore[arg-type]
        status = wait_msg(backends[1], "status", online=True, outbox={"pending": 0, "oldest": None})
        assert status["broker"]["url"] == b.url and status["broker"]["failovers"] == 1
        session = d.ctl("sessions")[0]["session_id"]
        events = {
            r.data["event"]
            for sim in backends
            for r in sim.received
            if r.suffix == "session" and r.data.get("session_id") == session
        }
        assert events == {"authorized", "started", "stopped"}
        assert session in backends[1].cdrs  # delivered and acknowledged through node 2

        text = subprocess.run(
            [sys.executable, "-m", "agent.stationctl", "--socket", str(d.socket), "status"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
        assert f"broker node 2/2 {b.url}; last reconnect delay" in text and "failovers 1" in text

        a.start()  # the preferred node is back: the station stays where it is
        backends[0] = BackendSim(a.url, prefix=prefix)
        backends[0].start()
        d.ctl("sim.unplug")  # a status published after node 1 is back goes through node 2
        wait_until(
            lambda: any(
                r.suffix == "status" and r.data["evses"][0]["state"] == "available"
                for r in backends[1].received
            ),
            10,
            "the new status through node 2",
        )
        assert link(d)["url"] == b.url  # no flapping towards node 1

        b.stop()  # a later failure: back to the preferred node
        third = connected_to(d, a.url)
        assert third["node"] == 1 and third["failovers"] == 2
        wait_until(
            lambda: any(
                r.suffix == "status" and r.data.get("broker", {}).get("failovers") == 2
                for r in backends[0].received
            ),
            10,
            "status through node 1 again",
        )
    finally:
        d.stop()
        for sim in backends:
            sim.stop()
