"""The station as an OCPP 2.0.1 charging station against a small CSMS built on the ``ocpp``
package's central-system role (tests/ocpp201_csms.py), over TLS with basic auth (security
profile 2) and mutual TLS (profile 3) with certificates the tests make."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.v201 import call

from drivers.meter.ocmf import parse
from tests.helpers import UID_A, Daemon, station_config, wait_until
from tests.ocpp201_csms import Csms201
from tests.ocpp_helpers import (
    check_frames,
    meter_public_key,
    ocmf_verifies,
    ocpp_config,
    signing_meter,
)
from tests.tls_fixtures import make_pki

ST = "ST-TEST"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return make_pki(tmp_path / "pki", stations=(ST,))


def daemon201(tmp: Path, csms: Csms201, daemons: list[Daemon], **ocpp: Any) -> Daemon:
    key = csms.key if csms.key is not None else None
    over = ocpp_config(csms, tmp, key, protocol="ocpp2.0.1", **ocpp)
    d = Daemon(tmp, station_config(tmp, "mqtt://127.0.0.1:9", "unused", **over))
    daemons.append(d)
    return d


def events(csms: Csms201, kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in csms.calls("TransactionEvent") if kind in (None, e["eventType"])]


def test_mutual_tls_charge_by_card_and_remote_start_stop(tmp_path, pki, daemons):
    csms = Csms201(key=None, pki=pki, mtls=True).start()
    try:
        c = pki.clients[ST]
        d = daemon201(
            tmp_path,
            csms,
            daemons,
            ca_file=str(pki.ca),
            cert_file=str(c.cert),
            key_file=str(c.key),
        ).start()
        assert csms.peer_cns == [ST]  # profile 3: the certificate names the station
        boot = csms.calls("BootNotification")[0]
        assert boot["reason"] == "PowerUp" and boot["chargingStation"]["vendorName"]
        wait_until(lambda: csms.calls("StatusNotification"), 10, "StatusNotification")
        assert csms.calls("StatusNotification")[0]["connectorStatus"] == "Available"

        d.ctl("sim.tap", uid=UID_A)
        d.ctl("sim.plug")
        sid = d.wait_state("charging")["session_id"]
        assert csms.calls("Authorize")[0]["idToken"] == {"idToken": UID_A, "type": "ISO14443"}
        started = wait_until(lambda: events(csms, "Started"), 10, "Started")[0]
        assert started["seqNo"] == 0 and started["triggerReason"] == "Authorized"
        assert started["transactionInfo"]["transactionId"] == sid
        assert started["evse"] == {"id": 1, "connectorId": 1}
        assert started["offline"] is False
        begin = started["meterValue"][0]["sampledValue"][0]
        assert begin["context"] == "Transaction.Begin" and begin["unitOfMeasure"] == {"unit": "Wh"}
        wait_until(lambda: events(csms, "Updated"), 10, "Updated (periodic meter value)")
        assert events(csms, "Updated")[0]["triggerReason"] == "MeterValuePeriodic"
        d.ctl("sim.tap", uid=UID_A)
        ended = wait_until(lambda: events(csms, "Ended"), 10, "Ended")[0]
        assert ended["transactionInfo"]["stoppedReason"] == "Local"
        assert ended["triggerReason"] == "StopAuthorized"
        assert "signedMeterValue" not in str(events(csms))  # an unsigned meter signs nothing
        seqs = [e["seqNo"] for e in events(csms) if e["transactionInfo"]["transactionId"] == sid]
        assert seqs == list(range(len(seqs)))  # 0, 1, 2, ... without gaps or repeats
        wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")

        d.ctl("sim.unplug")
        d.wait_state("available")
        d.ctl("sim.plug")
        token = {"idToken": "DE8ACC12345678A", "type": "eMAID"}
        res = csms.call(
            ST, call.RequestStartTransaction(id_token=token, remote_start_id=1, evse_id=1)
        )
        assert res.status == "Accepted"
        remote = d.wait_state("charging")["session_id"]
        wait_until(lambda: len(events(csms, "Started")) == 2, 10, "second Started")
        assert events(csms, "Started")[1]["triggerReason"] == "RemoteStart"
        res = csms.call(ST, call.RequestStopTransaction(transaction_id=remote))
        assert res.status == "Accepted"
        wait_until(lambda: len(events(csms, "Ended")) == 2, 10, "second Ended")
        assert events(csms, "Ended")[1]["transactionInfo"]["stoppedReason"] == "Remote"

        got = csms.call(
            ST,
            call.GetVariables(
                get_variable_data=[
                    {
                        "component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "HeartbeatInterval"},
                    },
                    {"component": {"name": "Nope"}, "variable": {"name": "Nope"}},
                ]
            ),
        )
        statuses = [r["attribute_status"] for r in got.get_variable_result]
        assert statuses == ["Accepted", "UnknownVariable"]
        put = csms.call(
            ST,
            call.SetVariables(
                set_variable_data=[
                    {
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedInterval"},
                        "attributeValue": "30",
                    }
                ]
            ),
        )
        assert put.set_variable_result[0]["attribute_status"] == "Accepted"
        assert csms.raw_call(ST, [2, "x1", "ReserveNow", {}])[2] in (
            "NotImplemented",
            "FormationViolation",
            "OccurrenceConstraintViolation",
        )
        bad_evse = csms.raw_call(
            ST,
            [
                2,
                "x2",
                "ChangeAvailability",
                {"operationalStatus": "Inoperative", "evse": {"id": 7}},
            ],
        )
        assert bad_evse[2] == "PropertyConstraintViolation"
        assert csms.raw_call(ST, [2, "x3", "DataTransfer", {"vendorId": "v"}])[2] == {
            "status": "Rejected"
        }
        reset_one = [2, "x4", "Reset", {"type": "Immediate", "evseId": 1}]
        assert csms.raw_call(ST, reset_one)[2] == {"status": "Rejected"}  # only the station
        res = csms.call(ST, call.ChangeAvailability(operational_status="Inoperative"))
        assert res.status == "Accepted"
        wait_until(
            lambda: csms.calls("StatusNotification")[-1]["connectorStatus"] == "Unavailable",
            10,
            "Unavailable",
        )
        n = len(csms.calls("Heartbeat"))
        assert csms.call(ST, call.TriggerMessage(requested_message="Heartbeat")).status == (
            "Accepted"
        )
        wait_until(lambda: len(csms.calls("Heartbeat")) > n, 10, "triggered Heartbeat")
        assert check_frames(csms.frames, "2.0.1") > 10
    finally:
        csms.close()


def test_tls_basic_auth_offline_transaction_delivered_in_order(tmp_path, pki, daemons):
    csms = Csms201(pki=pki).start()
    try:
        d = daemon201(tmp_path, csms, daemons, ca_file=str(pki.ca)).start()
        entry = {
            "idToken": {"idToken": UID_A, "type": "ISO14443"},
            "idTokenInfo": {"status": "Accepted"},
        }
        res = csms.call(
            ST,
            call.SendLocalList(
                version_number=3, update_type="Full", local_authorization_list=[entry]
            ),
        )
        assert res.status == "Accepted"
        assert csms.call(ST, call.GetLocalListVersion()).version_number == 3
        csms.stop()
        wait_until(lambda: not d.ctl("status")["link"]["connected"], 10, "link down")
        d.ctl("sim.plug")
        d.ctl("sim.tap", uid=UID_A)
        sid = d.wait_state("charging")["session_id"]
        d.ctl("sim.tap", uid=UID_A)
        d.wait_state("finishing")
        csms.start()
        wait_until(lambda: events(csms, "Ended"), 15, "Ended after the outage")
        got = [(e["eventType"], e["seqNo"], e["offline"]) for e in events(csms)]
        assert got == [("Started", 0, True), ("Ended", 1, True)]
        assert {e["transactionInfo"]["transactionId"] for e in events(csms)} == {sid}
        wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR settled")
        assert check_frames(csms.frames, "2.0.1") > 5
    finally:
        csms.close()


def test_signing_meter_records_ride_on_started_and_ended(tmp_path, daemons):
    csms = Csms201().start()  # basic auth over plain WebSocket (profile 1)
    try:
        d = daemon201(tmp_path, csms, daemons)
        d.config["evse"][0]["meter"].update(signing_meter(tmp_path))
        d.start()
        key = meter_public_key(tmp_path)
        d.ctl("sim.tap", uid=UID_A)
        d.ctl("sim.plug")
        sid = d.wait_state("charging")["session_id"]
        started = wait_until(lambda: events(csms, "Started"), 10, "Started")[0]
        wait_until(lambda: events(csms, "Updated"), 10, "Updated")
        d.ctl("sim.tap", uid=UID_A)
        ended = wait_until(lambda: events(csms, "Ended"), 10, "Ended")[0]
        stored = d.ctl("cdr.signed", session_id=sid)["signed_meter_values"]
        assert stored["public_key"] == key
        records = []
        for event, name, tx in ((started, "start", "B"), (ended, "stop", "E")):
            (sample,) = event["meterValue"][0]["sampledValue"]
            signed = sample["signedMeterValue"]
            assert signed["encodingMethod"] == "OCMF"
            assert signed["signingMethod"] == "ECDSA-secp256r1-SHA256"
            assert base64.b64decode(signed["publicKey"]).hex().upper() == key
            record = base64.b64decode(signed["signedMeterData"], validate=True).decode()
            assert record == stored[name]  # byte for byte as committed
            assert ocmf_verifies(record, key)
            kwh = parse(record).begin_kwh if tx == "B" else parse(record).end_kwh
            assert kwh is not None and sample["value"] == round(kwh * 1000)
            records.append(record)
        assert started["meterValue"][0]["sampledValue"][0]["context"] == "Transaction.Begin"
        assert ended["meterValue"][0]["sampledValue"][0]["context"] == "Transaction.End"
        assert records[0] != records[1]
        for update in events(csms, "Updated"):  # periodic samples are plain
            assert "signedMeterValue" not in update["meterValue"][0]["sampledValue"][0]
        assert check_frames(csms.frames, "2.0.1") > 5  # signedMeterValue within its limits
    finally:
        csms.close()


def _profile201(pid: int, purpose: str, limit: float) -> dict[str, Any]:
    period = {"startPeriod": 0, "limit": limit}
    schedule = {"id": pid, "chargingRateUnit": "A", "chargingSchedulePeriod": [period]}
    return {
        "id": pid,
        "stackLevel": 0,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [schedule],
    }


def _charging_profiles_201(csms: Csms201, d: Daemon) -> None:
    """2.0.1 SetChargingProfile onto the current limits, as in 1.6 (committed first)."""

    def ask(action: str, payload: dict[str, Any]) -> Any:
        return csms.raw_call(ST, [2, f"p{action}{len(csms.frames)}", action, payload])[2]

    def limit() -> tuple[Any, Any]:
        return d.evse()["limit_a"], d.evse()["limit_source"]

    default = _profile201(1, "TxDefaultProfile", 10)
    assert ask("SetChargingProfile", {"evseId": 1, "chargingProfile": default}) == {
        "status": "Accepted"
    }
    assert limit() == (10, "evse")
    station = _profile201(2, "ChargingStationMaxProfile", 7)
    assert ask("SetChargingProfile", {"evseId": 0, "chargingProfile": station}) == {
        "status": "Accepted"
    }
    assert limit() == (7, "station")
    tx = _profile201(3, "TxProfile", 8)
    assert ask("SetChargingProfile", {"evseId": 1, "chargingProfile": tx}) == {
        "status": "Rejected"  # no transaction runs
    }
    criteria = {"chargingProfilePurpose": "ChargingStationMaxProfile"}
    assert ask("ClearChargingProfile", {"chargingProfileCriteria": criteria}) == {
        "status": "Accepted"
    }
    assert ask("ClearChargingProfile", {"chargingProfileId": 1}) == {"status": "Accepted"}
    assert limit() == (16, "evse")  # the configured limit again
    assert ask("ClearChargingProfile", {"chargingProfileId": 1}) == {"status": "Unknown"}


def test_started_refused_is_deauthorized_and_reset_on_idle_waits(tmp_path, daemons):
    """TxCtrlr.StopTxOnInvalidId: a TransactionEvent Started answered with idTokenInfo Invalid
    ends the transaction (stoppedReason DeAuthorized, triggerReason Deauthorized). Then Reset
    OnIdle with a transaction running: Scheduled, committed; the session goes on until the
    card stops it, then the agent exits for its restart (status 75)."""
    csms = Csms201()
    csms.started_status = "Invalid"
    csms.start()
    try:
        d = daemon201(tmp_path, csms, daemons)
        d.config["evse"][0].update(pilot={"driver": "sim", "car_max_a": 32.0}, max_current_a=16)
        d.start()
        _charging_profiles_201(csms, d)
        d.ctl("sim.plug")
        d.ctl("sim.tap", uid=UID_A)
        sid = wait_until(lambda: events(csms, "Started"), 10, "Started")[0]
        ended = wait_until(lambda: events(csms, "Ended"), 15, "Ended")[0]
        info = ended["transactionInfo"]
        assert info["transactionId"] == sid["transactionInfo"]["transactionId"]
        assert info["stoppedReason"] == "DeAuthorized"
        assert ended["triggerReason"] == "Deauthorized"
        d.wait_state("finishing")
        assert d.ctl("sessions")[0]["stop_reason"] == "deauthorized"
        variable = {"component": {"name": "TxCtrlr"}, "variable": {"name": "StopTxOnInvalidId"}}
        answer = csms.call(ST, call.GetVariables(get_variable_data=[variable]))
        assert answer.get_variable_result[0]["attribute_value"] == "true"

        csms.cps[ST].started_status = "Accepted"
        d.ctl("sim.tap", uid=UID_A)
        d.wait_state("charging")
        wait_until(lambda: len(events(csms, "Started")) == 2, 10, "second Started")
        assert csms.call(ST, call.Reset(type="OnIdle")).status == "Scheduled"
        assert "reset (on_idle) accepted: 1 session(s) to end" in d.log()
        assert d.evse()["state"] == "charging"  # OnIdle: the session goes on
        d.ctl("sim.tap", uid=UID_A)
        wait_until(lambda: len(events(csms, "Ended")) == 2, 10, "second Ended")
        assert events(csms, "Ended")[1]["transactionInfo"]["stoppedReason"] == "Local"
        proc = d.proc
        assert proc is not None
        wait_until(lambda: proc.poll() is not None, 15, "exit for the restart")
        assert proc.returncode == 75
        assert check_frames(csms.frames, "2.0.1") > 0
    finally:
        csms.close()
