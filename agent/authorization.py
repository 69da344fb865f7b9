"""Authorisation: pending requests, the local list and the auth cache, the offline policy,
``local_first`` and the backend's answers.

The component decides nothing about an EVSE's state: it returns table events
(:class:`~agent.session.AuthResult`, :class:`~agent.session.AuthTimeout`,
:class:`~agent.session.Deauthorized`) that the loop dispatches to the EVSE holding the session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from agent.backend import Backend
from agent.clock import Clock
from agent.config import AuthConfig
from agent.messages import AuthRequest, AuthResponse, AuthStatus, RfidToken, token_key
from agent.session import AuthResult, AuthTimeout, Deauthorized, Event, RequestAuth
from agent.store import AuthEntry, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PendingAuth:
    evse_id: str
    token_key: str
    session_id: str
    token_contract_id: str | None = None  # a contract token's own id (QR, remote)
    confirm_only: bool = False  # local_first: the session already runs; a refusal stops it


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of a request: sent to the backend and/or decided at once."""

    sent: bool
    decision: AuthResult | None = None


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A backend answer matched to its request: the event for the session's EVSE (if any)
    and the entry to remember in the auth cache once the relay has moved."""

    evse_id: str
    session_id: str
    event: Event | None
    entry: AuthEntry


@dataclass(kw_only=True)
class Authorizer:
    config: AuthConfig
    store: Store
    backend: Backend
    clock: Clock
    _pending: dict[str, PendingAuth] = field(default_factory=dict)  # by request id

    # ---------------------------------------------------------------- requests
    def request(self, evse_id: str, action: RequestAuth, session_id: str) -> Outcome:
        key = token_key(action.token)
        contract = None if isinstance(action.token, RfidToken) else action.token.contract_id
        if not self.backend.connected:
            log.info(
                "%s: backend link down: deciding offline (%s)", evse_id, self.config.offline_policy
            )
            decision = self.offline_result(action.request_id, key, contract)
            return Outcome(sent=False, decision=decision)
        local = self.local_decision(key)
        confirm = bool(self.config.local_first and local and local.valid(self.clock.now()))
        self._pending[action.request_id] = PendingAuth(
            evse_id=evse_id,
            token_key=key,
            session_id=session_id,
            token_contract_id=contract,
            confirm_only=confirm,
        )
        msg = AuthRequest(
            request_id=action.request_id,
            evse_id=None if action.floating else evse_id,
            token=action.token,
            ts=self.clock.now(),
        )
        if not self.backend.authorize(msg):
            self._pending.pop(action.request_id, None)
            decision = self.offline_result(action.request_id, key, contract)
            return Outcome(sent=False, decision=decision)
        if confirm and local is not None:
            log.info("%s: token accepted locally, confirming with the backend", evse_id)
            return Outcome(
                sent=True,
                decision=AuthResult(
                    request_id=action.request_id,
                    accepted=True,
                    status=AuthStatus.ACCEPTED.value,
                    contract_id=local.contract_id,
                ),
            )
        return Outcome(sent=True)

    def forget(self, request_id: str | None) -> None:
        """The session that asked is gone: a late answer is stale."""
        if request_id is not None:
            self._pending.pop(request_id, None)

    def timed_out(self, request_id: str) -> AuthTimeout:
        """No answer in time: the offline policy may still let the session charge."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return AuthTimeout(request_id)
        offline = self.offline_result(request_id, pending.token_key, pending.token_contract_id)
        return AuthTimeout(request_id, offline)

    # ---------------------------------------------------------------- answers
    def answer(self, res: AuthResponse) -> Answer | None:
        pending = self._pending.pop(res.request_id, None)
        if pending is None:
            log.warning("auth response for unknown or stale request %s ignored", res.request_id)
            return None
        entry = AuthEntry(pending.token_key, res.status.value, res.contract_id, res.expires_at)
        status = _effective_status(res, self.clock.now())
        accepted = status is AuthStatus.ACCEPTED
        if pending.confirm_only:
            event: Event | None = None
            if not accepted:
                log.warning(
                    "%s: backend refused a locally accepted token (%s): stopping",
                    pending.evse_id,
                    status.value,
                )
                event = Deauthorized(pending.session_id)
            return Answer(
                evse_id=pending.evse_id, session_id=pending.session_id, event=event, entry=entry
            )
        log.info("%s: auth %s for request %s", pending.evse_id, status.value, res.request_id)
        result = AuthResult(
            request_id=res.request_id,
            accepted=accepted,
            status=status.value,
            contract_id=res.contract_id or pending.token_contract_id,
        )
        return Answer(
            evse_id=pending.evse_id, session_id=pending.session_id, event=result, entry=entry
        )

    def remember(self, entry: AuthEntry) -> None:
        """Keep a backend answer for offline use (after the relay: not on the tap's path)."""
        if self.config.cache_size > 0:
            self.store.cache_put(entry, self.clock.now(), self.config.cache_size)

    # ---------------------------------------------------------------- local decisions
    def local_decision(self, key: str) -> AuthEntry | None:
        """The local list decides first (it may block a token); else the auth cache."""
        entry = self.store.local_list_lookup(key)
        if entry is not None:
            return entry
        return self.store.cache_lookup(key)

    def offline_result(
        self, request_id: str, key: str, token_contract_id: str | None = None
    ) -> AuthResult:
        """What the station decides on its own under ``auth.offline_policy``
        (``token_contract_id``: a contract token's own id, when the entry names none)."""
        policy = self.config.offline_policy
        entry = self.local_decision(key)
        contract = (entry.contract_id if entry else None) or token_contract_id
        if policy == "accept_all":
            if entry is not None and entry.status == AuthStatus.BLOCKED.value:
                return _offline(request_id, False, entry.status)
            return _offline(request_id, True, "accepted", contract)
        if policy == "local_list":
            if entry is None:
                return _offline(request_id, False, AuthStatus.UNKNOWN.value)
            if entry.valid(self.clock.now()):
                return _offline(request_id, True, "accepted", contract)
            expired = entry.status == AuthStatus.ACCEPTED.value  # accepted, but not any more
            return _offline(request_id, False, "expired" if expired else entry.status)
        return _offline(request_id, False, "rejected")


def _effective_status(res: AuthResponse, now: datetime) -> AuthStatus:
    """An acceptance that has already run out is an expiry."""
    if res.status is AuthStatus.ACCEPTED and res.expires_at is not None and res.expires_at <= now:
        return AuthStatus.EXPIRED
    return res.status


def _offline(
    request_id: str, accepted: bool, status: str, contract_id: str | None = None
) -> AuthResult:
    return AuthResult(
        request_id=request_id,
        accepted=accepted,
        status=status,
        contract_id=contract_id,
        offline=True,
    )
