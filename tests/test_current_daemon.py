"""Current control in the real daemon: a child process, a real Mosquitto, the backend simulator
sending ``set_current_limit`` on ``P/cmd/req``, ``stationctl`` reading the pilot columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.backend_sim import BackendSim
from agent.stationctl import main
from tests.helpers import EVSE1, EVSE2, UID_A, UID_B, Daemon, wait_msg, wait_until


def pilot_evses(tmp: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": evse_id,
            "relay": {"driver": "sim", "log_file": str(tmp / f"relay{n}.log")},
            "meter": {"driver": "sim", "power_kw": 0.0, "time_factor": 60.0},
            "pilot": {"driver": "sim", "car_max_a": 32.0},
            "max_current_a": 16,
        }
        for n, evse_id in ((1, EVSE1), (2, EVSE2))
    ]


def offered(d: Daemon) -> dict[str, Any]:
    return {e["evse_id"]: e["offered_a"] for e in d.ctl("status")["evses"]}


def test_two_cars_then_a_station_limit_from_the_backend(
    make_daemon: Any, backend: BackendSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = make_daemon(evses=2, evse=pilot_evses(tmp_path), station={"grid_limit_a": 32})
    for evse_id, uid in ((EVSE1, UID_A), (EVSE2, UID_B)):
        d.ctl("sim.plug", evse_id=evse_id)
        d.wait_state("preparing", evse_id)
        d.ctl("sim.tap", uid=uid)
        d.wait_state("charging", evse_id)
    wait_until(lambda: offered(d) == {EVSE1: 16, EVSE2: 16}, 10, "16 A each")
    wait_until(lambda: all(e["relay_closed"] for e in d.ctl("status")["evses"]), 10, "relays")
    status = wait_msg(backend, "status", evses=d.ctl("status")["evses"])  # P/status says so
    assert {(e["pilot"], e["limit_a"], e["limit_source"]) for e in status["evses"]} == {
        ("C", 16, "evse")
    }

    station_id = d.config["station"]["id"]
    bad = backend.command(station_id, "set_current_limit", limit_a=3)
    res = wait_msg(backend, "cmd/res", command_id=bad)
    assert res["status"] == "rejected" and "6 A minimum" in res["reason"]
    ok = backend.command(station_id, "set_current_limit", limit_a=10)
    assert wait_msg(backend, "cmd/res", command_id=ok)["status"] == "accepted"
    wait_until(lambda: sorted(offered(d).values()) == [0, 10], 10, "one paused, one at 10 A")

    assert main(["--socket", str(d.socket), "status"]) == 0
    text = capsys.readouterr().out
    assert "pilot=C offered=10A limit=10A(station)" in text
    assert "pilot=B offered=0A limit=10A(station)" in text  # paused: charging, relay open
    paused = next(e for e in d.ctl("status")["evses"] if e["offered_a"] == 0)
    assert paused["state"] == "charging" and not paused["relay_closed"]

    assert main(["--socket", str(d.socket), "pilot", "set", EVSE1, "10"]) == 1  # not idle
    assert "not idle" in capsys.readouterr().err
    d.ctl("sim.unplug", evse_id=EVSE1)
    cdr = wait_msg(backend, "cdr", evse_id=EVSE1)
    assert cdr["stop_reason"] == "ev_disconnected"
    d.wait_state("available", EVSE1)
    assert main(["--socket", str(d.socket), "pilot", "set", EVSE1, "10"]) == 0
    assert "offering 10 A (duty 16.7 %)" in capsys.readouterr().out  # (within the budget)


def test_stationctl_pilot_requests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.test_stationctl import FakeDaemon

    d = FakeDaemon(tmp_path / "ctl.sock")
    try:
        d.result({"evse_id": EVSE1, "plugged": True})
        assert main(["--socket", str(d.path), "sim", "plug", EVSE1, "--car-max", "10"]) == 0
        d.result({"evse_id": EVSE1, "amps": 16.0, "duty_percent": 26.6667})
        assert main(["--socket", str(d.path), "pilot", "set", EVSE1, "16"]) == 0
        d.result({"evse_id": EVSE1, "amps": 0.0, "duty_percent": 0.0})
        assert main(["--socket", str(d.path), "pilot", "set", EVSE1, "0"]) == 0
        with pytest.raises(SystemExit) as usage:  # AMPS missing: argparse's usage error
            main(["--socket", str(d.path), "pilot", "set", EVSE1])
        assert usage.value.code == 2
    finally:
        d.close()
    sent = [json.loads(r) for r in d.requests]
    assert sent == [
        {"cmd": "sim.plug", "evse_id": EVSE1, "car_max_a": 10.0},
        {"cmd": "pilot.set", "evse_id": EVSE1, "amps": 16.0},
        {"cmd": "pilot.set", "evse_id": EVSE1, "amps": 0.0},
    ]
    out = capsys.readouterr().out
    assert "offering 16 A (duty 26.7 %)" in out and "pilot test ended (0 A)" in out
