"""Fuzzing the MQTT inputs of a running daemon (issue 7, "Bad input, tried systematically").

One daemon per test function (a real subprocess, a real Mosquitto) is first brought into a
known, busy state:

* EVSE 1 charging (session C, relay closed),
* EVSE 2 authorising (session D, an ``auth/req`` the backend deliberately leaves unanswered),
* one CDR pending in the outbox (session B, never acknowledged) and one acknowledged (session A),

so that "an invalid message changes nothing" is meaningful: a wrongly accepted ``cdr/ack``
would acknowledge B, a wrongly accepted ``auth/res`` would authorise D, a wrongly accepted
``remote_stop`` / ``set_availability`` would end C. Then hypothesis generates batches of
payloads for ``auth/res``, ``cmd/req`` and ``cdr/ack``: random bytes, deep nesting, huge
strings and numbers, NaN/Infinity literals, wrong types, unicode (escaped lone surrogates, RTL
marks, NUL), missing and extra fields, valid-looking messages with one wrong value, and valid
but harmless messages mixed in.

The expected outcome of every payload is computed with an oracle that mirrors the controller's
order of checks (size/UTF-8/JSON/object, ``v``, a ``command_id`` already answered: replay if
the same command, refusal if another, schema, ``station_id``, ``ts`` older than
``cmd.max_age_s``) with the same parser code the daemon runs (``agent.messages``), plus what the
generator knows by construction (a message with a wrong ``v``, a missing or an unknown field, a
wrong ``station_id`` or an old ``ts`` *must* be refused). Valid messages
that would legitimately change the state (the exact ack of B, the answer to D, stopping C, ...)
are dropped from the batch before publishing.

After every batch a sentinel command is sent and awaited (the daemon handles MQTT messages in
order), then: the process is alive, ``status`` answers within 1 s over the control socket,
state/session/relay/outbox are unchanged, no session event, CDR, auth request or changed status
was published, and the ``cmd/res`` answers are exactly the expected ones, in order: one
``rejected`` for every ``cmd/req`` with a readable string ``command_id`` (``accepted`` for the
harmless valid ones, the stored answer for a replayed id), none otherwise.

Bugs this fuzz found are pinned at the end as regression tests. Nesting of 900..1099 levels
is left to its own regression test rather than the general generator.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.backend_sim import BackendSim, Received
from agent.broker import Mosquitto
from agent.control import call
from agent.errors import ProtocolError
from agent.messages import (
    RemoteStart,
    RemoteStop,
    SetAvailability,
    UpdateLocalList,
    check_version,
    load_json_object,
    parse_auth_response,
    parse_cdr_ack,
    parse_command,
)
from tests.helpers import EVSE1, EVSE2, Daemon, station_config, wait_until

ST = "ST-FUZZ"
TOPICS = ("auth/res", "cdr/ack", "cmd/req")
UID_A, UID_B, UID_C, UID_D = "04A224B2C13C80", "E3F1A27B", "0102030405060708090A", "04B1C2D3E4F506"
UNKNOWN_EVSE = "DE*ICE*E999999*9"
CONTRACT = "DE8ACC12345678A"
MAX_PAYLOAD = 64 * 1024
MAX_AGE_S = 300  # cmd.max_age_s, default

# every field name the contract knows, any topic (an "extra field" mutation never uses one)
KNOWN_FIELDS = frozenset(
    {
        "v",
        "command_id",
        "command",
        "evse_id",
        "contract_id",
        "session_id",
        "available",
        "request_id",
        "status",
        "expires_at",
        "ts",
        "version",
        "mode",
        "entries",
        "uid",
        "emaid",
        "station_id",
        "token",
        "pin",
    }
)

# fuzz budget: BATCHES x (20..60) payloads; derandomized so every run tries the same payloads
BATCHES = 160


# ------------------------------------------------------------------------- payload building
@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim (numbers Python's json would never write, broken tokens)."""

    text: str


