"""The OCPP adapter's parts without a network: configuration, mappings, the durable
transaction-id map (a repeated event never repeats the OCPP message), configuration keys."""

from __future__ import annotations

import asyncio
import base64
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.messages import EvseState, EvseStatus, SessionEvent, SessionEventKind, StopReason
from agent.ocpp_config import OcppSettings
from agent.ocpp_link import backoff_delay, summarise
from agent.ocpp_map import connector_status_16, id_tag, list_entry, stop_reason_16
from agent.ocpp_signed import signed_meter_value_201, signing_method
from agent.ocpp_state import OcppState, StationView
from agent.ocpp_tx import Transactions16
from agent.store import DB_NAME, Store

BASE = """\
[station]
id = "ST-0001"
operator_id = "DE*ICE"
location = "Porschestr. 1, Stuttgart"

[[evse]]
id = "DE*ICE*E000001*1"
"""
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SID = "a1b2c3d4-0000-0000-0000-000000000001"


def load(tmp_path: Path, extra: str) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(BASE + extra)
    return load_config(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[backend]\nprotocol = "ocpp1.6"\n', "needs an [ocpp] section"),
        ('[backend]\nprotocol = "ocpp9"\n', "backend.protocol"),
        ('[ocpp]\nurl = "http://x/ocpp"\nsecurity_profile = 0\n', "ws:// or wss://"),
        ('[ocpp]\nurl = "ws://x/ocpp"\nsecurity_profile = 1\n', "needs password_file"),
        ('[ocpp]\nurl = "ws://x/ocpp"\nsecurity_profile = 2\n', "needs a wss:// url"),
        ('[ocpp]\nurl = "wss://x/ocpp"\nsecurity_profile = 1\n', "security_profile 2 or 3"),
        ('[ocpp]\nurl = "wss://x/ocpp"\nsecurity_profile = 3\n', "needs cert_file and key_file"),
        ('[ocpp]\nurl = "ws://x/ocpp"\nsecurity_profile = 4\n', "less than or equal to 3"),
        ('[ocpp]\nurl = "ws://x/ocpp"\nsecurity_profile = 0\nca_file = "/ca"\n', "ca_file"),
        ('[ocpp]\nurl = "ws://x/ocpp?a=1"\nsecurity_profile = 0\n', "no query"),
        ('[ocpp]\nurl = "ws://x/ocpp"\nsecurity_profile = 0\nkey = 1\n', "unknown key"),
    ],
)
def test_config_errors_name_the_key_and_the_problem(tmp_path, extra, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    assert message in str(info.value)


def test_config_ocpp_profile_1(tmp_path):
    cfg = load(
        tmp_path,
        '[backend]\nprotocol = "ocpp1.6"\n[ocpp]\nurl = "ws://csms:9000/ocpp"\n'
        'password_file = "/etc/station-agent/ocpp.key"\n',
    )
    assert cfg.backend.protocol == "ocpp1.6"
    assert cfg.ocpp.security_profile == 1
    assert load(tmp_path, "").backend.protocol == "mqtt"  # the default stays MQTT


def evse(state: EvseState, *, relay: bool = False, fault: str | None = None) -> EvseStatus:
    return EvseStatus(
        evse_id="E1", state=state, session_id=None, plugged=True, relay_closed=relay, fault=fault
    )


def test_status_and_stop_reason_mapping():
    assert connector_status_16(evse(EvseState.AVAILABLE)) == ("Available", "NoError", None)
    assert connector_status_16(evse(EvseState.AUTHORIZING))[0] == "Preparing"
    assert connector_status_16(evse(EvseState.CHARGING, relay=True))[0] == "Charging"
    assert connector_status_16(evse(EvseState.CHARGING))[0] == "SuspendedEVSE"
    assert connector_status_16(evse(EvseState.FINISHING))[0] == "Finishing"
    faulted = connector_status_16(evse(EvseState.FAULTED, fault="relay welded"))
    assert faulted == ("Faulted", "PowerSwitchFailure", "relay welded")
    assert connector_status_16(evse(EvseState.FAULTED, fault="meter silent"))[1] == (
        "PowerMeterFailure"
    )
    assert connector_status_16(evse(EvseState.FAULTED, fault="x" * 80))[1:] == (
        "InternalError",
        "x" * 50,
    )
    expected = {
        StopReason.LOCAL: "Local",
        StopReason.REMOTE: "Remote",
        StopReason.EV_DISCONNECTED: "EVDisconnected",
        StopReason.POWER_LOSS: "PowerLoss",
        StopReason.DEAUTHORIZED: "DeAuthorized",
        StopReason.SOFT_RESET: "SoftReset",
        StopReason.HARD_RESET: "HardReset",
        StopReason.FAULT: "Other",
        StopReason.OTHER: "Other",
    }
    assert {r: stop_reason_16(r.value) for r in StopReason} == expected
    assert stop_reason_16("connection_timeout") == "Other"
    assert stop_reason_16(None) == "Other"


def test_id_tags_and_local_list_entries():
    assert id_tag({"type": "rfid", "uid": "04a224b2c13c80"}) == "04A224B2C13C80"
    assert id_tag({"type": "qr", "contract_id": "DE-8AA-CA2B3C4D5-L"}) == "DE-8AA-CA2B3C4D5-L"
    assert id_tag({"type": "qr", "contract_id": "DE-8AA-CA2B3C4D5E6F7-XX"}) == (
        "DE8AACA2B3C4D5E6F7XX"
    )
    card = list_entry("04a224b2c13c80", "Accepted", None, None)
    assert card.token_key == "rfid:04A224B2C13C80" and card.status == "accepted"
    contract = list_entry("DE8AACA2B3C4D5L", "Blocked", None, None)
    assert contract.token_key == "contract:DE8AACA2B3C4D5L" and contract.status == "blocked"
    assert list_entry("04A224B2C13C80", "ConcurrentTx", None, None).status == "rejected"


def test_backoff_is_capped_jittered_and_frames_are_summarised():
    rnd = random.Random(1)
    delays = [backoff_delay(n, 1.0, 60.0, rnd) for n in range(1, 12)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    assert len({round(d, 6) for d in delays[7:]}) > 1  # jittered, not in lockstep
    frame = '[2,"id-1","Authorize",{"idTag":"04A224B2C13C80"}]'
    assert summarise(frame) == '[2, "id-1", "Authorize"]'
    assert "04A2" not in str(summarise('[3,"id-1",{"idTagInfo":{"status":"Accepted"}}]'))


@dataclass
class FakeCp:
    """Answers StartTransaction with ever new ids; records every call."""

    calls: list[Any] = field(default_factory=list)

    async def call(self, payload: Any, suppress: bool = True) -> Any:
        self.calls.append(payload)
        if type(payload).__name__ == "StartTransaction":
            return type("R", (), {"transaction_id": 100 + len(self.calls), "id_tag_info": {}})
        return None


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    store = Store(tmp_path, max_kb=None)
    store.open(NOW)
    state = OcppState(tmp_path)
    state.open()
    view = StationView(tmp_path / DB_NAME)
    yield store, state, view
    view.close()
    state.close()
    store.close()


def event(kind: SessionEventKind, reason: str | None = None) -> SessionEvent:
    return SessionEvent(session_id=SID, evse_id="E1", event=kind, ts=NOW, reason=reason)


def test_a_repeated_event_never_repeats_the_ocpp_message(stores):
    store, state, view = stores
    store.insert_session(
        session_id=SID,
        evse_id="E1",
        token={"type": "rfid", "uid": "04A224B2C13C80"},
        contract_id=None,
        start=NOW,
        meter_kwh=12.3456,
    )
    clock = type("C", (), {"now": staticmethod(lambda: NOW)})()
    tx = Transactions16(state, view, clock, lambda evse_id: 1, lambda sid, status: None)  # type: ignore[arg-type]
    cp = FakeCp()
    for _ in range(2):  # the acknowledgement was lost: the core sends the event again
        asyncio.run(tx.message(cp, event(SessionEventKind.STARTED)))
    assert [type(c).__name__ for c in cp.calls] == ["StartTransaction"]
    assert cp.calls[0].meter_start == 12346
    txid = state.tx(SID).transaction_id
    store.end_session(SID, end=NOW, reason="local", meter_stop_kwh=20.0)
    for _ in range(2):
        asyncio.run(tx.message(cp, event(SessionEventKind.STOPPED, "local")))
    stops = [c for c in cp.calls if type(c).__name__ == "StopTransaction"]
    assert len(stops) == 1
    assert stops[0].transaction_id == int(txid) and stops[0].meter_stop == 20000
    assert stops[0].reason == "Local" and stops[0].id_tag == "04A224B2C13C80"
    # a reopened state file still knows (a restart)
    state.close()
    state.open()
    assert state.tx(SID).stopped


def test_a_stop_without_a_start_sends_the_start_first(stores):
    """A session that charged but whose ``started`` event never came (kill -9 between the
    commit and the event): its stop opens the OCPP transaction first, then closes it."""
    store, state, view = stores
    store.insert_session(
        session_id=SID,
        evse_id="E1",
        token={"type": "remote", "contract_id": "DE8ACC12345678A"},
        contract_id="DE8ACC12345678A",
        start=NOW,
        meter_kwh=1.0,
    )
    store.end_session(SID, end=NOW, reason="remote", meter_stop_kwh=2.5)
    clock = type("C", (), {"now": staticmethod(lambda: NOW)})()
    tx = Transactions16(state, view, clock, lambda evse_id: 1, lambda sid, status: None)  # type: ignore[arg-type]
    cp = FakeCp()
    asyncio.run(tx.message(cp, event(SessionEventKind.STOPPED, "remote")))
    start, stop = cp.calls
    assert type(start).__name__ == "StartTransaction" and start.id_tag == "DE8ACC12345678A"
    assert start.meter_start == 1000 and stop.meter_stop == 2500
    assert stop.transaction_id == int(state.tx(SID).transaction_id) and stop.reason == "Remote"


SIG = '{"SA":"ECDSA-secp256r1-SHA256","SD":"3045022100AB"}'
RECORD = 'OCMF|{"FV":"1.0","PG":"T1","RD":[{"TX":"B","RV":12.345}]}|' + SIG


def test_signed_meter_value_201_fits_the_schema_or_is_left_out(caplog):
    got = signed_meter_value_201(RECORD, "3059301306072A8648CE3D0201")
    assert got is not None
    assert base64.b64decode(got["signedMeterData"]).decode() == RECORD
    assert base64.b64decode(got["publicKey"]).hex().upper() == "3059301306072A8648CE3D0201"
    assert got["encodingMethod"] == "OCMF" and got["signingMethod"] == "ECDSA-secp256r1-SHA256"
    assert signing_method('OCMF|{}|{"SD":"AB"}') == "ECDSA-secp256r1-SHA256"  # OCMF's default
    assert signing_method('OCMF|{}|{"SA":"ECDSA-brainpool256r1-SHA256"}').startswith("ECDSA-b")
    assert signed_meter_value_201(RECORD, "not hex")["publicKey"] == ""  # type: ignore[index]
    fits = "OCMF|" + "x" * (1875 - len("OCMF||") - len(SIG)) + "|" + SIG  # 1875 -> 2500 base64
    assert len(signed_meter_value_201(fits, None)["signedMeterData"]) == 2500  # type: ignore[index]
    assert signed_meter_value_201(fits.replace("x", "xx", 1), None) is None
    assert "does not fit OCPP 2.0.1's signedMeterData" in caplog.text


def _signed_row(store: Store, start: str | None, stop: str | None, error: str | None) -> None:
    with store.unit():
        store.db.execute(
            "INSERT INTO signed_values (session_id, format, start_record, stop_record,"
            " public_key, error) VALUES (?, 'OCMF', ?, ?, 'AB', ?)",
            (SID, start, stop, error),
        )


@pytest.mark.parametrize(
    ("start", "stop", "error", "contexts"),
    [
        ("OCMF|{}|B", "OCMF|{}|E", None, ["Transaction.Begin", "Transaction.End"]),
        (None, "OCMF|{}|BE", None, ["Transaction.End"]),  # one record with both (Iskra)
        ("OCMF|{}|B", None, "the meter did not sign the end", ["Transaction.Begin"]),
        (None, None, "the meter did not sign the start", None),
    ],
)
def test_stop_transaction_carries_the_stored_records(stores, start, stop, error, contexts):
    store, state, view = stores
    store.insert_session(
        session_id=SID,
        evse_id="E1",
        token={"type": "rfid", "uid": "04A224B2C13C80"},
        contract_id=None,
        start=NOW,
        meter_kwh=1.0,
    )
    _signed_row(store, start, stop, error)
    clock = type("C", (), {"now": staticmethod(lambda: NOW)})()
    tx = Transactions16(state, view, clock, lambda evse_id: 1, lambda sid, status: None)  # type: ignore[arg-type]
    cp = FakeCp()
    asyncio.run(tx.message(cp, event(SessionEventKind.STARTED)))
    store.end_session(SID, end=NOW, reason="local", meter_stop_kwh=2.0)
    asyncio.run(tx.message(cp, event(SessionEventKind.STOPPED, "local")))
    names = [type(c).__name__ for c in cp.calls]
    begin = ["MeterValues"] if start else []
    assert names == ["StartTransaction", *begin, "StopTransaction"]
    data = cp.calls[-1].transaction_data
    if contexts is None:
        assert data is None
        return
    samples = [mv["sampledValue"][0] for mv in data]
    assert [s["context"] for s in samples] == contexts
    assert {s["format"] for s in samples} == {"SignedData"}
    assert [s["value"] for s in samples] == [r for r in (start, stop) if r]


def test_configuration_keys(tmp_path, stores):
    _, state, _ = stores
    cfg = load(
        tmp_path,
        '[backend]\nprotocol = "ocpp1.6"\n[ocpp]\nurl = "ws://csms/ocpp"\nsecurity_profile = 0\n'
        '[auth]\noffline_policy = "accept_all"\n',
    )
    settings = OcppSettings(cfg, state)
    known, unknown = settings.get(["AllowOfflineTxForUnknownId", "LocalAuthorizeOffline", "X"])
    assert [k["value"] for k in known] == ["true", "true"] and unknown == ["X"]
    settings.heartbeat_from_csms(42)
    assert settings.heartbeat_interval() == 42
    assert settings.change("HeartbeatInterval", "0") == "Rejected"
    assert settings.change("HeartbeatInterval", "abc") == "Rejected"
    assert settings.change("HeartbeatInterval", "30") == "Accepted"
    assert OcppSettings(cfg, state).heartbeat_interval() == 30  # kept across restarts


def test_a_refused_start_is_kept_until_its_stop_is_answered(tmp_path):
    """The refusal is committed with the transaction id: a restart between the commit and the
    stop hands the deauthorisation to the station again; a file from before the column opens."""
    import sqlite3

    old = sqlite3.connect(tmp_path / "ocpp.sqlite3")
    old.execute(
        "CREATE TABLE tx (session_id TEXT PRIMARY KEY, transaction_id TEXT NOT NULL,"
        " connector INTEGER NOT NULL, stopped INTEGER NOT NULL DEFAULT 0,"
        " started_at TEXT NOT NULL, seq INTEGER NOT NULL DEFAULT 1)"
    )
    old.close()
    state = OcppState(tmp_path)
    state.open()
    state.started("s-ok", "1", 1, NOW)
    state.started("s-bad", "2", 1, NOW, "Invalid")
    state.close()
    state.open()  # after a restart
    assert state.refused_open() == [("s-bad", "Invalid")]
    state.stopped("s-bad")
    assert state.refused_open() == []
    state.close()


def _raw(periods: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    sched = {"charging_rate_unit": kw.pop("unit", "A"), "charging_schedule_period": periods}
    sched.update(kw.pop("schedule", {}))
    return {
        "charging_profile_id": 1,
        "stack_level": 0,
        "charging_profile_purpose": kw.pop("purpose", "TxDefaultProfile"),
        "charging_profile_kind": kw.pop("kind", "Absolute"),
        "charging_schedule": sched,
        **kw,
    }


def test_the_period_in_force_and_its_end():
    from datetime import timedelta

    from agent.ocpp_profiles import Profile, in_force, parse

    t0 = NOW
    sec = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    periods = [
        {"start_period": 0, "limit": 11040},
        {"start_period": 60, "limit": 4600, "number_phases": 1},
    ]
    p = parse(
        _raw(periods, unit="W", schedule={"start_schedule": t0.isoformat(), "duration": 100}), 1
    )
    assert isinstance(p, Profile)
    assert in_force(p, sec(-1), None, 3) is None  # not started yet
    assert in_force(p, sec(10), None, 3) == (16.0, sec(60))  # 11040 W / (230 V x 3)
    assert in_force(p, sec(70), None, 3) == (20.0, sec(100))  # 4600 W / 230 V, 1 phase; duration
    assert in_force(p, sec(100), None, 3) is None
    rel = parse(
        _raw([{"start_period": 0, "limit": 8}], kind="Relative", valid_to=sec(30).isoformat()), 1
    )
    assert isinstance(rel, Profile)
    assert in_force(rel, sec(5), None, 3) is None  # Relative without a transaction start
    assert in_force(rel, sec(5), t0, 3) == (8.0, sec(30))  # validTo ends it
    assert in_force(rel, sec(30), t0, 3) is None
    refused = [
        parse(_raw(periods, kind="Recurring"), 1),
        parse(_raw([{"start_period": 5, "limit": 8}]), 1),
        parse(_raw(periods, unit="VA"), 1),
        parse(_raw(periods, purpose="ChargePointMaxProfile"), 1),
        parse(_raw(periods, purpose="TxProfile"), 0),
        parse(_raw(periods, stack_level=11), 1),
        parse(_raw([{"start_period": i, "limit": 8} for i in range(25)]), 1),
    ]
    assert all(isinstance(r, str) for r in refused), refused


def test_every_stop_reason_has_a_201_ended_reason():
    """A reset's stop goes out as ImmediateReset (triggerReason ResetCommand) in 2.0.1."""
    from agent.ocpp201 import STOP_201

    assert {r.value for r in StopReason} <= set(STOP_201)
    assert STOP_201["soft_reset"] == STOP_201["hard_reset"] == ("ResetCommand", "ImmediateReset")
