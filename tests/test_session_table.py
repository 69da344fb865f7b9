"""The per-EVSE transition table (agent.session), checked pair by pair against issue 2.

``EXPECTED`` below is the specification written out by hand: for every (phase, event type) pair
at least one case with a realistic EVSE, the exact next EVSE and the exact list of actions.
Pairs that are absent from ``TABLE`` must leave the EVSE untouched with exactly one ``Ignored``.
A meta-test checks that the expectations cover every pair of EvseState x EVENT_TYPES (8 x 13 in
issue 2, plus the events added since: Deauthorized, ResumeSession), so a new event or state
cannot be added without writing down what it does in every phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.messages import (
    EvseState,
    QrToken,
    RemoteToken,
    RfidToken,
    SessionEventKind,
    StopReason,
    token_key,
)
from agent.session import (
    EVENT_TYPES,
    TABLE,
    Action,
    AdoptSession,
    Authorize,
    AuthorizeAndCharge,
    AuthResult,
    AuthTimeout,
    BeginCharging,
    CancelTimer,
    CloseRelay,
    CommandResult,
    ConnectionTimeout,
    Deauthorized,
    DropSession,
    EndSession,
    Event,
    Evse,
    FaultCleared,
    FaultKind,
    FaultRaised,
    Ignored,
    Notify,
    OfferChanged,
    OpenRelay,
    PilotSignal,
    PlugIn,
    PlugOut,
    Policy,
    ReleaseSession,
    RemoteStartCmd,
    RemoteStopCmd,
    RequestAuth,
    ResumeCharging,
    ResumeSession,
    SessionInfo,
    SetAvailable,
    StartTimer,
    StationReset,
    Timer,
    TokenPresented,
    step,
)
from drivers.pilot.base import PilotState

S = EvseState
ON = Policy(stop_with_same_token=True)
OFF = Policy(stop_with_same_token=False)

# ------------------------------------------------------------------------------------ fixtures
EVSE_ID = "DE*ICE*E000001*1"
SID = "aaaaaaaa-0000-4000-8000-000000000001"  # the session an EVSE already holds
NEW_SID = "aaaaaaaa-0000-4000-8000-000000000002"  # the session a tap would start
RSID = "aaaaaaaa-0000-4000-8000-000000000003"  # the session a remote start carries
FSID = "aaaaaaaa-0000-4000-8000-000000000004"  # a floating session from another EVSE
OTHER_SID = "aaaaaaaa-0000-4000-8000-0000000000ff"
RID = "req-0001"  # the pending auth request
NEW_RID = "req-0002"
OLD_RID = "req-0000"  # a stale one
CONTRACT = "DE8ACC12345678"
FAULT = FaultKind.RELAY_WELDED
NEW_FAULT = FaultKind.METER_FAILED

UID_A = "04A224B2C13C80"
UID_B = "04B1B2B3B4B5B6"
TOK_A = RfidToken(uid=UID_A)
TOK_B = RfidToken(uid=UID_B)
KEY_A = f"rfid:{UID_A}"
KEY_B = f"rfid:{UID_B}"

PENDING = SessionInfo(
    session_id=SID, token=TOK_A, token_key=KEY_A, request_id=RID
)  # tap made, backend not answered
AUTHED = SessionInfo(
    session_id=SID, token=TOK_A, token_key=KEY_A, contract_id=CONTRACT
)  # authorised
ACCEPTED = replace(PENDING, contract_id=CONTRACT, request_id=None)  # PENDING after "accepted"
NEW_A = SessionInfo(session_id=NEW_SID, token=TOK_A, token_key=KEY_A, request_id=NEW_RID)
NEW_A_FLOATING = replace(NEW_A, floating=True)
REMOTE = SessionInfo(
    session_id=RSID,
    token=RemoteToken(contract_id=CONTRACT),
    token_key=f"contract:{CONTRACT}",
    contract_id=CONTRACT,
)
FLOATING = SessionInfo(
    session_id=FSID, token=TOK_B, token_key=KEY_B, contract_id=CONTRACT, floating=True
)

AV = Evse(evse_id=EVSE_ID)
PR = Evse(evse_id=EVSE_ID, phase=S.PREPARING, plugged=True)
AZ = Evse(evse_id=EVSE_ID, phase=S.AUTHORIZING, plugged=False, session=PENDING)
AZP = Evse(evse_id=EVSE_ID, phase=S.AUTHORIZING, plugged=True, session=PENDING)
AD = Evse(evse_id=EVSE_ID, phase=S.AUTHORIZED, plugged=False, session=AUTHED)
CH = Evse(evse_id=EVSE_ID, phase=S.CHARGING, plugged=True, session=AUTHED)
FI = Evse(evse_id=EVSE_ID, phase=S.FINISHING, plugged=True)
UN = Evse(evse_id=EVSE_ID, phase=S.UNAVAILABLE, available=False)
UNP = Evse(evse_id=EVSE_ID, phase=S.UNAVAILABLE, plugged=True, available=False)
FA = Evse(evse_id=EVSE_ID, phase=S.FAULTED, fault=FAULT)
FAP = Evse(evse_id=EVSE_ID, phase=S.FAULTED, plugged=True, fault=FAULT)
FAU = Evse(evse_id=EVSE_ID, phase=S.FAULTED, available=False, fault=FAULT)

FIXTURES: dict[EvseState, list[Evse]] = {
    S.AVAILABLE: [AV],
    S.PREPARING: [PR],
    S.AUTHORIZING: [AZ, AZP],
    S.AUTHORIZED: [AD],
    S.CHARGING: [CH],
    S.FINISHING: [FI],
    S.UNAVAILABLE: [UN, UNP],
    S.FAULTED: [FA, FAP, FAU],
}

# ------------------------------------------------------------------------------------ events
TAP_A = TokenPresented(token=TOK_A, token_key=KEY_A, session_id=NEW_SID, request_id=NEW_RID)
TAP_A_FLOAT = replace(TAP_A, floating=True)
TAP_B = TokenPresented(token=TOK_B, token_key=KEY_B, session_id=NEW_SID, request_id=NEW_RID)
AUTH_OK = AuthResult(request_id=RID, accepted=True, status="accepted", contract_id=CONTRACT)
AUTH_NO = AuthResult(request_id=RID, accepted=False, status="blocked")
AUTH_STALE = AuthResult(request_id=OLD_RID, accepted=True, status="accepted", contract_id=CONTRACT)
AUTH_TO = AuthTimeout(RID)
AUTH_TO_STALE = AuthTimeout(OLD_RID)
# the station's own decision (auth.offline_policy) travels in the timeout; the table decides
OFFLINE_OK = AuthResult(
    request_id=RID, accepted=True, status="accepted", contract_id=CONTRACT, offline=True
)
OFFLINE_NO = AuthResult(request_id=RID, accepted=False, status="unknown", offline=True)
AUTH_TO_OFFLINE_OK = AuthTimeout(RID, offline=OFFLINE_OK)
AUTH_TO_OFFLINE_NO = AuthTimeout(RID, offline=OFFLINE_NO)
AUTH_TO_STALE_OFFLINE_OK = AuthTimeout(OLD_RID, offline=replace(OFFLINE_OK, request_id=OLD_RID))
CONN_TO = ConnectionTimeout(SID)
CONN_TO_STALE = ConnectionTimeout(OTHER_SID)
PLUG_IN = PlugIn()
PLUG_OUT = PlugOut()
RSTART = RemoteStartCmd(command_id="cmd-start", contract_id=CONTRACT, session_id=RSID)
RSTOP = RemoteStopCmd("cmd-stop", SID)
RSTOP_OTHER = RemoteStopCmd("cmd-stop-x", OTHER_SID)
OFF_CMD = SetAvailable(False, "cmd-off")
ON_CMD = SetAvailable(True, "cmd-on")
OFF_LOCAL = SetAvailable(False)  # no command id: e.g. restored from the store at start-up
FAULT_EV = FaultRaised(NEW_FAULT)
CLEAR = FaultCleared()
ADOPT = AdoptSession(FLOATING)
RELEASE = ReleaseSession(SID)
RELEASE_OTHER = ReleaseSession(OTHER_SID)
DEAUTH = Deauthorized(SID)
DEAUTH_OTHER = Deauthorized(OTHER_SID)
RESET = StationReset(StopReason.SOFT_RESET)
RESUMED = SessionInfo(session_id=SID, token=TOK_A, token_key=KEY_A, contract_id=CONTRACT)
RESUME = ResumeSession(RESUMED)

# ------------------------------------------------------------------------------------ actions
NOTE = Notify("*")  # display text is not part of the contract: compared by type only


def ok(cmd: str) -> CommandResult:
    return CommandResult(command_id=cmd, accepted=True)


def rej(cmd: str) -> CommandResult:
    return CommandResult(
        command_id=cmd, accepted=False, reason="*"
    )  # a rejection always carries some reason


def answered(actions: Sequence[Action]) -> list[str]:
    """The command ids the actions answer: a CommandResult, or a remote start's acceptance
    committed with its session (Authorize/AuthorizeAndCharge with a command id)."""
    out = [a.command_id for a in actions if isinstance(a, CommandResult)]
    for a in actions:
        if isinstance(a, Authorize | AuthorizeAndCharge) and a.command_id is not None:
            out.append(a.command_id)
    return out


def norm(actions: Sequence[Action]) -> list[Action]:
    """Actions with free text replaced by '*' (Notify text, Ignored reason, rejection reason)."""
    out: list[Action] = []
    for a in actions:
        if isinstance(a, Notify):
            out.append(NOTE)
        elif isinstance(a, Ignored):
            out.append(Ignored("*"))
        elif isinstance(a, CommandResult) and a.reason is not None:
            assert a.reason, "a rejection reason must not be empty"
            out.append(replace(a, reason="*"))
        else:
            out.append(a)
    return out


IGN = None  # expectation: unchanged EVSE, exactly one Ignored


@dataclass(frozen=True)
class Case:
    id: str
    evse: Evse
    event: Event
    expect: Evse | None  # None: ignored
    actions: tuple[Action, ...] = ()
    policy: Policy = ON


def ig(id_: str, evse: Evse, event: Event, policy: Policy = ON) -> Case:
    return Case(id_, evse, event, IGN, (), policy)


def c(
    id_: str, evse: Evse, event: Event, expect: Evse, *actions: Action, policy: Policy = ON
) -> Case:
    return Case(id_, evse, event, expect, tuple(actions), policy)


# The specification, pair by pair.
EXPECTED: list[Case] = [
    # ---------------------------------------------------------------- AVAILABLE
    c(
        "available/tap",
        AV,
        TAP_A,
        replace(AV, phase=S.AUTHORIZING, session=NEW_A),
        RequestAuth(NEW_RID, TOK_A, False),
        StartTimer(Timer.AUTH, NEW_RID),
        NOTE,
    ),
    c(
        "available/tap-floating",
        AV,
        TAP_A_FLOAT,
        replace(AV, phase=S.AUTHORIZING, session=NEW_A_FLOATING),
        RequestAuth(NEW_RID, TOK_A, True),
        StartTimer(Timer.AUTH, NEW_RID),
        NOTE,
    ),
    ig("available/auth-result", AV, AUTH_OK),
    ig("available/auth-timeout", AV, AUTH_TO),
    ig("available/connection-timeout", AV, CONN_TO),
    c("available/plug-in", AV, PLUG_IN, replace(AV, phase=S.PREPARING, plugged=True), NOTE),
    ig("available/plug-out", AV, PLUG_OUT),
    c(
        "available/remote-start",
        AV,
        RSTART,
        replace(AV, phase=S.AUTHORIZED, session=REMOTE),
        Authorize(REMOTE, command_id="cmd-start"),
        StartTimer(Timer.CONNECTION, RSID),
        NOTE,
    ),
    c("available/remote-stop", AV, RSTOP, AV, rej("cmd-stop")),
    c(
        "available/set-unavailable",
        AV,
        OFF_CMD,
        replace(AV, phase=S.UNAVAILABLE, available=False),
        OpenRelay(),
        ok("cmd-off"),
    ),
    c(
        "available/set-unavailable-local",
        AV,
        OFF_LOCAL,
        replace(AV, phase=S.UNAVAILABLE, available=False),
        OpenRelay(),
    ),
    c("available/set-available", AV, ON_CMD, AV, ok("cmd-on")),
    c("available/fault", AV, FAULT_EV, replace(AV, phase=S.FAULTED, fault=NEW_FAULT), OpenRelay()),
    ig("available/fault-cleared", AV, CLEAR),
    ig("available/adopt", AV, ADOPT),
    ig("available/release", AV, RELEASE),
    ig("available/deauthorized", AV, DEAUTH),
    ig("available/reset", AV, RESET),
    ig("available/resume", AV, RESUME),  # the car is gone: nothing to resume here
    # ---------------------------------------------------------------- PREPARING (car plugged)
    c(
        "preparing/tap",
        PR,
        TAP_A,
        replace(PR, phase=S.AUTHORIZING, session=NEW_A),
        RequestAuth(NEW_RID, TOK_A, False),
        StartTimer(Timer.AUTH, NEW_RID),
        NOTE,
    ),
    # a car is already plugged here: the tap binds to this EVSE, it does not float
    c(
        "preparing/tap-floating",
        PR,
        TAP_A_FLOAT,
        replace(PR, phase=S.AUTHORIZING, session=NEW_A),
        RequestAuth(NEW_RID, TOK_A, False),
        StartTimer(Timer.AUTH, NEW_RID),
        NOTE,
    ),
    ig("preparing/auth-result", PR, AUTH_OK),
    ig("preparing/auth-timeout", PR, AUTH_TO),
    ig("preparing/auth-timeout-offline-accepted", PR, AUTH_TO_OFFLINE_OK),
    ig("preparing/connection-timeout", PR, CONN_TO),
    ig("preparing/plug-in", PR, PLUG_IN),
    c("preparing/plug-out", PR, PLUG_OUT, replace(PR, phase=S.AVAILABLE, plugged=False)),
    c(
        "preparing/remote-start",
        PR,
        RSTART,
        replace(PR, phase=S.CHARGING, session=REMOTE),
        AuthorizeAndCharge(REMOTE, command_id="cmd-start"),
    ),
    c("preparing/remote-stop", PR, RSTOP, PR, rej("cmd-stop")),
    c(
        "preparing/set-unavailable",
        PR,
        OFF_CMD,
        replace(PR, phase=S.UNAVAILABLE, available=False),
        OpenRelay(),
        ok("cmd-off"),
    ),
    c("preparing/set-available", PR, ON_CMD, PR, ok("cmd-on")),
    c("preparing/fault", PR, FAULT_EV, replace(PR, phase=S.FAULTED, fault=NEW_FAULT), OpenRelay()),
    ig("preparing/fault-cleared", PR, CLEAR),
    c(
        "preparing/adopt",
        PR,
        ADOPT,
        replace(PR, phase=S.CHARGING, session=replace(FLOATING, floating=False)),
        BeginCharging(FSID),
    ),
    ig("preparing/release", PR, RELEASE),
    ig("preparing/deauthorized", PR, DEAUTH),
    ig("preparing/reset", PR, RESET),
    # after a restart with the car still plugged: charging goes on, no new 'started'
    c(
        "preparing/resume",
        PR,
        RESUME,
        replace(PR, phase=S.CHARGING, session=RESUMED),
        ResumeCharging(SID),
    ),
    # ---------------------------------------------------------------- AUTHORIZING
    ig("authorizing/tap-same", AZ, TAP_A),
    ig("authorizing/tap-other", AZ, TAP_B),
    c(
        "authorizing/accepted-unplugged",
        AZ,
        AUTH_OK,
        replace(AZ, phase=S.AUTHORIZED, session=ACCEPTED),
        CancelTimer(Timer.AUTH),
        Authorize(ACCEPTED),
        StartTimer(Timer.CONNECTION, SID),
        NOTE,
    ),
    c(
        "authorizing/accepted-plugged",
        AZP,
        AUTH_OK,
        replace(AZP, phase=S.CHARGING, session=ACCEPTED),
        CancelTimer(Timer.AUTH),
        AuthorizeAndCharge(ACCEPTED),
        NOTE,
    ),
    c(
        "authorizing/rejected-unplugged",
        AZ,
        AUTH_NO,
        replace(AZ, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.AUTH),
        DropSession(session=PENDING, event=SessionEventKind.REJECTED, reason="blocked"),
        NOTE,
    ),
    c(
        "authorizing/rejected-plugged",
        AZP,
        AUTH_NO,
        replace(AZP, phase=S.PREPARING, session=None),
        CancelTimer(Timer.AUTH),
        DropSession(session=PENDING, event=SessionEventKind.REJECTED, reason="blocked"),
        NOTE,
    ),
    c(
        "authorizing/accepted-offline",
        AZP,
        replace(AUTH_OK, offline=True),
        replace(AZP, phase=S.CHARGING, session=replace(ACCEPTED, offline=True)),
        CancelTimer(Timer.AUTH),
        AuthorizeAndCharge(replace(ACCEPTED, offline=True)),
        NOTE,
    ),
    ig("authorizing/auth-result-stale", AZ, AUTH_STALE),
    c(
        "authorizing/auth-timeout-unplugged",
        AZ,
        AUTH_TO,
        replace(AZ, phase=S.AVAILABLE, session=None),
        DropSession(session=PENDING, event=SessionEventKind.TIMEOUT, reason="auth_timeout"),
        NOTE,
    ),
    c(
        "authorizing/auth-timeout-plugged",
        AZP,
        AUTH_TO,
        replace(AZP, phase=S.PREPARING, session=None),
        DropSession(session=PENDING, event=SessionEventKind.TIMEOUT, reason="auth_timeout"),
        NOTE,
    ),
    ig("authorizing/auth-timeout-stale", AZ, AUTH_TO_STALE),
    # an accepting offline decision behaves exactly like that AuthResult (offline flag set)
    c(
        "authorizing/auth-timeout-offline-accepted-unplugged",
        AZ,
        AUTH_TO_OFFLINE_OK,
        replace(AZ, phase=S.AUTHORIZED, session=replace(ACCEPTED, offline=True)),
        CancelTimer(Timer.AUTH),
        Authorize(replace(ACCEPTED, offline=True)),
        StartTimer(Timer.CONNECTION, SID),
        NOTE,
    ),
    c(
        "authorizing/auth-timeout-offline-accepted-plugged",
        AZP,
        AUTH_TO_OFFLINE_OK,
        replace(AZP, phase=S.CHARGING, session=replace(ACCEPTED, offline=True)),
        CancelTimer(Timer.AUTH),
        AuthorizeAndCharge(replace(ACCEPTED, offline=True)),
        NOTE,
    ),
    # a refusing offline decision is a plain timeout (not a rejection)
    c(
        "authorizing/auth-timeout-offline-refused-unplugged",
        AZ,
        AUTH_TO_OFFLINE_NO,
        replace(AZ, phase=S.AVAILABLE, session=None),
        DropSession(session=PENDING, event=SessionEventKind.TIMEOUT, reason="auth_timeout"),
        NOTE,
    ),
    c(
        "authorizing/auth-timeout-offline-refused-plugged",
        AZP,
        AUTH_TO_OFFLINE_NO,
        replace(AZP, phase=S.PREPARING, session=None),
        DropSession(session=PENDING, event=SessionEventKind.TIMEOUT, reason="auth_timeout"),
        NOTE,
    ),
    ig("authorizing/auth-timeout-stale-offline-accepted", AZ, AUTH_TO_STALE_OFFLINE_OK),
    ig("authorizing/auth-timeout-stale-offline-accepted-plugged", AZP, AUTH_TO_STALE_OFFLINE_OK),
    ig("authorizing/connection-timeout", AZ, CONN_TO),
    c("authorizing/plug-in", AZ, PLUG_IN, AZP),
    c("authorizing/plug-out", AZP, PLUG_OUT, AZ),
    c("authorizing/plug-out-unplugged", AZ, PLUG_OUT, AZ),
    c("authorizing/remote-start", AZ, RSTART, AZ, rej("cmd-start")),
    c(
        "authorizing/remote-stop",
        AZ,
        RSTOP,
        replace(AZ, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.AUTH),
        DropSession(session=PENDING, event=SessionEventKind.STOPPED, reason="remote"),
        ok("cmd-stop"),
    ),
    c("authorizing/remote-stop-other", AZ, RSTOP_OTHER, AZ, rej("cmd-stop-x")),
    c(
        "authorizing/set-unavailable",
        AZP,
        OFF_CMD,
        replace(AZP, phase=S.UNAVAILABLE, available=False, session=None),
        CancelTimer(Timer.AUTH),
        DropSession(session=PENDING, event=SessionEventKind.STOPPED, reason="unavailable"),
        OpenRelay(),
        ok("cmd-off"),
    ),
    c("authorizing/set-available", AZ, ON_CMD, AZ, ok("cmd-on")),
    c(
        "authorizing/fault",
        AZ,
        FAULT_EV,
        replace(AZ, phase=S.FAULTED, fault=NEW_FAULT, session=None),
        CancelTimer(Timer.AUTH),
        DropSession(session=PENDING, event=SessionEventKind.STOPPED, reason="fault"),
        OpenRelay(),
    ),
    ig("authorizing/fault-cleared", AZ, CLEAR),
    ig("authorizing/adopt", AZP, ADOPT),
    ig("authorizing/release", AZ, RELEASE),
    ig("authorizing/deauthorized", AZ, DEAUTH),
    c(
        "authorizing/reset",
        AZ,
        RESET,
        replace(AZ, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.AUTH),
        DropSession(session=PENDING, event=SessionEventKind.STOPPED, reason="restart"),
    ),
    ig("authorizing/resume", AZP, RESUME),
    # ---------------------------------------------------------------- AUTHORIZED (no car yet)
    c(
        "authorized/tap-same",
        AD,
        TAP_A,
        replace(AD, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.CONNECTION),
        DropSession(session=AUTHED, event=SessionEventKind.STOPPED, reason="local"),
        NOTE,
    ),
    ig("authorized/tap-same-policy-off", AD, TAP_A, policy=OFF),
    ig("authorized/tap-other", AD, TAP_B),
    ig("authorized/auth-result", AD, replace(AUTH_OK, request_id=SID)),
    ig("authorized/auth-timeout", AD, AUTH_TO),
    ig("authorized/auth-timeout-offline-accepted", AD, AUTH_TO_OFFLINE_OK),
    c(
        "authorized/connection-timeout",
        AD,
        CONN_TO,
        replace(AD, phase=S.AVAILABLE, session=None),
        DropSession(session=AUTHED, event=SessionEventKind.TIMEOUT, reason="connection_timeout"),
        NOTE,
    ),
    ig("authorized/connection-timeout-stale", AD, CONN_TO_STALE),
    c(
        "authorized/plug-in",
        AD,
        PLUG_IN,
        replace(AD, phase=S.CHARGING, plugged=True),
        CancelTimer(Timer.CONNECTION),
        BeginCharging(SID),
    ),
    ig("authorized/plug-out", AD, PLUG_OUT),
    c("authorized/remote-start", AD, RSTART, AD, rej("cmd-start")),
    c(
        "authorized/remote-stop",
        AD,
        RSTOP,
        replace(AD, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.CONNECTION),
        DropSession(session=AUTHED, event=SessionEventKind.STOPPED, reason="remote"),
        ok("cmd-stop"),
    ),
    c("authorized/remote-stop-other", AD, RSTOP_OTHER, AD, rej("cmd-stop-x")),
    c(
        "authorized/set-unavailable",
        AD,
        OFF_CMD,
        replace(AD, phase=S.UNAVAILABLE, available=False, session=None),
        CancelTimer(Timer.CONNECTION),
        DropSession(session=AUTHED, event=SessionEventKind.STOPPED, reason="unavailable"),
        OpenRelay(),
        ok("cmd-off"),
    ),
    # SetAvailable(True) while authorised does not cancel the session
    c("authorized/set-available", AD, ON_CMD, AD, ok("cmd-on")),
    c(
        "authorized/fault",
        AD,
        FAULT_EV,
        replace(AD, phase=S.FAULTED, fault=NEW_FAULT, session=None),
        CancelTimer(Timer.CONNECTION),
        DropSession(session=AUTHED, event=SessionEventKind.STOPPED, reason="fault"),
        OpenRelay(),
    ),
    ig("authorized/fault-cleared", AD, CLEAR),
    ig("authorized/adopt", AD, ADOPT),
    c(
        "authorized/release",
        AD,
        RELEASE,
        replace(AD, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.CONNECTION),
    ),
    ig("authorized/release-other", AD, RELEASE_OTHER),
    c(
        "authorized/deauthorized",
        AD,
        DEAUTH,
        replace(AD, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.CONNECTION),
        DropSession(session=AUTHED, event=SessionEventKind.STOPPED, reason="deauthorized"),
        NOTE,
    ),
    ig("authorized/deauthorized-other", AD, DEAUTH_OTHER),
    c(
        "authorized/reset",
        AD,
        RESET,
        replace(AD, phase=S.AVAILABLE, session=None),
        CancelTimer(Timer.CONNECTION),
        DropSession(session=AUTHED, event=SessionEventKind.STOPPED, reason="restart"),
    ),
    ig("authorized/resume", AD, RESUME),
    # ---------------------------------------------------------------- CHARGING
    c(
        "charging/tap-same",
        CH,
        TAP_A,
        replace(CH, phase=S.FINISHING, session=None),
        EndSession(SID, StopReason.LOCAL),
        NOTE,
    ),
    ig("charging/tap-same-policy-off", CH, TAP_A, policy=OFF),
    ig("charging/tap-other", CH, TAP_B),
    ig("charging/auth-result", CH, replace(AUTH_OK, request_id=SID)),
    ig("charging/auth-timeout", CH, AUTH_TO),
    ig("charging/auth-timeout-offline-accepted", CH, AUTH_TO_OFFLINE_OK),
    ig("charging/connection-timeout", CH, CONN_TO),
    ig("charging/plug-in", CH, PLUG_IN),
    c(
        "charging/plug-out",
        CH,
        PLUG_OUT,
        replace(CH, phase=S.AVAILABLE, plugged=False, session=None),
        EndSession(SID, StopReason.EV_DISCONNECTED),
    ),
    c("charging/remote-start", CH, RSTART, CH, rej("cmd-start")),
    c(
        "charging/remote-stop",
        CH,
        RSTOP,
        replace(CH, phase=S.FINISHING, session=None),
        EndSession(SID, StopReason.REMOTE),
        ok("cmd-stop"),
    ),
    c("charging/remote-stop-other", CH, RSTOP_OTHER, CH, rej("cmd-stop-x")),
    c(
        "charging/set-unavailable",
        CH,
        OFF_CMD,
        replace(CH, phase=S.UNAVAILABLE, available=False, session=None),
        EndSession(SID, StopReason.REMOTE),
        ok("cmd-off"),
    ),
    c("charging/set-available", CH, ON_CMD, CH, ok("cmd-on")),
    c(
        "charging/fault",
        CH,
        FAULT_EV,
        replace(CH, phase=S.FAULTED, fault=NEW_FAULT, session=None),
        EndSession(SID, StopReason.FAULT),
    ),
    ig("charging/fault-cleared", CH, CLEAR),
    ig("charging/adopt", CH, ADOPT),
    ig("charging/release", CH, RELEASE),
    c(
        "charging/deauthorized",
        CH,
        DEAUTH,
        replace(CH, phase=S.FINISHING, session=None),
        EndSession(SID, StopReason.DEAUTHORIZED),
        NOTE,
    ),
    ig("charging/deauthorized-other", CH, DEAUTH_OTHER),
    c(
        "charging/reset",
        CH,
        RESET,
        replace(CH, phase=S.FINISHING, session=None),
        EndSession(SID, StopReason.SOFT_RESET),
        NOTE,
    ),
    ig("charging/resume", CH, RESUME),
    # ---------------------------------------------------------------- FINISHING (car still in)
    c(
        "finishing/tap",
        FI,
        TAP_A,
        replace(FI, phase=S.AUTHORIZING, session=NEW_A),
        RequestAuth(NEW_RID, TOK_A, False),
        StartTimer(Timer.AUTH, NEW_RID),
        NOTE,
    ),
    ig("finishing/auth-result", FI, AUTH_OK),
    ig("finishing/auth-timeout", FI, AUTH_TO),
    ig("finishing/connection-timeout", FI, CONN_TO),
    ig("finishing/plug-in", FI, PLUG_IN),
    c("finishing/plug-out", FI, PLUG_OUT, replace(FI, phase=S.AVAILABLE, plugged=False)),
    c(
        "finishing/remote-start",
        FI,
        RSTART,
        replace(FI, phase=S.CHARGING, session=REMOTE),
        AuthorizeAndCharge(REMOTE, command_id="cmd-start"),
    ),
    c("finishing/remote-stop", FI, RSTOP, FI, rej("cmd-stop")),
    c(
        "finishing/set-unavailable",
        FI,
        OFF_CMD,
        replace(FI, phase=S.UNAVAILABLE, available=False),
        OpenRelay(),
        ok("cmd-off"),
    ),
    c("finishing/set-available", FI, ON_CMD, FI, ok("cmd-on")),
    c("finishing/fault", FI, FAULT_EV, replace(FI, phase=S.FAULTED, fault=NEW_FAULT), OpenRelay()),
    ig("finishing/fault-cleared", FI, CLEAR),
    ig("finishing/adopt", FI, ADOPT),
    ig("finishing/release", FI, RELEASE),
    ig("finishing/deauthorized", FI, DEAUTH),
    ig("finishing/reset", FI, RESET),
    ig("finishing/resume", FI, RESUME),
    # ---------------------------------------------------------------- UNAVAILABLE
    ig("unavailable/tap", UN, TAP_A),
    ig("unavailable/tap-plugged", UNP, TAP_A),
    ig("unavailable/auth-result", UN, AUTH_OK),
    ig("unavailable/auth-timeout", UN, AUTH_TO),
    ig("unavailable/connection-timeout", UN, CONN_TO),
    c("unavailable/plug-in", UN, PLUG_IN, UNP),
    c("unavailable/plug-out", UNP, PLUG_OUT, UN),
    c("unavailable/remote-start", UN, RSTART, UN, rej("cmd-start")),
    c("unavailable/remote-stop", UN, RSTOP, UN, rej("cmd-stop")),
    c(
        "unavailable/set-available",
        UN,
        ON_CMD,
        replace(UN, phase=S.AVAILABLE, available=True),
        ok("cmd-on"),
    ),
    c(
        "unavailable/set-available-plugged",
        UNP,
        ON_CMD,
        replace(UNP, phase=S.PREPARING, available=True),
        ok("cmd-on"),
    ),
    c("unavailable/set-unavailable-again", UN, OFF_CMD, UN, OpenRelay(), ok("cmd-off")),
    c(
        "unavailable/fault",
        UN,
        FAULT_EV,
        replace(UN, phase=S.FAULTED, fault=NEW_FAULT),
        OpenRelay(),
    ),
    ig("unavailable/fault-cleared", UN, CLEAR),
    ig("unavailable/adopt", UNP, ADOPT),
    ig("unavailable/release", UN, RELEASE),
    ig("unavailable/deauthorized", UN, DEAUTH),
    ig("unavailable/reset", UN, RESET),
    ig("unavailable/resume", UNP, RESUME),
    # ---------------------------------------------------------------- FAULTED
    ig("faulted/tap", FA, TAP_A),
    ig("faulted/auth-result", FA, AUTH_OK),
    ig("faulted/auth-timeout", FA, AUTH_TO),
    ig("faulted/connection-timeout", FA, CONN_TO),
    c("faulted/plug-in", FA, PLUG_IN, FAP),
    c("faulted/plug-out", FAP, PLUG_OUT, FA),
    c("faulted/remote-start", FA, RSTART, FA, rej("cmd-start")),
    c("faulted/remote-stop", FA, RSTOP, FA, rej("cmd-stop")),
    # availability is remembered while faulted; the phase stays FAULTED
    c("faulted/set-unavailable", FA, OFF_CMD, FAU, ok("cmd-off")),
    c("faulted/set-available", FAU, ON_CMD, FA, ok("cmd-on")),
    c("faulted/fault-again", FA, FAULT_EV, replace(FA, fault=NEW_FAULT), OpenRelay()),
    c("faulted/fault-cleared", FA, CLEAR, replace(FA, phase=S.AVAILABLE, fault=None)),
    c("faulted/fault-cleared-plugged", FAP, CLEAR, replace(FAP, phase=S.PREPARING, fault=None)),
    c(
        "faulted/fault-cleared-unavailable",
        FAU,
        CLEAR,
        replace(FAU, phase=S.UNAVAILABLE, fault=None),
    ),
    ig("faulted/adopt", FAP, ADOPT),
    ig("faulted/release", FA, RELEASE),
    ig("faulted/deauthorized", FA, DEAUTH),
    ig("faulted/reset", FA, RESET),
    ig("faulted/resume", FAP, RESUME),
]


# ---------------------------------------------------------------- PilotSignal (issue 14)
# The pilot state is tracked in every phase; only while charging does it move the contactor:
# closed when the car asks for energy (C/D), opened at once when it stops (B) or on A/E/F.
P = PilotState
CH_B = replace(CH, pilot=P.B, offer_on=True)  # charging session, the car does not ask (full)
CH_C = replace(CH, pilot=P.C, offer_on=True)  # charging session, car drawing
CH_OFF = replace(CH, pilot=P.B)  # paused: no current offered, the car went back to B
EXPECTED.extend(
    [
        c("available/pilot-b", AV, PilotSignal(P.B), replace(AV, pilot=P.B)),
        c("preparing/pilot-a", PR, PilotSignal(P.A), replace(PR, pilot=P.A)),
        c("authorizing/pilot-c", AZP, PilotSignal(P.C), replace(AZP, pilot=P.C)),
        c("authorized/pilot-e", AD, PilotSignal(P.E), replace(AD, pilot=P.E)),
        c("charging/pilot-c-closes", CH_B, PilotSignal(P.C), CH_C, CloseRelay(SID)),
        c(
            "charging/pilot-d-closes",
            CH_B,
            PilotSignal(P.D),
            replace(CH_C, pilot=P.D),
            CloseRelay(SID),
        ),
        c("charging/pilot-b-opens", CH_C, PilotSignal(P.B), CH_B, OpenRelay()),
        c("charging/pilot-a-opens", CH_C, PilotSignal(P.A), replace(CH_C, pilot=P.A), OpenRelay()),
        c("charging/pilot-e-opens", CH_C, PilotSignal(P.E), replace(CH_C, pilot=P.E), OpenRelay()),
        c("charging/pilot-f-opens", CH_C, PilotSignal(P.F), replace(CH_C, pilot=P.F), OpenRelay()),
        c("charging/pilot-f-while-paused", CH_B, PilotSignal(P.F), replace(CH_C, pilot=P.F)),
        c("charging/pilot-c-to-d", CH_C, PilotSignal(P.D), replace(CH_C, pilot=P.D)),
        c("finishing/pilot-b", FI, PilotSignal(P.B), replace(FI, pilot=P.B)),
        c("unavailable/pilot-c", UNP, PilotSignal(P.C), replace(UNP, pilot=P.C)),
        c("faulted/pilot-f", FAP, PilotSignal(P.F), replace(FAP, pilot=P.F)),
        # the offer: the relay closes only while current is offered and the car asks
        c(
            "charging/offer-on-car-asks",
            replace(CH_OFF, pilot=P.C),
            OfferChanged(True),
            CH_C,
            CloseRelay(SID),
        ),
        c("charging/offer-on-car-b", CH_OFF, OfferChanged(True), CH_B),
        c(
            "charging/offer-off-car-ignores",
            CH_C,
            OfferChanged(False),
            replace(CH_C, offer_on=False),
            OpenRelay(),
        ),
        c("charging/offer-off-car-paused", CH_B, OfferChanged(False), CH_OFF),
        c("charging/pilot-c-without-offer", CH_OFF, PilotSignal(P.C), replace(CH_OFF, pilot=P.C)),
        c("available/offer-on", AV, OfferChanged(True), replace(AV, offer_on=True)),
        c("preparing/offer-on", PR, OfferChanged(True), replace(PR, offer_on=True)),
        c("authorizing/offer-off", AZ, OfferChanged(False), AZ),
        c("authorized/offer-on", AD, OfferChanged(True), replace(AD, offer_on=True)),
        c("finishing/offer-off", replace(FI, offer_on=True), OfferChanged(False), FI),
        c("unavailable/offer-off", UN, OfferChanged(False), UN),
        c("faulted/offer-on", FA, OfferChanged(True), replace(FA, offer_on=True)),
    ]
)


def test_with_a_pilot_charging_starts_with_the_relay_open_until_the_car_asks() -> None:
    """The session and its charging start are committed as before; the relay waits for C."""
    waiting_b = replace(AD, pilot=P.B)
    nxt, actions = step(ON, waiting_b, PLUG_IN)
    assert nxt.phase is S.CHARGING
    assert BeginCharging(SID, close_relay=False) in actions
    asking = replace(AZP, pilot=P.C, offer_on=True)  # a technician's test offer was on
    nxt, actions = step(ON, asking, AUTH_OK)
    assert any(isinstance(a, AuthorizeAndCharge) and a.close_relay for a in actions)
    nxt, actions = step(ON, replace(asking, offer_on=False), AUTH_OK)  # C, but nothing offered
    assert any(isinstance(a, AuthorizeAndCharge) and not a.close_relay for a in actions)
    nxt, actions = step(ON, replace(PR, pilot=P.B), RESUME)
    assert actions == [ResumeCharging(SID, close_relay=False)]
    # without a pilot nothing changed: the relay follows the session
    assert BeginCharging(SID) in step(ON, AD, PLUG_IN)[1]


# ------------------------------------------------------------------------------------ table
def test_expectations_cover_every_pair() -> None:
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES) >= 13
    assert len(list(EvseState)) == 8
    covered = {(case.evse.phase, type(case.event)) for case in EXPECTED}
    missing = {(p, t) for p in EvseState for t in EVENT_TYPES} - covered
    assert not missing, sorted(f"{p.value}/{t.__name__}" for p, t in missing)
    assert len({case.id for case in EXPECTED}) == len(EXPECTED), "duplicate case ids"


def test_fixtures_are_consistent_with_their_phase() -> None:
    for phase, evses in FIXTURES.items():
        for evse in evses:
            assert evse.phase is phase
            assert (evse.session is not None) == (
                phase in (S.AUTHORIZING, S.AUTHORIZED, S.CHARGING)
            )
            assert (evse.fault is not None) == (phase is S.FAULTED)


def test_ignored_expectations_match_the_table() -> None:
    """Every pair expected to be ignored outright is absent from TABLE, and vice versa."""
    ignored_pairs = set()
    for case in EXPECTED:
        pair = (case.evse.phase, type(case.event))
        if case.expect is IGN and pair not in TABLE:
            ignored_pairs.add(pair)
    absent = {(p, t) for p in EvseState for t in EVENT_TYPES} - set(TABLE)
    assert ignored_pairs == absent


@pytest.mark.parametrize("case", EXPECTED, ids=[case.id for case in EXPECTED])
def test_transition(case: Case) -> None:
    nxt, actions = step(case.policy, case.evse, case.event)
    if case.expect is IGN:
        assert nxt == case.evse
        assert len(actions) == 1, actions
        assert isinstance(actions[0], Ignored)
        assert actions[0].reason
        return
    assert nxt == case.expect
    assert norm(actions) == list(case.actions)
    assert not any(isinstance(a, Ignored) for a in actions)


def test_pairs_absent_from_table_are_ignored_with_reason_naming_them() -> None:
    absent = [(p, t) for p in EvseState for t in EVENT_TYPES if (p, t) not in TABLE]
    assert len(absent) > 30  # the table is sparse on purpose
    for phase, typ in absent:
        evse = FIXTURES[phase][0]
        event = next(case.event for case in EXPECTED if type(case.event) is typ)
        nxt, actions = step(ON, evse, event)
        assert nxt is evse
        assert actions == [Ignored(f"{typ.__name__} ignored in state {phase.value}")]


# ------------------------------------------------------------------------------------ properties
ALL_FIXTURES = [evse for evses in FIXTURES.values() for evse in evses]
FIXTURE_IDS = [
    f"{e.phase.value}{'-plugged' if e.plugged else ''}{'-off' if not e.available else ''}"
    for e in ALL_FIXTURES
]
COMMANDS: list[Event] = [RSTART, RSTOP, RSTOP_OTHER, OFF_CMD, ON_CMD]


@pytest.mark.parametrize("evse", ALL_FIXTURES, ids=FIXTURE_IDS)
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda e: f"{type(e).__name__}-{e.command_id}")
def test_every_command_gets_exactly_one_result(evse: Evse, cmd: Event) -> None:
    for policy in (ON, OFF):
        _, actions = step(policy, evse, cmd)
        assert answered(actions) == [cmd.command_id], actions  # type: ignore[union-attr]
        assert not any(isinstance(a, Ignored) for a in actions)


@pytest.mark.parametrize("evse", ALL_FIXTURES, ids=FIXTURE_IDS)
def test_local_availability_change_answers_no_command(evse: Evse) -> None:
    for event in (OFF_LOCAL, SetAvailable(True)):
        _, actions = step(ON, evse, event)
        assert not any(isinstance(a, CommandResult) for a in actions)


@pytest.mark.parametrize("evse", ALL_FIXTURES, ids=FIXTURE_IDS)
def test_fault_always_leads_to_faulted_with_relay_opened(evse: Evse) -> None:
    nxt, actions = step(ON, evse, FAULT_EV)
    assert nxt.phase is S.FAULTED
    assert nxt.fault == NEW_FAULT
    assert nxt.session is None
    assert nxt.plugged == evse.plugged
    assert nxt.available == evse.available
    assert not any(isinstance(a, ResumeCharging) for a in actions)
    ends = [a for a in actions if isinstance(a, EndSession)]
    if evse.phase is S.CHARGING:
        assert ends == [EndSession(SID, StopReason.FAULT)]
    else:
        assert not ends
        assert OpenRelay() in actions
    assert not any(closes_relay(a) for a in actions)


def test_pairs_in_table_have_an_explicit_non_ignored_case() -> None:
    """Each handled pair is exercised at least once in the way that changes something."""
    acting = {(case.evse.phase, type(case.event)) for case in EXPECTED if case.expect is not IGN}
    # handlers that only ever ignore, by design, for the given phase
    ignore_only = {(S.UNAVAILABLE, TokenPresented), (S.FAULTED, TokenPresented)}
    assert set(TABLE) - acting == ignore_only


def closes_relay(action: Action) -> str | None:
    """The session id an action starts (or resumes) charging for: the relay closes."""
    if isinstance(action, BeginCharging | ResumeCharging):
        return action.session_id
    if isinstance(action, AuthorizeAndCharge):
        return action.session.session_id
    return None


def check_invariants(before: Evse, event: Event, nxt: Evse, actions: list[Action]) -> None:
    # (b) charging means a session and a car
    if nxt.phase is S.CHARGING:
        assert nxt.session is not None
        assert nxt.plugged
    # (c) the relay closes only when the result is CHARGING
    begins = [sid for a in actions if (sid := closes_relay(a)) is not None]
    if begins:
        assert nxt.phase is S.CHARGING
        assert nxt.session is not None
        assert begins == [nxt.session.session_id]
    # an authorisation that starts charging at once is one action (one commit), never the pair
    assert not (
        any(isinstance(a, Authorize) for a in actions)
        and any(isinstance(a, BeginCharging | AuthorizeAndCharge) for a in actions)
    )
    for a in actions:
        if isinstance(a, AuthorizeAndCharge):
            assert a.session == nxt.session
    # phases without a session hold none
    if nxt.phase in (S.AVAILABLE, S.PREPARING, S.FINISHING, S.UNAVAILABLE, S.FAULTED):
        assert nxt.session is None
    else:
        assert nxt.session is not None
    assert (nxt.fault is not None) == (nxt.phase is S.FAULTED)
    if nxt.phase is S.AVAILABLE:
        assert not nxt.plugged
    if nxt.phase in (S.PREPARING, S.FINISHING):
        assert nxt.plugged
    if nxt.phase is S.UNAVAILABLE:
        assert not nxt.available
    # leaving CHARGING always ends the session with a CDR, never just drops it
    if before.phase is S.CHARGING and nxt.phase is not S.CHARGING:
        assert before.session is not None
        assert next(a for a in actions if isinstance(a, EndSession)).session_id == (
            before.session.session_id
        )
    assert not any(isinstance(a, DropSession) for a in actions) or before.phase in (
        S.AUTHORIZING,
        S.AUTHORIZED,
    )
    if isinstance(event, RemoteStartCmd | RemoteStopCmd) or (
        isinstance(event, SetAvailable) and event.command_id
    ):
        assert len(answered(actions)) == 1


@pytest.mark.parametrize("case", EXPECTED, ids=[case.id for case in EXPECTED])
def test_invariants_hold_for_every_expected_case(case: Case) -> None:
    nxt, actions = step(case.policy, case.evse, case.event)
    check_invariants(case.evse, case.event, nxt, actions)


# ------------------------------------------------------------------------------------ random walk
_SIDS = [SID, NEW_SID, RSID]
_RIDS = [RID, NEW_RID]
_tokens = st.sampled_from([(TOK_A, KEY_A), (TOK_B, KEY_B)])
_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        lambda tk, sid, rid, fl: TokenPresented(
            token=tk[0], token_key=tk[1], session_id=sid, request_id=rid, floating=fl
        ),
        _tokens,
        st.sampled_from(_SIDS),
        st.sampled_from(_RIDS),
        st.booleans(),
    ),
    st.builds(
        lambda rid, acc: AuthResult(
            request_id=rid,
            accepted=acc,
            status="accepted" if acc else "rejected",
            contract_id=CONTRACT if acc else None,
        ),
        st.sampled_from(_RIDS),
        st.booleans(),
    ),
    st.builds(
        lambda rid, off: AuthTimeout(
            rid,
            None
            if off is None
            else AuthResult(
                request_id=rid,
                accepted=off,
                status="accepted" if off else "unknown",
                offline=True,
            ),
        ),
        st.sampled_from(_RIDS),
        st.sampled_from([None, True, False]),
    ),
    st.builds(ConnectionTimeout, st.sampled_from(_SIDS)),
    st.just(PLUG_IN),
    st.just(PLUG_OUT),
    st.builds(
        lambda cmd, contract, sid: RemoteStartCmd(
            command_id=cmd, contract_id=contract, session_id=sid
        ),
        st.sampled_from(["c1", "c2"]),
        st.sampled_from([CONTRACT, "DE-8AA-C12345678-X"]),
        st.sampled_from(_SIDS),
    ),
    st.builds(RemoteStopCmd, st.sampled_from(["c3", "c4"]), st.sampled_from(_SIDS)),
    st.builds(SetAvailable, st.booleans(), st.sampled_from([None, "c5"])),
    st.builds(FaultRaised, st.sampled_from(list(FaultKind))),
    st.just(CLEAR),
    st.just(ADOPT),
    st.builds(ReleaseSession, st.sampled_from([*_SIDS, FSID])),
    st.builds(Deauthorized, st.sampled_from(_SIDS)),
    st.just(RESUME),
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_events, max_size=40), stop_same=st.booleans())
def test_random_walk_keeps_invariants(events: list[Event], stop_same: bool) -> None:
    policy = Policy(stop_with_same_token=stop_same)
    evse = Evse(evse_id=EVSE_ID)
    relay_closed = False
    plugged = False  # the physical plug, from the plug events
    available = True
    for event in events:
        nxt, actions = step(policy, evse, event)
        check_invariants(evse, event, nxt, actions)
        if isinstance(event, PlugIn | PlugOut):
            plugged = isinstance(event, PlugIn)
        if isinstance(event, SetAvailable):
            available = event.available
        for a in actions:
            if closes_relay(a) is not None:
                assert not relay_closed, "relay closed twice"
                relay_closed = True
            elif isinstance(a, EndSession | OpenRelay):
                relay_closed = False
        assert relay_closed == (nxt.phase is S.CHARGING)
        assert nxt.plugged == plugged
        assert nxt.available == available
        ignored = [a for a in actions if isinstance(a, Ignored)]
        if ignored:
            assert actions == ignored[:1]
            assert nxt == evse
        evse = nxt


# ------------------------------------------------------------------------------------ scenarios
def run(evse: Evse, *events: Event, policy: Policy = ON) -> tuple[Evse, list[Action]]:
    actions: list[Action] = []
    for event in events:
        evse, acts = step(policy, evse, event)
        actions.extend(acts)
    return evse, actions


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def tap(token: RfidToken, sid: str, rid: str, floating: bool = False) -> TokenPresented:
    return TokenPresented(
        token=token,
        token_key=f"rfid:{token.uid}",
        session_id=sid,
        request_id=rid,
        floating=floating,
    )


def test_tap_first_then_plug() -> None:
    evse, acts = run(AV, tap(TOK_A, NEW_SID, NEW_RID))
    assert evse.phase is S.AUTHORIZING and not evse.plugged
    evse, acts = run(evse, AuthResult(request_id=NEW_RID, accepted=True, status="accepted"))
    assert evse.phase is S.AUTHORIZED
    assert StartTimer(Timer.CONNECTION, NEW_SID) in acts
    evse, acts = run(evse, PLUG_IN)
    assert evse.phase is S.CHARGING and evse.plugged
    assert acts == [CancelTimer(Timer.CONNECTION), BeginCharging(NEW_SID)]
    evse, acts = run(evse, PLUG_OUT)
    assert evse == Evse(evse_id=EVSE_ID)
    assert acts == [EndSession(NEW_SID, StopReason.EV_DISCONNECTED)]


def test_plug_first_then_tap() -> None:
    evse, acts = run(AV, PLUG_IN, tap(TOK_A, NEW_SID, NEW_RID))
    assert evse.phase is S.AUTHORIZING
    assert RequestAuth(NEW_RID, TOK_A, False) in acts
    evse, acts = run(
        evse, AuthResult(request_id=NEW_RID, accepted=True, status="accepted", contract_id=CONTRACT)
    )
    assert evse.phase is S.CHARGING
    assert evse.session is not None and evse.session.contract_id == CONTRACT
    assert kinds(acts) == ["CancelTimer", "AuthorizeAndCharge", "Notify"]
    # the car was already there: no connection timer
    assert not any(isinstance(a, StartTimer) for a in acts)


def test_plug_during_authorisation_charges_on_acceptance() -> None:
    evse, _ = run(AV, tap(TOK_A, NEW_SID, NEW_RID), PLUG_IN)
    assert evse.phase is S.AUTHORIZING and evse.plugged
    evse, acts = run(evse, AuthResult(request_id=NEW_RID, accepted=True, status="accepted"))
    assert evse.phase is S.CHARGING
    assert AuthorizeAndCharge(replace(NEW_A, request_id=None)) in acts
    assert not any(isinstance(a, Authorize | BeginCharging) for a in acts)


def test_remote_start_with_car_charges_at_once() -> None:
    evse, acts = run(PR, RSTART)
    assert evse.phase is S.CHARGING
    assert evse.session == REMOTE
    assert acts == [AuthorizeAndCharge(REMOTE, command_id="cmd-start")]


def test_remote_start_without_car_waits_then_charges() -> None:
    evse, _ = run(AV, RSTART)
    assert evse.phase is S.AUTHORIZED
    assert evse.session is not None and evse.session.token == RemoteToken(contract_id=CONTRACT)
    evse, acts = run(evse, PLUG_IN)
    assert evse.phase is S.CHARGING
    assert acts == [CancelTimer(Timer.CONNECTION), BeginCharging(RSID)]


def test_remote_start_without_car_times_out() -> None:
    evse, acts = run(AV, RSTART, ConnectionTimeout(RSID))
    assert evse == AV
    assert (
        DropSession(session=REMOTE, event=SessionEventKind.TIMEOUT, reason="connection_timeout")
        in acts
    )


def test_rejected_card_leaves_evse_as_it_was() -> None:
    for start in (AV, PR):
        evse, acts = run(
            start,
            tap(TOK_B, NEW_SID, NEW_RID),
            AuthResult(request_id=NEW_RID, accepted=False, status="rejected"),
        )
        assert evse == start
        drops = [a for a in acts if isinstance(a, DropSession)]
        assert [(d.session.session_id, d.event, d.reason) for d in drops] == [
            (NEW_SID, SessionEventKind.REJECTED, "rejected")
        ]
        assert not any(isinstance(a, Authorize | AuthorizeAndCharge | BeginCharging) for a in acts)


def test_auth_timeout_is_treated_as_rejection() -> None:
    evse, acts = run(PR, tap(TOK_A, NEW_SID, NEW_RID), AuthTimeout(NEW_RID))
    assert evse == PR
    assert [a for a in acts if isinstance(a, DropSession)] == [
        DropSession(session=NEW_A, event=SessionEventKind.TIMEOUT, reason="auth_timeout")
    ]
    # the backend's late answer no longer matters
    evse, acts = run(evse, AuthResult(request_id=NEW_RID, accepted=True, status="accepted"))
    assert evse == PR
    assert kinds(acts) == ["Ignored"]


@pytest.mark.parametrize("start", [AV, PR], ids=["unplugged", "plugged"])
def test_auth_timeout_with_accepting_offline_decision_authorises(start: Evse) -> None:
    evse, _ = run(start, tap(TOK_A, NEW_SID, NEW_RID))
    offline = AuthResult(request_id=NEW_RID, accepted=True, status="accepted", offline=True)
    via_timeout = step(ON, evse, AuthTimeout(NEW_RID, offline=offline))
    # exactly what the same AuthResult arriving on its own would do
    assert via_timeout == step(ON, evse, offline)
    nxt, acts = via_timeout
    assert nxt.session == replace(NEW_A, request_id=None, offline=True)
    assert not any(isinstance(a, DropSession) for a in acts)
    if start.plugged:
        assert nxt.phase is S.CHARGING
        assert kinds(acts) == ["CancelTimer", "AuthorizeAndCharge", "Notify"]
    else:
        assert nxt.phase is S.AUTHORIZED
        assert kinds(acts) == ["CancelTimer", "Authorize", "StartTimer", "Notify"]
        nxt, acts = run(nxt, PLUG_IN)
        assert nxt.phase is S.CHARGING
        assert acts == [CancelTimer(Timer.CONNECTION), BeginCharging(NEW_SID)]
    # the backend's late answer no longer matters
    later, acts = run(nxt, AuthResult(request_id=NEW_RID, accepted=False, status="blocked"))
    assert later == nxt
    assert kinds(acts) == ["Ignored"]


@pytest.mark.parametrize("start", [AV, PR], ids=["unplugged", "plugged"])
@pytest.mark.parametrize("with_decision", [True, False], ids=["refused", "no-decision"])
def test_auth_timeout_without_accepting_offline_decision_drops(
    start: Evse, with_decision: bool
) -> None:
    offline = (
        AuthResult(request_id=NEW_RID, accepted=False, status="unknown", offline=True)
        if with_decision
        else None
    )
    evse, acts = run(start, tap(TOK_A, NEW_SID, NEW_RID), AuthTimeout(NEW_RID, offline=offline))
    assert evse == start
    assert [a for a in acts if isinstance(a, DropSession)] == [
        DropSession(session=NEW_A, event=SessionEventKind.TIMEOUT, reason="auth_timeout")
    ]
    assert not any(isinstance(a, Authorize | AuthorizeAndCharge | BeginCharging) for a in acts)


def test_stale_auth_timeout_with_accepting_offline_decision_is_ignored() -> None:
    for start in (AV, PR):
        evse, _ = run(start, tap(TOK_A, NEW_SID, NEW_RID))
        for offline_rid in (OLD_RID, NEW_RID):
            offline = AuthResult(
                request_id=offline_rid, accepted=True, status="accepted", offline=True
            )
            nxt, acts = step(ON, evse, AuthTimeout(OLD_RID, offline=offline))
            assert nxt is evse
            assert kinds(acts) == ["Ignored"]


REMOTE_CONTRACT = "DE-8AA-C12345678-X"  # as the backend may send it: separators kept


@pytest.mark.parametrize("start", [AV, PR], ids=["unplugged", "plugged"])
def test_remote_start_token_key_is_normalised(start: Evse) -> None:
    qr = QrToken(contract_id="DE8AAC12345678X")
    key = token_key(qr)
    assert key == "contract:DE8AAC12345678X"
    cmd = RemoteStartCmd(command_id="cmd-start", contract_id=REMOTE_CONTRACT, session_id=RSID)
    evse, _ = run(start, cmd)
    assert evse.session is not None
    assert evse.session.token_key == key
    assert evse.session.token == RemoteToken(contract_id=REMOTE_CONTRACT)
    assert evse.session.contract_id == REMOTE_CONTRACT
    if not start.plugged:
        evse, _ = run(evse, PLUG_IN)
    assert evse.phase is S.CHARGING
    # presenting that contract (e.g. the QR code) on the EVSE stops the session: same token
    show = TokenPresented(token=qr, token_key=key, session_id=OTHER_SID, request_id=OLD_RID)
    nxt, acts = run(evse, show)
    assert nxt.phase is S.FINISHING and nxt.session is None
    assert acts[0] == EndSession(RSID, StopReason.LOCAL)
    # and while still waiting for the car, it cancels the remote start
    if not start.plugged:
        waiting, _ = run(start, cmd)
        nxt, acts = run(waiting, show)
        assert nxt == start
        assert [a.event for a in acts if isinstance(a, DropSession)] == [SessionEventKind.STOPPED]


def test_connection_timeout_cancels_authorisation() -> None:
    evse, acts = run(
        AV,
        tap(TOK_A, NEW_SID, NEW_RID),
        AuthResult(request_id=NEW_RID, accepted=True, status="accepted"),
        ConnectionTimeout(NEW_SID),
    )
    assert evse == AV
    assert acts[-2].__class__ is DropSession
    assert acts[-2] == DropSession(
        session=replace(NEW_A, request_id=None),
        event=SessionEventKind.TIMEOUT,
        reason="connection_timeout",
    )
    # a car arriving afterwards does not start charging
    evse, acts = run(evse, PLUG_IN)
    assert evse.phase is S.PREPARING
    assert not any(closes_relay(a) for a in acts)


@pytest.mark.parametrize("policy", [ON, OFF], ids=["policy-on", "policy-off"])
def test_stop_by_same_card(policy: Policy) -> None:
    evse, _ = run(
        PR,
        tap(TOK_A, NEW_SID, NEW_RID),
        AuthResult(request_id=NEW_RID, accepted=True, status="accepted"),
    )
    assert evse.phase is S.CHARGING
    nxt, acts = run(evse, tap(TOK_A, OTHER_SID, OLD_RID), policy=policy)
    if policy.stop_with_same_token:
        assert nxt.phase is S.FINISHING and nxt.plugged and nxt.session is None
        assert acts[0] == EndSession(NEW_SID, StopReason.LOCAL)
    else:
        assert nxt == evse
        assert kinds(acts) == ["Ignored"]


@pytest.mark.parametrize("policy", [ON, OFF], ids=["policy-on", "policy-off"])
def test_same_card_cancels_authorisation_waiting_for_car(policy: Policy) -> None:
    evse, _ = run(
        AV,
        tap(TOK_A, NEW_SID, NEW_RID),
        AuthResult(request_id=NEW_RID, accepted=True, status="accepted"),
    )
    nxt, acts = run(evse, tap(TOK_A, OTHER_SID, OLD_RID), policy=policy)
    if policy.stop_with_same_token:
        assert nxt == AV
        assert [a.event for a in acts if isinstance(a, DropSession)] == [SessionEventKind.STOPPED]
    else:
        assert nxt == evse


def test_other_card_is_ignored_while_busy() -> None:
    for busy in (AZ, AD, CH):
        nxt, acts = step(ON, busy, TAP_B)
        assert nxt is busy
        assert kinds(acts) == ["Ignored"]


def test_remote_stop_while_charging_then_unplug() -> None:
    evse, acts = run(CH, RSTOP)
    assert evse.phase is S.FINISHING
    assert acts == [EndSession(SID, StopReason.REMOTE), ok("cmd-stop")]
    evse, acts = run(evse, PLUG_OUT)
    assert evse == AV
    assert acts == []  # the session already ended: no second EndSession


def test_unplug_stops_charging() -> None:
    evse, acts = run(CH, PLUG_OUT)
    assert evse == AV
    assert acts == [EndSession(SID, StopReason.EV_DISCONNECTED)]


def test_availability_off_during_charging_ends_session_remote() -> None:
    evse, acts = run(CH, OFF_CMD)
    assert evse.phase is S.UNAVAILABLE and not evse.available and evse.plugged
    assert evse.session is None
    assert acts == [EndSession(SID, StopReason.REMOTE), ok("cmd-off")]
    # a tap is now refused, and turning availability back on does not restart charging
    evse, acts = run(evse, TAP_A)
    assert kinds(acts) == ["Ignored"]
    evse, acts = run(evse, ON_CMD)
    assert evse.phase is S.PREPARING
    assert acts == [ok("cmd-on")]


def test_availability_on_while_charging_continues_session() -> None:
    evse, acts = run(CH, ON_CMD, SetAvailable(True))
    assert evse == CH
    assert acts == [ok("cmd-on")]


def test_set_available_true_in_authorized_does_not_cancel() -> None:
    evse, acts = run(AD, ON_CMD)
    assert evse == AD
    assert acts == [ok("cmd-on")]
    evse, acts = run(evse, PLUG_IN)
    assert evse.phase is S.CHARGING


def test_finishing_then_new_tap_starts_new_authorisation() -> None:
    evse, _ = run(CH, TAP_A)
    assert evse.phase is S.FINISHING
    evse, acts = run(evse, tap(TOK_B, NEW_SID, NEW_RID))
    assert evse.phase is S.AUTHORIZING
    assert evse.session == SessionInfo(
        session_id=NEW_SID, token=TOK_B, token_key=KEY_B, request_id=NEW_RID
    )
    assert acts[0] == RequestAuth(NEW_RID, TOK_B, False)
    evse, acts = run(evse, AuthResult(request_id=NEW_RID, accepted=True, status="accepted"))
    assert evse.phase is S.CHARGING
    assert [closes_relay(a) for a in acts if isinstance(a, AuthorizeAndCharge)] == [NEW_SID]


def test_stale_request_ids_are_ignored() -> None:
    evse, _ = run(AV, tap(TOK_A, NEW_SID, NEW_RID))
    for stale in (
        AuthResult(request_id=OLD_RID, accepted=True, status="accepted"),
        AuthResult(request_id=OLD_RID, accepted=False, status="rejected"),
        AuthTimeout(OLD_RID),
        ConnectionTimeout(OTHER_SID),
    ):
        nxt, acts = step(ON, evse, stale)
        assert nxt is evse
        assert kinds(acts) == ["Ignored"]
    # a retry: first tap timed out, second tap's answer must not be confused with the first
    evse, _ = run(AV, tap(TOK_A, SID, RID), AuthTimeout(RID), tap(TOK_A, NEW_SID, NEW_RID))
    nxt, acts = step(ON, evse, AuthResult(request_id=RID, accepted=True, status="accepted"))
    assert nxt is evse and kinds(acts) == ["Ignored"]
    nxt, acts = step(ON, evse, AuthResult(request_id=NEW_RID, accepted=True, status="accepted"))
    assert nxt.phase is S.AUTHORIZED and nxt.session is not None
    assert nxt.session.session_id == NEW_SID


def test_floating_session_moves_to_plugged_evse() -> None:
    """Two EVSEs, one reader: the tap floats on the first free EVSE, the car plugs into the other.

    The controller releases the session on the holder and the target adopts it.
    """
    holder, acts = run(
        Evse(evse_id="DE*ICE*E000001*1"), tap(TOK_A, NEW_SID, NEW_RID, floating=True)
    )
    assert holder.session is not None and holder.session.floating
    assert acts[0] == RequestAuth(NEW_RID, TOK_A, True)
    holder, _ = run(
        holder,
        AuthResult(request_id=NEW_RID, accepted=True, status="accepted", contract_id=CONTRACT),
    )
    assert holder.phase is S.AUTHORIZED
    floating = holder.session
    assert floating is not None and floating.floating

    target, _ = run(Evse(evse_id="DE*ICE*E000001*2"), PLUG_IN)
    assert target.phase is S.PREPARING
    holder, acts = run(holder, ReleaseSession(NEW_SID))
    assert holder == Evse(evse_id="DE*ICE*E000001*1")
    assert acts == [CancelTimer(Timer.CONNECTION)]
    target, acts = run(target, AdoptSession(floating))
    assert target.phase is S.CHARGING
    assert target.session == replace(floating, floating=False)
    assert acts == [BeginCharging(NEW_SID)]
    # stopping with the same card works on the new EVSE
    target, acts = run(target, tap(TOK_A, OTHER_SID, OLD_RID))
    assert acts[0] == EndSession(NEW_SID, StopReason.LOCAL)


def test_floating_session_release_of_other_session_is_ignored() -> None:
    holder = replace(AD, session=replace(AUTHED, floating=True))
    nxt, acts = step(ON, holder, ReleaseSession(OTHER_SID))
    assert nxt is holder and kinds(acts) == ["Ignored"]


def test_adopt_needs_a_plugged_waiting_evse() -> None:
    for evse in (AV, AZP, AD, CH, FI, UNP, FAP):
        nxt, acts = step(ON, evse, ADOPT)
        assert nxt is evse and kinds(acts) == ["Ignored"]
