"""Per-EVSE session logic as a pure transition table.

``step(policy, evse, event) -> (evse, actions)`` never performs I/O, never reads a clock and never
creates ids: ids arrive inside events, time arrives as timer events. The controller
(:mod:`agent.controller`) carries out the actions in a safe order (persist, then act, then publish).
A (state, event) pair without an entry in :data:`TABLE` is ignored: the state is unchanged and the
only action is :class:`Ignored`, which the controller logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from agent.messages import (
    EvseState,
    QrToken,
    RemoteToken,
    RfidToken,
    SessionEventKind,
    StopReason,
    token_key,
)
from drivers.pilot.base import PilotState

AnyToken = RfidToken | QrToken | RemoteToken


class FaultKind(StrEnum):
    """Why an EVSE is ``faulted`` (the ``fault`` field of ``P/status``)."""

    RELAY_WELDED = "relay_welded"
    RELAY_STUCK_OPEN = "relay_stuck_open"
    RELAY_FAILED = "relay_failed"
    METER_FAILED = "meter_failed"
    STORE_FAILURE = "store_failure"

    @classmethod
    def of_relay(cls, kind: str | None) -> FaultKind:
        """A relay driver's fault string as an EVSE fault (unknown ones: ``relay_failed``)."""
        try:
            fault = cls(kind or cls.RELAY_FAILED)
        except ValueError:
            return cls.RELAY_FAILED
        return fault if fault.is_relay else cls.RELAY_FAILED

    @property
    def is_relay(self) -> bool:
        return self in (FaultKind.RELAY_WELDED, FaultKind.RELAY_STUCK_OPEN, FaultKind.RELAY_FAILED)


# ---------------------------------------------------------------------------- state
@dataclass(frozen=True, kw_only=True)
class SessionInfo:
    session_id: str
    token: AnyToken
    token_key: str  # identifies the holder: "rfid:<uid>" or "contract:<emaid>"
    contract_id: str | None = None
    request_id: str | None = None  # the pending auth request
    floating: bool = False  # authorised for "the EVSE that gets plugged", not bound yet
    offline: bool = False  # authorised by the station itself (link or backend down)


@dataclass(frozen=True, kw_only=True)
class Evse:
    evse_id: str
    phase: EvseState = EvseState.AVAILABLE
    plugged: bool = False
    available: bool = True
    fault: FaultKind | None = None
    session: SessionInfo | None = None
    pilot: PilotState | None = None  # None: no control pilot (the relay follows the session)
    offer_on: bool = False  # with a pilot: it offers current (>= 6 A); see OfferChanged


@dataclass(frozen=True)
class Policy:
    stop_with_same_token: bool = True


class Timer(StrEnum):
    AUTH = "auth"
    CONNECTION = "connection"


# ---------------------------------------------------------------------------- events
@dataclass(frozen=True, kw_only=True)
class TokenPresented:
    token: AnyToken
    token_key: str
    session_id: str  # used if this tap starts a session
    request_id: str
    floating: bool = False


@dataclass(frozen=True, kw_only=True)
class AuthResult:
    request_id: str
    accepted: bool
    status: str
    contract_id: str | None = None
    offline: bool = False  # decided locally (local list, cache or offline policy)


@dataclass(frozen=True)
class Deauthorized:
    """The backend refused, after the fact, a token the station had accepted locally."""

    session_id: str


@dataclass(frozen=True)
class StationReset:
    """The backend reset the station (committed before this): a charging session ends with
    ``reason`` (``soft_reset`` / ``hard_reset``), one that never charged is dropped."""

    reason: StopReason


@dataclass(frozen=True)
class ResumeSession:
    """After a restart: the car is still plugged, the persisted session goes on charging."""

    session: SessionInfo


@dataclass(frozen=True)
class AuthTimeout:
    """No backend answer in time. ``offline`` is what the station decides on its own
    (``auth.offline_policy``); the table lets an accepting decision authorise the session."""

    request_id: str
    offline: AuthResult | None = None