@dataclass(frozen=True)
class Ref:
    """A value known only at run time (session ids, the pending request id, ...)."""

    name: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object written with these (possibly duplicate) keys in this order."""

    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Spec:
    """One payload to publish: a JSON-ish structure (or raw bytes) and how to write it."""

    topic: str
    body: Any  # bytes (sent as is) or a structure of dict/list/Pairs/Raw/Ref/scalars
    kind: str  # generator name, for the statistics
    must_reject: bool = False  # invalid by construction: the daemon's parser must refuse it
    ascii_only: bool = True
    indent: bool = False


def render_json(value: Any, refs: dict[str, str], ascii_only: bool, indent: bool) -> str:
    sep = ", " if indent else ","
    colon = ": " if indent else ":"
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Ref):
        return json.dumps(refs[value.name])
    if isinstance(value, dict):
        value = Pairs(tuple(value.items()))
    if isinstance(value, Pairs):
        return (
            "{"
            + sep.join(
                json.dumps(k, ensure_ascii=ascii_only)
                + colon
                + render_json(v, refs, ascii_only, indent)
                for k, v in value.items
            )
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + sep.join(render_json(v, refs, ascii_only, indent) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def render(spec: Spec, refs: dict[str, str]) -> bytes:
    if isinstance(spec.body, bytes):
        return spec.body
    text = render_json(spec.body, refs, spec.ascii_only, spec.indent)
    # a lone surrogate written raw (not escaped) is not UTF-8: the daemon must say so
    return text.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------- strategies
SPECIAL_TEXT = [
    "\x00",
    "\u202e",
    "\u200f",
    "\u0645\u0631\u062d\u0628\u0627",
    "\ufeff",
    "\ud800",
    "\udfff",
    "\U0001f50c",
    "e\u0301",
    "\uff11",
    "\u2028",
    "\\",
    '"',
    "\n",
    "'",
    "%s",
    "%(x)s",
    "{}",
    "${jndi:ldap://x}",
    "../../etc/passwd",
    "'; DROP TABLE commands;--",
    "\x1b[2J",
    "null",
]
NUMBER_TEXT = [
    "1e308",
    "-1e308",
    "1e309",
    "-1e400",
    "1" + "0" * 400,
    "-" + "9" * 400,
    "7" * 4300,
    "-0",
    "-0.0",
    "0e0",
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "4.9e-324",
    "2.5e-400",
    "9007199254740993",
    "0x10",
    "01",
    "+1",
    ".5",
    "1.",
    "True",
    "none",
    "1_000",
]
LONG_SIZES = [63, 64, 65, 1000, 20_000, 70_000]

special_text = st.lists(st.sampled_from(SPECIAL_TEXT), min_size=1, max_size=5).map("".join)
control_text = st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zs", "Mn"]), max_size=10)
long_text = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["x", "\u00e9", "\x00", "\u202e"]),
    st.sampled_from(LONG_SIZES),
)
texts = st.one_of(st.text(max_size=30), special_text, control_text, long_text)
raw_numbers = st.sampled_from(NUMBER_TEXT).map(Raw)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    raw_numbers,
)
names = st.one_of(st.sampled_from(sorted(KNOWN_FIELDS)), st.text(max_size=8), special_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=10,
)


def _uuid(r: random.Random) -> str:
    return str(uuid.UUID(int=r.getrandbits(128), version=4))


uuids = st.randoms(use_true_random=False).map(_uuid)
# command ids: mostly fresh uuids, sometimes odd but readable, sometimes unreadable
command_ids = st.one_of(
    uuids,
    uuids,
    uuids,
    st.text(min_size=1, max_size=64),
    special_text.filter(lambda s: len(s) <= 64),
    st.just(""),
    st.sampled_from(["x" * 64, "x" * 65, "\ud800", "cmd-\udfff"]),
)
recent_ts = st.builds(lambda: datetime.now(UTC).isoformat())
old_ts = st.one_of(
    st.sampled_from(["1970-01-01T00:00:00+00:00", "2020-01-01T00:00:00Z"]),
    st.builds(
        lambda age, tz: (
            (datetime.now(UTC) - timedelta(seconds=age))
            .astimezone(timezone(timedelta(hours=tz)))
            .isoformat()
        ),
        st.integers(MAX_AGE_S + 60, 10**9),
        st.integers(-12, 14),
    ),
)


def templates(cid: str, sid: str) -> dict[str, tuple[str, dict[str, Any], tuple[str, ...]]]:
    """Valid messages that WOULD change the state; (topic, body, required fields)."""
    return {
        "auth_res": (
            "auth/res",
            {
                "v": 1,
                "request_id": Ref("pending_request"),
                "status": "accepted",
                "contract_id": CONTRACT,
                "expires_at": "2099-01-01T00:00:00Z",
            },
            ("v", "request_id", "status"),
        ),
        "cdr_ack": ("cdr/ack", {"v": 1, "session_id": Ref("pending_cdr")}, ("v", "session_id")),
        "remote_stop": (
            "cmd/req",
            {
                "v": 1,
                "command_id": cid,
                "command": "remote_stop",
                "session_id": Ref("live_session"),
            },
            ("v", "command_id", "command", "session_id"),
        ),
        "set_unavailable": (
            "cmd/req",
            {
                "v": 1,
                "command_id": cid,
                "command": "set_availability",
                "evse_id": Ref("evse1"),
                "available": False,
            },
            ("v", "command_id", "command", "evse_id", "available"),
        ),
        "update_local_list": (
            "cmd/req",
            {
                "v": 1,
                "command_id": cid,
                "command": "update_local_list",
                "version": 7,
                "mode": "full",
                "entries": [{"uid": UID_A, "status": "blocked"}],
            },
            ("v", "command_id", "command", "version", "mode", "entries"),
        ),
        "remote_start": (
            "cmd/req",
            {
                "v": 1,
                "command_id": cid,
                "command": "remote_start",
                "evse_id": Ref("evse1"),
                "contract_id": CONTRACT,
                "session_id": sid,
            },
            ("v", "command_id", "command", "evse_id", "contract_id"),
        ),
    }


# values that are never valid for a field (strict types: no coercion)
WRONG_V = st.one_of(
    st.sampled_from(["1", "v1", True, False, 2, 0, -1, None, [1], {"v": 1}, 1.5, ""]),
    st.sampled_from(
        [
            "1e309",
            "NaN",
            "-0",
            "10" + "0" * 400,
            "-1",
            "Infinity",
            "1.0",
            "1e0",
            "1.00",
            "10e-1",
            "1" * 4301,
        ]
    ).map(Raw),
)
not_str = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    raw_numbers,
)
not_bool: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["true", "false", 1, 0, "yes", None, [], {}]),
    st.sampled_from(["1.0", "0.0", "NaN", "1e309"]).map(Raw),
    st.text(max_size=5),
)
not_int: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["7", 7.5, True, None, [], {}]),
    st.sampled_from(["7.0", "7e0", "NaN", "Infinity"]).map(Raw),
)
BAD_SESSION_IDS = [
    "not-a-uuid",
    "",
    " ",
    "12345678-1234-1234-1234-12345678901",
    "{12345678-1234-1234-1234-123456789012}",
    "12345678123412341234123456789012",
    "12345678-1234-1234-1234-1234567890123",
    "12345678_1234_1234_1234_123456789012",
    "\u0661" * 8 + "-1234-1234-1234-123456789012",
    "12345678-1234-1234-1234-123456789012\n",
    "../../../../etc/passwd",
]
BAD_VALUES: dict[str, Any] = {
    "command": st.sampled_from(
        [
            "Remote_Start",
            "remote_start ",
            "remote-start",
            "REMOTE_STOP",
            "reboot",
            "",
            "set_availability\x00",
            "remote_stop\u200f",
        ]
    ),
    "status": st.sampled_from(["ACCEPTED", "Accepted", " accepted", "ok", "", "accepted\x00"]),
    "session_id": st.sampled_from(BAD_SESSION_IDS),
    "request_id": st.sampled_from(["", "r" * 65]),
    "contract_id": st.sampled_from(["", "C" * 65]),
    "evse_id": st.sampled_from(["", "E" * 65]),
    "command_id": st.sampled_from(["c" * 65, "c" * 1000]),
    "expires_at": st.sampled_from(["2099-01-01T00:00:00", "tomorrow", "2099-13-01T00:00:00Z", ""]),
    "ts": st.sampled_from(["2026-01-01T00:00:00", "now", "", "2026-02-30T00:00:00Z"]),
    "version": st.sampled_from([0, -1]),
    "mode": st.sampled_from(["FULL", "partial", ""]),
    "available": not_bool,
}
FIELD_TYPE = {"v": "v", "available": "bool", "version": "int", "entries": "list"}
# null is valid for these (except session_id of remote_stop, which is required)
OPTIONAL = {"contract_id", "expires_at", "session_id", "ts", "station_id"}


@st.composite
def mutated(draw: st.DrawFn) -> Spec:
    """A state-changing valid message with one to three mistakes that make it invalid."""
    cid = draw(command_ids)
    name = draw(st.sampled_from(sorted(templates(cid, "").keys())))
    topic, body, required = templates(cid, draw(uuids))[name]
    body = dict(body)
    kinds = draw(
        st.lists(
            st.sampled_from(
                ["wrong_v", "drop", "extra", "wrong_type", "bad_value", "other_station", "old_ts"]
            ),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    must_reject = False
    for kind in kinds:
        if kind == "other_station" and topic == "cmd/req":  # addressed to another station
            body["station_id"] = draw(
                st.sampled_from(
                    ["ST-OTHER", ST.lower(), ST + " ", ST + "\u200f", "+", "#", "ST-FUZZ/x"]
                )
            )
            must_reject = True
        elif kind == "old_ts" and topic == "cmd/req":  # older than cmd.max_age_s
            body["ts"] = draw(old_ts)
            must_reject = True
        elif kind in ("wrong_v", "other_station", "old_ts"):
            body["v"] = draw(WRONG_V)
            must_reject = True
        elif kind == "drop":
            key = draw(st.sampled_from(required))
            body.pop(key, None)
            must_reject = True
        elif kind == "extra":
            key = draw(
                st.one_of(st.text(min_size=1, max_size=12), special_text).filter(
                    lambda k: k not in KNOWN_FIELDS and k not in body
                )
            )
            body[key] = draw(json_values)
            must_reject = True
        elif kind == "wrong_type":
            keys = sorted(k for k in body if k != "v")
            if not keys:
                continue
            key = draw(st.sampled_from(keys))
            typ = FIELD_TYPE.get(key, "str")
            body[key] = draw(
                {
                    "bool": not_bool,
                    "int": not_int,
                    "list": st.one_of(
                        not_str.filter(lambda x: not isinstance(x, list)), st.text(max_size=5)
                    ),
                    "str": not_str,
                }[typ]
            )
            if (
                body[key] is None
                and key in OPTIONAL
                and not (key == "session_id" and name == "remote_stop")
            ):
                body[key] = 5  # null is valid for an optional field
            must_reject = True
        else:
            candidates = sorted(k for k in body if k in BAD_VALUES)
            if not candidates:
                continue
            key = draw(st.sampled_from(candidates))
            body[key] = draw(BAD_VALUES[key])
            must_reject = True
    if draw(st.booleans()) and "v" in body:  # a duplicate key: the last one counts
        items = list(body.items())
        items.insert(0, ("v", draw(st.sampled_from([2, "1", None]))))
        return Spec(
            topic,
            Pairs(tuple(items)),
            f"mutated:{name}",
            must_reject,
            draw(st.booleans()),
            draw(st.booleans()),
        )
    return Spec(
        topic, body, f"mutated:{name}", must_reject, draw(st.booleans()), draw(st.booleans())
    )


@st.composite
def harmless(draw: st.DrawFn) -> Spec:
    """Valid messages that must be answered properly and change nothing."""
    cid = draw(uuids)
    which = draw(
        st.sampled_from(["set_available", "remote_start", "remote_stop", "auth_res", "cdr_ack"])
    )
    evse = draw(
        st.sampled_from([Ref("evse1"), Ref("evse2"), UNKNOWN_EVSE, EVSE1 + "\u200f", EVSE1.lower()])
    )
    ts = draw(st.one_of(st.none(), recent_ts))
    body: dict[str, Any]
    if which == "set_available":
        body = {
            "v": 1,
            "command_id": cid,
            "command": "set_availability",
            "evse_id": evse,
            "available": True,
        }
        topic = "cmd/req"
    elif which == "remote_start":
        contract = draw(
            st.one_of(
                st.just(CONTRACT),
                st.text(min_size=1, max_size=64),
                special_text.filter(lambda s: len(s) <= 64),
            )
        )
        body = {
            "v": 1,
            "command_id": cid,
            "command": "remote_start",
            "evse_id": evse,
            "contract_id": contract,
        }
        if draw(st.booleans()):
            body["session_id"] = draw(
                st.one_of(uuids, st.sampled_from([Ref("live_session"), Ref("acked_cdr")]))
            )
        topic = "cmd/req"
    elif which == "remote_stop":
        body = {
            "v": 1,
            "command_id": cid,
            "command": "remote_stop",
            "session_id": draw(
                st.one_of(uuids, st.sampled_from([Ref("acked_cdr"), Ref("pending_cdr")]))
            ),
        }
        topic = "cmd/req"
    elif which == "auth_res":
        body = {
            "v": 1,
            "request_id": draw(st.one_of(uuids, st.text(min_size=1, max_size=64))),
            "status": draw(
                st.sampled_from(["accepted", "rejected", "blocked", "expired", "unknown"])
            ),
        }
        topic = "auth/res"
    else:
        body = {
            "v": 1,
            "session_id": draw(
                st.one_of(
                    uuids,
                    st.sampled_from(
                        [Ref("acked_cdr"), Ref("live_session"), Ref("pending_session")]
                    ),
                )
            ),
        }
        topic = "cdr/ack"
    if ts is not None and topic == "cmd/req":
        body["ts"] = ts
    if topic == "cmd/req" and draw(st.booleans()):
        body["station_id"] = ST
    return Spec(topic, body, f"harmless:{which}", False, draw(st.booleans()))


def _nest(kind: str, depth: int) -> bytes:
    """A JSON value nested ``depth`` arrays/objects deep."""
    if kind == "mixed":
        half = depth // 2
        return b'[{"a":' * half + b"[" * (depth % 2) + b"1" + b"]" * (depth % 2) + b"}]" * half
    opener, closer = {"list": (b"[", b"]"), "dict": (b'{"a":', b"}")}[kind]
    return opener * depth + b"1" + closer * depth


@st.composite
def nested(draw: st.DrawFn) -> Spec:
    """Deep nesting alone or inside an otherwise harmless valid command (must be refused)."""
    kind = draw(st.sampled_from(["list", "dict", "mixed"]))
    # not 900..1099: where exactly json.loads gives up depends on the caller's stack depth
    depth = draw(
        st.one_of(
            st.integers(1, 899), st.integers(1100, 1500), st.sampled_from([5000, 10_000, 20_000])
        )
    )
    while len(_nest(kind, depth)) > 70_000:
        depth //= 2
    inner = _nest(kind, depth)
    topic = draw(st.sampled_from(TOPICS))
    if draw(st.booleans()):
        return Spec(topic, inner, f"nested:{kind}")
    cid = draw(uuids)
    head = json.dumps(
        {
            "v": 1,
            "command_id": cid,
            "command": "set_availability",
            "evse_id": EVSE1,
            "available": True,
        }
    )[:-1].encode()
    return Spec(
        "cmd/req", head + b', "deep": ' + inner + b"}", f"nested-in-cmd:{kind}", must_reject=True
    )


@st.composite
def sized(draw: st.DrawFn) -> Spec:
    """A harmless command padded (unknown field) to exactly the size limit, or one byte more."""
    size = draw(st.sampled_from([MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD]))
    head = json.dumps(
        {
            "v": 1,
            "command_id": draw(uuids),
            "command": "set_availability",
            "evse_id": EVSE1,
            "available": True,
            "pad": "",
        }
    )
    pad = size - len(head)
    return Spec(
        "cmd/req", (head[:-2] + "x" * pad + '"}').encode(), f"sized:{size}", must_reject=True
    )


raw_bytes = st.builds(
    Spec, st.sampled_from(TOPICS), st.binary(max_size=300), st.just("random-bytes")
)
raw_text = st.builds(
    Spec,
    st.sampled_from(TOPICS),
    st.one_of(
        st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.sampled_from(
            [
                *NUMBER_TEXT,
                "null",
                "[]",
                "{}",
                '"{}"',
                "true",
                "\ufeff{}",
                '{"v":1}',
                "{'v': 1}",
                "{v:1}",
                "",
            ]
        ).map(lambda s: s.encode()),
    ),
    st.just("raw-text"),
)
random_objects = st.builds(
    lambda topic, obj, a: Spec(topic, obj, "random-object", False, a),
    st.sampled_from(TOPICS),
    st.dictionaries(names, json_values, max_size=6),
    st.booleans(),
)
wrapped_values = st.builds(  # a whole payload that is valid JSON but not an object
    lambda topic, value: Spec(
        topic, [value] if isinstance(value, dict) else value, "not-an-object"
    ),
    st.sampled_from(TOPICS),
    json_values,
)

payloads = st.one_of(
    mutated(),
    mutated(),
    mutated(),
    harmless(),
    harmless(),
    nested(),
    sized(),
    raw_bytes,
    raw_text,
    random_objects,
    wrapped_values,
)
batches = st.lists(payloads, min_size=20, max_size=60)


# ------------------------------------------------------------------------- the oracle
@dataclass
class Expect:
    response: tuple[str, str] | None  # (command_id, status) of the expected cmd/res
    valid: bool  # the daemon takes it as a message it acts on
    harmful: bool = False  # valid and it would legitimately change the state
    store: tuple[str, str, str] | None = None  # (command_id, status, digest) the daemon stores


def digest(data: dict[str, Any]) -> str:
    """What identifies a command for replay detection (as Controller._digest: ts aside)."""
    body = {k: v for k, v in data.items() if k != "ts"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def nesting(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (brackets in strings ignored)."""
    if raw.count(b"[") + raw.count(b"{") < 500:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for c in raw.decode("utf-8", "replace"):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


