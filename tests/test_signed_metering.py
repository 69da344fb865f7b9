"""Signed metering (OCMF): the signing sim meter and the Iskra WM3M4C driver produce records
that a verifier that is not our own (pyocmf) accepts; tampering and a wrong key are caught;
through the daemon and Mosquitto the CDR carries the records and bills their signed values,
also when the meter stops answering and across a restart mid-session."""

from __future__ import annotations

import inspect
import json
import os
import stat
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pymodbus.server import ModbusSerialServer
from pyocmf import OCMF

from agent.cli import main as agent_main
from agent.errors import ConfigError, DriverError
from agent.ocmf_verify import check
from agent.stationctl import main as stationctl_main
from drivers.clock import FakeClock
from drivers.meter.base import TransactionIdent, signing
from drivers.meter.iskra import IskraMeter
from drivers.meter.modbus import ModbusMeter
from drivers.meter.ocmf import parse, public_key_hex, split
from drivers.meter.sim import SimMeter
from drivers.meter.sim_signing import SigningSimMeter
from tests.helpers import EVSE1, EVSE2, UID_A, wait_msg
from tests.iskra_server import IskraServer
from tests.test_messages import validator
from tests.test_meter_drivers import pty_bridge  # noqa: F401  (a fixture)

IDENT = TransactionIdent(evse_id=EVSE1, id_type="ISO14443", id_masked="04A2...3C80")


def _quiet_verify(record: str, key: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the masked ID is not an ISO14443 UID: a spec note
        return bool(OCMF.from_string(record).verify_signature(key))


@pytest.fixture
def sim_meter(tmp_path: Path) -> tuple[SigningSimMeter, FakeClock]:
    clock = FakeClock()
    meter = SigningSimMeter(
        power_kw=11.0, initial_kwh=100.0, clock=clock, key_file=tmp_path / "meter.pem"
    )
    meter.prepare()
    return meter, clock


# ----------------------------------------------------------------------------- sim meter
def test_sim_meter_signs_begin_and_end_records_pyocmf_verifies(sim_meter, tmp_path) -> None:
    meter, clock = sim_meter
    assert stat.S_IMODE(os.stat(tmp_path / "meter.pem").st_mode) == 0o600
    begin = meter.begin_transaction(IDENT)
    meter.set_flowing(True)
    clock.advance(1800)
    end = meter.end_transaction(IDENT)
    assert (begin.begin_kwh, end.end_kwh) == (100.0, 105.5)
    key = meter.public_key()
    assert _quiet_verify(begin.record, key) and _quiet_verify(end.record, key)
    payload = json.loads(split(end.record)[0])
    assert payload["PG"] == "T2" and payload["CI"] == EVSE1 and payload["IT"] == "ISO14443"
    assert payload["RD"][0]["TX"] == "E" and payload["RD"][0]["ST"] == "G"
    assert payload["RD"][0]["TM"].endswith("+0000 S")
    verdict = check({"start": begin.record, "stop": end.record, "public_key": key})
    assert verdict.ok and not verdict.issues
    # the same key at the next start: the counter keeps counting across restarts
    again = SigningSimMeter(clock=clock, key_file=tmp_path / "meter.pem")
    again.prepare()
    assert again.public_key() == key
    assert json.loads(split(again.begin_transaction(IDENT).record)[0])["PG"] == "T3"


def test_tampered_value_signature_and_wrong_key_fail(sim_meter) -> None:
    meter, clock = sim_meter
    start = meter.begin_transaction(IDENT).record
    meter.set_flowing(True)
    clock.advance(600)
    stop = meter.end_transaction(IDENT).record
    key = meter.public_key()
    good = {"start": start, "stop": stop, "public_key": key}
    assert check(good).ok

    value = stop.replace('"RV":101.833', '"RV":111.833')
    assert value != stop
    assert not check({**good, "stop": value}).ok
    payload, sig = split(stop)
    sd = json.loads(sig)["SD"]
    flipped = sd[:20] + ("0" if sd[20] != "0" else "1") + sd[21:]
    assert not check({**good, "stop": f"OCMF|{payload}|{sig.replace(sd, flipped)}"}).ok
    other = ec.generate_private_key(ec.SECP256R1())
    assert not check({**good, "public_key": public_key_hex(other)}).ok


def test_failing_meter_signs_nothing_and_bad_keys_are_refused(sim_meter, tmp_path) -> None:
    meter, _ = sim_meter
    meter.set_failing(True)
    with pytest.raises(DriverError):
        meter.end_transaction(IDENT)
    (tmp_path / "rsa.pem").write_text("not a key\n")
    bad = SigningSimMeter(key_file=tmp_path / "rsa.pem")
    with pytest.raises(ConfigError, match="PEM"):
        bad.prepare()
    k1 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pem").write_bytes(
        k1.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="secp256r1"):
        SigningSimMeter(key_file=tmp_path / "p384.pem").prepare()


