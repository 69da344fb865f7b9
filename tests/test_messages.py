"""MQTT contract v1 (agent.messages): exported JSON Schemas, strict decoding, canonical dumps."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from agent import messages as m
from agent.errors import ProtocolError

SCHEMA_DIR = Path(m.__file__).resolve().parent / "schemas"
TS = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
TS_CET = datetime(2026, 3, 1, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$")
SID = "5f0c9a52-8d4e-4b7a-9c1e-2a3b4c5d6e7f"
EVSE = "DE*ICE*E000001*1"
UID = "04A224B2C13C80"


# ------------------------------------------------------------------------------ schemas
def committed(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    return data


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = committed(name)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("name", list(m.SCHEMAS))
def test_committed_schema_matches_models(name: str) -> None:
    path = SCHEMA_DIR / f"{name}.json"
    assert path.is_file(), f"run: station-agent schemas agent/schemas  ({path} is missing)"
    assert committed(name) == m.json_schema(name), (
        f"{path} is out of date: regenerate with `station-agent schemas agent/schemas`"
    )
    # written the way export_schemas writes it (stable diffs)
    assert path.read_text() == json.dumps(m.json_schema(name), indent=2, sort_keys=True) + "\n"


def test_no_stray_schema_files() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.json")} == set(m.SCHEMAS)


@pytest.mark.parametrize("name", list(m.SCHEMAS))
def test_schema_ids(name: str) -> None:
    assert m.json_schema(name)["$id"] == f"station-agent/v1/{name}.json"


def test_export_schemas_writes_every_schema(tmp_path: Path) -> None:
    paths = m.export_schemas(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(f"{n}.json" for n in m.SCHEMAS)
    for p in paths:
        assert json.loads(p.read_text()) == committed(p.stem)


# ------------------------------------------------------------------------------ outgoing dumps
def cdr(**over: Any) -> m.Cdr:
    fields: dict[str, Any] = {
        "session_id": SID,
        "evse_id": EVSE,
        "operator_id": "DE*ICE",
        "location": "Porschestr. 1, Stuttgart",
        "contract_id": None,
        "token": m.RfidToken(uid=UID),
        "session_start": TS,
        "session_end": TS + timedelta(hours=1),
        "charging_start": TS + timedelta(seconds=3),
        "charging_end": TS + timedelta(hours=1),
        "meter_start_kwh": 1520.25,
        "meter_stop_kwh": 1531.2504999,
        "energy_kwh": 11.0004999,
        "stop_reason": m.StopReason.EV_DISCONNECTED,
    }
    fields.update(over)
    return m.Cdr(**fields)


def status() -> m.StatusMessage:
    return m.StatusMessage(
        station_id="ST-0001",
        ts=TS,
        version="0.1.0",
        evses=[
            m.EvseStatus(
                evse_id=EVSE,
                state=m.EvseState.CHARGING,
                session_id=SID,
                plugged=True,
                relay_closed=True,
                fault=None,
            ),
            m.EvseStatus(
                evse_id="DE*ICE*E000001*2",
                state=m.EvseState.FAULTED,
                session_id=None,
                plugged=False,
                relay_closed=False,
                fault="relay welded",
            ),
        ],
        outbox=m.OutboxStatus(pending=2, oldest=TS_CET),
    )


OUTGOING: list[tuple[str, BaseModel]] = [
    ("status", status()),
    ("status-offline", m.OfflineStatus(station_id="ST-0001")),
    (
        "auth-req",
        m.AuthRequest(
            request_id=str(uuid.uuid4()),
            evse_id=EVSE,
            token=m.RfidToken(uid=UID, card_type="mifare_classic"),
            ts=TS,
        ),
    ),
    (
        "auth-req",
        m.AuthRequest(
            request_id=str(uuid.uuid4()),
            evse_id=None,
            token=m.QrToken(contract_id="DE8ACC12345678", pin="1234"),
            ts=TS,
        ),
    ),
    (
        "session",
        m.SessionEvent(session_id=SID, evse_id=EVSE, event=m.SessionEventKind.STARTED, ts=TS),
    ),
    (
        "session",
        m.SessionEvent(
            session_id=SID, evse_id=EVSE, event=m.SessionEventKind.REJECTED, ts=TS, reason="blocked"
        ),
    ),
    ("cdr", cdr()),
    (
        "cdr",
        cdr(
            token=m.RemoteToken(contract_id="DE8ACC12345678"),
            contract_id="DE8ACC12345678",
            charging_start=None,
            charging_end=None,
            stop_reason=m.StopReason.REMOTE,
        ),
    ),
    ("cmd-res", m.CommandResponse(command_id="c-1", status=m.CommandStatus.ACCEPTED)),
    (
        "cmd-res",
        m.CommandResponse(command_id="c-2", status=m.CommandStatus.REJECTED, reason="EVSE is busy"),
    ),
]


@pytest.mark.parametrize(
    ("name", "msg"), OUTGOING, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OUTGOING)]
)
def test_dumps_validate_against_their_schema(name: str, msg: BaseModel) -> None:
    data = json.loads(m.dump(msg).decode("utf-8"))
    assert data["v"] == 1
    validator(name).validate(data)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        # each: a valid dump with only values of the wrong type / outside the enum
        ("status", {**json.loads(m.dump(status())), "online": "yes", "ts": 5, "evses": "none"}),
        ("session", {**json.loads(m.dump(OUTGOING[4][1])), "event": "exploded", "ts": 5}),
        ("cdr", {**json.loads(m.dump(cdr())), "stop_reason": "bored", "token": 17}),
        ("cmd-res", {**json.loads(m.dump(OUTGOING[-1][1])), "status": "maybe"}),
        (
            "auth-req",
            {k: v for k, v in json.loads(m.dump(OUTGOING[2][1])).items() if k != "v"},
        ),  # no "v"
    ],
    ids=["status", "session", "cdr", "cmd-res", "auth-req-no-v"],
)
def test_outgoing_schemas_constrain_fields(name: str, bad: dict[str, Any]) -> None:
    assert OUTGOING[4][0] == "session" and OUTGOING[2][0] == "auth-req"
    assert OUTGOING[-1][0] == "cmd-res"
    assert not validator(name).is_valid(bad)


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    for _, msg in OUTGOING:
        data = json.loads(m.dump(msg))
        for key in ("ts", "session_start", "session_end", "charging_start", "charging_end"):
            if data.get(key) is not None:
                assert RFC3339_MS_UTC.fullmatch(data[key]), (key, data[key])
    ev = json.loads(
        m.dump(
            m.SessionEvent(
                session_id=SID, evse_id=EVSE, event=m.SessionEventKind.STOPPED, ts=TS_CET
            )
        )
    )
    assert ev["ts"] == "2026-03-01T12:30:15.123+00:00"  # converted to UTC, truncated to ms
    c = json.loads(m.dump(cdr(session_start=TS_CET)))
    assert c["session_start"] == "2026-03-01T12:30:15.123+00:00"
    assert c["session_end"] == "2026-03-01T13:30:15.123+00:00"


def test_cdr_energy_has_three_decimals() -> None:
    data = json.loads(m.dump(cdr()))
    assert data["meter_start_kwh"] == 1520.25
    assert data["meter_stop_kwh"] == 1531.25
    assert data["energy_kwh"] == 11.0
    data = json.loads(
        m.dump(cdr(meter_start_kwh=0.0004, meter_stop_kwh=12.3456789, energy_kwh=12.3456785))
    )
    assert (data["meter_start_kwh"], data["meter_stop_kwh"], data["energy_kwh"]) == (
        0.0,
        12.346,
        12.346,
    )
    raw = m.dump(cdr(energy_kwh=1 / 3)).decode()
    assert '"energy_kwh":0.333' in raw


def test_cdr_fields_and_nulls() -> None:
    data = json.loads(m.dump(cdr(charging_start=None, charging_end=None)))
    assert set(data) >= {
        "v",
        "session_id",
        "evse_id",
        "operator_id",
        "location",
        "contract_id",
        "token",
        "session_start",
        "session_end",
        "charging_start",
        "charging_end",
        "meter_start_kwh",
        "meter_stop_kwh",
        "energy_kwh",
        "stop_reason",
    }
    # required-but-null fields stay, as null
    assert data["contract_id"] is None and data["charging_start"] is None
    assert data["token"] == {"type": "rfid", "uid": UID}  # card_type None left out
    assert data["stop_reason"] == "ev_disconnected"


def test_dump_omits_null_reason() -> None:
    ok = json.loads(m.dump(m.CommandResponse(command_id="c-1", status=m.CommandStatus.ACCEPTED)))
    assert ok == {"v": 1, "command_id": "c-1", "status": "accepted"}
    rej = json.loads(
        m.dump(
            m.CommandResponse(
                command_id="c-1", status=m.CommandStatus.REJECTED, reason="unknown session_id"
            )
        )
    )
    assert rej == {
        "v": 1,
        "command_id": "c-1",
        "status": "rejected",
        "reason": "unknown session_id",
    }
    ev = json.loads(
        m.dump(
            m.SessionEvent(session_id=SID, evse_id=EVSE, event=m.SessionEventKind.STARTED, ts=TS)
        )
    )
    assert "reason" not in ev
    # only the optional fields are pruned: a null evse_id in auth-req stays
    req = json.loads(
        m.dump(m.AuthRequest(request_id="r", evse_id=None, token=m.RfidToken(uid=UID), ts=TS))
    )
    assert "evse_id" in req and req["evse_id"] is None


def test_dump_is_compact_utf8() -> None:
    raw = m.dump(cdr(location="Königstraße 1"))
    assert "Königstraße".encode() in raw
    assert b", " not in raw and b": " not in raw


def test_status_and_offline_shape() -> None:
    data = json.loads(m.dump(status()))
    assert data["online"] is True
    assert [e["state"] for e in data["evses"]] == ["charging", "faulted"]
    assert set(data["evses"][0]) == {
        "evse_id",
        "state",
        "session_id",
        "plugged",
        "relay_closed",
        "fault",
    }
    assert data["outbox"] == {"pending": 2, "oldest": "2026-03-01T12:30:15.123+00:00"}
    assert json.loads(m.dump(m.OfflineStatus(station_id="ST-0001"))) == {
        "v": 1,
        "station_id": "ST-0001",
        "online": False,
    }


def test_qr_pin_never_recorded() -> None:
    qr = m.QrToken(contract_id="DE8ACC12345678", pin="0815")
    rec = m.token_for_record(qr)
    assert isinstance(rec, m.QrToken)
    assert rec.pin is None and rec.contract_id == "DE8ACC12345678"
    assert "pin" not in json.loads(m.dump(cdr(token=rec)))["token"]
    assert "0815" not in m.dump(cdr(token=rec)).decode()
    assert "0815" not in repr(qr)
    # other tokens are returned as they are
    rfid = m.RfidToken(uid=UID)
    assert m.token_for_record(rfid) is rfid
    remote = m.RemoteToken(contract_id="DE8ACC12345678")
    assert m.token_for_record(remote) is remote
    # the auth request itself does carry the PIN (the backend checks it)
    req = json.loads(m.dump(m.AuthRequest(request_id="r", evse_id=None, token=qr, ts=TS)))
    assert req["token"] == {"type": "qr", "contract_id": "DE8ACC12345678", "pin": "0815"}


def test_token_key() -> None:
    assert m.token_key(m.RfidToken(uid=UID)) == f"rfid:{UID}"
    assert m.token_key(m.QrToken(contract_id="X1", pin="9")) == "contract:X1"
    assert m.token_key(m.RemoteToken(contract_id="X1")) == "contract:X1"


# ------------------------------------------------------------------------------ incoming
def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


AUTH_RES = {
    "v": 1,
    "request_id": str(uuid.uuid4()),
    "status": "accepted",
    "contract_id": "DE8ACC12345678",
    "expires_at": "2026-03-02T00:00:00.000+00:00",
}
CDR_ACK = {"v": 1, "session_id": SID}
CMD_START = {
    "v": 1,
    "command_id": "c-1",
    "command": "remote_start",
    "evse_id": EVSE,
    "contract_id": "DE8ACC12345678",
    "session_id": SID,
}
CMD_STOP = {"v": 1, "command_id": "c-2", "command": "remote_stop", "session_id": SID}
CMD_AVAIL = {
    "v": 1,
    "command_id": "c-3",
    "command": "set_availability",
    "evse_id": EVSE,
    "available": False,
}

PARSERS = {
    "auth-res": m.parse_auth_response,
    "cdr-ack": m.parse_cdr_ack,
    "cmd-req": m.parse_command,
}


def decode(name: str, payload: bytes) -> Any:
    """The receive path (as in the controller): bytes -> JSON object -> version -> message."""
    data = m.load_json_object(payload)
    m.check_version(data)
    return PARSERS[name](data)


def rejected(name: str, payload: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(name, payload)
    msg = str(info.value)
    assert msg
    return msg


def test_valid_incoming_messages() -> None:
    res = decode("auth-res", raw(AUTH_RES))
    assert res.status is m.AuthStatus.ACCEPTED and res.contract_id == "DE8ACC12345678"
    assert res.expires_at == datetime(2026, 3, 2, tzinfo=UTC)
    minimal = decode("auth-res", raw({"v": 1, "request_id": "r-1", "status": "blocked"}))
    assert minimal.contract_id is None and minimal.expires_at is None
    assert decode("cdr-ack", raw(CDR_ACK)).session_id == SID
    start = decode("cmd-req", raw(CMD_START))
    assert isinstance(start, m.RemoteStart) and start.session_id == SID
    no_sid = decode("cmd-req", raw({k: v for k, v in CMD_START.items() if k != "session_id"}))
    assert isinstance(no_sid, m.RemoteStart) and no_sid.session_id is None
    stop = decode("cmd-req", raw(CMD_STOP))
    assert isinstance(stop, m.RemoteStop) and stop.session_id == SID
    avail = decode("cmd-req", raw(CMD_AVAIL))
    assert isinstance(avail, m.SetAvailability) and avail.available is False


@pytest.mark.parametrize(
    ("name", "obj"),
    [
        ("auth-res", AUTH_RES),
        ("auth-res", {"v": 1, "request_id": "r", "status": "expired"}),
        ("cdr-ack", CDR_ACK),
        ("cmd-req", CMD_START),
        ("cmd-req", CMD_STOP),
        ("cmd-req", CMD_AVAIL),
    ],
)
def test_valid_incoming_messages_match_schema(name: str, obj: dict[str, Any]) -> None:
    validator(name).validate(obj)


@pytest.mark.parametrize(
    ("name", "obj"),
    [
        ("auth-res", {**AUTH_RES, "v": 2}),
        ("auth-res", {**AUTH_RES, "status": "maybe"}),
        ("auth-res", {**AUTH_RES, "extra": 1}),
        ("cdr-ack", {"v": 1, "session_id": "not-a-uuid"}),
        ("cdr-ack", {"session_id": SID}),
        ("cmd-req", {**CMD_AVAIL, "available": "false"}),
        ("cmd-req", {**CMD_STOP, "command": "reboot"}),
        ("cmd-req", {k: v for k, v in CMD_START.items() if k != "contract_id"}),
    ],
)
def test_invalid_incoming_messages_fail_schema_and_parser(name: str, obj: dict[str, Any]) -> None:
    assert not validator(name).is_valid(obj)
    rejected(name, raw(obj))


def test_not_json() -> None:
    msg = rejected("cmd-req", b'{"v": 1, "command_id": ')
    assert "not valid JSON" in msg
    assert "not valid JSON" in rejected("cdr-ack", b"hello")
    assert "not valid JSON" in rejected("cdr-ack", b"")


def test_not_utf8() -> None:
    payload = b'{"v": 1, "session_id": "\xff\xfe"}'
    assert "not UTF-8" in rejected("cdr-ack", payload)
    assert "not UTF-8" in rejected("cdr-ack", '{"v":1}'.encode("utf-16"))


def test_too_large() -> None:
    filler = "x" * (m.MAX_PAYLOAD_BYTES)
    msg = rejected("cmd-req", raw({**CMD_STOP, "pad": filler}))
    assert "exceeds" in msg and str(m.MAX_PAYLOAD_BYTES) in msg
    # the limit is on bytes: exactly 64 KiB passes the size check
    base = raw({"v": 1, "p": ""})
    exact = raw({"v": 1, "p": "x" * (m.MAX_PAYLOAD_BYTES - len(base))})
    assert len(exact) == m.MAX_PAYLOAD_BYTES == 65536
    assert m.load_json_object(exact)["v"] == 1
    with pytest.raises(ProtocolError, match="exceeds"):
        m.load_json_object(exact[:-2] + b'x"}')
    # multi-byte characters count as bytes, not characters
    wide = raw({"v": 1, "p": "ä" * 40000}).replace(b"\\u00e4", "ä".encode())
    assert len(wide.decode()) < m.MAX_PAYLOAD_BYTES < len(wide)
    with pytest.raises(ProtocolError, match="exceeds"):
        m.load_json_object(wide)


@pytest.mark.parametrize("payload", [b"[]", b'[{"v": 1}]', b"1", b'"v"', b"null", b"true"])
def test_not_an_object(payload: bytes) -> None:
    assert "must be a JSON object" in rejected("cmd-req", payload)


@pytest.mark.parametrize(
    ("v", "shown"),
    [(2, "v=2"), (0, "v=0"), (True, "v=True"), ("1", "v='1'"), (None, "v=None"), ([1], "v=[1]")],
)
def test_wrong_version(v: Any, shown: str) -> None:
    for name, obj in (("cmd-req", CMD_STOP), ("auth-res", AUTH_RES), ("cdr-ack", CDR_ACK)):
        msg = rejected(name, raw({**obj, "v": v}))
        assert "version" in msg and shown in msg


def test_missing_version() -> None:
    obj = {k: v for k, v in CMD_STOP.items() if k != "v"}
    assert rejected("cmd-req", raw(obj)) == "field 'v' is missing"
    # the JSON checks come first and do not look at v
    assert m.load_json_object(raw(obj)) == obj


def test_version_checked_by_models_too() -> None:
    """Called without check_version, the strict models still refuse a wrong v.

    (Not True: pydantic's Literal[1] lets JSON true through; check_version catches it.)
    """
    for bad in ("1", 2, 1.5, None):
        with pytest.raises(ProtocolError, match=r"^v: "):
            m.parse_cdr_ack({**CDR_ACK, "v": bad})


@pytest.mark.parametrize(
    ("name", "obj", "field"),
    [
        ("auth-res", {"v": 1, "status": "accepted"}, "request_id"),
        ("auth-res", {"v": 1, "request_id": "r"}, "status"),
        ("cdr-ack", {"v": 1}, "session_id"),
        ("cmd-req", {k: v for k, v in CMD_START.items() if k != "evse_id"}, "evse_id"),
        ("cmd-req", {k: v for k, v in CMD_START.items() if k != "command_id"}, "command_id"),
        ("cmd-req", {k: v for k, v in CMD_STOP.items() if k != "session_id"}, "session_id"),
        ("cmd-req", {k: v for k, v in CMD_AVAIL.items() if k != "available"}, "available"),
    ],
)
def test_missing_fields(name: str, obj: dict[str, Any], field: str) -> None:
    msg = rejected(name, raw(obj))
    assert field in msg and "required" in msg.lower(), msg


@pytest.mark.parametrize(
    ("name", "obj", "field"),
    [
        ("cmd-req", {**CMD_AVAIL, "available": "true"}, "available"),
        ("cmd-req", {**CMD_AVAIL, "available": 1}, "available"),
        ("cmd-req", {**CMD_AVAIL, "available": 0}, "available"),
        ("cmd-req", {**CMD_AVAIL, "available": None}, "available"),
        ("cmd-req", {**CMD_STOP, "command_id": 5}, "command_id"),
        ("cmd-req", {**CMD_STOP, "command_id": True}, "command_id"),
        ("cmd-req", {**CMD_START, "contract_id": ["DE8ACC12345678"]}, "contract_id"),
        ("cmd-req", {**CMD_START, "ts": 1700000000}, "ts"),
        ("cmd-req", {**CMD_STOP, "command_id": ""}, "command_id"),
        ("cmd-req", {**CMD_STOP, "command_id": "c" * 65}, "command_id"),
        ("auth-res", {**AUTH_RES, "request_id": 17}, "request_id"),
        ("auth-res", {**AUTH_RES, "status": True}, "status"),
        ("auth-res", {**AUTH_RES, "status": "ACCEPTED"}, "status"),
        ("auth-res", {**AUTH_RES, "expires_at": "tomorrow"}, "expires_at"),
        ("auth-res", {**AUTH_RES, "contract_id": 12345}, "contract_id"),
        ("cdr-ack", {**CDR_ACK, "session_id": 12345}, "session_id"),
    ],
)
def test_wrong_types_are_not_coerced(name: str, obj: dict[str, Any], field: str) -> None:
    assert field in rejected(name, raw(obj))


@pytest.mark.parametrize(
    ("name", "obj"),
    [
        ("auth-res", {**AUTH_RES, "colour": "red"}),
        ("cdr-ack", {**CDR_ACK, "evse_id": EVSE}),
        ("cmd-req", {**CMD_STOP, "evse_id": EVSE}),
        ("cmd-req", {**CMD_AVAIL, "force": True}),
    ],
)
def test_unknown_fields(name: str, obj: dict[str, Any]) -> None:
    msg = rejected(name, raw(obj))
    extra = (
        set(obj)
        - {
            "v",
            "command_id",
            "command",
            "request_id",
            "status",
            "contract_id",
            "expires_at",
            "session_id",
            "evse_id",
            "available",
        }
    ) or {"evse_id"}
    assert "unknown field" in msg
    assert any(key in msg for key in extra), msg


@pytest.mark.parametrize("command", ["reboot", "REMOTE_START", "", None, 5, ["remote_stop"]])
def test_unknown_command(command: Any) -> None:
    obj = {**CMD_STOP, "command": command}
    msg = rejected("cmd-req", raw(obj))
    assert msg.startswith("unknown command") and repr(command) in msg
    assert "remote_start" in msg  # lists the known ones


def test_missing_command() -> None:
    obj = {k: v for k, v in CMD_STOP.items() if k != "command"}
    assert "unknown command None" in rejected("cmd-req", raw(obj))


@pytest.mark.parametrize(
    "session_id",
    [
        "",
        "abc",
        SID.replace("-", ""),
        SID + "0",
        SID[:-1],
        SID + "\n",
        " " + SID,
        "5f0c9a52_8d4e_4b7a_9c1e_2a3b4c5d6e7f",
        "5f0c9a52-8d4e-4b7a-9c1e-2a3b4c5d6e7ö",
    ],
)
def test_bad_session_id_pattern(session_id: str) -> None:
    for name, obj in (("cdr-ack", CDR_ACK), ("cmd-req", CMD_STOP), ("cmd-req", CMD_START)):
        msg = rejected(name, raw({**obj, "session_id": session_id}))
        assert "session_id" in msg and "pattern" in msg


def test_session_id_upper_case_is_accepted() -> None:
    assert decode("cdr-ack", raw({**CDR_ACK, "session_id": SID.upper()})).session_id == (
        SID.upper()
    )


def test_rejection_keeps_command_id_readable() -> None:
    """A rejected command's id must still be readable, to answer with a rejected cmd/res."""
    data = m.load_json_object(raw({**CMD_AVAIL, "available": "yes"}))
    with pytest.raises(ProtocolError):
        m.parse_command(data)
    assert data["command_id"] == "c-3"


@pytest.mark.parametrize(
    ("name", "obj"),
    [
        ("auth-res", {**AUTH_RES, "expires_at": "2026-03-02T00:00:00"}),
        ("cmd-req", {**CMD_STOP, "ts": "2026-03-02T00:00:00.000"}),
    ],
    ids=["auth-res-expires_at", "cmd-req-ts"],
)
def test_timestamps_without_offset_are_rejected(name: str, obj: dict[str, Any]) -> None:
    rejected(name, raw(obj))


def test_cdr_clock_corrected_is_additive() -> None:
    """Absent unless the station corrected the CDR's times after a clock step; a v1 consumer
    that ignores unknown fields sees the same CDR as before."""
    plain = json.loads(m.dump(cdr()))
    assert "clock_corrected" not in plain
    flagged = json.loads(m.dump(cdr(clock_corrected=True)))
    assert flagged.pop("clock_corrected") is True
    assert flagged == plain
    schema = m.json_schema("cdr")
    assert "clock_corrected" in schema["properties"]
    assert "clock_corrected" not in schema.get("required", [])
