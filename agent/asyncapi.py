"""MQTT contract v1 as an AsyncAPI 3.0 document, generated from the message models.

``station-agent asyncapi [FILE]`` writes it (JSON). Channels are the topics under
``{prefix}/{stationId}/``; operations are seen from the station (``send``: it publishes,
``receive``: it subscribes), with the MQTT binding's QoS and retain flag; every message's
payload is its JSON Schema (:func:`agent.messages.json_schema`) with ``$schema`` (draft-07)
and an absolute ``$id`` (a URN: the contract has no web address of its own), so a backend can
validate what it receives, and what it sends, with any JSON Schema validator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.messages import CONTRACT_VERSION, json_schema

# AsyncAPI 3.0 names JSON Schema draft-07 as a payload format; the models' schemas use no newer
# keyword (their "$defs" are reached by JSON pointer, which draft-07 resolves the same way)
JSON_SCHEMA = "http://json-schema.org/draft-07/schema#"
ID_PREFIX = "urn:station-agent:mqtt:v1:"
MQTT_BINDING = "0.2.0"


@dataclass(frozen=True, kw_only=True)
class Topic:
    suffix: str  # after {prefix}/{stationId}/
    messages: tuple[str, ...]  # names in agent.messages.SCHEMAS
    action: str  # the station's: send or receive
    retain: bool
    summary: str


TOPICS = (
    Topic(
        suffix="status",
        messages=("status", "status-offline"),
        action="send",
        retain=True,
        summary="The station's state, on every change and (re)connect; the offline form is the "
        "connection's last will and is sent on a clean stop.",
    ),
    Topic(
        suffix="auth/req",
        messages=("auth-req",),
        action="send",
        retain=False,
        summary="A card or code was presented: may it charge? Answer on auth/res within "
        "mqtt.auth_timeout_s (5 s).",
    ),
    Topic(
        suffix="session",
        messages=("session",),
        action="send",
        retain=False,
        summary="Session lifecycle: authorized, started, stopped, timeout, rejected. A "
        "session's evse_id can change between the tap and the plug (floating tap).",
    ),
    Topic(
        suffix="cdr",
        messages=("cdr",),
        action="send",
        retain=False,
        summary="One charge detail record per session that charged; re-sent until "
        "acknowledged on cdr/ack (de-duplicate by session_id).",
    ),
    Topic(
        suffix="meter",
        messages=("meter",),
        action="send",
        retain=False,
        summary="A charging session's energy so far, meter register and power, at most every "
        "mqtt.meter_values_s (10 s; 0: never). Not queued: missed values are not re-sent.",
    ),
    Topic(
        suffix="cmd/res",
        messages=("cmd-res",),
        action="send",
        retain=False,
        summary="The answer to every command, once per command_id.",
    ),
    Topic(
        suffix="auth/res",
        messages=("auth-res",),
        action="receive",
        retain=False,
        summary="The backend's answer to an auth/req (by request_id).",
    ),
    Topic(
        suffix="cdr/ack",
        messages=("cdr-ack",),
        action="receive",
        retain=False,
        summary="The CDR of session_id is delivered: the station stops re-sending it.",
    ),
    Topic(
        suffix="cmd/req",
        messages=("cmd-req",),
        action="receive",
        retain=False,
        summary="remote_start, remote_stop, set_availability, update_local_list. Never "
        "retained: a retained command is refused.",
    ),
)


# A description for every payload field (the models stay free of prose): (message, field) for a
# name that means different things in different messages, else the field name. A field nobody
# described gets UNDOCUMENTED, which tests/test_asyncapi.py refuses.
UNDOCUMENTED = "(undocumented)"
FIELD_DOCS: dict[str | tuple[str, str], str] = {
    "v": "Contract version: always 1.",
    "station_id": "The station's id (station.id), as in the topic.",
    "ts": "When the station made the message: RFC 3339, milliseconds, UTC offset.",
    ("cmd-req", "ts"): "When the backend sent the command (optional): older than "
    "cmd.max_age_s is rejected.",
    ("cmd-req", "station_id"): "Optional: when present it must be this station's id.",
    "online": "true while the station runs; false in the last will and on a clean stop.",
    "version": "The station-agent software version.",
    ("cmd-req", "version"): "Local list version: must be newer than the station's.",
    "evses": "One entry per charge point.",
    "evse_id": "The charge point's OICP EvseID.",
    ("auth-req", "evse_id"): "The EVSE the token was presented at; null when it could not be "
    "tied to one (a floating tap: the session follows the car).",
    "state": "The EVSE's state.",
    "session_id": "The session (a UUID; the station's unless a remote start supplied one).",
    "plugged": "A car is plugged in.",
    "relay_closed": "The contactor is closed (power flows).",
    "fault": "Why the EVSE is faulted (relay_welded, meter_failed, ...), else null.",
    "faults": "Station-wide faults (rfid:..., store, clock:unset, backend:not_answering, "
    "station_id:duplicate, broker_acl, ...).",
    "outbox": "CDRs not yet acknowledged by the backend.",
    "pending": "How many CDRs wait for their cdr/ack.",
    "oldest": "When the oldest of them was made, else null.",
    "local_list_version": "Version of the local authorisation list the station holds.",
    "inbound_dropped": "Inbound messages dropped by the rate limit since start, per topic "
    "suffix; left out while none were.",
    "request_id": "Pairs an auth/res with its auth/req.",
    "token": "What was presented: an RFID card, a QR contract code or a remote start.",
    "type": "Token kind: rfid, qr or remote.",
    "uid": "RFID UID, upper-case hex (4, 7 or 10 bytes).",
    "card_type": "RFID card technology as the reader saw it, if known.",
    "contract_id": "Contract id (EMAID) the session is billed to, if known.",
    "pin": "The PIN of a QR contract code: only in auth/req, never stored or logged.",
    "emaid": "A contract id (EMAID) on the local list.",
    "event": "What happened to the session.",
    "reason": "Why (stopped: the stop reason; timeout: which timer; rejected: the backend's "
    "status).",
    ("cmd-res", "reason"): "Why a command was rejected (human readable).",
    "offline": "The station authorised this session on its own (backend not reachable).",
    "operator_id": "OICP OperatorID of the station's operator.",
    "location": "The station's location (free text or a location id).",
    "session_start": "Session start (the authorisation).",
    "session_end": "Session end.",
    "charging_start": "When the relay closed, else null.",
    "charging_end": "When the relay opened, else null.",
    "meter_start_kwh": "Meter register at charging start, kWh.",
    "meter_stop_kwh": "Meter register at charging end, kWh.",
    "energy_kwh": "Energy charged in the session, kWh (3 decimals).",
    ("meter", "energy_kwh"): "Energy charged in the session so far, kWh (3 decimals).",
    "meter_kwh": "The meter's import register now, kWh.",
    "power_w": "Active power now, W (null where the meter does not report it).",
    "stop_reason": "Why the session ended.",
    "clock_corrected": "true when the wall clock was stepped during the session and the start "
    "times were derived; left out otherwise.",
    "status": "The backend's decision on the token.",
    ("cmd-res", "status"): "accepted or rejected.",
    ("cmd-req", "status"): "The token's status on the local list.",
    "expires_at": "Until when the answer may be used offline (optional).",
    "command_id": "Identifies the command; a repeated id gets the stored answer, no second run.",
    "command": "remote_start, remote_stop, set_availability, update_local_list or "
    "set_current_limit.",
    "available": "set_availability: true puts the EVSE in service, false takes it out.",
    "mode": "full replaces the list, differential changes the named entries.",
    "entries": "The local list's tokens.",
    # current control (EVSEs with a control pilot; left out for the others)
    "pilot": "The control pilot's state: A no car, B connected, C/D asking for energy, E/F error.",
    "offered_a": "The current the pilot offers now, A per phase (0 while paused).",
    "limit_a": "The limit in force for this EVSE, A per phase.",
    "limit_source": "Where the limit comes from: evse, station, grid or fallback.",
    ("cmd-req", "limit_a"): "set_current_limit: the limit, A per phase (0, or 6 up to the "
    "rating); without evse_id it is the station-wide limit.",
    "valid_until": "set_current_limit: when the limit lapses and the configured one applies "
    "again (optional, RFC 3339).",
    # the broker node in use (mqtt.urls: a clustered broker)
    "broker": "The broker node the station is connected to and its reconnect policy (optional).",
    "url": "The node's URL.",
    "node": "The node's position in mqtt.urls (1 = the preferred node).",
    "nodes": "How many nodes mqtt.urls lists.",
    "reconnect_delay_s": "The jittered delay before this connection, s (null on the first).",
    "failovers": "How many times the station came back on another node since it started.",
    # signed metering (OCMF)
    "signed_meter_values": "The meter's signed records (OCMF), byte for byte as the meter "
    "signed them; left out for meters that do not sign.",
    "format": "The signed records' format: OCMF.",
    "start": "The signed record of the charging start (when the meter signs it separately).",
    "stop": "The signed record of the charging end.",
    "public_key": "The meter's public key: hex of the DER SubjectPublicKeyInfo.",
    "error": "Why the meter did not sign (the CDR is sent all the same); left out when it did.",
}


def _describe(node: Any, message: str) -> None:
    """Give every property under ``node`` its description (from :data:`FIELD_DOCS`)."""
    if isinstance(node, dict):
        for prop, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "description" not in sub:
                sub["description"] = FIELD_DOCS.get(
                    (message, prop), FIELD_DOCS.get(prop, UNDOCUMENTED)
                )
        for value in node.values():
            _describe(value, message)
    elif isinstance(node, list):
        for value in node:
            _describe(value, message)


def _key(name: str) -> str:
    """A component key (AsyncAPI keys: letters, digits, '.', '-', '_')."""
    return name.replace("/", "-")


def payload_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of message ``name`` as it stands in the document."""
    schema = json_schema(name)
    schema["$schema"] = JSON_SCHEMA
    schema["$id"] = f"{ID_PREFIX}{name}"
    _describe(schema, name)
    return schema


