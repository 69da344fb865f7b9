"""MQTT contract v1 as typed data.

Every message is a pydantic model; ``python -m agent.messages --export DIR`` writes their JSON
Schemas (the copies in ``agent/schemas`` are checked against the models by the tests).
Incoming messages are validated strictly: no type coercion, no unknown fields.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    model_validator,
)

from agent.clock import rfc3339
from agent.errors import ProtocolError

CONTRACT_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DEPTH = 16  # the deepest v1 message (a local list entry) is 3 levels
SESSION_ID_PATTERN = r"^[A-Za-z0-9]{8}(-[A-Za-z0-9]{4}){3}-[A-Za-z0-9]{12}$"
UID_PATTERN = r"^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$"

SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN)]
Id64 = Annotated[str, Field(min_length=1, max_length=64)]
ContractIdStr = Annotated[str, Field(min_length=1, max_length=64)]


class EvseState(StrEnum):
    AVAILABLE = "available"
    PREPARING = "preparing"
    AUTHORIZING = "authorizing"
    AUTHORIZED = "authorized"
    CHARGING = "charging"
    FINISHING = "finishing"
    UNAVAILABLE = "unavailable"
    FAULTED = "faulted"


class AuthStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


class SessionEventKind(StrEnum):
    AUTHORIZED = "authorized"
    STARTED = "started"
    STOPPED = "stopped"
    TIMEOUT = "timeout"
    REJECTED = "rejected"


class StopReason(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    EV_DISCONNECTED = "ev_disconnected"
    POWER_LOSS = "power_loss"
    FAULT = "fault"
    DEAUTHORIZED = "deauthorized"
    SOFT_RESET = "soft_reset"
    HARD_RESET = "hard_reset"
    OTHER = "other"


class SessionReason(StrEnum):
    """Why a session event happened (``reason`` of ``P/session``): a ``stopped`` session's stop
    reason, a ``timeout``'s timer, a ``rejected`` token's backend status."""

    LOCAL = "local"  # stopped: the same card or code again
    REMOTE = "remote"  # stopped: remote_stop
    EV_DISCONNECTED = "ev_disconnected"  # stopped: the car was unplugged
    POWER_LOSS = "power_loss"  # stopped: the station lost power while charging
    FAULT = "fault"  # stopped: a device fault on the EVSE
    DEAUTHORIZED = "deauthorized"  # stopped: the backend refused a locally accepted token
    SOFT_RESET = "soft_reset"  # stopped: the backend reset the station (OCPP Reset Soft)
    HARD_RESET = "hard_reset"  # stopped: the backend reset the station (Hard / Immediate)
    OTHER = "other"  # stopped: none of these
    UNAVAILABLE = "unavailable"  # stopped before charging: set_availability false
    RESTART = "restart"  # stopped before charging: the agent restarted meanwhile
    AUTH_TIMEOUT = "auth_timeout"  # timeout: no backend answer (offline policy refused)
    CONNECTION_TIMEOUT = "connection_timeout"  # timeout: authorised, no car plugged in time
    REJECTED = "rejected"  # rejected: the backend's auth status
    BLOCKED = "blocked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


# Station -> backend timestamps: RFC 3339 with milliseconds and UTC offset.
Timestamp = Annotated[
    AwareDatetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


class _Out(BaseModel):
    """Station -> backend. ``v`` is always present (required in the exported schema)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: (
            schema.setdefault("required", []).insert(0, "v")
            if "v" not in schema.get("required", [])
            else None
        ),
    )
    v: Literal[1] = 1


