"""Promises under attack, backend side: real daemon child process, real Mosquitto, SQLite on disk.

#4  A retained command is refused (and stays refused when the broker hands it out again after
    a restart): it can never start a session, let alone a second one after a clock step purged
    its stored answer.
#7  Floods on the inbound topics (junk commands, random auth answers, valid remote stops) do
    not starve taps: every tap still charges, the daemon stays up, and the per-topic rate
    limit's drop counts show in the status.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.backend_mqtt import RETAINED_REASON
from agent.backend_sim import BackendSim, Received
from tests.benchmarks.flood import FLOODS, Flood, flood_arrived, taps
from tests.helpers import EVSE1, wait_until

ST = "ST-TEST"
CONTRACT = "DE8ACC12345678A"


def plugged_evse(tmp: Path) -> list[dict[str, Any]]:
    """One EVSE whose car is plugged in from the start (and again after every restart)."""
    return [
        {
            "id": EVSE1,
            "relay": {"driver": "sim", "log_file": str(tmp / "relay1.log")},
            "meter": {"driver": "sim", "power_kw": 11.0, "time_factor": 60.0},
            "plug": {"driver": "sim", "plugged": True},
        }
    ]


def answers(backend: BackendSim, command_id: str) -> list[dict[str, Any]]:
    return [m for m in backend.messages("cmd/res", ST) if m.get("command_id") == command_id]


def barrier(backend: BackendSim) -> None:
    """Commands are handled in order: once a later command is answered, the earlier one has
    been handled completely (its session, if it started one, is published before)."""
    cid = backend.command(ST, "remote_stop", session_id=str(uuid.uuid4()))
    wait_until(lambda: answers(backend, cid), 10, "barrier command answered")


# ------------------------------------------------------------------------------ #4
def test_retained_remote_start_is_refused_and_again_after_restart(make_daemon, backend, tmp_path):
    cid = f"retained-{uuid.uuid4().hex[:8]}"
    command = {
        "v": 1,
        "command_id": cid,
        "command": "remote_start",
        "evse_id": EVSE1,
        "contract_id": CONTRACT,
        "session_id": str(uuid.uuid4()),
    }
    d = make_daemon(start=False, evse=plugged_evse(tmp_path))
    # stored by the broker before the station subscribes: it arrives with the RETAIN flag set,
    # as it does after every reconnect or restart (a live delivery carries no flag in 3.1.1)
    backend.publish(ST, "cmd/req", command, retain=True)
    try:
        d.start()
        first = wait_until(lambda: answers(backend, cid), 10, "answer to the retained command")
        assert first == [
            {"v": 1, "command_id": cid, "status": "rejected", "reason": RETAINED_REASON}
        ]
        barrier(backend)
        assert backend.messages("session", ST) == []
        e = d.evse()
        assert e["state"] == "preparing" and not e["relay_closed"] and e["session_id"] is None
        assert "retained command refused" in d.log()

        # restart: the broker delivers the retained command again on the new subscription
        d.stop()
        d.start()
        wait_until(lambda: len(answers(backend, cid)) == 2, 10, "second answer")
        assert answers(backend, cid)[1]["status"] == "rejected"
        assert answers(backend, cid)[1]["reason"] == RETAINED_REASON
        barrier(backend)
        assert backend.messages("session", ST) == []
        assert d.evse()["state"] == "preparing"
        assert d.relay_log() == []  # the relay never closed
        assert d.log().count("retained command refused") == 2
    finally:
        backend.publish(ST, "cmd/req", None, raw=b"", retain=True)  # clear it


# ------------------------------------------------------------------------------ #7
TAPS = 8
BOUND_S = 5.0  # functional bound (the relay closes at all); performance: tests/benchmarks


@pytest.mark.parametrize("kind", ["junk", "auth", "stop"])
def test_taps_charge_under_inbound_flood(kind: str, make_daemon, backend, tmp_path):
    suffix, rate = FLOODS[kind]
    d = make_daemon(evse=plugged_evse(tmp_path))
    d.wait_state("preparing")
    before = len(backend.received)
    with Flood(backend.broker_url, backend.prefix, ST, kind) as flood:
        flood_arrived(d, kind)
        latencies = taps(d, backend, TAPS, timeout=3 * BOUND_S)
        during = d.ctl("status")
    sent = flood.result
    # the publisher really flooded (at least half the target rate over the whole run)
    assert sent["rate"] >= rate / 2, sent
    assert d.proc is not None and d.proc.poll() is None, "daemon died"
    assert len(latencies) == TAPS
    assert max(latencies) < BOUND_S * 1000, latencies
    started = [m for m in backend.messages("session", ST) if m["event"] == "started"]
    assert len(started) == TAPS  # every tap charged, nothing else started
    assert (during.get("inbound_dropped") or {}).get(suffix, 0) > 0, during
    # most of the flood never got in (the status's counts follow within a second)
    wait_until(
        lambda: (d.ctl("status").get("inbound_dropped") or {}).get(suffix, 0) > sent["sent"] / 2,
        5,
        f"most of {sent} dropped",
    )
    # a dropped command is not answered: the answers stay within the limit's budget
    replies = [r for r in backend.received[before:] if r.suffix == "cmd/res"]
    budget = 100 + 50 * (sent["seconds"] + 1)  # burst + rate x time (default cmd/req limit)
    assert len(replies) <= budget + TAPS, len(replies)
    # one warning per topic per 10 s, not one per message
    warnings = d.log().count(f"inbound {suffix} over its limit")
    assert 1 <= warnings <= 1 + sent["seconds"] / 10 + 1, warnings


def test_quiet_station_status_has_no_drop_counts(make_daemon, backend):
    d = make_daemon()
    status = backend.wait_for(
        lambda r: r.suffix == "status" and isinstance(r.data, dict) and r.data.get("online")
    )
    assert "inbound_dropped" not in status.data
    assert d.ctl("status").get("inbound_dropped") is None


def _received_status(r: Received) -> bool:
    return r.suffix == "status" and isinstance(r.data, dict) and "inbound_dropped" in r.data


def test_drop_counts_reach_the_published_status(make_daemon, backend):
    topic = '"cdr/ack"'  # a quoted TOML key (tests.helpers.to_toml writes keys as they are)
    d = make_daemon(mqtt={"inbound_rate_per_s": {topic: 5.0}, "inbound_burst": {topic: 5}})
    for _ in range(50):  # unknown sessions; over the configured limit of burst 5
        backend.publish(ST, "cdr/ack", {"v": 1, "session_id": str(uuid.uuid4())})
    rec = backend.wait_for(_received_status, 10)
    assert rec.data["inbound_dropped"]["cdr/ack"] > 0
    assert set(rec.data["inbound_dropped"]) == {"cdr/ack"}
    assert d.proc is not None and d.proc.poll() is None
