"""Routing of tokens across EVSEs: pure functions of the EVSEs' states.

With one reader for several EVSEs a tap goes to the EVSE whose session it holds (to stop it),
else to the one EVSE with a car waiting; with none or several waiting the authorisation
"floats": it is held by a free EVSE and follows the car to the first one plugged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.messages import EvseState
from agent.session import Evse, SessionInfo


@dataclass(frozen=True)
class Route:
    evse_id: str | None  # None: no EVSE can take the token
    floating: bool = False


@dataclass(frozen=True)
class Move:
    """A floating session leaves ``source`` for ``target``, where a car was plugged."""

    source: str
    target: str
    session: SessionInfo


def route_token(evses: Sequence[Evse], token_key: str) -> Route:
    for st in evses:  # the holder's own session: stop or ignore there
        if st.session is not None and st.session.token_key == token_key:
            return Route(st.evse_id)
    if len(evses) == 1:
        return Route(evses[0].evse_id)
    waiting = [st.evse_id for st in evses if st.phase is EvseState.PREPARING]
    if len(waiting) == 1:
        return Route(waiting[0])
    free = [st.evse_id for st in evses if st.phase is EvseState.AVAILABLE]
    if free:
        return Route(free[0], floating=True)
    if waiting:
        return Route(waiting[0])
    finishing = [st.evse_id for st in evses if st.phase is EvseState.FINISHING]
    return Route(finishing[0] if finishing else None)


def floating_move(evses: Sequence[Evse]) -> Move | None:
    """The first floating authorisation that can follow a car now plugged elsewhere."""
    for holder in evses:
        session = holder.session
        if holder.phase is not EvseState.AUTHORIZED or session is None or not session.floating:
            continue
        for target in evses:
            if target is not holder and target.phase is EvseState.PREPARING:
                return Move(holder.evse_id, target.evse_id, session)
    return None


def holder_of(evses: Sequence[Evse], session_id: str) -> str | None:
    """The EVSE that holds a session now (a floating session may have moved since the tap)."""
    for st in evses:
        if st.session is not None and st.session.session_id == session_id:
            return st.evse_id
    return None
