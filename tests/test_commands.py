"""Commands in process: fake clock, real SQLite store, recording fake backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.backend import CommandIn
from agent.clock import FakeClock, rfc3339
from agent.commands import Commands
from agent.errors import ProtocolError
from agent.messages import (
    CommandResponse,
    CommandStatus,
    RemoteStart,
    RemoteStop,
    SetAvailability,
    UpdateLocalList,
    dump,
)
from agent.session import RemoteStartCmd, RemoteStopCmd, SetAvailable
from agent.store import AuthEntry, Store
from tests.fakes import FakeBackend, make_config, open_store

EVSE1 = "DE*ICE*E000001*1"
EVSE2 = "DE*ICE*E000001*2"
UNKNOWN_EVSE = "DE*ICE*E000001*9"
STATION = "ST-TEST"
MAX_AGE_S = 60.0
SID = "0a1b2c3d-0000-4000-8000-00000000abcd"
NEW_SID = "11111111-2222-3333-4444-555555555555"
CONTRACT = "DE*ICE*C00001*1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from open_store(tmp_path)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def commands(tmp_path: Path, store: Store, backend: FakeBackend, clock: FakeClock) -> Commands:
    config = make_config(tmp_path, evses=2, station={"id": STATION}, cmd={"max_age_s": MAX_AGE_S})
    return Commands(
        config=config, store=store, backend=backend, clock=clock, new_id=lambda: NEW_SID
    )


def remote_start(command_id: str = "c-1", **kw: Any) -> RemoteStart:
    data = {"evse_id": EVSE1, "contract_id": CONTRACT, **kw}
    return RemoteStart.model_validate(
        {"v": 1, "command": "remote_start", "command_id": command_id, **data}
    )


def remote_stop(command_id: str = "c-1", session_id: str = SID) -> RemoteStop:
    return RemoteStop.model_validate(
        {"v": 1, "command": "remote_stop", "command_id": command_id, "session_id": session_id}
    )


def set_availability(
    command_id: str = "c-1", evse_id: str = EVSE2, available: bool = False
) -> SetAvailability:
    return SetAvailability.model_validate(
        {
            "v": 1,
            "command": "set_availability",
            "command_id": command_id,
            "evse_id": evse_id,
            "available": available,
        }
    )


def local_list(
    command_id: str, version: int, mode: str, entries: list[dict[str, Any]]
) -> UpdateLocalList:
    """As the backend sends it (JSON: the enum statuses and timestamps are strings)."""
    data = {
        "v": 1,
        "command": "update_local_list",
        "command_id": command_id,
        "version": version,
        "mode": mode,
        "entries": entries,
    }
    return UpdateLocalList.model_validate_json(json.dumps(data))


def stored(store: Store, command_id: str) -> tuple[CommandResponse, str | None] | None:
    found = store.command_response(command_id)
    if found is None:
        return None
    answer, digest = found
    return CommandResponse.model_validate_json(answer), digest


def rejected(command_id: str, reason: str) -> CommandResponse:
    return CommandResponse(command_id=command_id, status=CommandStatus.REJECTED, reason=reason)


def accepted(command_id: str) -> CommandResponse:
    return CommandResponse(command_id=command_id, status=CommandStatus.ACCEPTED)


# ---------------------------------------------------------------- replay
def test_a_replay_gets_the_same_stored_answer_and_no_events(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    cmd = remote_start(session_id=SID)
    routed = commands.receive(CommandIn(cmd, "digest-1"), {})
    assert routed == [
        (EVSE1, RemoteStartCmd(command_id="c-1", contract_id=CONTRACT, session_id=SID))
    ]
    commands.result("c-1", True, None)  # what the table answered
    answer = store.command_response("c-1")
    assert answer is not None

    assert commands.receive(CommandIn(cmd, "digest-1"), {}) == []
    first, again = backend.command_results
    assert first == again == accepted("c-1")
    assert dump(again).decode() == answer[0]
    assert store.command_response("c-1") == answer


def test_a_replayed_refusal_is_refused_again(commands: Commands, backend: FakeBackend) -> None:
    cmd = remote_start(evse_id=UNKNOWN_EVSE)
    assert commands.receive(CommandIn(cmd, "d"), {}) == []
    assert commands.receive(CommandIn(cmd, "d"), {}) == []
    expected = rejected("c-1", f"unknown evse_id {UNKNOWN_EVSE}")
    assert backend.command_results == [expected, expected]


def test_a_replay_is_answered_even_when_it_is_now_too_old(
    commands: Commands, backend: FakeBackend, clock: FakeClock
) -> None:
    cmd = remote_stop(session_id=SID).model_copy(update={"ts": clock.now()})
    commands.receive(CommandIn(cmd, "d"), {SID: EVSE2})
    commands.result("c-1", True, None)
    clock.advance(MAX_AGE_S * 10)
    assert commands.receive(CommandIn(cmd, "d"), {SID: EVSE2}) == []
    assert backend.command_results == [accepted("c-1")] * 2


def test_the_same_id_for_another_command_is_a_protocol_error(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    commands.receive(CommandIn(remote_start(), "digest-1"), {})
    commands.result("c-1", True, None)
    answer = store.command_response("c-1")
    with pytest.raises(ProtocolError, match="already used for another command"):
        commands.receive(CommandIn(remote_stop(), "digest-2"), {SID: EVSE1})
    assert backend.command_results == [accepted("c-1")]  # nothing more said
    assert store.command_response("c-1") == answer


# ---------------------------------------------------------------- checks
def test_a_command_for_another_station_is_a_protocol_error(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    cmd = set_availability().model_copy(update={"station_id": "ST-OTHER"})
    with pytest.raises(ProtocolError, match="ST-OTHER"):
        commands.receive(CommandIn(cmd, "d"), {})
    assert store.command_response("c-1") is None
    assert store.availability() == {}
    assert backend.sent == []


def test_a_command_for_this_station_passes(commands: Commands, store: Store) -> None:
    cmd = set_availability().model_copy(update={"station_id": STATION})
    assert commands.receive(CommandIn(cmd, "d"), {}) == [(EVSE2, SetAvailable(False, "c-1"))]


@pytest.mark.parametrize(
    "case",
    [
        (MAX_AGE_S + 0.001, False),  # too old
        (MAX_AGE_S, True),  # just within
        (0.0, True),
        (-MAX_AGE_S, True),
        (-MAX_AGE_S - 0.001, False),  # too far in the future: a clock is wrong
    ],
)
def test_command_age(
    commands: Commands,
    store: Store,
    backend: FakeBackend,
    clock: FakeClock,
    case: tuple[float, bool],
) -> None:
    age_s, ok = case
    cmd = set_availability().model_copy(update={"ts": clock.now() - timedelta(seconds=age_s)})
    if ok:
        assert commands.receive(CommandIn(cmd, "d"), {}) == [(EVSE2, SetAvailable(False, "c-1"))]
        return
    with pytest.raises(ProtocolError, match="old" if age_s > 0 else "future"):
        commands.receive(CommandIn(cmd, "d"), {})
    assert store.command_response("c-1") is None
    assert store.availability() == {}
    assert backend.sent == []


def test_reject_unstored_answers_and_leaves_the_id_free(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    commands.reject_unstored("c-1", "evse_id: field required")
    assert backend.command_results == [rejected("c-1", "evse_id: field required")]
    assert store.command_response("c-1") is None
    assert commands.receive(CommandIn(set_availability(), "d"), {}) != []  # the id is usable


# ---------------------------------------------------------------- remote start / stop
def test_remote_start_on_an_unknown_evse_is_rejected_and_stored(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    assert commands.receive(CommandIn(remote_start(evse_id=UNKNOWN_EVSE), "d-9"), {}) == []
    expected = rejected("c-1", f"unknown evse_id {UNKNOWN_EVSE}")
    assert backend.command_results == [expected]
    assert stored(store, "c-1") == (expected, "d-9")


def test_remote_start_with_a_used_session_id_is_rejected(
    commands: Commands, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    store.insert_session(
        session_id=SID,
        evse_id=EVSE1,
        token={"type": "remote", "contract_id": CONTRACT},
        contract_id=CONTRACT,
        start=clock.now(),
    )
    assert commands.receive(CommandIn(remote_start(session_id=SID), "d"), {}) == []
    expected = rejected("c-1", "session_id already used")
    assert backend.command_results == [expected]
    assert stored(store, "c-1") == (expected, "d")


def test_remote_start_without_a_session_id_gets_a_new_one(commands: Commands) -> None:
    routed = commands.receive(CommandIn(remote_start(evse_id=EVSE2), "d"), {})
    assert routed == [
        (EVSE2, RemoteStartCmd(command_id="c-1", contract_id=CONTRACT, session_id=NEW_SID))
    ]


def test_remote_stop_of_an_unknown_session_is_rejected(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    other = "ffffffff-ffff-ffff-ffff-ffffffffffff"
    assert commands.receive(CommandIn(remote_stop(), "d"), {other: EVSE1}) == []
    expected = rejected("c-1", "unknown session_id")
    assert backend.command_results == [expected]
    assert stored(store, "c-1") == (expected, "d")


def test_remote_stop_goes_to_the_evse_holding_the_session(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    routed = commands.receive(CommandIn(remote_stop(), "d"), {SID: EVSE2})
    assert routed == [(EVSE2, RemoteStopCmd("c-1", SID))]
    assert backend.sent == []  # the table answers
    assert store.command_response("c-1") is None


# ---------------------------------------------------------------- availability
def test_set_availability_persists(commands: Commands, store: Store) -> None:
    assert commands.receive(CommandIn(set_availability(), "d"), {}) == [
        (EVSE2, SetAvailable(False, "c-1"))
    ]
    assert store.availability() == {EVSE2: False}
    cmd = set_availability("c-2", available=True)
    assert commands.receive(CommandIn(cmd, "d"), {}) == [(EVSE2, SetAvailable(True, "c-2"))]
    assert store.availability() == {EVSE2: True}


def test_set_availability_of_an_unknown_evse_is_rejected(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    assert commands.receive(CommandIn(set_availability(evse_id=UNKNOWN_EVSE), "d"), {}) == []
    assert store.availability() == {}
    assert backend.command_results == [rejected("c-1", f"unknown evse_id {UNKNOWN_EVSE}")]


# ---------------------------------------------------------------- local list
UID_A, UID_B, UID_C = "AAAAAAAA", "BBBBBBBB", "CCCCCCCC"


def test_local_list_full_then_differential(
    commands: Commands, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    expires = clock.now() + timedelta(days=30)
    full = local_list(
        "c-1",
        3,
        "full",
        [
            {"uid": UID_A, "status": "accepted", "contract_id": CONTRACT},
            {"uid": UID_B, "status": "blocked"},
            {"emaid": "de-ice-c12345-6", "status": "accepted", "expires_at": rfc3339(expires)},
        ],
    )
    assert commands.receive(CommandIn(full, "d1"), {}) == []
    assert store.local_list_version() == 3
    assert store.local_list_entries() == [
        AuthEntry("contract:DEICEC123456", "accepted", None, expires),
        AuthEntry(f"rfid:{UID_A}", "accepted", CONTRACT),
        AuthEntry(f"rfid:{UID_B}", "blocked"),
    ]
    assert stored(store, "c-1") == (accepted("c-1"), "d1")

    diff = local_list(
        "c-2",
        4,
        "differential",
        [{"uid": UID_B, "status": "accepted"}, {"uid": UID_C, "status": "blocked"}],
    )
    assert commands.receive(CommandIn(diff, "d2"), {}) == []
    assert store.local_list_version() == 4
    assert store.local_list_entries() == [
        AuthEntry("contract:DEICEC123456", "accepted", None, expires),
        AuthEntry(f"rfid:{UID_A}", "accepted", CONTRACT),
        AuthEntry(f"rfid:{UID_B}", "accepted"),
        AuthEntry(f"rfid:{UID_C}", "blocked"),
    ]

    again = local_list("c-3", 5, "full", [{"uid": UID_C, "status": "accepted"}])
    commands.receive(CommandIn(again, "d3"), {})
    assert store.local_list_entries() == [AuthEntry(f"rfid:{UID_C}", "accepted")]
    assert backend.command_results == [accepted("c-1"), accepted("c-2"), accepted("c-3")]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("mode", ["full", "differential"])
def test_local_list_not_newer_is_rejected(
    commands: Commands, store: Store, backend: FakeBackend, version: int, mode: str
) -> None:
    store.replace_local_list(2, [AuthEntry(f"rfid:{UID_A}", "accepted")], full=True)
    cmd = local_list("c-1", version, mode, [{"uid": UID_B, "status": "accepted"}])
    assert commands.receive(CommandIn(cmd, "d"), {}) == []
    expected = rejected("c-1", f"version {version} is not newer than 2")
    assert backend.command_results == [expected]
    assert stored(store, "c-1") == (expected, "d")
    assert store.local_list_version() == 2
    assert store.local_list_entries() == [AuthEntry(f"rfid:{UID_A}", "accepted")]


# ---------------------------------------------------------------- result
def test_result_stores_the_answer_with_the_commands_digest(
    commands: Commands, store: Store, backend: FakeBackend
) -> None:
    commands.receive(CommandIn(remote_start(), "sha256:abc"), {})
    commands.result("c-1", False, "EVSE is busy")
    expected = rejected("c-1", "EVSE is busy")
    assert store.command_response("c-1") == (dump(expected).decode(), "sha256:abc")
    assert backend.command_results == [expected]


def test_result_of_a_command_never_received_has_no_digest(commands: Commands, store: Store) -> None:
    commands.result("c-7", True, None)
    assert store.command_response("c-7") == (dump(accepted("c-7")).decode(), None)


def test_each_command_keeps_its_own_digest(commands: Commands, store: Store) -> None:
    commands.receive(CommandIn(remote_start("c-1"), "d-one"), {})
    commands.receive(CommandIn(remote_stop("c-2"), "d-two"), {SID: EVSE1})
    commands.result("c-2", True, None)
    commands.result("c-1", True, None)
    assert stored(store, "c-1") == (accepted("c-1"), "d-one")
    assert stored(store, "c-2") == (accepted("c-2"), "d-two")