@dataclass(frozen=True)
class ConnectionTimeout:
    session_id: str


@dataclass(frozen=True)
class PlugIn:
    pass


@dataclass(frozen=True)
class PlugOut:
    pass


@dataclass(frozen=True, kw_only=True)
class RemoteStartCmd:
    command_id: str
    contract_id: str
    session_id: str


@dataclass(frozen=True)
class RemoteStopCmd:
    command_id: str
    session_id: str


@dataclass(frozen=True)
class SetAvailable:
    available: bool
    command_id: str | None = None


@dataclass(frozen=True)
class FaultRaised:
    fault: FaultKind


@dataclass(frozen=True)
class FaultCleared:
    pass


@dataclass(frozen=True)
class PilotSignal:
    """The control pilot changed state (only EVSEs with a pilot device get it)."""

    state: PilotState


@dataclass(frozen=True)
class OfferChanged:
    """The pilot's offer went from 0 to a current (``on``) or back to 0: reported at once when
    it starts, and a grace time after it stopped while charging (a car must go back to B by
    itself; one that keeps asking is cut off then)."""

    on: bool


@dataclass(frozen=True)
class AdoptSession:
    """A floating authorisation moves to this (plugged) EVSE."""

    session: SessionInfo


@dataclass(frozen=True)
class ReleaseSession:
    """A floating authorisation leaves this EVSE for another one."""

    session_id: str


Event = (
    TokenPresented
    | AuthResult
    | AuthTimeout
    | ConnectionTimeout
    | PlugIn
    | PlugOut
    | RemoteStartCmd
    | RemoteStopCmd
    | SetAvailable
    | FaultRaised
    | FaultCleared
    | AdoptSession
    | ReleaseSession
    | Deauthorized
    | StationReset
    | ResumeSession
    | PilotSignal
    | OfferChanged
)
EVENT_TYPES: tuple[type, ...] = (
    TokenPresented,
    AuthResult,
    AuthTimeout,
    ConnectionTimeout,
    PlugIn,
    PlugOut,
    RemoteStartCmd,
    RemoteStopCmd,
    SetAvailable,
    FaultRaised,
    FaultCleared,
    AdoptSession,
    ReleaseSession,
    Deauthorized,
    StationReset,
    ResumeSession,
    PilotSignal,
    OfferChanged,
)


# ---------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class RequestAuth:
    request_id: str
    token: AnyToken
    floating: bool


@dataclass(frozen=True)
class StartTimer:
    timer: Timer
    key: str  # request id or session id the timer belongs to


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class Authorize:
    """Persist the authorised session, then publish the 'authorized' event. ``command_id``: a
    remote start, whose acceptance is committed with the session and answered after it."""

    session: SessionInfo
    command_id: str | None = None


@dataclass(frozen=True)
class AuthorizeAndCharge:
    """The car is already plugged: read the meter, persist the authorised session and its
    charging start in one commit (with a remote start's acceptance), close the relay, then
    publish the answer, 'authorized' and 'started'."""

    session: SessionInfo
    command_id: str | None = None
    close_relay: bool = True  # False: a pilot whose car does not ask for energy (yet)


@dataclass(frozen=True)
class BeginCharging:
    """Read the meter, persist charging start, close the relay, publish 'started'."""

    session_id: str
    close_relay: bool = True


@dataclass(frozen=True)
class ResumeCharging:
    """Close the relay again for a recovered session (no new 'started', no new meter start)."""

    session_id: str
    close_relay: bool = True


@dataclass(frozen=True)
class CloseRelay:
    """The car asks for energy (pilot C/D) during a charging session: close the contactor."""

    session_id: str


@dataclass(frozen=True)
class EndSession:
    """Open the relay, read the meter, persist the end and the CDR, publish 'stopped' + CDR."""

    session_id: str
    reason: StopReason


@dataclass(frozen=True, kw_only=True)
class DropSession:
    """A session that never charged ends: persist, publish the event; no CDR."""

    session: SessionInfo
    event: SessionEventKind
    reason: str