class _In(BaseModel):
    """Backend -> station: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)
    v: Literal[1]


# ---------------------------------------------------------------- tokens
class RfidToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["rfid"] = "rfid"
    uid: Annotated[str, Field(pattern=UID_PATTERN)]
    card_type: str | None = None


class QrToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["qr"] = "qr"
    contract_id: ContractIdStr
    pin: Annotated[str, Field(max_length=32)] | None = Field(default=None, repr=False)


class RemoteToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["remote"] = "remote"
    contract_id: ContractIdStr


Token = Annotated[RfidToken | QrToken | RemoteToken, Field(discriminator="type")]
TOKEN_ADAPTER: TypeAdapter[RfidToken | QrToken | RemoteToken] = TypeAdapter(Token)


def token_key(token: RfidToken | QrToken | RemoteToken) -> str:
    """What identifies the holder: 'same card stops the session', local list, auth cache."""
    if isinstance(token, RfidToken):
        return f"rfid:{token.uid}"
    return f"contract:{normalize_contract_id(token.contract_id)}"


def token_for_record(token: RfidToken | QrToken | RemoteToken) -> RfidToken | QrToken | RemoteToken:
    """The token as stored and put in CDRs: never with a PIN."""
    if isinstance(token, QrToken) and token.pin is not None:
        return QrToken(contract_id=token.contract_id)
    return token


# ---------------------------------------------------------------- station -> backend
class EvseStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evse_id: str
    state: EvseState
    session_id: str | None
    plugged: bool
    relay_closed: bool
    fault: str | None
    # with a control pilot only (left out otherwise): its state A-F, the current offered now
    # (0: paused), the limit that applies and what sets it (evse, station, grid, fallback)
    pilot: Literal["A", "B", "C", "D", "E", "F"] | None = None
    offered_a: float | None = None
    limit_a: float | None = None
    limit_source: Literal["evse", "station", "grid", "fallback"] | None = None


class OutboxStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pending: int
    oldest: Timestamp | None


class BrokerStatus(BaseModel):
    """The broker node the station is connected to (``mqtt.urls``: a cluster's nodes)."""

    model_config = ConfigDict(extra="forbid")
    url: str
    node: int = Field(ge=1)  # position in the station's list, 1 = preferred
    nodes: int = Field(ge=1)
    reconnect_delay_s: float | None  # the jittered delay before this connection; null: first
    failovers: int = Field(ge=0)  # times the station came back on another node than before


class StatusMessage(_Out):
    station_id: str
    online: Literal[True] = True
    ts: Timestamp
    version: str
    evses: list[EvseStatus]
    faults: list[str] = Field(default_factory=list)  # station-wide faults (reader, store, ...)
    outbox: OutboxStatus
    local_list_version: int = 0
    # inbound backend messages dropped by the rate limit since start, per topic suffix
    # ("cmd/req": 1234); left out while nothing was dropped
    inbound_dropped: dict[str, Annotated[int, Field(ge=1)]] | None = None
    broker: BrokerStatus | None = None  # the node in use; left out by backends without one


class OfflineStatus(_Out):
    """The retained last will."""

    station_id: str
    online: Literal[False] = False


class AuthRequest(_Out):
    request_id: str
    evse_id: str | None
    token: Token
    ts: Timestamp


class SessionEvent(_Out):
    session_id: str
    evse_id: str
    event: SessionEventKind
    ts: Timestamp
    reason: SessionReason | None = None
    offline: bool | None = None  # true for sessions the station authorised on its own


class SignedMeterValues(BaseModel):
    """Signed meter readings (additive in v1), each record exactly as the meter signed it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["format"]})
    format: Literal["OCMF"] = "OCMF"
    # the start record, only when the meter signs the start separately
    start: str | None = None
    # the end record (an Iskra's holds the begin and the end reading)
    stop: str | None = None
    public_key: str | None = None  # hex of the DER SubjectPublicKeyInfo
    error: str | None = None  # why a record is missing (the CDR is sent anyway)


class Cdr(_Out):
    session_id: str
    evse_id: str
    operator_id: str
    location: str
    contract_id: str | None
    token: Token
    session_start: Timestamp
    session_end: Timestamp
    charging_start: Timestamp | None
    charging_end: Timestamp | None
    meter_start_kwh: float
    meter_stop_kwh: float
    energy_kwh: float
    stop_reason: StopReason
    offline: bool = False
    # additive in v1: true when the wall clock was stepped during the session and the start
    # times were derived from the end and the monotonic durations; left out otherwise
    clock_corrected: bool | None = None
    # additive in v1: the signed (OCMF) records of a signing meter; left out for other meters
    signed_meter_values: SignedMeterValues | None = None

    @field_serializer("meter_start_kwh", "meter_stop_kwh", "energy_kwh")
    def _kwh(self, value: float) -> float:
        return round(value, 3)


class MeterValues(_Out):
    """``P/meter``: a charging session's meter, every ``mqtt.meter_values_s`` (additive in v1)."""

    session_id: str
    evse_id: str
    ts: Timestamp
    energy_kwh: float  # charged in this session so far
    meter_kwh: float  # the meter's import register
    power_w: float | None  # active power now, where the meter reports it

    @field_serializer("energy_kwh", "meter_kwh")
    def _kwh(self, value: float) -> float:
        return round(value, 3)


class CommandResponse(_Out):
    command_id: str
    status: CommandStatus
    reason: str | None = None


# ---------------------------------------------------------------- backend -> station
class AuthResponse(_In):
    request_id: Id64
    status: AuthStatus
    contract_id: ContractIdStr | None = None
    expires_at: AwareDatetime | None = None


class CdrAck(_In):
    session_id: SessionId


class _Command(_In):
    command_id: Id64
    ts: AwareDatetime | None = None  # when the backend sent it; too old: rejected
    station_id: Id64 | None = None  # when present it must be this station's id


class RemoteStart(_Command):
    command: Literal["remote_start"]
    evse_id: Id64
    contract_id: ContractIdStr
    session_id: SessionId | None = None


class RemoteStop(_Command):
    command: Literal["remote_stop"]
    session_id: SessionId


class SetAvailability(_Command):
    command: Literal["set_availability"]
    evse_id: Id64
    available: bool


class LocalListEntry(BaseModel):
    """One token on the local list: exactly one of ``uid`` (RFID) or ``emaid`` (contract)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    uid: Annotated[str, Field(pattern=UID_PATTERN)] | None = None
    emaid: ContractIdStr | None = None
    status: AuthStatus
    contract_id: ContractIdStr | None = None
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_key(self) -> LocalListEntry:
        if (self.uid is None) == (self.emaid is None):
            raise ValueError("exactly one of 'uid' or 'emaid' is required")
        return self

    @property
    def token_key(self) -> str:
        if self.uid is not None:
            return f"rfid:{self.uid}"
        return f"contract:{normalize_contract_id(self.emaid or '')}"


class UpdateLocalList(_Command):
    command: Literal["update_local_list"]
    version: Annotated[int, Field(ge=1)]
    mode: Literal["full", "differential"]
    entries: Annotated[list[LocalListEntry], Field(max_length=10000)]


class SetCurrentLimit(_Command):
    """A current limit per phase for one EVSE, or (without ``evse_id``) the whole station,
    until ``valid_until`` (then the configured limit applies again)."""

    command: Literal["set_current_limit"]
    limit_a: Annotated[float, Field(allow_inf_nan=False)]
    evse_id: Id64 | None = None
    valid_until: AwareDatetime | None = None


AnyCommand = RemoteStart | RemoteStop | SetAvailability | UpdateLocalList | SetCurrentLimit
Command = Annotated[AnyCommand, Field(discriminator="command")]
COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(Command)
COMMAND_NAMES = (
    "remote_start",
    "remote_stop",
    "set_availability",
    "update_local_list",
    "set_current_limit",
)


def normalize_contract_id(value: str) -> str:
    """Upper case, separators removed (how contract ids are compared and stored)."""
    return "".join(c for c in value.upper() if c not in "-* ")


# ---------------------------------------------------------------- decoding
def load_json_object(payload: bytes) -> dict[str, Any]:
    """Size check, UTF-8, JSON and an object; raises ProtocolError saying why."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as err:
        raise ProtocolError(f"payload is not UTF-8: {err}") from err
    except (json.JSONDecodeError, RecursionError) as err:
        raise ProtocolError(f"payload is not valid JSON: {err}") from err
    except ValueError as err:  # e.g. an integer beyond Python's digit limit
        raise ProtocolError(f"payload is not usable JSON: {str(err)[:120]}") from err
    if not isinstance(data, dict):
        raise ProtocolError(f"payload must be a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:
        raise ProtocolError(f"payload is nested deeper than {MAX_DEPTH} levels")
    try:  # "\ud800" escapes decode to lone surrogates, which no UTF-8 sink accepts
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise ProtocolError("payload contains an unpaired UTF-16 surrogate escape") from err
    except (RecursionError, ValueError) as err:
        raise ProtocolError(f"payload is not usable JSON: {str(err)[:120]}") from err
    return data


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a deep document must not exhaust the stack later)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def check_version(data: dict[str, Any]) -> None:
    if "v" not in data:
        raise ProtocolError("field 'v' is missing")
    if type(data["v"]) is not int or data["v"] != CONTRACT_VERSION:  # not 1.0, not true
        raise ProtocolError(f"unsupported contract version v={data['v']!r} (expected 1)")


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(payload)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_auth_response(data: dict[str, Any]) -> AuthResponse:
    try:
        return AuthResponse.model_validate_json(json.dumps(data))
    except ValidationError as err:
        raise ProtocolError(describe_validation_error(err)) from err


def parse_cdr_ack(data: dict[str, Any]) -> CdrAck:
    try:
        return CdrAck.model_validate_json(json.dumps(data))
    except ValidationError as err:
        raise ProtocolError(describe_validation_error(err)) from err


def parse_command(data: dict[str, Any]) -> AnyCommand:
    name = data.get("command")
    if name not in COMMAND_NAMES:
        raise ProtocolError(f"unknown command {name!r} (known: {', '.join(COMMAND_NAMES)})")
    try:
        return COMMAND_ADAPTER.validate_json(json.dumps(data))
    except ValidationError as err:
        raise ProtocolError(describe_validation_error(err)) from err


OPTIONAL_FIELDS = frozenset(
    {
        "reason",
        "card_type",
        "pin",
        "inbound_dropped",
        "clock_corrected",
        "pilot",
        "offered_a",
        "limit_a",
        "limit_source",
    }
    | {"signed_meter_values", "start", "stop", "public_key", "error"}  # signed metering
)


def dump(msg: BaseModel) -> bytes:
    """JSON bytes of a message; optional fields that are unset are left out, not null."""
    data = msg.model_dump(mode="json")
    # UTF-8 is safe: inbound payloads with unpaired surrogates are rejected in load_json_object
    return json.dumps(_prune(data), separators=(",", ":"), ensure_ascii=False).encode()


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if not (v is None and k in OPTIONAL_FIELDS)}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


# ---------------------------------------------------------------- schema export
SCHEMAS: dict[str, Any] = {
    "status": StatusMessage,
    "status-offline": OfflineStatus,
    "auth-req": AuthRequest,
    "auth-res": AuthResponse,
    "session": SessionEvent,
    "cdr": Cdr,
    "cdr-ack": CdrAck,
    "cmd-req": COMMAND_ADAPTER,
    "cmd-res": CommandResponse,
    "meter": MeterValues,
}


def json_schema(name: str) -> dict[str, Any]:
    model = SCHEMAS[name]
    schema: dict[str, Any]
    if isinstance(model, TypeAdapter):
        schema = model.json_schema(mode="validation")
    else:
        mode = "validation" if issubclass(model, _In) else "serialization"
        schema = model.model_json_schema(mode=mode)
    schema["$id"] = f"station-agent/v1/{name}.json"
    return schema


def export_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SCHEMAS:
        p = directory / f"{name}.json"
        p.write_text(json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n")
        out.append(p)
    return out


if __name__ == "__main__":  # pragma: no cover - developer tool
    target = Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "--export" else None
    if target is None:
        print("usage: python -m agent.messages --export DIR", file=sys.stderr)
        raise SystemExit(2)
    for path in export_schemas(target):
        print(path)