# The daemon parses with CPython's default recursion limit (1000): json.loads gives up a little
# below that depth. Hypothesis raises the limit in this process, so the oracle cannot just
# call json.loads on deep payloads; the generator avoids depths 900..1099 (the band has its own
# test below).
DAEMON_MAX_DEPTH = 1000


def expect(
    topic: str, raw: bytes, refs: dict[str, str], stored: dict[str, tuple[str, str]]
) -> Expect:
    """What the daemon must do with one payload (mirrors Controller._on_inbound/_on_command)."""
    if len(raw) <= MAX_PAYLOAD and nesting(raw) >= DAEMON_MAX_DEPTH:
        return Expect(None, False)  # "not valid JSON: maximum recursion depth exceeded"
    try:
        data = load_json_object(raw)
    except ProtocolError:
        return Expect(None, False)
    cid = data.get("command_id")
    rejected: tuple[str, str] | None = None
    if topic == "cmd/req" and isinstance(cid, str) and 0 < len(cid) <= 64:  # readable
        rejected = (cid, "rejected")
    try:
        check_version(data)
        if topic == "auth/res":
            res = parse_auth_response(data)
            return Expect(None, True, harmful=res.request_id == refs["pending_request"])
        if topic == "cdr/ack":
            ack = parse_cdr_ack(data)
            return Expect(None, True, harmful=ack.session_id == refs["pending_cdr"])
        this = digest(data)
        if isinstance(cid, str) and cid in stored:
            status, first = stored[cid]
            if first != this:  # the id of another command: rejected, not stored
                return Expect(rejected, False)
            return Expect((cid, status), False)  # a replay: same answer, no action
        cmd = parse_command(data)
    except ProtocolError:
        return Expect(rejected, False)
    if cmd.station_id is not None and cmd.station_id != ST:
        return Expect(rejected, False)
    if cmd.ts is not None and (datetime.now(UTC) - cmd.ts).total_seconds() > MAX_AGE_S:
        return Expect(rejected, False)
    status = "rejected"
    harmful = False
    if isinstance(cmd, RemoteStop):
        harmful = cmd.session_id in (refs["live_session"], refs["pending_session"])
    elif isinstance(cmd, SetAvailability):
        known = cmd.evse_id in (refs["evse1"], refs["evse2"])
        harmful = known and not cmd.available
        status = "accepted" if known else "rejected"
    elif isinstance(cmd, UpdateLocalList):
        harmful = True  # every valid version is newer than the station's (0)
    else:
        assert isinstance(cmd, RemoteStart)  # both EVSEs busy, or unknown: always rejected
    return Expect((cmd.command_id, status), True, harmful, (cmd.command_id, status, this))