@dataclass(frozen=True)
class OpenRelay:
    pass


@dataclass(frozen=True, kw_only=True)
class CommandResult:
    command_id: str
    accepted: bool
    reason: str | None = None


@dataclass(frozen=True)
class Notify:
    message: str


@dataclass(frozen=True)
class Ignored:
    reason: str


Action = (
    RequestAuth
    | StartTimer
    | CancelTimer
    | Authorize
    | AuthorizeAndCharge
    | BeginCharging
    | ResumeCharging
    | EndSession
    | DropSession
    | OpenRelay
    | CloseRelay
    | CommandResult
    | Notify
    | Ignored
)
Result = tuple[Evse, list[Action]]
Handler = Callable[[Policy, Evse, Event], Result]


# ---------------------------------------------------------------------------- helpers
def _idle_phase(evse: Evse) -> EvseState:
    if evse.fault is not None:
        return EvseState.FAULTED
    if not evse.available:
        return EvseState.UNAVAILABLE
    return EvseState.PREPARING if evse.plugged else EvseState.AVAILABLE


def _idle(evse: Evse, **changes: object) -> Evse:
    nxt = replace(evse, session=None, **changes)  # type: ignore[arg-type]
    return replace(nxt, phase=_idle_phase(nxt))


def _ignore(reason: str) -> Handler:
    def handler(policy: Policy, evse: Evse, event: Event) -> Result:
        return evse, [Ignored(reason)]

    return handler


def _reject_cmd(reason: str) -> Handler:
    def handler(policy: Policy, evse: Evse, event: Event) -> Result:
        assert isinstance(event, RemoteStartCmd | RemoteStopCmd)
        return evse, [CommandResult(command_id=event.command_id, accepted=False, reason=reason)]

    return handler


def _cmd_ack(event: Event) -> list[Action]:
    if isinstance(event, SetAvailable | RemoteStartCmd | RemoteStopCmd) and event.command_id:
        return [CommandResult(command_id=event.command_id, accepted=True)]
    return []


def _may_close(evse: Evse) -> bool:
    """Without a pilot the relay follows the session; with one, only while the pilot offers
    current and the car asks for energy (C or D)."""
    return evse.pilot is None or (evse.pilot.requests_power and evse.offer_on)


def _session_matches(evse: Evse, session_id: str) -> bool:
    return evse.session is not None and evse.session.session_id == session_id


# ---------------------------------------------------------------------------- handlers
def _track_plug(plugged: bool) -> Handler:
    def handler(policy: Policy, evse: Evse, event: Event) -> Result:
        return replace(evse, plugged=plugged), []

    return handler


def _idle_plug_in(policy: Policy, evse: Evse, event: Event) -> Result:
    return replace(evse, plugged=True, phase=EvseState.PREPARING), [Notify("Tap your card")]


def _idle_plug_out(policy: Policy, evse: Evse, event: Event) -> Result:
    return _idle(evse, plugged=False), []


def _start_auth(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, TokenPresented)
    session = SessionInfo(
        session_id=event.session_id,
        token=event.token,
        token_key=event.token_key,
        request_id=event.request_id,
        floating=event.floating and not evse.plugged,
    )
    return replace(evse, phase=EvseState.AUTHORIZING, session=session), [
        RequestAuth(event.request_id, event.token, session.floating),
        StartTimer(Timer.AUTH, event.request_id),
        Notify("Authorising..."),
    ]


def _remote_start(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, RemoteStartCmd)
    token = RemoteToken(contract_id=event.contract_id)
    session = SessionInfo(
        session_id=event.session_id,
        token=token,
        token_key=token_key(token),
        contract_id=event.contract_id,
    )
    if evse.plugged:  # the acceptance is committed with the session, never before it
        return replace(evse, phase=EvseState.CHARGING, session=session), [
            AuthorizeAndCharge(session, command_id=event.command_id, close_relay=_may_close(evse)),
        ]
    return replace(evse, phase=EvseState.AUTHORIZED, session=session), [
        Authorize(session, command_id=event.command_id),
        StartTimer(Timer.CONNECTION, session.session_id),
        Notify("Plug in your car"),
    ]


