"""Authorizer in process: fake clock, real SQLite store, recording fake backend."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.authorization import Answer, Authorizer, Outcome
from agent.clock import FakeClock
from agent.config import AuthConfig
from agent.messages import AuthRequest, AuthResponse, AuthStatus, QrToken, RfidToken
from agent.session import AuthResult, AuthTimeout, Deauthorized, RequestAuth
from agent.store import AuthEntry, Store
from tests.fakes import FakeBackend, open_store

EVSE1 = "DE*ICE*E000001*1"
UID = "04A224B2C13C80"
KEY = f"rfid:{UID}"
TOKEN = RfidToken(uid=UID)
SESSION = "S-1"
RID = "req-1"
LIST_CONTRACT = "DE*ICE*C00001*1"
CACHE_CONTRACT = "DE*ICE*C00002*2"

POLICIES = ["local_list", "accept_all", "reject"]
LINKS = ["connected", "disconnected", "refused"]
KNOWLEDGE = [
    "list_accepted",
    "list_blocked",
    "list_expired",
    "cache_accepted",
    "cache_blocked",
    "unknown",
]

# What the station decides on its own: (policy, what it knows) -> (accepted, status, contract_id)
OFFLINE: dict[tuple[str, str], tuple[bool, str, str | None]] = {
    ("local_list", "list_accepted"): (True, "accepted", LIST_CONTRACT),
    ("local_list", "list_blocked"): (False, "blocked", None),
    ("local_list", "list_expired"): (False, "expired", None),
    ("local_list", "cache_accepted"): (True, "accepted", CACHE_CONTRACT),
    ("local_list", "cache_blocked"): (False, "blocked", None),
    ("local_list", "unknown"): (False, "unknown", None),
    ("accept_all", "list_accepted"): (True, "accepted", LIST_CONTRACT),
    ("accept_all", "list_blocked"): (False, "blocked", None),
    ("accept_all", "list_expired"): (True, "accepted", LIST_CONTRACT),  # free vend
    ("accept_all", "cache_accepted"): (True, "accepted", CACHE_CONTRACT),
    ("accept_all", "cache_blocked"): (False, "blocked", None),
    ("accept_all", "unknown"): (True, "accepted", None),
    ("reject", "list_accepted"): (False, "rejected", None),
    ("reject", "list_blocked"): (False, "rejected", None),
    ("reject", "list_expired"): (False, "rejected", None),
    ("reject", "cache_accepted"): (False, "rejected", None),
    ("reject", "cache_blocked"): (False, "rejected", None),
    ("reject", "unknown"): (False, "rejected", None),
}
# The one cell whose status the Authorizer gets wrong (see test_expired_local_entry_status).
STATUS_BUG = {("local_list", "list_expired")}


def test_the_expectation_table_covers_the_whole_product() -> None:
    assert set(OFFLINE) == {(p, k) for p in POLICIES for k in KNOWLEDGE}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from open_store(tmp_path)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


MakeAuthorizer = Callable[..., Authorizer]


@pytest.fixture
def make(store: Store, backend: FakeBackend, clock: FakeClock) -> MakeAuthorizer:
    def build(
        policy: str = "local_list", *, local_first: bool = False, cache_size: int = 1000
    ) -> Authorizer:
        config = AuthConfig.model_validate(
            {"offline_policy": policy, "local_first": local_first, "cache_size": cache_size}
        )
        return Authorizer(config=config, store=store, backend=backend, clock=clock)

    return build


def know(store: Store, clock: FakeClock, what: str, key: str = KEY) -> None:
    now = clock.now()
    if what == "list_accepted":
        store.replace_local_list(1, [AuthEntry(key, "accepted", LIST_CONTRACT)], full=True)
    elif what == "list_blocked":
        store.replace_local_list(1, [AuthEntry(key, "blocked", LIST_CONTRACT)], full=True)
    elif what == "list_expired":
        entry = AuthEntry(key, "accepted", LIST_CONTRACT, now - timedelta(hours=1))
        store.replace_local_list(1, [entry], full=True)
    elif what == "cache_accepted":
        store.cache_put(AuthEntry(key, "accepted", CACHE_CONTRACT), now, 10)
    elif what == "cache_blocked":
        store.cache_put(AuthEntry(key, "blocked", CACHE_CONTRACT), now, 10)
    else:
        assert what == "unknown"


def set_link(backend: FakeBackend, link: str) -> None:
    backend.connected = link != "disconnected"
    backend.refuse = link == "refused"


def response(
    status: AuthStatus = AuthStatus.ACCEPTED, request_id: str = RID, **kw: object
) -> AuthResponse:
    return AuthResponse.model_validate({"v": 1, "request_id": request_id, "status": status, **kw})


# ---------------------------------------------------------------- the product
@pytest.mark.parametrize(
    "case",
    list(itertools.product(POLICIES, LINKS, KNOWLEDGE)),
    ids="-".join,
)
def test_policy_by_link_by_knowledge(
    make: MakeAuthorizer,
    store: Store,
    backend: FakeBackend,
    clock: FakeClock,
    case: tuple[str, str, str],
) -> None:
    policy, link, what = case
    auth = make(policy)
    know(store, clock, what)
    set_link(backend, link)

    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)

    if link == "connected":  # the backend decides: nothing decided locally
        assert out == Outcome(sent=True, decision=None)
        assert backend.sent == [
            ("authorize", AuthRequest(request_id=RID, evse_id=EVSE1, token=TOKEN, ts=clock.now()))
        ]
        assert auth.answer(response()) is not None  # the request is pending
        return
    accepted, status, contract = OFFLINE[(policy, what)]
    assert out.sent is False
    decision = out.decision
    assert decision is not None
    assert decision.request_id == RID
    assert decision.accepted is accepted
    assert decision.contract_id == contract
    assert decision.offline is True
    if (policy, what) not in STATUS_BUG:
        assert decision.status == status
    assert backend.sent == []
    # disconnected: not even tried; refused: tried once, and nothing stays pending
    assert [k for k, _ in backend.refused] == ([] if link == "disconnected" else ["authorize"])
    assert auth.answer(response()) is None


@pytest.mark.parametrize("link", ["disconnected", "refused"])
def test_expired_local_entry_status(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock, link: str
) -> None:
    auth = make("local_list")
    know(store, clock, "list_expired")
    set_link(backend, link)
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out.decision is not None and out.decision.accepted is False
    assert out.decision.status == "expired"


def test_an_entry_expires_with_the_clock(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    auth = make("local_list")
    expires = clock.now() + timedelta(seconds=10)
    store.replace_local_list(1, [AuthEntry(KEY, "accepted", LIST_CONTRACT, expires)], full=True)
    backend.connected = False
    clock.advance(9.999)
    first = auth.request(EVSE1, RequestAuth("r1", TOKEN, False), SESSION).decision
    assert first is not None and first.accepted is True
    clock.advance(0.001)  # expires_at == now: no longer valid
    second = auth.request(EVSE1, RequestAuth("r2", TOKEN, False), SESSION).decision
    assert second is not None and second.accepted is False


def test_the_local_list_decides_before_the_cache(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    auth = make("local_list")
    know(store, clock, "list_blocked")
    know(store, clock, "cache_accepted")
    backend.connected = False
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out.decision == AuthResult(
        request_id=RID, accepted=False, status="blocked", offline=True
    )


def test_offline_decision_keeps_the_qr_tokens_contract_id(
    make: MakeAuthorizer, backend: FakeBackend
) -> None:
    auth = make("accept_all")
    backend.connected = False
    qr = QrToken(contract_id="DE-ICE-C12345-6")
    out = auth.request(EVSE1, RequestAuth(RID, qr, False), SESSION)
    assert out.decision is not None and out.decision.accepted is True
    assert out.decision.contract_id == "DE-ICE-C12345-6"


def test_a_floating_request_names_no_evse(make: MakeAuthorizer, backend: FakeBackend) -> None:
    auth = make()
    assert auth.request(EVSE1, RequestAuth(RID, TOKEN, True), SESSION) == Outcome(sent=True)
    assert [r.evse_id for r in backend.auth_requests] == [None]


# ---------------------------------------------------------------- local_first
def test_local_first_decides_at_once_and_still_asks(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    auth = make(local_first=True)
    know(store, clock, "list_accepted")
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out == Outcome(
        sent=True,
        decision=AuthResult(
            request_id=RID, accepted=True, status="accepted", contract_id=LIST_CONTRACT
        ),
    )
    assert [r.request_id for r in backend.auth_requests] == [RID]


def test_local_first_uses_the_auth_cache_too(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    auth = make(local_first=True)
    know(store, clock, "cache_accepted")
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out.sent is True
    assert out.decision is not None and out.decision.contract_id == CACHE_CONTRACT


@pytest.mark.parametrize(
    "status", [AuthStatus.BLOCKED, AuthStatus.REJECTED, AuthStatus.EXPIRED, AuthStatus.UNKNOWN]
)
def test_local_first_a_later_refusal_deauthorizes(
    make: MakeAuthorizer, store: Store, clock: FakeClock, status: AuthStatus
) -> None:
    auth = make(local_first=True)
    know(store, clock, "list_accepted")
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert auth.answer(response(status)) == Answer(
        evse_id=EVSE1,
        session_id=SESSION,
        event=Deauthorized(SESSION),
        entry=AuthEntry(KEY, status.value, None, None),
    )


def test_local_first_a_later_accept_changes_nothing(
    make: MakeAuthorizer, store: Store, clock: FakeClock
) -> None:
    auth = make(local_first=True)
    know(store, clock, "list_accepted")
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    answer = auth.answer(response(contract_id="DE*ICE*C9"))
    assert answer == Answer(
        evse_id=EVSE1,
        session_id=SESSION,
        event=None,
        entry=AuthEntry(KEY, "accepted", "DE*ICE*C9", None),
    )


def test_local_first_an_expired_accept_deauthorizes(
    make: MakeAuthorizer, store: Store, clock: FakeClock
) -> None:
    auth = make(local_first=True)
    know(store, clock, "list_accepted")
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    answer = auth.answer(response(expires_at=clock.now() - timedelta(minutes=1)))
    assert answer is not None and answer.event == Deauthorized(SESSION)


@pytest.mark.parametrize("what", ["list_blocked", "list_expired", "cache_blocked", "unknown"])
def test_local_first_without_a_local_accept_waits_for_the_backend(
    make: MakeAuthorizer, store: Store, clock: FakeClock, what: str
) -> None:
    auth = make(local_first=True)
    know(store, clock, what)
    assert auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION) == Outcome(sent=True)
    answer = auth.answer(response(AuthStatus.BLOCKED))
    assert answer is not None
    assert answer.event == AuthResult(request_id=RID, accepted=False, status="blocked")


@pytest.mark.parametrize("link", ["disconnected", "refused"])
def test_local_first_without_a_link_decides_offline(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock, link: str
) -> None:
    auth = make(local_first=True)
    know(store, clock, "list_accepted")
    set_link(backend, link)
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out == Outcome(
        sent=False,
        decision=AuthResult(
            request_id=RID,
            accepted=True,
            status="accepted",
            contract_id=LIST_CONTRACT,
            offline=True,
        ),
    )
    assert auth.answer(response(AuthStatus.BLOCKED)) is None  # nothing pending to deauthorise


# ---------------------------------------------------------------- answers
def test_accepted_answer(make: MakeAuthorizer, clock: FakeClock) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    expires = clock.now() + timedelta(days=1)
    answer = auth.answer(response(contract_id="DE*ICE*C7", expires_at=expires))
    assert answer == Answer(
        evse_id=EVSE1,
        session_id=SESSION,
        event=AuthResult(request_id=RID, accepted=True, status="accepted", contract_id="DE*ICE*C7"),
        entry=AuthEntry(KEY, "accepted", "DE*ICE*C7", expires),
    )


def test_blocked_answer(make: MakeAuthorizer) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    answer = auth.answer(response(AuthStatus.BLOCKED))
    assert answer is not None
    assert answer.event == AuthResult(request_id=RID, accepted=False, status="blocked")
    assert answer.entry == AuthEntry(KEY, "blocked")


@pytest.mark.parametrize(
    ("offset_s", "accepted"), [(-3600.0, False), (0.0, False), (0.001, True), (3600.0, True)]
)
def test_accepted_answer_with_expires_at(
    make: MakeAuthorizer, clock: FakeClock, offset_s: float, accepted: bool
) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    answer = auth.answer(response(expires_at=clock.now() + timedelta(seconds=offset_s)))
    assert answer is not None and isinstance(answer.event, AuthResult)
    assert answer.event.accepted is accepted


def test_expired_answer_status_says_expired(make: MakeAuthorizer, clock: FakeClock) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    answer = auth.answer(response(expires_at=clock.now() - timedelta(hours=1)))
    assert answer is not None and isinstance(answer.event, AuthResult)
    assert answer.event.status != "accepted"


def test_answer_to_an_unknown_request_is_none(make: MakeAuthorizer) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert auth.answer(response(request_id="someone-else")) is None
    assert auth.answer(response()) is not None  # the real one is still pending
    assert auth.answer(response()) is None  # answered once


@pytest.mark.parametrize(
    ("token", "answered", "expected"),
    [
        (QrToken(contract_id="DE-ICE-C12345-6"), None, "DE-ICE-C12345-6"),
        (QrToken(contract_id="DE-ICE-C12345-6", pin="1234"), None, "DE-ICE-C12345-6"),
        (QrToken(contract_id="DE-ICE-C12345-6"), "DE*ICE*C9", "DE*ICE*C9"),
        (TOKEN, None, None),
    ],
)
def test_contract_id_falls_back_to_the_tokens_own(
    make: MakeAuthorizer,
    token: RfidToken | QrToken,
    answered: str | None,
    expected: str | None,
) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth(RID, token, False), SESSION)
    answer = auth.answer(response(contract_id=answered))
    assert answer is not None and isinstance(answer.event, AuthResult)
    assert answer.event.contract_id == expected
    assert answer.entry.contract_id == answered  # the cache keeps what the backend said


# ---------------------------------------------------------------- timeouts, forget
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("local_list", (True, "accepted", LIST_CONTRACT)),
        ("accept_all", (True, "accepted", LIST_CONTRACT)),
        ("reject", (False, "rejected", None)),
    ],
)
def test_timed_out_carries_the_offline_decision(
    make: MakeAuthorizer,
    store: Store,
    clock: FakeClock,
    policy: str,
    expected: tuple[bool, str, str | None],
) -> None:
    auth = make(policy)
    know(store, clock, "list_accepted")
    auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    accepted, status, contract = expected
    assert auth.timed_out(RID) == AuthTimeout(
        RID,
        AuthResult(
            request_id=RID, accepted=accepted, status=status, contract_id=contract, offline=True
        ),
    )
    assert auth.answer(response()) is None  # the late answer is stale


def test_timed_out_unknown_request_has_no_offline_decision(make: MakeAuthorizer) -> None:
    assert make("accept_all").timed_out("nobody") == AuthTimeout("nobody", None)


def test_forget_makes_a_late_answer_stale(make: MakeAuthorizer) -> None:
    auth = make()
    auth.request(EVSE1, RequestAuth("r1", TOKEN, False), "S-1")
    auth.request(EVSE1, RequestAuth("r2", TOKEN, False), "S-2")
    auth.forget("r1")
    auth.forget(None)
    auth.forget("never-asked")
    assert auth.answer(response(request_id="r1")) is None
    answer = auth.answer(response(request_id="r2"))
    assert answer is not None and answer.session_id == "S-2"


# ---------------------------------------------------------------- the auth cache
def test_remember_writes_the_auth_cache(
    make: MakeAuthorizer, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    auth = make("local_list")
    expires = clock.now() + timedelta(days=2)
    auth.remember(AuthEntry(KEY, "accepted", "DE*ICE*C7", expires))
    assert store.cache_lookup(KEY) == AuthEntry(KEY, "accepted", "DE*ICE*C7", expires)
    backend.connected = False  # what was remembered lets the token charge offline
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out.decision is not None and out.decision.accepted is True
    assert out.decision.contract_id == "DE*ICE*C7"


def test_remember_with_cache_size_zero_writes_nothing(
    make: MakeAuthorizer, store: Store, backend: FakeBackend
) -> None:
    auth = make("local_list", cache_size=0)
    auth.remember(AuthEntry(KEY, "accepted", "DE*ICE*C7"))
    assert store.cache_size() == 0
    assert store.cache_lookup(KEY) is None
    backend.connected = False
    out = auth.request(EVSE1, RequestAuth(RID, TOKEN, False), SESSION)
    assert out.decision is not None and out.decision.status == "unknown"


def test_remember_keeps_at_most_cache_size_entries(
    make: MakeAuthorizer, store: Store, clock: FakeClock
) -> None:
    auth = make(cache_size=2)
    for uid in ("AAAAAAAA", "BBBBBBBB", "CCCCCCCC"):
        auth.remember(AuthEntry(f"rfid:{uid}", "accepted"))
        clock.advance(1)
    assert store.cache_size() == 2
    assert store.cache_lookup("rfid:AAAAAAAA") is None  # the oldest went
    assert store.cache_lookup("rfid:CCCCCCCC") is not None
