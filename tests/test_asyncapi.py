"""The AsyncAPI 3.0 document of MQTT contract v1 (``agent/asyncapi.py``): made from the models,
internally consistent, and every message of a real session (both directions, captured by an
MQTT client of its own on the real broker) valid against its channel's payload schema, with
format checking on (``ts`` is a ``date-time``); session ``reason`` is an enum."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt

from agent import asyncapi, messages
from agent.messages import AuthStatus, SessionReason, StopReason
from tests.helpers import UID_A, wait_msg, wait_until

ROOT = Path(__file__).resolve().parent.parent
EVSE1, EVSE2 = "DE*ICE*E000001*1", "DE*ICE*E000001*2"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_document_is_made_from_the_models_and_consistent() -> None:
    doc = asyncapi.document()
    assert doc["asyncapi"] == "3.0.0"
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == set(messages.SCHEMAS)  # every message of the contract, nothing else
    for msg in doc["components"]["messages"].values():
        schema = msg["payload"]["schema"]
        assert strip_descriptions(schema) == strip_descriptions(
            {
                **messages.json_schema(msg["name"]),
                "$schema": asyncapi.JSON_SCHEMA,
                "$id": f"urn:station-agent:mqtt:v1:{msg['name']}",
            }
        )
        jsonschema.Draft7Validator.check_schema(schema)


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def _properties(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for prop, sub in node.get("properties", {}).items():
            out.append((f"{path}.{prop}", sub))
        for key, value in node.items():
            out.extend(_properties(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_properties(value, f"{path}[{i}]"))
    return out


def test_every_field_is_described() -> None:
    doc = asyncapi.document()
    missing = [
        f"{msg['name']}{path}"
        for msg in doc["components"]["messages"].values()
        for path, sub in _properties(msg["payload"]["schema"])
        if sub.get("description", asyncapi.UNDOCUMENTED) == asyncapi.UNDOCUMENTED
    ]
    assert not missing, f"add these to agent.asyncapi.FIELD_DOCS: {missing}"
    for op in doc["operations"].values():
        channel = _resolve(doc, op["channel"]["$ref"])
        assert op["action"] in ("send", "receive")
        for ref in op["messages"]:
            assert _resolve(doc, ref["$ref"]) in channel["messages"].values()
        for ref in channel["messages"].values():
            assert _resolve(doc, ref["$ref"])["name"] in messages.SCHEMAS
    retained = {c["address"] for c in doc["channels"].values() if c["address"].endswith("status")}
    assert retained == {"{prefix}/{stationId}/status"}


def test_asyncapi_command_writes_the_document(tmp_path: Path) -> None:
    from agent.cli import main

    assert main(["asyncapi", str(tmp_path / "contract.json")]) == 0
    assert json.loads((tmp_path / "contract.json").read_text()) == asyncapi.document()


def test_session_reason_is_an_enum_with_every_reason_the_code_gives() -> None:
    schema = messages.json_schema("session")
    assert set(schema["$defs"]["SessionReason"]["enum"]) == set(SessionReason)
    given = {s.value for s in StopReason} | {s.value for s in AuthStatus} - {"accepted"}
    for path in ("agent/session.py", "agent/recovery.py"):
        text = (ROOT / path).read_text()
        given |= set(re.findall(r'reason="([a-z_]+)"\)', text))  # DropSession(..., reason=)
        given |= set(re.findall(r'SessionEventKind\.[A-Z]+, "([a-z_]+)"', text))
    assert {"auth_timeout", "connection_timeout", "unavailable", "restart"} <= given
    assert given <= set(SessionReason)


class Capture:
    """Every message on ``{prefix}/#``: what the station sends and what the backend sends."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.got: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="contract-spy")
        self.client.on_subscribe = lambda *_a: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.client.connect(host, int(port))
        self.client.subscribe(f"{prefix}/#", qos=1)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _validators() -> dict[str, list[jsonschema.Draft7Validator]]:
    """Topic suffix -> the validators of its channel's messages (format checking on)."""
    doc = asyncapi.document()
    out: dict[str, list[jsonschema.Draft7Validator]] = {}
    for channel in doc["channels"].values():
        suffix = channel["address"].removeprefix("{prefix}/{stationId}/")
        out[suffix] = [
            jsonschema.Draft7Validator(
                _resolve(doc, ref["$ref"])["payload"]["schema"],
                format_checker=jsonschema.FormatChecker(),
            )
            for ref in channel["messages"].values()
        ]
    return out


def test_the_traffic_of_real_sessions_matches_the_document(make_daemon, backend, broker, prefix):
    """A floating tap (auth/req without an EVSE, the session follows the car to EVSE 2), a
    remote start and stop, a retained status: every message valid against the document."""
    spy = Capture(broker.url, prefix)
    try:
        d = make_daemon(evses=2)
        d.ctl("sim.tap", uid=UID_A)  # two free EVSEs, no car: the tap floats
        assert wait_msg(backend, "auth/req")["evse_id"] is None
        d.ctl("sim.plug", evse_id=EVSE2)
        started = wait_msg(backend, "session", event="started")
        authorized = wait_msg(backend, "session", event="authorized")
        assert (authorized["evse_id"], started["evse_id"]) == (EVSE1, EVSE2)  # it followed the car
        assert authorized["session_id"] == started["session_id"]
        d.ctl("sim.unplug", evse_id=EVSE2)
        assert wait_msg(backend, "session", event="stopped")["reason"] == "ev_disconnected"
        wait_msg(backend, "cdr", evse_id=EVSE2)
        d.ctl("sim.plug", evse_id=EVSE1)
        d.wait_state("preparing")
        cid = backend.command(
            "ST-TEST", "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A"
        )
        sid = d.wait_state("charging")["session_id"]
        wait_until(lambda: any(t.endswith("/meter") for t, _ in spy.got), 10, "P/meter")
        live = wait_until(lambda: d.ctl("status")["meter"].get(EVSE1), 10, "status meter")
        assert live["energy_kwh"] is not None and live["power_w"] == 11000.0
        backend.command("ST-TEST", "remote_stop", session_id=sid)
        wait_msg(backend, "cdr", session_id=sid)
        wait_msg(backend, "cmd/res", command_id=cid)
        wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR acks")
        d.stop()  # the offline status
        wait_until(lambda: any(b'"online":false' in p for _, p in spy.got), 10, "offline status")
    finally:
        spy.close()
    validators = _validators()
    seen: set[str] = set()
    for topic, payload in spy.got:
        suffix = topic.split("/", 2)[2]
        data = json.loads(payload)
        errors = [list(v.iter_errors(data)) for v in validators[suffix]]
        assert any(not e for e in errors), f"{topic}: {payload!r}: {errors}"
        seen.add(suffix)
    assert seen == set(validators)  # every channel carried traffic