def _auth_result(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, AuthResult)
    session = evse.session
    if session is None or session.request_id != event.request_id:
        return evse, [Ignored("auth response for another request")]
    if not event.accepted:
        return _idle(evse), [
            CancelTimer(Timer.AUTH),
            DropSession(session=session, event=SessionEventKind.REJECTED, reason=event.status),
            Notify("Card rejected"),
        ]
    session = replace(
        session, contract_id=event.contract_id, request_id=None, offline=event.offline
    )
    if evse.plugged:
        return replace(evse, phase=EvseState.CHARGING, session=session), [
            CancelTimer(Timer.AUTH),
            AuthorizeAndCharge(session, close_relay=_may_close(evse)),
            Notify("Card accepted"),
        ]
    return replace(evse, phase=EvseState.AUTHORIZED, session=session), [
        CancelTimer(Timer.AUTH),
        Authorize(session),
        StartTimer(Timer.CONNECTION, session.session_id),
        Notify("Card accepted - plug in your car"),
    ]


def _auth_timeout(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, AuthTimeout)
    session = evse.session
    if session is None or session.request_id != event.request_id:
        return evse, [Ignored("stale auth timeout")]
    if event.offline is not None and event.offline.accepted:  # the offline policy lets it charge
        decision = replace(event.offline, request_id=event.request_id, offline=True)
        return _auth_result(policy, evse, decision)
    return _idle(evse), [
        DropSession(session=session, event=SessionEventKind.TIMEOUT, reason="auth_timeout"),
        Notify("Backend not reachable - try again"),
    ]


def _connection_timeout(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, ConnectionTimeout)
    session = evse.session
    if session is None or session.session_id != event.session_id:
        return evse, [Ignored("stale connection timeout")]
    return _idle(evse), [
        DropSession(session=session, event=SessionEventKind.TIMEOUT, reason="connection_timeout"),
        Notify("No car connected - session cancelled"),
    ]


def _cancel_with(timer: Timer | None, event_kind: SessionEventKind, reason: str) -> Handler:
    """End a session that never charged (auth pending or waiting for the car)."""

    def handler(policy: Policy, evse: Evse, event: Event) -> Result:
        if isinstance(event, SetAvailable) and event.available:
            return evse, _cmd_ack(event)  # already available: nothing to cancel
        session = evse.session
        assert session is not None
        acts: list[Action] = [] if timer is None else [CancelTimer(timer)]
        acts.append(DropSession(session=session, event=event_kind, reason=reason))
        if isinstance(event, SetAvailable):
            return _idle(evse, available=event.available), [*acts, OpenRelay(), *_cmd_ack(event)]
        if isinstance(event, FaultRaised):
            return _idle(evse, fault=event.fault), [*acts, OpenRelay()]
        return _idle(evse), [*acts, *_cmd_ack(event)]

    return handler


def _remote_stop_pending(timer: Timer) -> Handler:
    cancel = _cancel_with(timer, SessionEventKind.STOPPED, "remote")

    def handler(policy: Policy, evse: Evse, event: Event) -> Result:
        assert isinstance(event, RemoteStopCmd)
        if not _session_matches(evse, event.session_id):
            return evse, [
                CommandResult(
                    command_id=event.command_id, accepted=False, reason="unknown session_id"
                )
            ]
        return cancel(policy, evse, event)

    return handler


def _authorized_token(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, TokenPresented)
    session = evse.session
    assert session is not None
    if policy.stop_with_same_token and event.token_key == session.token_key:
        return _idle(evse), [
            CancelTimer(Timer.CONNECTION),
            DropSession(session=session, event=SessionEventKind.STOPPED, reason="local"),
            Notify("Session cancelled"),
        ]
    return evse, [Ignored("EVSE is reserved for another token")]


