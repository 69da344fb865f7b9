"""The station as an OCPP 1.6J charge point against a real central system (ocpp-csms) on
loopback: the daemon runs as a child process, the CSMS in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ocpp_csms import CsmsError, ResetType

from agent.failpoints import ENV
from drivers.meter.ocmf import parse
from tests.helpers import UID_A, UID_B, Daemon, station_config, wait_until
from tests.ocpp_helpers import (
    KEY,
    Csms,
    boot_retry_interval,
    check_frames,
    meter_public_key,
    ocmf_verifies,
    ocpp_config,
    signing_meter,
)
from tests.test_power_daemon import BlackHoleProxy

ST = "ST-TEST"


@pytest.fixture
def csms() -> Iterator[Csms]:
    server = Csms().start()
    yield server
    try:
        assert check_frames(server.frames) > 0  # every frame the station sent fits the schemas
    finally:
        server.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def ocpp_daemon(
    tmp: Path,
    csms: Csms,
    daemons: list[Daemon],
    *,
    key: str | None = KEY,
    evses: int = 1,
    **over: Any,
) -> Daemon:
    overrides = ocpp_config(csms, tmp, key)
    cfg = station_config(tmp, "mqtt://127.0.0.1:9", "unused", evses=evses, **overrides)
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    for i, evse in enumerate(cfg["evse"], start=1):  # the car and the meter outlive a restart
        evse["plug"]["state_file"] = str(tmp / f"plug{i}.state")
        evse["meter"]["state_file"] = str(tmp / f"meter{i}.state")
    d = Daemon(tmp, cfg)
    daemons.append(d)
    return d


def test_charge_by_card_with_meter_values_status_and_remote_start_stop(tmp_path, csms, daemons):
    d = ocpp_daemon(tmp_path, csms, daemons, ocpp={"clock_aligned_data_interval_s": 1}).start()
    boot = csms.calls("BootNotification")[0]
    assert boot["chargePointVendor"] == "station-agent"
    wait_until(lambda: csms.cp(ST).connectors.get(1), 10, "StatusNotification of connector 1")
    assert csms.cp(ST).connectors[1].status == "Available"

    d.ctl("sim.tap", uid=UID_A)
    d.ctl("sim.plug")
    d.wait_state("charging")
    start = wait_until(lambda: csms.calls("StartTransaction"), 10, "StartTransaction")[0]
    assert start["idTag"] == UID_A and start["connectorId"] == 1
    session = d.ctl("sessions")[0]
    assert csms.calls("Authorize")[0] == {"idTag": UID_A}
    wait_until(lambda: csms.cp(ST).connectors[1].status == "Charging", 10, "Charging")
    wait_until(lambda: csms.calls("MeterValues"), 10, "MeterValues")
    sample = csms.calls("MeterValues")[0]["meterValue"][0]["sampledValue"][0]
    assert sample["measurand"] == "Energy.Active.Import.Register" and sample["unit"] == "Wh"

    def contexts() -> set[str]:
        return {m["meterValue"][0]["sampledValue"][0]["context"] for m in csms.calls("MeterValues")}

    wait_until(lambda: {"Sample.Periodic", "Sample.Clock"} <= contexts(), 10, "clock-aligned")

    d.ctl("sim.tap", uid=UID_A)  # the same card stops
    stop = wait_until(lambda: csms.calls("StopTransaction"), 10, "StopTransaction")[0]
    (txid,) = csms.tx_ids()
    assert stop["transactionId"] == txid and stop["reason"] == "Local"
    ended = d.ctl("sessions")[0]
    assert abs(stop["meterStop"] - start["meterStart"] - ended["energy_kwh"] * 1000) <= 1
    assert ended["energy_kwh"] > 0
    assert "transactionData" not in stop  # an unsigned meter: no SignedData anywhere
    assert "SignedData" not in json.dumps(csms.calls())
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")
    assert f"is OCPP transaction {txid}" in d.log()
    assert f"CDR {session['session_id']} settled (OCPP transaction {txid})" in d.log()
    assert UID_A not in d.log()  # masked

    # remote start on the plugged connector, remote stop by the CSMS's transaction id
    d.ctl("sim.unplug")
    d.wait_state("available")
    d.ctl("sim.plug")
    assert csms.run(csms.cp(ST).async_remote_start_transaction(UID_B, 1)) == "Accepted"
    d.wait_state("charging")
    wait_until(lambda: len(csms.tx_ids()) == 2, 10, "second StartTransaction")
    remote_tx = csms.tx_ids()[1]
    assert csms.run(csms.cp(ST).async_remote_stop_transaction(remote_tx)) == "Accepted"
    wait_until(lambda: len(csms.calls("StopTransaction")) == 2, 10, "second StopTransaction")
    assert csms.calls("StopTransaction")[1]["reason"] == "Remote"
    assert csms.run(csms.cp(ST).async_remote_stop_transaction(remote_tx)) == "Rejected"


def _signed_samples(meter_values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        sv for mv in meter_values for sv in mv["sampledValue"] if sv.get("format") == "SignedData"
    ]


def test_signed_records_go_out_as_signed_data_byte_for_byte_after_a_kill(tmp_path, csms, daemons):
    d = ocpp_daemon(tmp_path, csms, daemons)
    d.config["evse"][0]["meter"].update(signing_meter(tmp_path))
    d.start()
    key = meter_public_key(tmp_path)
    d.ctl("sim.tap", uid=UID_A)
    d.ctl("sim.plug")
    sid = d.wait_state("charging")["session_id"]
    start = wait_until(lambda: csms.calls("StartTransaction"), 10, "StartTransaction")[0]
    (txid,) = wait_until(csms.tx_ids, 10, "transaction id")

    def begin_values() -> list[dict[str, Any]]:
        return [m for m in csms.calls("MeterValues") if _signed_samples(m["meterValue"])]

    begin_msg = wait_until(begin_values, 10, "MeterValues with the signed start")[0]
    assert begin_msg["transactionId"] == txid and begin_msg["connectorId"] == 1
    assert len(begin_values()) == 1  # once; periodic samples are plain
    stored = d.ctl("cdr.signed", session_id=sid)["signed_meter_values"]
    (begin,) = _signed_samples(begin_msg["meterValue"])
    assert begin["context"] == "Transaction.Begin" and begin["value"] == stored["start"]
    assert start["meterStart"] == round(parse(stored["start"]).begin_kwh * 1000)

    # the stop happens while the CSMS is away, then the station is killed: the StopTransaction
    # is built after the restart, from the store, and carries the end record committed with it
    csms.stop()
    wait_until(lambda: not d.ctl("status")["link"]["connected"], 10, "link down")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("finishing")
    d.kill()
    csms.start()
    d.start()
    stop = wait_until(lambda: csms.calls("StopTransaction"), 15, "StopTransaction")[0]
    stored = d.ctl("cdr.signed", session_id=sid)["signed_meter_values"]
    assert stored["public_key"] == key
    samples = _signed_samples(stop["transactionData"])
    assert [s["context"] for s in samples] == ["Transaction.Begin", "Transaction.End"]
    assert [s["value"] for s in samples] == [stored["start"], stored["stop"]]  # as committed
    assert all(ocmf_verifies(s["value"], key) for s in samples)
    assert stop["meterStop"] == round(parse(stored["stop"]).end_kwh * 1000)
    tampered = samples[1]["value"].replace('"TX":"E"', '"TX":"X"')
    assert not ocmf_verifies(tampered, key)
    order = [a for a in csms.actions() if a in ("StartTransaction", "StopTransaction")]
    assert order == ["StartTransaction", "StopTransaction"]


def test_offline_start_and_stop_are_delivered_in_order(tmp_path, csms, daemons):
    d = ocpp_daemon(tmp_path, csms, daemons).start()
    # the CSMS's local list decides offline (auth.offline_policy = local_list)
    cp = csms.cp(ST)
    from ocpp.v16 import call

    entry = {"idTag": UID_A, "idTagInfo": {"status": "Accepted"}}
    res = csms.run(cp.async_call(call.SendLocalList(7, "Full", [entry])))
    assert res.status == "Accepted"
    assert csms.run(cp.async_call(call.GetLocalListVersion())).list_version == 7

    csms.stop()
    wait_until(lambda: not d.ctl("status")["link"]["connected"], 10, "link down")
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("finishing")
    session = d.ctl("sessions")[0]
    before = len(csms.calls())

    csms.start()  # the same port: the station reconnects by itself
    wait_until(lambda: csms.calls("StopTransaction"), 15, "StopTransaction after the outage")
    after = [a for a in csms.actions()[before:] if a in ("StartTransaction", "StopTransaction")]
    assert after == ["StartTransaction", "StopTransaction"]
    start = csms.calls("StartTransaction")[0]
    stop = csms.calls("StopTransaction")[0]
    (txid,) = csms.tx_ids()
    assert stop["transactionId"] == txid != -1
    assert abs(stop["meterStop"] - start["meterStart"] - session["energy_kwh"] * 1000) <= 1
    assert stop["reason"] == "Local"
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")


def test_wrong_basic_auth_key_is_refused_and_boot_pending_waits(tmp_path, csms, daemons):
    boot_retry_interval(1)
    wrong = ocpp_daemon(tmp_path / "a", csms, daemons, key="not-the-station-key-at-all")
    pending = {"n": 0}

    async def registration(cp: Any, info: Any) -> Any:
        from ocpp_csms import RegistrationStatus

        pending["n"] += 1
        if pending["n"] == 1:
            raise RuntimeError("CSMS bug")  # answered with a CALLERROR: the station reconnects
        return RegistrationStatus.PENDING if pending["n"] == 2 else RegistrationStatus.ACCEPTED

    csms.registration = registration
    csms.stop()
    csms.start()
    right = ocpp_daemon(tmp_path / "b", csms, daemons)
    wrong.spawn()
    right.spawn()
    wrong.wait_ready(connected=False)
    wait_until(lambda: "ocpp_auth" in str(wrong.ctl("status").get("faults")), 10, "ocpp_auth fault")
    assert "refused this station's credentials (HTTP 401)" in wrong.log()
    assert not wrong.ctl("status")["link"]["connected"]
    right.wait_ready()
    assert [c for c in csms.actions() if c == "BootNotification"] == ["BootNotification"] * 3
    assert "OCPP session ended (InternalError): reconnecting" in right.log()
    assert "BootNotification Pending: next one in 1 s" in right.log()
    assert KEY not in right.log()


def test_csms_calls_answered_or_refused_with_the_right_callerror(tmp_path, csms, daemons):
    d = ocpp_daemon(tmp_path, csms, daemons, evses=2).start()

    def ask(action: str, payload: dict[str, Any]) -> list[Any]:
        return csms.raw_call(ST, [2, f"t-{action}-{len(csms.frames)}", action, payload])

    csms.raw_send(ST, "not json at all " + UID_A)  # junk: logged (masked) and dropped
    csms.raw_send(ST, '[2, "j1"]')
    assert ask("FooBar", {})[2] == "NotSupported"  # not an OCPP 1.6 action
    assert (
        ask(
            "ReserveNow",
            {
                "connectorId": 1,
                "expiryDate": "2030-01-01T00:00:00Z",
                "idTag": UID_A,
                "reservationId": 1,
            },
        )[2]
        == "NotImplemented"
    )
    assert ask("RemoteStartTransaction", {"connectorId": 1})[0] == 4  # idTag missing
    assert ask("RemoteStartTransaction", {"idTag": UID_A, "bogus": 1})[2] in (
        "FormationViolation",
        "FormatViolation",
    )
    assert ask("UnlockConnector", {"connectorId": 9})[2] == "PropertyConstraintViolation"
    assert ask("UnlockConnector", {"connectorId": 2})[2] == {"status": "NotSupported"}
    assert ask("DataTransfer", {"vendorId": "x"})[2] == {"status": "Rejected"}
    assert ask("Reset", {"type": "Sideways"})[0] == 4  # not a reset type: no reset
    # without a connector and with two EVSEs the station cannot choose
    assert ask("RemoteStartTransaction", {"idTag": UID_A})[2] == {"status": "Rejected"}

    conf = ask("GetConfiguration", {"key": ["HeartbeatInterval", "Nope"]})[2]
    assert conf["configurationKey"] == [
        {"key": "HeartbeatInterval", "readonly": False, "value": "60"}
    ]
    assert conf["unknownKey"] == ["Nope"]
    assert ask("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "5"})[2] == {
        "status": "Accepted"
    }
    assert ask("ChangeConfiguration", {"key": "NumberOfConnectors", "value": "3"})[2] == {
        "status": "Rejected"
    }
    assert ask("ChangeConfiguration", {"key": "Nope", "value": "1"})[2] == {
        "status": "NotSupported"
    }
    assert ask("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "-1"})[2] == {
        "status": "Rejected"
    }
    every = ask("GetConfiguration", {})[2]["configurationKey"]
    assert {"key": "NumberOfConnectors", "readonly": True, "value": "2"} in every
    assert {"key": "HeartbeatInterval", "readonly": False, "value": "5"} in every

    assert ask("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})[2] == {
        "status": "Accepted"
    }
    wait_until(lambda: csms.cp(ST).connectors[2].status == "Unavailable", 10, "Unavailable")
    assert ask("ChangeAvailability", {"connectorId": 0, "type": "Operative"})[2] == {
        "status": "Accepted"
    }
    wait_until(lambda: csms.cp(ST).connectors[2].status == "Available", 10, "Available")
    n = len(csms.calls("StatusNotification"))
    trig = ask("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1})
    assert trig[2] == {"status": "Accepted"}
    wait_until(lambda: len(csms.calls("StatusNotification")) > n, 10, "triggered status")
    assert csms.calls("StatusNotification")[n]["connectorId"] == 1
    assert ask("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})[2] == {
        "status": "NotImplemented"
    }
    h = len(csms.calls("Heartbeat"))
    ask("TriggerMessage", {"requestedMessage": "Heartbeat"})
    wait_until(lambda: len(csms.calls("Heartbeat")) > h, 10, "triggered heartbeat")
    # a flood of CSMS calls: over the limit they are dropped unread and counted in the status
    flood = [json.dumps([2, f"f{i}", "GetLocalListVersion", {}]) for i in range(400)]
    csms.flood(ST, flood)
    wait_until(
        lambda: (d.ctl("status").get("inbound_dropped") or {}).get("ocpp calls", 0) >= 200,
        10,
        "the drop count in the status",
    )
    assert sum(csms.answer_to(f"f{i}") is not None for i in range(400)) <= 200
    late = iter(range(100))

    def answered_again() -> list[Any] | None:  # the CSMS retries, as it would
        try:
            return csms.raw_call(ST, [2, f"late{next(late)}", "GetLocalListVersion", {}], 1.0)
        except AssertionError:  # dropped: the bucket had not refilled yet
            return None

    assert wait_until(answered_again, 15, "a call answered after the flood")[2] == {
        "listVersion": 0
    }
    assert d.ctl("status")["link"]["connected"]  # nothing above dropped the socket
    assert "Traceback" not in d.log() and UID_A not in d.log()  # one line each, no id tags


def test_kill_9_and_power_loss_during_an_outage_lose_nothing(tmp_path, csms, daemons):
    """A charging session's StartTransaction is answered; the CSMS goes away; the station dies
    (kill -9) and comes back after a reboot with the CSMS still away: recovery ends the
    session (power loss). When the CSMS returns it gets exactly one StopTransaction, with the
    transaction id it gave before the crash, and no second StartTransaction."""
    (tmp_path / "boot_id").write_text("boot-1\n")
    d = ocpp_daemon(tmp_path, csms, daemons).start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    wait_until(csms.tx_ids, 10, "StartTransaction answered")
    (txid,) = csms.tx_ids()
    wait_until(lambda: f"is OCPP transaction {txid}" in d.log(), 10, "transaction id stored")
    csms.stop()
    wait_until(lambda: not d.ctl("status")["link"]["connected"], 10, "link down")
    d.kill()
    (tmp_path / "boot_id").write_text("boot-2\n")  # the station rebooted
    d.start(wait_connected=False)
    wait_until(lambda: d.ctl("sessions")[0]["stop_reason"] == "power_loss", 10, "recovery")
    csms.start()
    stop = wait_until(lambda: csms.calls("StopTransaction"), 15, "StopTransaction")[0]
    assert stop["transactionId"] == txid and stop["reason"] == "PowerLoss"
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")
    assert len(csms.calls("StartTransaction")) == 1
    assert len(csms.calls("StopTransaction")) == 1


def test_demo_plays_its_sessions_over_ocpp():
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--backend", "ocpp1.6", "--seconds", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "2 transaction(s) started, 2 stopped with their id" in out.stdout
    assert "StopTransaction    transactionId 2" in out.stdout


def test_a_remote_start_killed_before_its_answer_is_kept_as_committed(tmp_path, csms, daemons):
    """kill -9 with a RemoteStartTransaction committed but not answered (the CSMS sees the
    socket drop): after the restart the session runs, as on the MQTT path, and the CSMS gets
    exactly one StartTransaction for it."""
    d = ocpp_daemon(tmp_path, csms, daemons)
    d.env[ENV] = "start_committed"
    d.start()
    d.ctl("sim.plug")
    d.wait_state("preparing")
    with pytest.raises(CsmsError):
        csms.run(csms.cp(ST).async_remote_start_transaction(UID_B, 1))
    proc = d.proc
    assert proc is not None
    wait_until(lambda: proc.poll() is not None, 10, "kill -9 at start_committed")
    assert "failpoint start_committed: killing" in d.log()
    d.proc = None
    d.env.pop(ENV)
    d.start()
    d.wait_state("charging")
    start = wait_until(lambda: csms.calls("StartTransaction"), 10, "StartTransaction")
    assert [s["idTag"] for s in start] == [UID_B]


def test_a_silent_csms_is_noticed_by_ping_and_the_station_reconnects(tmp_path, csms, daemons):
    """The CSMS's TCP connection stays open but nothing comes back (a hung proxy): the
    WebSocket ping notices it within two ping intervals, the station reconnects by itself."""
    proxy = BlackHoleProxy(csms.port)
    try:
        d = ocpp_daemon(tmp_path, csms, daemons, ocpp={"ping_interval_s": 0.5})
        d.config["ocpp"]["url"] = f"ws://127.0.0.1:{proxy.port}/ocpp"
        d.start()
        proxy.silent.set()
        wait_until(lambda: not d.ctl("status")["link"]["connected"], 10, "dead link noticed")
        boots = len(csms.calls("BootNotification"))
        proxy.silent.clear()
        d.wait_ready()
        assert len(csms.calls("BootNotification")) > boots
    finally:
        proxy.close()


def test_a_start_answered_invalid_stops_the_session_deauthorized(tmp_path, daemons):
    """StopTransactionOnInvalidId (true): the CSMS accepts the Authorize, then answers the
    StartTransaction with idTagInfo Invalid: the station stops the session (DeAuthorized)."""
    from ocpp_csms import AuthorizationStatus

    answers = [AuthorizationStatus.ACCEPTED, AuthorizationStatus.INVALID]

    async def authorize(cp: Any, id_tag: str) -> AuthorizationStatus:
        return answers.pop(0) if answers else AuthorizationStatus.INVALID

    server = Csms(authorize=authorize).start()
    try:
        d = ocpp_daemon(tmp_path, server, daemons).start()
        d.ctl("sim.plug")
        d.ctl("sim.tap", uid=UID_A)
        stop = wait_until(lambda: server.calls("StopTransaction"), 15, "StopTransaction")[0]
        (txid,) = server.tx_ids()
        assert stop["transactionId"] == txid and stop["reason"] == "DeAuthorized"
        assert server.results("StartTransaction")[0]["idTagInfo"]["status"] == "Invalid"
        d.wait_state("finishing")
        assert d.ctl("sessions")[0]["stop_reason"] == "deauthorized"
        assert not d.ctl("status")["evses"][0]["relay_closed"]
        wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")
        assert "the CSMS answered its start with Invalid: stopping" in d.log()
        config = server.run(server.cp(ST).async_get_configuration(["StopTransactionOnInvalidId"]))
        assert config.values["StopTransactionOnInvalidId"].value == "true"
        assert check_frames(server.frames) > 0
    finally:
        server.close()


def test_reset_ends_the_session_and_restarts_once_even_after_a_kill(tmp_path, csms, daemons):
    """Reset Soft killed right after its commit (before the answer): the restart settles the
    session with SoftReset and does not reset again. Reset Hard: answered Accepted, the
    session ends (HardReset, StopTransaction answered), the relay opens, the daemon exits with
    the status systemd restarts (Restart=always; only 78 is spared)."""
    unit = (Path(__file__).parents[1] / "systemd" / "station-agent.service").read_text()
    assert "Restart=always" in unit and "RestartPreventExitStatus=78" in unit
    d = ocpp_daemon(tmp_path, csms, daemons)
    d.env[ENV] = "reset_committed"
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    wait_until(csms.tx_ids, 10, "StartTransaction")
    with pytest.raises(CsmsError):  # the socket drops: killed before the answer
        csms.run(csms.cp(ST).async_reset(ResetType.SOFT))
    proc = d.proc
    assert proc is not None
    wait_until(lambda: proc.poll() is not None, 10, "kill -9 at reset_committed")
    d.proc = None
    d.env.pop(ENV)
    d.start()
    stop = wait_until(lambda: csms.calls("StopTransaction"), 15, "StopTransaction")[0]
    assert stop["reason"] == "SoftReset" and stop["transactionId"] == csms.tx_ids()[0]
    assert d.log().count("restarted for the soft reset") == 1
    assert d.evse()["state"] == "preparing"  # the car is still in: not resumed
    assert d.ctl("sessions")[0]["stop_reason"] == "soft_reset"
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")
    assert d.proc is not None and d.proc.poll() is None  # the restart was the reset: no other

    d.ctl("sim.tap", uid=UID_B)
    d.wait_state("charging")
    wait_until(lambda: len(csms.tx_ids()) == 2, 10, "second StartTransaction")
    assert csms.run(csms.cp(ST).async_reset(ResetType.HARD)) == "Accepted"
    proc = d.proc
    assert proc is not None
    wait_until(lambda: proc.poll() is not None, 15, "exit after the reset")
    assert proc.returncode == 75
    stops = csms.calls("StopTransaction")
    assert len(stops) == 2 and stops[1]["reason"] == "HardReset"
    assert stops[1]["transactionId"] == csms.tx_ids()[1]
    assert d.relay_log()[-1] == "open"
    assert "reset: sessions ended, 0 event(s) still queued: exiting with status 75" in d.log()


def _profile(pid: int, purpose: str, stack: int, periods: list[tuple[int, float]], **kw: Any):
    unit = kw.pop("unit", "A")
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kw.pop("kind", "Absolute"),
        **kw,
        "chargingSchedule": {
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": s, "limit": v} for s, v in periods],
        },
    }


def test_charging_profiles_become_the_current_limits(tmp_path, csms, daemons):
    """SetChargingProfile onto the current control: TxDefault -> the EVSE limit, TxProfile (in
    W, two periods) -> the running transaction's limit, period by period, dropped with it;
    ChargePointMax -> the station limit; ClearChargingProfile; refusals."""
    d = ocpp_daemon(tmp_path, csms, daemons, evses=2)
    d.config["evse"][0].update(pilot={"driver": "sim", "car_max_a": 32.0}, max_current_a=16)
    d.start()
    n = iter(range(100))

    def ask(action: str, payload: dict[str, Any]) -> Any:
        return csms.raw_call(ST, [2, f"sc{next(n)}", action, payload])[2]

    def limit() -> tuple[Any, Any, Any]:
        e = d.evse()
        return e["limit_a"], e["limit_source"], e["offered_a"]

    def set_profile(connector: int, profile: dict[str, Any]) -> Any:
        return ask("SetChargingProfile", {"connectorId": connector, "csChargingProfiles": profile})

    default = _profile(1, "TxDefaultProfile", 0, [(0, 10)])
    assert set_profile(1, default) == {"status": "Accepted"}
    assert limit()[:2] == (10, "evse")  # committed before the answer
    assert set_profile(2, _profile(2, "TxDefaultProfile", 0, [(0, 10)])) == {
        "status": "Rejected"  # no control pilot on connector 2
    }
    recurring = _profile(3, "TxDefaultProfile", 1, [(0, 8)], kind="Recurring")
    assert set_profile(1, {**recurring, "recurrencyKind": "Daily"}) == {"status": "Rejected"}
    tx = _profile(4, "TxProfile", 1, [(0, 4140), (1, 5520)], unit="W")  # 6 A, then 8 A (3 ph.)
    assert set_profile(1, tx) == {"status": "Rejected"}  # no transaction runs

    d.ctl("sim.plug", evse_id=d.evse()["evse_id"])
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    wait_until(lambda: limit() == (10, "evse", 10), 10, "10 A offered (TxDefault)")
    wait_until(csms.tx_ids, 10, "StartTransaction")
    assert set_profile(1, tx) == {"status": "Accepted"}
    assert limit()[:2] == (6, "evse")
    wait_until(lambda: limit()[0] == 8, 10, "the second period (8 A) sent when the first ended")
    cp_max = _profile(5, "ChargePointMaxProfile", 0, [(0, 7)])
    assert set_profile(0, cp_max) == {"status": "Accepted"}
    assert limit()[:2] == (7, "station")
    assert ask("ClearChargingProfile", {"id": 5}) == {"status": "Accepted"}
    assert limit()[:2] == (8, "evse")
    assert ask("ClearChargingProfile", {"id": 99}) == {"status": "Unknown"}

    d.ctl("sim.tap", uid=UID_A)  # the transaction ends: its TxProfile goes with it
    wait_until(lambda: limit()[:2] == (10, "evse"), 10, "back to the TxDefault limit")
    assert "TxProfile 4 dropped: its transaction ended" in d.log()