# ------------------------------------------------------------------------- the station
@dataclass
class Station:
    daemon: Daemon
    backend: BackendSim
    refs: dict[str, str]
    baseline: dict[str, Any]
    sessions: list[dict[str, Any]]
    stored: dict[str, tuple[str, str]] = field(default_factory=dict)  # id: status, digest
    stats: Counter[str] = field(default_factory=Counter)

    def status(self, timeout: float = 15.0) -> dict[str, Any]:
        result: dict[str, Any] = call(self.daemon.socket, {"cmd": "status"}, timeout=timeout)
        return result

    def snapshot(self, st: dict[str, Any]) -> dict[str, Any]:
        return {
            "evses": st["evses"],
            "faults": st.get("faults"),
            "outbox": st["outbox"],
            "local_list_version": st.get("local_list_version"),
            "relays": [self.daemon.relay_log(1), self.daemon.relay_log(2)],
        }


def _wait_msg(backend: BackendSim, suffix: str, start: int = 0, **match: Any) -> Any:
    def pred(r: Received) -> bool:
        return (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        )

    return backend.wait_for(pred, 10, start).data


def _charge(d: Daemon, uid: str) -> str:
    d.ctl("sim.plug", evse_id=EVSE1)
    d.wait_state("preparing", EVSE1)
    d.ctl("sim.tap", uid=uid)
    return str(d.wait_state("charging", EVSE1)["session_id"])