def test_signing_meters_implement_the_capability_and_others_do_not(tmp_path) -> None:
    signing_meters = [SigningSimMeter(key_file=tmp_path / "k.pem"), IskraMeter("tcp", host="h")]
    for meter in signing_meters:
        assert signing(meter) is meter
        for name in ("signs", "begin_transaction", "end_transaction", "public_key"):
            assert inspect.getattr_static(type(meter), name, None) is not None, name
    assert not (tmp_path / "k.pem").exists()  # no I/O in the constructor
    assert signing(SimMeter()) is None
    assert signing(ModbusMeter("sdm630", "tcp", host="h")) is None


# ----------------------------------------------------------------------------- Iskra
def test_iskra_over_rtu_pty_signs_a_transaction_that_pyocmf_verifies(pty_bridge) -> None:  # noqa: F811
    server_port, client_port = pty_bridge
    key = ec.generate_private_key(ec.SECP256R1())
    srv = IskraServer(
        key,
        energy_wh=1_234_500,
        make_server=lambda dev: ModbusSerialServer(dev, port=server_port, baudrate=115200),
    )
    meter = IskraMeter("rtu", port=client_port, baudrate=115200, timeout_s=1.0)
    try:
        reading = meter.read()
        assert reading.energy_kwh == pytest.approx(1234.5)
        assert reading.voltage_v == pytest.approx(230.5) and reading.power_w == 7360
        assert meter.begin_transaction(IDENT) is None  # one record at the end
        srv.add_energy(7_250)
        rec = meter.end_transaction(IDENT)
        assert (rec.begin_kwh, rec.end_kwh) == (1234.5, 1241.75)
        assert split(rec.record)[0] == srv.records[-1]  # byte for byte
        assert meter.public_key() == public_key_hex(key)
        assert _quiet_verify(rec.record, meter.public_key())
        verdict = check({"stop": rec.record, "public_key": meter.public_key()})
        assert verdict.ok, verdict
        payload = json.loads(split(rec.record)[0])
        assert payload["CI"] == EVSE1 and payload["ID"] == "04A2...3C80"
        with pytest.raises(DriverError, match="no open transaction"):
            meter.end_transaction(IDENT)
    finally:
        meter.shutdown()
        srv.stop()


# ----------------------------------------------------------------------------- daemon
def _signing_evse(tmp_path: Path, **meter: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": EVSE1,
            "relay": {"driver": "sim", "log_file": str(tmp_path / "relay1.log")},
            "plug": {"driver": "sim", "state_file": str(tmp_path / "plug1")},
            "meter": meter
            or {
                "driver": "sim",
                "power_kw": 11.0,
                "time_factor": 600.0,
                "signing": True,
                "key_file": str(tmp_path / "meter-key.pem"),
                "state_file": str(tmp_path / "meter-register"),
            },
        }
    ]