def _authorized_plug_in(policy: Policy, evse: Evse, event: Event) -> Result:
    session = evse.session
    assert session is not None
    return replace(evse, phase=EvseState.CHARGING, plugged=True), [
        CancelTimer(Timer.CONNECTION),
        BeginCharging(session.session_id, close_relay=_may_close(evse)),
    ]


def _release(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, ReleaseSession)
    if not _session_matches(evse, event.session_id):
        return evse, [Ignored("release of another session")]
    return _idle(evse), [CancelTimer(Timer.CONNECTION)]


def _adopt(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, AdoptSession)
    session = replace(event.session, floating=False)
    return replace(evse, phase=EvseState.CHARGING, session=session), [
        BeginCharging(session.session_id, close_relay=_may_close(evse))
    ]


def _end(reason: StopReason, *, finishing: bool) -> Handler:
    """End a charging session (CDR); the car may still be plugged (finishing)."""

    def handler(policy: Policy, evse: Evse, event: Event) -> Result:
        if isinstance(event, SetAvailable) and event.available:
            return evse, _cmd_ack(event)  # already available: the session goes on
        session = evse.session
        assert session is not None
        acts: list[Action] = [EndSession(session.session_id, reason)]
        nxt = _idle(evse)
        if isinstance(event, PlugOut):
            nxt = _idle(evse, plugged=False)
        elif isinstance(event, SetAvailable):
            nxt = _idle(evse, available=event.available)
        elif isinstance(event, FaultRaised):
            nxt = _idle(evse, fault=event.fault)
        elif finishing and evse.plugged:
            nxt = replace(evse, phase=EvseState.FINISHING, session=None)
        return nxt, [*acts, *_cmd_ack(event)]

    return handler


def _deauthorized_waiting(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, Deauthorized)
    session = evse.session
    if session is None or session.session_id != event.session_id:
        return evse, [Ignored("deauthorisation of another session")]
    return _idle(evse), [
        CancelTimer(Timer.CONNECTION),
        DropSession(session=session, event=SessionEventKind.STOPPED, reason="deauthorized"),
        Notify("Card refused by the backend"),
    ]


def _deauthorized_charging(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, Deauthorized)
    if not _session_matches(evse, event.session_id):
        return evse, [Ignored("deauthorisation of another session")]
    nxt, acts = _end(StopReason.DEAUTHORIZED, finishing=True)(policy, evse, event)
    return nxt, [*acts, Notify("Card refused by the backend - session stopped")]


def _reset_charging(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, StationReset)
    nxt, acts = _end(event.reason, finishing=True)(policy, evse, event)
    return nxt, [*acts, Notify("Station restarting - session stopped")]


def _resume(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, ResumeSession)
    return replace(evse, phase=EvseState.CHARGING, session=event.session), [
        ResumeCharging(event.session.session_id, close_relay=_may_close(evse))
    ]


def _charging_token(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, TokenPresented)
    session = evse.session
    assert session is not None
    if policy.stop_with_same_token and event.token_key == session.token_key:
        nxt, acts = _end(StopReason.LOCAL, finishing=True)(policy, evse, event)
        return nxt, [*acts, Notify("Session stopped - unplug your car")]
    return evse, [Ignored("EVSE is busy with another token's session")]


def _charging_remote_stop(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, RemoteStopCmd)
    if not _session_matches(evse, event.session_id):
        return evse, [
            CommandResult(command_id=event.command_id, accepted=False, reason="unknown session_id")
        ]
    return _end(StopReason.REMOTE, finishing=True)(policy, evse, event)


def _set_available_idle(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, SetAvailable)
    nxt = _idle(evse, available=event.available)
    acts: list[Action] = [OpenRelay()] if not event.available else []
    return nxt, [*acts, *_cmd_ack(event)]


def _finishing_available(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, SetAvailable)
    if event.available:
        return evse, _cmd_ack(event)
    return _set_available_idle(policy, evse, event)


def _fault_idle(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, FaultRaised)
    return _idle(evse, fault=event.fault), [OpenRelay()]