def _message(name: str, topic: Topic) -> dict[str, Any]:
    schema = payload_schema(name)
    return {
        "name": name,
        "title": schema.get("title", name),
        "summary": topic.summary,
        "contentType": "application/json",
        "payload": {"schemaFormat": "application/schema+json;version=draft-07", "schema": schema},
    }


def _channel(topic: Topic) -> dict[str, Any]:
    return {
        "address": "{prefix}/{stationId}/" + topic.suffix,
        "summary": topic.summary,
        "parameters": {
            "prefix": {"description": "mqtt.topic_prefix of the station (default: stations)"},
            "stationId": {"description": "station.id, also the station's MQTT client id"},
        },
        "messages": {_key(m): {"$ref": f"#/components/messages/{_key(m)}"} for m in topic.messages},
    }


def _operation(topic: Topic) -> dict[str, Any]:
    ch = _key(topic.suffix)
    return {
        "action": topic.action,
        "channel": {"$ref": f"#/channels/{ch}"},
        "summary": topic.summary,
        "messages": [{"$ref": f"#/channels/{ch}/messages/{_key(m)}"} for m in topic.messages],
        "bindings": {"mqtt": {"qos": 1, "retain": topic.retain, "bindingVersion": MQTT_BINDING}},
    }


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of MQTT contract v1."""
    return {
        "asyncapi": "3.0.0",
        "id": "urn:station-agent:mqtt:v1",
        "info": {
            "title": "station-agent MQTT contract",
            "version": f"{CONTRACT_VERSION}.0.0",
            "description": "Between an EV charging station (station-agent "
            f"{__version__}) and its backend. JSON in UTF-8, QoS 1, every message carries "
            '"v": 1; timestamps are RFC 3339 with milliseconds and a UTC offset; energy is '
            "kWh with 3 decimals. Inbound messages are validated strictly (no coercion, no "
            "unknown fields).",
        },
        "defaultContentType": "application/json",
        "channels": {_key(t.suffix): _channel(t) for t in TOPICS},
        "operations": {
            f"{t.action}{''.join(p.title() for p in t.suffix.split('/'))}": _operation(t)
            for t in TOPICS
        },
        "components": {
            "messages": {_key(m): _message(m, t) for t in TOPICS for m in t.messages},
        },
    }


def write(path: Path | None) -> str:
    """The document as JSON, written to ``path`` (if given); returns the text."""
    text = json.dumps(document(), indent=2, sort_keys=True) + "\n"
    if path is not None:
        path.write_text(text)
    return text