@pytest.fixture
def station(broker: Mosquitto, tmp_path: Path) -> Iterator[Station]:
    prefix = f"fz{uuid.uuid4().hex[:10]}"
    backend = BackendSim(broker.url, prefix=prefix)
    backend.start()
    cfg = station_config(
        tmp_path,
        broker.url,
        prefix,
        station_id=ST,
        evses=2,
        mqtt={
            "auth_timeout_s": 120.0,
            "cdr_retry_initial_s": 3600.0,
            "cdr_retry_max_s": 3600.0,
            # these tests check what the station makes of every input: no inbound rate limit
            # (tests/test_promises_backend.py tests the limit); quoted: TOML keys with a '/'
            "inbound_rate_per_s": {f'"{t}"': 1e6 for t in ("auth/res", "cdr/ack", "cmd/req")},
            "inbound_burst": {f'"{t}"': 1_000_000 for t in ("auth/res", "cdr/ack", "cmd/req")},
        },
        auth={"connection_timeout_s": 3600.0},
    )
    d = Daemon(tmp_path, cfg).start()
    try:
        # session A: charged, CDR acknowledged
        acked = _charge(d, UID_A)
        d.ctl("sim.unplug", evse_id=EVSE1)
        wait_until(
            lambda: d.ctl("outbox")["pending"] == 0 and backend.cdrs.get(acked),
            10,
            "CDR A acknowledged",
        )
        # session B: charged, CDR left unacknowledged
        backend.auto_ack = False
        pending_cdr = _charge(d, UID_B)
        d.ctl("sim.unplug", evse_id=EVSE1)
        wait_until(lambda: backend.cdrs.get(pending_cdr), 10, "CDR B")
        d.wait_state("available", EVSE1)
        # session C: charging on EVSE 1
        live = _charge(d, UID_C)
        # session D: EVSE 2 waits for an auth answer that never comes
        backend.answer_auth = False
        n = len(backend.received)
        d.ctl("sim.plug", evse_id=EVSE2)
        d.wait_state("preparing", EVSE2)
        d.ctl("sim.tap", uid=UID_D)
        req = _wait_msg(backend, "auth/req", n)
        assert req["token"]["uid"] == UID_D and req["evse_id"] == EVSE2
        pending_session = d.wait_state("authorizing", EVSE2)["session_id"]
        refs = {
            "evse1": EVSE1,
            "evse2": EVSE2,
            "acked_cdr": acked,
            "pending_cdr": pending_cdr,
            "live_session": live,
            "pending_session": pending_session,
            "pending_request": req["request_id"],
        }
        s = Station(d, backend, refs, {}, [])
        st0 = s.status()
        assert st0["outbox"]["pending"] == 1
        s.baseline = s.snapshot(st0)
        s.sessions = d.ctl("sessions")
        yield s
    finally:
        d.stop()
        backend.stop()


