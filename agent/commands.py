"""Commands from the backend: replay protection, the checks every command passes, and one
handler per command type.

A command is answered once: the answer is committed with the digest of the command it answered
(:meth:`Commands.result`), and the same ``command_id`` again gets the same answer without any
action, or a rejection when it carries another command. Handlers return the table events to
dispatch (with the EVSE each goes to); the table answers them through
:class:`~agent.session.CommandResult` actions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.backend import Backend, CommandIn
from agent.clock import Clock, ClockCheck
from agent.config import AgentConfig
from agent.errors import ProtocolError
from agent.failpoints import Failpoints, Point
from agent.messages import (
    AnyCommand,
    CommandResponse,
    CommandStatus,
    RemoteStart,
    RemoteStop,
    SetAvailability,
    SetCurrentLimit,
    UpdateLocalList,
    dump,
)
from agent.session import Event, RemoteStartCmd, RemoteStopCmd, SetAvailable
from agent.store import AuthEntry, Store

if TYPE_CHECKING:
    from agent.current import CurrentControl

log = logging.getLogger(__name__)

Routed = list[tuple[str, Event]]  # (evse_id, event) pairs to dispatch


@dataclass(kw_only=True)
class Commands:
    config: AgentConfig
    store: Store
    backend: Backend
    clock: Clock
    new_id: Callable[[], str]
    failpoints: Failpoints = field(default_factory=Failpoints)
    current: CurrentControl | None = None  # set_current_limit goes here
    _digests: dict[str, str] = field(default_factory=dict)  # command id -> digest, until answered
    _handlers: dict[type[Any], Callable[[Any, dict[str, str]], Routed]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        self._handlers = {
            RemoteStart: self._remote_start,
            RemoteStop: self._remote_stop,
            SetAvailability: self._set_availability,
            UpdateLocalList: self._update_local_list,
            SetCurrentLimit: self._set_current_limit,
        }

    def receive(self, msg: CommandIn, sessions: dict[str, str]) -> Routed:
        """Check a command and turn it into table events. ``sessions`` maps the session ids the
        EVSEs hold now to their EVSE. Raises ProtocolError for a command that must be refused
        without being stored (another command under a used id, wrong station, too old)."""
        cmd = msg.command
        previous = self.store.command_response(cmd.command_id)
        if previous is not None:
            answer, digest = previous
            if digest is not None and digest != msg.digest:
                raise ProtocolError(
                    f"command_id {cmd.command_id} was already used for another command"
                )
            log.info("command %s replayed: same answer, no action", cmd.command_id)
            self.backend.command_result(CommandResponse.model_validate_json(answer))
            return []
        self._check(cmd)
        self._digests[cmd.command_id] = msg.digest
        return self._handlers[type(cmd)](cmd, sessions)

    def reject_unstored(self, command_id: str, reason: str) -> None:
        """Refuse a command that was never taken on (its id stays free)."""
        log.info("command %s rejected: %s", command_id, reason)
        msg = CommandResponse(command_id=command_id, status=CommandStatus.REJECTED, reason=reason)
        self.backend.command_result(msg)

    def result(self, command_id: str, accepted: bool, reason: str | None) -> None:
        """Commit the answer (with the command's digest), then publish it."""
        self.announce(self.record(command_id, accepted, reason))

    def record(self, command_id: str, accepted: bool, reason: str | None) -> CommandResponse:
        """Commit the answer with the digest of the command it answers (inside the caller's
        unit of work, if one is open: a remote start commits it with its session)."""
        msg = CommandResponse(
            command_id=command_id,
            status=CommandStatus.ACCEPTED if accepted else CommandStatus.REJECTED,
            reason=reason,
        )
        digest = self._digests.pop(command_id, None)
        self.store.save_command(command_id, dump(msg).decode(), self.clock.now(), digest)
        return msg

    def announce(self, msg: CommandResponse) -> None:
        """Publish an answer that is committed."""
        if msg.status is CommandStatus.REJECTED:
            log.info("command %s rejected: %s", msg.command_id, msg.reason)
        self.backend.command_result(msg)
        self.failpoints.hit(Point.COMMAND_ANSWERED)

    def _check(self, cmd: AnyCommand) -> None:
        station = self.config.station.id
        if cmd.station_id is not None and cmd.station_id != station:
            raise ProtocolError(f"addressed to station {cmd.station_id}, not {station}")
        if cmd.ts is None:
            return
        limit = self.config.cmd.max_age_s
        age = (self.clock.now() - cmd.ts).total_seconds()
        if age > limit:
            raise ProtocolError(f"command is {age:.0f} s old (limit {limit:.0f} s)")
        if -age > limit:
            raise ProtocolError(f"command ts is {-age:.0f} s in the future: a clock is wrong")

    # ---------------------------------------------------------------- handlers
    def _known_evse(self, evse_id: str) -> bool:
        return any(e.id == evse_id for e in self.config.evse)

    def _remote_start(self, cmd: RemoteStart, sessions: dict[str, str]) -> Routed:
        if not self._known_evse(cmd.evse_id):
            self.result(cmd.command_id, False, f"unknown evse_id {cmd.evse_id}")
            return []
        unset = ClockCheck.from_config(self.config.station, self.clock).refuses_sessions()
        if unset is not None:
            log.warning("remote start %s refused: clock not set (%s)", cmd.command_id, unset)
            self.result(cmd.command_id, False, "station clock is not set")
            return []
        session_id = cmd.session_id or self.new_id()
        if self.store.get_session(session_id) is not None:
            self.result(cmd.command_id, False, "session_id already used")
            return []
        event = RemoteStartCmd(
            command_id=cmd.command_id, contract_id=cmd.contract_id, session_id=session_id
        )
        return [(cmd.evse_id, event)]

    def _remote_stop(self, cmd: RemoteStop, sessions: dict[str, str]) -> Routed:
        evse_id = sessions.get(cmd.session_id)
        if evse_id is None:
            self.result(cmd.command_id, False, "unknown session_id")
            return []
        return [(evse_id, RemoteStopCmd(cmd.command_id, cmd.session_id))]

    def _set_availability(self, cmd: SetAvailability, sessions: dict[str, str]) -> Routed:
        if not self._known_evse(cmd.evse_id):
            self.result(cmd.command_id, False, f"unknown evse_id {cmd.evse_id}")
            return []
        self.store.set_availability(cmd.evse_id, cmd.available)
        return [(cmd.evse_id, SetAvailable(cmd.available, cmd.command_id))]

    def _update_local_list(self, cmd: UpdateLocalList, sessions: dict[str, str]) -> Routed:
        current = self.store.local_list_version()
        if cmd.version <= current:
            reason = f"version {cmd.version} is not newer than {current}"
            self.result(cmd.command_id, False, reason)
            return []
        entries = [
            AuthEntry(e.token_key, e.status.value, e.contract_id, e.expires_at) for e in cmd.entries
        ]
        self.store.replace_local_list(cmd.version, entries, full=cmd.mode == "full")
        log.info(
            "local list now version %d (%s update, %d entries)",
            cmd.version,
            cmd.mode,
            len(entries),
        )
        self.result(cmd.command_id, True, None)
        return []

    def _set_current_limit(self, cmd: SetCurrentLimit, sessions: dict[str, str]) -> Routed:
        """Checked, then the limit and the acceptance in one commit, then the answer; the
        current control applies it in the same loop round."""
        current = self.current
        pilots = [e.id for e in self.config.evse if e.pilot is not None]
        reason = "no current control" if current is None else current.check(cmd, pilots)
        if current is None or reason is not None:
            self.result(cmd.command_id, False, reason)
            return []
        with self.store.unit():
            current.record(cmd)
            answer = self.record(cmd.command_id, True, None)
        self.announce(answer)
        return []
