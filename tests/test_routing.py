"""Routing of tokens across EVSEs: pure functions of the EVSEs' table states."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.messages import EvseState, RfidToken
from agent.routing import Move, Route, floating_move, holder_of, route_token
from agent.session import AdoptSession, Evse, Policy, ReleaseSession, SessionInfo, step

E1, E2, E3, E4 = (f"DE*ICE*E000001*{i}" for i in range(1, 5))
A = "rfid:AAAAAAAA"
B = "rfid:BBBBBBBB"
S = EvseState


def session(key: str = B, sid: str = "S-B", *, floating: bool = False) -> SessionInfo:
    return SessionInfo(
        session_id=sid, token=RfidToken(uid=key.removeprefix("rfid:")), token_key=key,
        floating=floating,
    )  # fmt: skip


def evse(evse_id: str, phase: EvseState, holder: SessionInfo | None = None) -> Evse:
    plugged = phase in (S.PREPARING, S.CHARGING, S.FINISHING)
    return Evse(evse_id=evse_id, phase=phase, plugged=plugged, session=holder)


# ---------------------------------------------------------------- route_token
@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        # one EVSE: always that one, whatever its state
        ([S.AVAILABLE], Route(E1)),
        ([S.CHARGING], Route(E1)),
        ([S.FAULTED], Route(E1)),
        # exactly one car waiting: there
        ([S.AVAILABLE, S.PREPARING, S.AVAILABLE], Route(E2)),
        ([S.CHARGING, S.FAULTED, S.PREPARING], Route(E3)),
        # several waiting and a free one: floating, on the first free one
        ([S.PREPARING, S.AVAILABLE, S.PREPARING, S.AVAILABLE], Route(E2, floating=True)),
        # several waiting, none free: the first waiting one
        ([S.CHARGING, S.PREPARING, S.PREPARING], Route(E2)),
        # none waiting, some free: floating on the first free one
        ([S.CHARGING, S.AVAILABLE, S.AVAILABLE], Route(E2, floating=True)),
        ([S.AVAILABLE, S.AVAILABLE], Route(E1, floating=True)),
        # all busy: a finishing one (a car still plugged) or nowhere
        ([S.CHARGING, S.FINISHING, S.FINISHING], Route(E2)),
        ([S.CHARGING, S.AUTHORIZING, S.UNAVAILABLE, S.FAULTED], Route(None)),
        ([S.AUTHORIZED, S.CHARGING], Route(None)),
    ],
)
def test_route_token(phases: list[EvseState], expected: Route) -> None:
    ids = [E1, E2, E3, E4][: len(phases)]
    evses = [
        evse(i, p, session(B, f"S-{i}") if p in (S.CHARGING, S.AUTHORIZED, S.AUTHORIZING) else None)
        for i, p in zip(ids, phases, strict=True)
    ]
    assert route_token(evses, A) == expected


@pytest.mark.parametrize("phase", [S.AUTHORIZING, S.AUTHORIZED, S.CHARGING])
def test_the_holders_token_goes_back_to_its_evse(phase: EvseState) -> None:
    evses = [
        evse(E1, S.PREPARING),  # the one car waiting would take any other token
        evse(E2, S.AVAILABLE),
        evse(E3, phase, session(A, "S-A")),
    ]
    assert route_token(evses, A) == Route(E3)
    assert route_token(evses, B) == Route(E1)


def test_the_holder_wins_over_a_floating_spot() -> None:
    evses = [evse(E1, S.AVAILABLE), evse(E2, S.AUTHORIZED, session(A, "S-A", floating=True))]
    assert route_token(evses, A) == Route(E2)
    assert route_token(evses, B) == Route(E1, floating=True)


def test_no_evses_at_all() -> None:
    assert route_token([], A) == Route(None)


# ---------------------------------------------------------------- floating_move
def test_a_floating_session_moves_to_the_plugged_evse() -> None:
    floating = session(A, "S-A", floating=True)
    evses = [
        evse(E1, S.CHARGING, session(B, "S-B")),
        evse(E2, S.AUTHORIZED, floating),
        evse(E3, S.AVAILABLE),
        evse(E4, S.PREPARING),
    ]
    assert floating_move(evses) == Move(E2, E4, floating)


def test_the_first_plugged_evse_is_the_target() -> None:
    floating = session(A, "S-A", floating=True)
    evses = [evse(E1, S.PREPARING), evse(E2, S.AUTHORIZED, floating), evse(E3, S.PREPARING)]
    assert floating_move(evses) == Move(E2, E1, floating)


@pytest.mark.parametrize("phase", [S.AUTHORIZING, S.CHARGING, S.AVAILABLE])
def test_no_move_when_the_holder_is_not_authorized(phase: EvseState) -> None:
    evses = [evse(E1, phase, session(A, "S-A", floating=True)), evse(E2, S.PREPARING)]
    assert floating_move(evses) is None


def test_no_move_for_a_bound_session() -> None:
    evses = [evse(E1, S.AUTHORIZED, session(A, "S-A", floating=False)), evse(E2, S.PREPARING)]
    assert floating_move(evses) is None


def test_no_move_without_a_plugged_evse() -> None:
    floating = session(A, "S-A", floating=True)
    evses = [evse(E1, S.AUTHORIZED, floating), evse(E2, S.AVAILABLE), evse(E3, S.FINISHING)]
    assert floating_move(evses) is None


# ---------------------------------------------------------------- holder_of
def test_holder_of() -> None:
    evses = [evse(E1, S.CHARGING, session(B, "S-B")), evse(E2, S.AVAILABLE)]
    assert holder_of(evses, "S-B") == E1
    assert holder_of(evses, "S-X") is None


def test_holder_of_after_a_move() -> None:
    policy = Policy()
    floating = session(A, "S-A", floating=True)
    evses = [evse(E1, S.AUTHORIZED, floating), evse(E2, S.AVAILABLE), evse(E3, S.PREPARING)]
    assert holder_of(evses, "S-A") == E1
    move = floating_move(evses)
    assert move == Move(E1, E3, floating)

    by_id = {e.evse_id: e for e in evses}
    by_id[move.source], _ = step(policy, by_id[move.source], ReleaseSession(floating.session_id))
    by_id[move.target], _ = step(policy, by_id[move.target], AdoptSession(move.session))
    after = list(by_id.values())

    assert holder_of(after, "S-A") == E3
    assert by_id[E1] == replace(evses[0], phase=S.AVAILABLE, session=None)
    assert by_id[E3].session == replace(floating, floating=False)
    assert floating_move(after) is None  # bound now: it does not move again
    assert route_token(after, A) == Route(E3)  # the same card now stops it there
