"""Real sessions: daemon subprocess + real Mosquitto + the reference backend, through MQTT."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from typing import Any

import pytest

from agent.backend_sim import BackendSim, Received
from tests.helpers import EVSE1, EVSE2, UID_A, UID_B, wait_until

ST = "ST-TEST"


def events(backend: BackendSim, kind: str | None = None) -> list[dict[str, Any]]:
    return [m for m in backend.messages("session", ST) if kind is None or m["event"] == kind]


def wait_msg(backend: BackendSim, suffix: str, timeout: float = 10.0, **match: Any) -> Any:
    def pred(r: Received) -> bool:
        return (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        )

    return backend.wait_for(pred, timeout).data


def cmd_res(backend: BackendSim, command_id: str) -> dict[str, Any]:
    return wait_msg(backend, "cmd/res", command_id=command_id)  # type: ignore[no-any-return]


def test_tap_first_then_plug_charges_and_uploads_cdr(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.tap", uid=UID_A)
    req = wait_msg(backend, "auth/req")
    assert req["token"] == {"type": "rfid", "uid": UID_A, "card_type": "unknown"}
    assert req["evse_id"] == EVSE1
    uuid.UUID(req["request_id"], version=4)
    d.wait_state("authorized")
    assert d.relay_log() == []  # no car yet: relay stays open
    d.ctl("sim.plug")
    e = d.wait_state("charging")
    assert e["relay_closed"] and e["plugged"]
    wait_until(lambda: d.ctl("sessions")[0]["energy_kwh"] or 0, 5, "energy")
    d.ctl("sim.unplug")
    cdr = wait_msg(backend, "cdr")
    assert cdr["stop_reason"] == "ev_disconnected"
    assert cdr["token"]["uid"] == UID_A and cdr["evse_id"] == EVSE1
    assert cdr["operator_id"] == "DE*ICE" and cdr["location"] == "Teststr. 1, Stuttgart"
    assert cdr["energy_kwh"] > 0
    assert cdr["energy_kwh"] == pytest.approx(
        cdr["meter_stop_kwh"] - cdr["meter_start_kwh"], abs=0.0011
    )
    assert (
        cdr["session_start"] <= cdr["charging_start"] <= cdr["charging_end"] == cdr["session_end"]
    )
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 5, "CDR ack")
    assert [x["event"] for x in events(backend)] == ["authorized", "started", "stopped"]
    assert d.relay_log()[1::2] == ["close", "open"]
    d.wait_state("available")


def test_plug_first_then_tap_and_stop_with_same_card(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.wait_state("preparing")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    d.ctl("sim.tap", uid=UID_B)  # another card on a busy EVSE is ignored
    wait_until(lambda: "busy" in d.log(), 5, "ignored log line")
    assert d.evse()["state"] == "charging"
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("finishing")
    assert not d.evse()["relay_closed"]
    cdr = wait_msg(backend, "cdr")
    assert cdr["stop_reason"] == "local"
    d.ctl("sim.unplug")
    d.wait_state("available")


def test_same_card_does_not_stop_when_disabled(make_daemon, backend):
    d = make_daemon(auth={"stop_with_same_token": False})
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    d.ctl("sim.tap", uid=UID_A)
    wait_until(lambda: "busy with another" in d.log() or "ignored" in d.log(), 5, "log")
    assert d.evse()["state"] == "charging"


def test_remote_start_with_car_plugged_and_remote_stop(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.wait_state("preparing")
    sid = str(uuid.uuid4())
    cid = backend.command(
        ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A", session_id=sid
    )
    assert cmd_res(backend, cid)["status"] == "accepted"
    e = d.wait_state("charging")
    assert e["session_id"] == sid
    stop = backend.command(ST, "remote_stop", session_id=sid)
    assert cmd_res(backend, stop)["status"] == "accepted"
    cdr = wait_msg(backend, "cdr", session_id=sid)
    assert cdr["stop_reason"] == "remote"
    assert cdr["contract_id"] == "DE8ACC12345678A"
    assert cdr["token"] == {"type": "remote", "contract_id": "DE8ACC12345678A"}
    d.wait_state("finishing")


def test_remote_start_waits_for_the_car(make_daemon, backend):
    d = make_daemon()
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A")
    assert cmd_res(backend, cid)["status"] == "accepted"
    d.wait_state("authorized")
    assert not d.evse()["relay_closed"]
    d.ctl("sim.plug")
    d.wait_state("charging")
    started = wait_msg(backend, "session", event="started")
    assert started["session_id"] == d.evse()["session_id"]


def test_remote_commands_rejected_with_reasons(make_daemon, backend):
    d = make_daemon()
    cid = backend.command(
        ST, "remote_start", evse_id="DE*ICE*E999999*9", contract_id="DE8ACC12345678A"
    )
    assert "unknown evse_id" in cmd_res(backend, cid)["reason"]
    cid = backend.command(ST, "remote_stop", session_id=str(uuid.uuid4()))
    assert cmd_res(backend, cid)["reason"] == "unknown session_id"
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A")
    res = cmd_res(backend, cid)
    assert res["status"] == "rejected" and res["reason"] == "EVSE is busy"


def test_rejected_card_never_closes_relay(make_daemon, backend):
    backend.accept = {UID_B}
    d = make_daemon()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    rej = wait_msg(backend, "session", event="rejected")
    assert rej["reason"] == "rejected"
    d.wait_state("preparing")
    assert d.relay_log() == []
    assert d.ctl("sessions") == []  # a refused card leaves nothing in the store


def test_auth_timeout_is_a_rejection(make_daemon, backend):
    backend.answer_auth = False
    d = make_daemon(mqtt={"auth_timeout_s": 0.5})
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("authorizing")
    ev = wait_msg(backend, "session", event="timeout")
    assert ev["reason"] == "auth_timeout"
    d.wait_state("preparing")
    assert d.relay_log() == []
    # a late answer for that request is logged and ignored
    req = backend.messages("auth/req", ST)[0]
    backend.publish(ST, "auth/res", {"v": 1, "request_id": req["request_id"], "status": "accepted"})
    wait_until(lambda: "unknown or stale request" in d.log(), 5, "stale log line")
    assert d.evse()["state"] == "preparing"


def test_connection_timeout_cancels_authorisation(make_daemon, backend):
    d = make_daemon(auth={"connection_timeout_s": 0.5})
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("authorized")
    ev = wait_msg(backend, "session", event="timeout")
    assert ev["reason"] == "connection_timeout"
    d.wait_state("available")
    assert d.ctl("sessions")[0]["stop_reason"] == "connection_timeout"
    assert backend.messages("cdr", ST) == []  # nothing charged, no CDR


def test_availability_off_stops_session_and_blocks_new_ones(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    cid = backend.command(ST, "set_availability", evse_id=EVSE1, available=False)
    assert cmd_res(backend, cid)["status"] == "accepted"
    d.wait_state("unavailable")
    assert not d.evse()["relay_closed"]
    assert wait_msg(backend, "cdr")["stop_reason"] == "remote"
    rs = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A")
    assert cmd_res(backend, rs)["reason"] == "EVSE is unavailable"
    on = backend.command(ST, "set_availability", evse_id=EVSE1, available=True)
    assert cmd_res(backend, on)["status"] == "accepted"
    d.wait_state("preparing")  # the car is still plugged


def test_replayed_command_same_answer_no_second_action(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    cmd = {
        "v": 1,
        "command_id": "cmd-42",
        "command": "remote_start",
        "evse_id": EVSE1,
        "contract_id": "DE8ACC12345678A",
    }
    backend.publish(ST, "cmd/req", cmd)
    first = cmd_res(backend, "cmd-42")
    d.wait_state("charging")
    sid = d.evse()["session_id"]
    d.ctl("sim.unplug")
    d.wait_state("available")
    d.ctl("sim.plug")
    d.wait_state("preparing")
    n = len(backend.received)
    backend.publish(ST, "cmd/req", cmd)
    second = backend.wait_for(lambda r: r.suffix == "cmd/res", start=n).data
    assert second == first
    wait_until(lambda: "replayed" in d.log(), 5, "replay log line")
    assert d.evse()["state"] == "preparing"  # no second session
    assert len(events(backend, "authorized")) == 1 and events(backend)[0]["session_id"] == sid


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"{nope", "not valid JSON"),
    ("not utf-8", b"\xff\xfe{}", "not UTF-8"),
    ("array", b"[1, 2]", "JSON object"),
    (
        "missing v",
        json.dumps(
            {"command_id": "m1", "command": "remote_stop", "session_id": str(uuid.uuid4())}
        ).encode(),
        "'v' is missing",
    ),
    (
        "wrong v",
        json.dumps(
            {"v": 2, "command_id": "m2", "command": "remote_stop", "session_id": str(uuid.uuid4())}
        ).encode(),
        "version",
    ),
    (
        "unknown command",
        json.dumps({"v": 1, "command_id": "m3", "command": "reboot"}).encode(),
        "unknown command",
    ),
    (
        "missing field",
        json.dumps(
            {"v": 1, "command_id": "m4", "command": "remote_start", "evse_id": EVSE1}
        ).encode(),
        "contract_id",
    ),
    (
        "wrong type",
        json.dumps(
            {
                "v": 1,
                "command_id": "m5",
                "command": "set_availability",
                "evse_id": EVSE1,
                "available": "no",
            }
        ).encode(),
        "available",
    ),
    (
        "unknown field",
        json.dumps(
            {
                "v": 1,
                "command_id": "m6",
                "command": "remote_stop",
                "session_id": str(uuid.uuid4()),
                "force": True,
            }
        ).encode(),
        "unknown field",
    ),
    (
        "too large",
        json.dumps(
            {"v": 1, "command_id": "m7", "command": "remote_stop", "pad": "x" * 70000}
        ).encode(),
        "exceeds",
    ),
]


def test_malformed_payloads_rejected_and_change_nothing(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    before = d.evse()
    for name, payload, reason in MALFORMED:
        n = len(backend.received)
        backend.publish(ST, "cmd/req", None, raw=payload)
        if b'"command_id": "m' in payload and name != "too large":
            cid = json.loads(payload)["command_id"]
            res = cmd_res(backend, cid)
            assert res["status"] == "rejected", name
            assert reason in res["reason"], (name, res["reason"])
        else:
            wait_until(lambda reason=reason: reason in d.log(), 5, f"log line for {name}")
        assert d.evse() == before, name
        assert not any(r.suffix == "session" for r in backend.received[n:]), name
    for suffix in ("auth/res", "cdr/ack"):
        for _, payload, _ in MALFORMED:
            backend.publish(ST, suffix, None, raw=payload)
    backend.publish(ST, "auth/res", {"v": 1, "request_id": "nobody", "status": "accepted"})
    backend.publish(ST, "cdr/ack", {"v": 1, "session_id": str(uuid.uuid4())})
    backend.publish(ST, "cdr/ack", {"v": 1, "session_id": "not-a-uuid"})
    wait_until(lambda: "unknown or stale request" in d.log(), 5, "stale auth log")
    wait_until(lambda: "ignored (unknown)" in d.log(), 5, "unknown ack log")
    assert d.evse() == before
    assert d.proc is not None and d.proc.poll() is None
    d.ctl("sim.tap", uid=UID_A)  # still responsive: the same card stops the session
    d.wait_state("finishing")


def test_two_evses_tap_goes_to_the_waiting_car(make_daemon, backend):
    d = make_daemon(evses=2)
    d.ctl("sim.plug", evse_id=EVSE2)
    d.wait_state("preparing", EVSE2)
    d.ctl("sim.tap", uid=UID_A)
    assert wait_msg(backend, "auth/req")["evse_id"] == EVSE2
    d.wait_state("charging", EVSE2)
    assert d.evse(EVSE1)["state"] == "available"


def test_two_evses_tap_without_car_follows_the_plug(make_daemon, backend):
    d = make_daemon(evses=2)
    d.ctl("sim.tap", uid=UID_A)
    assert wait_msg(backend, "auth/req")["evse_id"] is None  # not tied to an EVSE yet
    wait_until(
        lambda: any(e["state"] == "authorized" for e in d.ctl("status")["evses"]), 5, "authorized"
    )
    d.ctl("sim.plug", evse_id=EVSE2)
    d.wait_state("charging", EVSE2)
    assert d.evse(EVSE1)["state"] == "available"
    assert not d.evse(EVSE1)["relay_closed"]
    d.ctl("sim.unplug", evse_id=EVSE2)
    assert wait_msg(backend, "cdr")["evse_id"] == EVSE2


def test_status_retained_and_last_will_on_crash(make_daemon, backend, broker, prefix):
    d = make_daemon()
    st = wait_msg(backend, "status", online=True)
    assert st["station_id"] == ST and st["evses"][0]["state"] == "available"
    assert st["ts"].endswith("+00:00") and "." in st["ts"]
    late = BackendSim(broker.url, prefix=prefix)  # a late subscriber gets the retained status
    late.start()
    try:
        assert late.wait_for(lambda r: r.suffix == "status", 5).data["online"] is True
    finally:
        late.stop()
    d.kill()
    gone = wait_msg(backend, "status", online=False, timeout=20)
    assert gone == {"v": 1, "station_id": ST, "online": False}


def test_sigterm_publishes_offline_and_opens_relay(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    assert d.stop() == 0
    assert d.relay_log()[-1] == "open"
    wait_msg(backend, "status", online=False)


def test_stationctl_commands(make_daemon, backend, tmp_path):
    d = make_daemon()

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.stationctl", "--socket", str(d.socket), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert "available" in ctl("status").stdout
    assert json.loads(ctl("status", "--json").stdout)["station_id"] == ST
    assert ctl("sim", "plug").returncode == 0
    r = ctl("sim", "tap", UID_A)
    assert r.returncode == 0, r.stderr
    d.wait_state("charging")
    r = ctl("sim", "tap", UID_A)
    d.wait_state("finishing")
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 5, "ack")
    out = ctl("sessions").stdout
    assert "local" in out
    rows = json.loads(ctl("sessions", "--json").stdout)
    assert rows[0]["token"]["uid"] == "04A2…3C80"  # masked
    assert "0 CDR(s) pending" in ctl("outbox").stdout
    assert ctl("sim", "unplug", "DE*XX*E1").returncode == 1
    assert "unknown EVSE" in ctl("sim", "unplug", "DE*XX*E1").stderr
    mode = stat.S_IMODE(os.stat(d.socket).st_mode)
    assert mode == 0o660
    d.stop()
    r = ctl("status")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not running" in r.stderr
    assert "Traceback" not in r.stderr


def test_sim_commands_refused_for_non_sim_devices(make_daemon, backend):
    d = make_daemon(rfid={"driver": "none"})
    r = d.try_ctl("sim.tap", uid=UID_A)
    assert r is None
    with pytest.raises(Exception, match="not a sim driver"):
        d.ctl("sim.tap", uid=UID_A)


def test_commands_for_another_station_too_old_or_reused_id_are_rejected(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    backend.publish(
        ST,
        "cmd/req",
        {
            "v": 1,
            "command_id": "other",
            "command": "remote_start",
            "evse_id": EVSE1,
            "contract_id": "DE8ACC12345678A",
            "station_id": "ST-OTHER",
        },
    )
    assert "addressed to station ST-OTHER" in cmd_res(backend, "other")["reason"]
    stale = backend.command(
        ST,
        "remote_start",
        evse_id=EVSE1,
        contract_id="DE8ACC12345678A",
        ts="2020-01-01T00:00:00.000+00:00",
    )
    assert "old" in cmd_res(backend, stale)["reason"]
    future = backend.command(
        ST,
        "remote_start",
        evse_id=EVSE1,
        contract_id="DE8ACC12345678A",
        ts="9999-01-01T00:00:00.000+00:00",
    )
    assert "future" in cmd_res(backend, future)["reason"]
    naive = backend.command(
        ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A", ts="2026-01-01T00:00:00"
    )
    assert cmd_res(backend, naive)["status"] == "rejected"
    assert d.evse()["state"] == "preparing"
    backend.publish(
        ST,
        "cmd/req",
        {
            "v": 1,
            "command_id": "c-1",
            "command": "set_availability",
            "evse_id": EVSE1,
            "available": True,
            "station_id": ST,
        },
    )
    assert cmd_res(backend, "c-1")["status"] == "accepted"
    n = len(backend.received)
    backend.command(ST, "set_availability", command_id="c-1", evse_id=EVSE1, available=False)
    res = backend.wait_for(lambda r: r.suffix == "cmd/res", start=n).data
    assert res["status"] == "rejected" and "already used" in res["reason"]
    assert d.evse()["state"] == "preparing"  # the reused id changed nothing