def sessions_without_energy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "energy_kwh"} for r in rows]


def run_batch(s: Station, specs: list[tuple[str, bytes, str, bool]]) -> None:
    """Publish, wait for a sentinel, then check everything the brief promises."""
    d, backend = s.daemon, s.backend
    start = len(backend.received)
    expected: list[tuple[str, str]] = []
    for topic, raw, kind, must_reject in specs:
        exp = expect(topic, raw, s.refs, s.stored)
        if exp.harmful:
            s.stats["dropped (valid and state-changing)"] += 1
            continue
        assert not (must_reject and exp.valid), (
            f"the daemon's parser accepts an invalid {topic} payload ({kind}): {raw[:300]!r}"
        )
        if exp.store is not None:
            s.stored.setdefault(exp.store[0], (exp.store[1], exp.store[2]))
        if exp.response is not None:
            expected.append(exp.response)
        backend.publish(ST, topic, None, raw=raw)
        s.stats["published"] += 1
        s.stats[f"published {topic}"] += 1
        s.stats[f"kind {kind.split(':')[0]}"] += 1
    sentinel = f"sentinel-{uuid.uuid4()}"
    backend.command(ST, "set_availability", command_id=sentinel, evse_id=EVSE1, available=True)
    try:
        backend.wait_for(
            lambda r: (
                r.suffix == "cmd/res"
                and isinstance(r.data, dict)
                and r.data.get("command_id") == sentinel
            ),
            20,
            start,
        )
    except TimeoutError:
        alive = d.proc is not None and d.proc.poll() is None
        raise AssertionError(
            f"no answer to the sentinel (daemon alive: {alive});\nlog tail:\n{d.log()[-3000:]}"
        ) from None
    assert d.proc is not None and d.proc.poll() is None, "daemon died"
    t0 = time.monotonic()
    st = s.status(timeout=1.0)
    assert time.monotonic() - t0 < 1.0, "status took more than 1 s"
    assert s.snapshot(st) == s.baseline, "state changed"
    new = backend.received[start:]
    got = [
        (r.data.get("command_id"), r.data.get("status"))
        for r in new
        if r.suffix == "cmd/res" and isinstance(r.data, dict)
    ]
    assert got[-1] == (sentinel, "accepted")
    got = got[:-1]
    mismatch = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e]
    if len(got) != len(expected) or mismatch:
        cid = (mismatch[0][1][0] if mismatch else None) or ""
        lines = [ln for ln in d.log().splitlines() if cid and cid in ln][:10]
        raise AssertionError(
            f"cmd/res answers: got {len(got)}, expected {len(expected)}; first mismatches "
            f"{mismatch[:3]}; daemon log for {cid!r}:\n" + "\n".join(lines)
        )
    for r in new:
        assert r.suffix not in ("session", "cdr", "auth/req"), f"unexpected {r.suffix}: {r.data}"
        if r.suffix == "status":  # a republished status may only repeat the same state
            assert r.data.get("online") is True and r.data["evses"] == s.baseline["evses"]