def _stationctl(socket: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = stationctl_main(["--socket", str(socket), *argv])
    return rc, capsys.readouterr().out


def test_signed_session_end_to_end_verified_by_pyocmf(
    make_daemon, backend, tmp_path, capsys
) -> None:
    unsigned = {"id": EVSE2, "meter": {"driver": "sim"}, "plug": {"driver": "sim"}}
    d = make_daemon(evse=[*_signing_evse(tmp_path), unsigned])
    assert d.ctl("meter.read", evse_id=EVSE1)["signed"] is True
    assert d.ctl("meter.read", evse_id=EVSE2)["signed"] is False  # says so, does not pretend
    d.ctl("sim.plug", evse_id=EVSE1)
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    started = d.ctl("sessions")[0]["session_id"]
    assert d.ctl("cdr.signed", session_id=started)["signed_meter_values"]["start"]
    d.ctl("sim.tap", uid=UID_A)
    cdr = wait_msg(backend, "cdr")
    validator("cdr").validate(cdr)  # the exported JSON Schema knows the field
    smv = cdr["signed_meter_values"]
    assert smv["format"] == "OCMF" and "error" not in smv
    start, stop = parse(smv["start"]), parse(smv["stop"])
    assert cdr["meter_start_kwh"] == start.begin_kwh and cdr["meter_stop_kwh"] == stop.end_kwh
    assert stop.end_kwh is not None and start.begin_kwh is not None
    assert cdr["energy_kwh"] == pytest.approx(stop.end_kwh - start.begin_kwh, abs=1e-9)
    assert _quiet_verify(smv["start"], smv["public_key"])
    assert _quiet_verify(smv["stop"], smv["public_key"])
    assert check(smv).ok
    rc, out = _stationctl(d.socket, "cdr", "verify", cdr["session_id"], capsys=capsys)
    assert rc == 0 and "verdict: OK" in out and "signature valid" in out and "synchronised" in out
    cdr_file = tmp_path / "cdr.json"
    cdr_file.write_text(json.dumps(cdr))
    assert agent_main(["ocmf", "verify", str(cdr_file)]) == 0
    tampered = json.loads(json.dumps(cdr))
    tampered["signed_meter_values"]["stop"] = smv["stop"].replace('"TX":"E"', '"TX":"X"')
    cdr_file.write_text(json.dumps(tampered))
    assert agent_main(["ocmf", "verify", str(cdr_file)]) == 1
    assert "verdict: FAILED" in capsys.readouterr().out


def test_restart_mid_session_keeps_the_start_record_and_signs_the_end(
    make_daemon, backend, tmp_path, capsys
) -> None:
    d = make_daemon(evse=_signing_evse(tmp_path))
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    session_id = d.ctl("sessions")[0]["session_id"]
    before = d.ctl("cdr.signed", session_id=session_id)["signed_meter_values"]
    d.kill()
    d.start()
    d.wait_state("charging")  # resumed: same session, car still plugged
    after = d.ctl("cdr.signed", session_id=session_id)["signed_meter_values"]
    assert after["start"] == before["start"]  # byte for byte from the store
    d.ctl("sim.tap", uid=UID_A)
    cdr = wait_msg(backend, "cdr", session_id=session_id)
    smv = cdr["signed_meter_values"]
    assert smv["start"] == before["start"] and smv["stop"]
    assert check(smv).ok
    pg = [json.loads(split(smv[k])[0])["PG"] for k in ("start", "stop")]
    assert int(pg[1][1:]) > int(pg[0][1:])
    assert cdr["meter_start_kwh"] == parse(smv["start"]).begin_kwh


def test_session_settled_at_start_up_gets_its_end_record_then(
    make_daemon, backend, tmp_path
) -> None:
    """The car left while the agent was down: the session is settled at start-up, and the
    meter (its register unchanged since the relays opened) signs the end then."""
    d = make_daemon(evse=_signing_evse(tmp_path))
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    session_id = d.ctl("sessions")[0]["session_id"]
    d.kill()
    (tmp_path / "plug1").write_text("unplugged\n")
    d.start()
    cdr = wait_msg(backend, "cdr", session_id=session_id)
    assert cdr["stop_reason"] == "ev_disconnected"
    smv = cdr["signed_meter_values"]
    assert check(smv).ok and "error" not in smv
    assert cdr["meter_stop_kwh"] == parse(smv["stop"]).end_kwh
    d.wait_state("available")


@pytest.fixture
def iskra_tcp() -> Iterator[IskraServer]:
    srv = IskraServer(ec.generate_private_key(ec.SECP256R1()))
    yield srv
    srv.stop()


def test_meter_that_stops_answering_mid_session_still_gets_a_cdr_with_the_reason(
    make_daemon, backend, tmp_path, iskra_tcp
) -> None:
    meter = {
        "driver": "iskra",
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": iskra_tcp.port,
        "timeout_s": 0.3,
        "max_failures": 2,
        "poll_interval_s": 0.2,
    }
    d = make_daemon(evse=_signing_evse(tmp_path, **meter))
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    t0 = time.monotonic()
    iskra_tcp.stop()  # the meter goes silent
    e = d.wait_state("faulted", timeout=15)
    assert e["fault"] == "meter_failed"
    cdr = wait_msg(backend, "cdr")
    assert cdr["stop_reason"] == "fault"
    smv = cdr["signed_meter_values"]
    assert "stop" not in smv and "stopped answering" in smv["error"]
    assert smv["public_key"].startswith("3059301306072A8648CE3D0201")
    assert time.monotonic() - t0 < 15