def _fault_update(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, FaultRaised)
    return replace(evse, fault=event.fault), [OpenRelay()]


def _fault_cleared(policy: Policy, evse: Evse, event: Event) -> Result:
    return _idle(evse, fault=None), []


def _faulted_available(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, SetAvailable)
    return replace(evse, available=event.available), _cmd_ack(event)


def _remote_stop_unknown(policy: Policy, evse: Evse, event: Event) -> Result:
    assert isinstance(event, RemoteStopCmd)
    return evse, [
        CommandResult(command_id=event.command_id, accepted=False, reason="unknown session_id")
    ]


def _pilot_signal(policy: Policy, evse: Evse, event: Event) -> Result:
    """The plug events come from the same pilot change (B/C/D plugged, A unplugged). While
    charging the contactor closes when the car asks for energy (C/D) and opens at once when it
    stops asking (B: paused or full) or the pilot shows A, E or F."""
    assert isinstance(event, PilotSignal)
    return _follow(evse, replace(evse, pilot=event.state))


def _offer_changed(policy: Policy, evse: Evse, event: Event) -> Result:
    """The pilot's offer started (the relay closes if the car already asks) or stopped (the
    relay opens if the car still asks: it ignored the pause)."""
    assert isinstance(event, OfferChanged)
    return _follow(evse, replace(evse, offer_on=event.on))


def _follow(evse: Evse, nxt: Evse) -> Result:
    """While charging, the contactor follows :func:`_may_close` from ``evse`` to ``nxt``."""
    if evse.phase is not EvseState.CHARGING or evse.session is None:
        return nxt, []
    was, now = _may_close(evse), _may_close(nxt)
    if now and not was:
        return nxt, [CloseRelay(evse.session.session_id)]
    if was and not now:
        return nxt, [OpenRelay()]
    return nxt, []


# ---------------------------------------------------------------------------- the table
S = EvseState
_STALE_AUTH = _ignore("no auth request pending")
_STALE_CONN = _ignore("no session waiting for a car")
_NO_FLOAT = _ignore("no floating session here")