@pytest.mark.slow
def test_fuzz_mqtt_inputs_never_crash_or_change_state(station: Station) -> None:
    s = station

    # no shrinking: the daemon keeps state between examples, a shrunk example would not
    # reproduce on it; the failing batch and the daemon's log lines are in the message instead
    @settings(
        max_examples=BATCHES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=batches)
    def fuzz(batch: list[Spec]) -> None:
        run_batch(
            s, [(spec.topic, render(spec, s.refs), spec.kind, spec.must_reject) for spec in batch]
        )

    t0 = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - t0
    assert sessions_without_energy(s.daemon.ctl("sessions")) == sessions_without_energy(s.sessions)
    assert "Traceback" not in s.daemon.log()
    print(f"\nMQTT fuzz: {s.stats['published']} payloads in {elapsed:.1f} s")
    for key, n in sorted(s.stats.items()):
        print(f"  {key}: {n}")
    assert s.stats["published"] >= 3000


def _burst(r: random.Random, i: int) -> tuple[str, bytes]:
    """One malformed message; every other one a cmd/req with a readable command_id."""
    cid = f"burst-{i}"
    choice = i % 8
    if choice == 0:
        return "cmd/req", json.dumps(
            {"v": 2, "command_id": cid, "command": "remote_stop", "session_id": str(uuid.uuid4())}
        ).encode()
    if choice == 2:
        return "cmd/req", json.dumps({"v": 1, "command_id": cid, "command": "reboot"}).encode()
    if choice == 4:
        return "cmd/req", json.dumps(
            {
                "v": 1,
                "command_id": cid,
                "command": "set_availability",
                "evse_id": EVSE1,
                "available": "no",
            }
        ).encode()
    if choice == 6:
        return "cmd/req", json.dumps(
            {
                "v": 1,
                "command_id": cid,
                "command": "remote_stop",
                "session_id": "not-a-uuid",
                "x": [1] * 50,
            }
        ).encode()
    if choice == 1:
        return r.choice(TOPICS), r.randbytes(r.randrange(0, 200))
    if choice == 3:
        return r.choice(TOPICS), b"[" * 5000 + b"]" * 5000
    if choice == 5:
        return "auth/res", json.dumps({"v": 1, "request_id": "", "status": "ok"}).encode()
    return "cdr/ack", json.dumps({"v": 1, "session_id": "x" * r.randrange(1, 100)}).encode()


@pytest.mark.slow
def test_burst_of_2000_malformed_messages(station: Station) -> None:
    s, d, backend = station, station.daemon, station.backend
    r = random.Random(2000)
    msgs = [_burst(r, i) for i in range(2000)]
    expected = [f"burst-{i}" for i in range(2000) if i % 2 == 0]
    start = len(backend.received)
    t0 = time.monotonic()
    for topic, raw in msgs:
        backend.publish(ST, topic, None, raw=raw)
    published = time.monotonic() - t0
    st = s.status(timeout=15.0)  # answers while (or right after) the burst is worked off
    assert st["evses"] == s.baseline["evses"]
    sentinel = f"sentinel-{uuid.uuid4()}"
    backend.command(ST, "set_availability", command_id=sentinel, evse_id=EVSE1, available=True)
    backend.wait_for(
        lambda m: (
            m.suffix == "cmd/res"
            and isinstance(m.data, dict)
            and m.data.get("command_id") == sentinel
        ),
        30,
        start,
    )
    drained = time.monotonic() - t0
    assert d.proc is not None and d.proc.poll() is None
    t1 = time.monotonic()
    st = s.status(timeout=1.0)
    assert time.monotonic() - t1 < 1.0
    assert s.snapshot(st) == s.baseline
    new = backend.received[start:]
    answers = [m.data for m in new if m.suffix == "cmd/res"]
    assert [a["command_id"] for a in answers[:-1]] == expected
    assert all(a["status"] == "rejected" for a in answers[:-1])
    assert not [m for m in new if m.suffix in ("session", "cdr", "auth/req")]
    print(
        f"\nburst: 2000 malformed messages published in {published:.2f} s, "
        f"worked off in {drained:.2f} s"
    )


# ------------------------------------------------------------------------- single payloads
def _publish_and_check_alive(s: Station, topic: str, *raws: bytes) -> None:
    start = len(s.backend.received)
    for raw in raws:
        s.backend.publish(ST, topic, None, raw=raw)
    sentinel = f"sentinel-{uuid.uuid4()}"
    s.backend.command(ST, "set_availability", command_id=sentinel, evse_id=EVSE1, available=True)
    proc = s.daemon.proc
    assert proc is not None
    wait_until(
        lambda: (
            proc.poll() is not None
            or any(
                r.suffix == "cmd/res"
                and isinstance(r.data, dict)
                and r.data.get("command_id") == sentinel
                for r in s.backend.received[start:]
            )
        ),
        10,
        "the sentinel's answer",
    )
    assert proc.poll() is None, "daemon died:\n" + s.daemon.log()[-1500:]
    assert s.snapshot(s.status(timeout=1.0)) == s.baseline


# ------------------------------------------------------------------------- fixed bugs
# found by this fuzz; fixed in 29a56b3 ("Bad input: integers beyond the digit limit, unpaired
# surrogate escapes and v=1.0 are rejected instead of crashing or passing")
def test_integer_over_4300_digits_is_refused(station: Station) -> None:
    """json.loads raises ValueError beyond sys.get_int_max_str_digits(): it killed the daemon."""
    raw = b'{"v": 1, "request_id": "r", "status": "accepted", "x": ' + b"1" * 4301 + b"}"
    _publish_and_check_alive(station, "auth/res", raw)


@pytest.mark.parametrize("v", [1, 2])
def test_lone_surrogate_command_id_is_refused(station: Station, v: int) -> None:
    """A "\\ud800" command_id once crashed Store.command_response (v=1) and
    Controller._reject_unstored -> dump (v=2) with UnicodeEncodeError."""
    raw = (
        f'{{"v": {v}, "command_id": "\\ud800", "command": "remote_stop", '
        '"session_id": "not-a-uuid"}'
    ).encode()
    _publish_and_check_alive(station, "cmd/req", raw)


def test_v_1_0_is_not_version_1(station: Station) -> None:
    """v=1.0 passed check_version (1.0 == 1) and pydantic's Literal[1]: set_availability false
    with v=1.0 ended the charging session."""
    s = station
    raw = json.dumps(
        {
            "v": 1.0,
            "command_id": "float-v",
            "command": "set_availability",
            "evse_id": EVSE1,
            "available": False,
        }
    ).encode()
    s.backend.publish(ST, "cmd/req", None, raw=raw)
    res = _wait_msg(s.backend, "cmd/res", command_id="float-v")
    assert res["status"] == "rejected"
    assert s.snapshot(s.status()) == s.baseline


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize("v", ["1.0", "1e0", "1.00", "10e-1"])
def test_v_float_refused_by_parsers(topic: str, v: str) -> None:
    body = {
        "auth/res": '{"request_id": "r", "status": "accepted"',
        "cdr/ack": f'{{"session_id": "{uuid.uuid4()}"',
        "cmd/req": f'{{"command_id": "c", "command": "remote_stop", "session_id": "{uuid.uuid4()}"',
    }[topic]
    data = load_json_object(f'{body}, "v": {v}}}'.encode())
    with pytest.raises(ProtocolError, match="version"):
        check_version(data)


# ------------------------------------------------------------------------- known bugs
@pytest.mark.parametrize("topic", TOPICS)
def test_regression_nesting_just_below_the_recursion_limit_kills_the_daemon(
    station: Station, topic: str
) -> None:
    raws = []
    for depth in range(950, 1000):
        head = json.dumps(
            {
                "v": 1,
                "command_id": f"deep-{depth}",
                "command": "remote_stop",
                "session_id": "not-a-uuid",
            }
        )[:-1].encode()
        raws.append(head + b', "deep": ' + _nest("list", depth) + b"}")
    _publish_and_check_alive(station, topic, *raws)


def test_oracle_nesting_depth() -> None:
    for kind in ("list", "dict", "mixed"):
        for depth in (600, 999, 1000, 1999):
            assert nesting(_nest(kind, depth)) == depth
            assert nesting(b'{"s": "[[{{]\\"", "x": ' + _nest(kind, depth) + b"}") == depth + 1