TABLE: dict[tuple[EvseState, type], Handler] = {
    # -- available: nobody plugged, no session
    (S.AVAILABLE, TokenPresented): _start_auth,
    (S.AVAILABLE, PlugIn): _idle_plug_in,
    (S.AVAILABLE, RemoteStartCmd): _remote_start,
    (S.AVAILABLE, RemoteStopCmd): _remote_stop_unknown,
    (S.AVAILABLE, SetAvailable): _set_available_idle,
    (S.AVAILABLE, FaultRaised): _fault_idle,
    # -- preparing: car plugged, no authorisation yet
    (S.PREPARING, TokenPresented): _start_auth,
    (S.PREPARING, PlugOut): _idle_plug_out,
    (S.PREPARING, RemoteStartCmd): _remote_start,
    (S.PREPARING, RemoteStopCmd): _remote_stop_unknown,
    (S.PREPARING, SetAvailable): _set_available_idle,
    (S.PREPARING, FaultRaised): _fault_idle,
    (S.PREPARING, AdoptSession): _adopt,
    (S.PREPARING, ResumeSession): _resume,
    # -- authorizing: waiting for the backend
    (S.AUTHORIZING, AuthResult): _auth_result,
    (S.AUTHORIZING, AuthTimeout): _auth_timeout,
    (S.AUTHORIZING, PlugIn): _track_plug(True),
    (S.AUTHORIZING, PlugOut): _track_plug(False),
    (S.AUTHORIZING, RemoteStartCmd): _reject_cmd("EVSE is busy"),
    (S.AUTHORIZING, RemoteStopCmd): _remote_stop_pending(Timer.AUTH),
    (S.AUTHORIZING, SetAvailable): _cancel_with(
        Timer.AUTH, SessionEventKind.STOPPED, "unavailable"
    ),
    (S.AUTHORIZING, FaultRaised): _cancel_with(Timer.AUTH, SessionEventKind.STOPPED, "fault"),
    (S.AUTHORIZING, StationReset): _cancel_with(Timer.AUTH, SessionEventKind.STOPPED, "restart"),
    # -- authorized: waiting for the car
    (S.AUTHORIZED, TokenPresented): _authorized_token,
    (S.AUTHORIZED, PlugIn): _authorized_plug_in,
    (S.AUTHORIZED, ConnectionTimeout): _connection_timeout,
    (S.AUTHORIZED, RemoteStartCmd): _reject_cmd("EVSE is busy"),
    (S.AUTHORIZED, RemoteStopCmd): _remote_stop_pending(Timer.CONNECTION),
    (S.AUTHORIZED, SetAvailable): _cancel_with(
        Timer.CONNECTION, SessionEventKind.STOPPED, "unavailable"
    ),
    (S.AUTHORIZED, FaultRaised): _cancel_with(Timer.CONNECTION, SessionEventKind.STOPPED, "fault"),
    (S.AUTHORIZED, ReleaseSession): _release,
    (S.AUTHORIZED, Deauthorized): _deauthorized_waiting,
    (S.AUTHORIZED, StationReset): _cancel_with(
        Timer.CONNECTION, SessionEventKind.STOPPED, "restart"
    ),
    # -- charging: relay closed
    (S.CHARGING, PlugOut): _end(StopReason.EV_DISCONNECTED, finishing=False),
    (S.CHARGING, TokenPresented): _charging_token,
    (S.CHARGING, RemoteStopCmd): _charging_remote_stop,
    (S.CHARGING, RemoteStartCmd): _reject_cmd("EVSE is busy"),
    (S.CHARGING, SetAvailable): _end(StopReason.REMOTE, finishing=False),
    (S.CHARGING, FaultRaised): _end(StopReason.FAULT, finishing=False),
    (S.CHARGING, Deauthorized): _deauthorized_charging,
    (S.CHARGING, StationReset): _reset_charging,
    # -- finishing: session over, car still plugged
    (S.FINISHING, PlugOut): _idle_plug_out,
    (S.FINISHING, TokenPresented): _start_auth,
    (S.FINISHING, RemoteStartCmd): _remote_start,
    (S.FINISHING, RemoteStopCmd): _remote_stop_unknown,
    (S.FINISHING, SetAvailable): _finishing_available,
    (S.FINISHING, FaultRaised): _fault_idle,
    # -- unavailable (set by the backend)
    (S.UNAVAILABLE, SetAvailable): _set_available_idle,
    (S.UNAVAILABLE, PlugIn): _track_plug(True),
    (S.UNAVAILABLE, PlugOut): _track_plug(False),
    (S.UNAVAILABLE, RemoteStartCmd): _reject_cmd("EVSE is unavailable"),
    (S.UNAVAILABLE, RemoteStopCmd): _remote_stop_unknown,
    (S.UNAVAILABLE, FaultRaised): _fault_idle,
    (S.UNAVAILABLE, TokenPresented): _ignore("EVSE is unavailable"),
    # -- faulted
    (S.FAULTED, FaultRaised): _fault_update,
    (S.FAULTED, FaultCleared): _fault_cleared,
    (S.FAULTED, SetAvailable): _faulted_available,
    (S.FAULTED, PlugIn): _track_plug(True),
    (S.FAULTED, PlugOut): _track_plug(False),
    (S.FAULTED, RemoteStartCmd): _reject_cmd("EVSE is faulted"),
    (S.FAULTED, RemoteStopCmd): _remote_stop_unknown,
    (S.FAULTED, TokenPresented): _ignore("EVSE is faulted"),
}


TABLE.update({(phase, PilotSignal): _pilot_signal for phase in EvseState})
TABLE.update({(phase, OfferChanged): _offer_changed for phase in EvseState})


def step(policy: Policy, evse: Evse, event: Event) -> Result:
    handler = TABLE.get((evse.phase, type(event)))
    if handler is None:
        return evse, [Ignored(f"{type(event).__name__} ignored in state {evse.phase.value}")]
    return handler(policy, evse, event)
