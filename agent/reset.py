"""A reset of the station by its backend (OCPP Reset): decided, committed, carried out, restarted.

The station's "reset" is a restart of the agent by its service manager (systemd's
``Restart=always``): the sessions end, then the daemon exits with :data:`EXIT_RESET`.

1. :meth:`Resets.request`: the decision is committed (``meta`` key ``reset``) before the backend
   is answered Accepted; a running session then ends through the table
   (:class:`~agent.session.StationReset`: CDR and ``stopped`` event committed, relay open) with
   ``soft_reset`` / ``hard_reset``. ``on_idle`` lets the sessions end by themselves.
2. :meth:`Resets.tick` (every loop second): once no EVSE holds a session and the station's
   event queue is empty (the stops answered by the backend), or :data:`DRAIN_S` after that
   while the backend cannot take them (they stay queued, durable), the loop stops and the daemon
   exits with :data:`EXIT_RESET`.
3. At the next start (:meth:`Resets.load`, before recovery): a committed reset is the one this
   restart carries out. A kill -9 before the sessions ended leaves them open in the store:
   recovery settles them with the reset's reason instead of resuming them; then the entry is
   cleared (:meth:`Resets.restarted`), so the reset never runs twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from agent.backend import Backend, ResetKind, ResetRequested
from agent.clock import Clock
from agent.failpoints import Failpoints, Point
from agent.messages import CommandResponse, CommandStatus, StopReason
from agent.session import Event, StationReset
from agent.store import Store

log = logging.getLogger(__name__)

RESET_KEY = "reset"
EXIT_RESET = 75  # EX_TEMPFAIL: restarted by systemd (Restart=always; only 78 is not)
DRAIN_S = 10.0  # sessions ended: at most this long for the backend to answer their stops
REASONS: dict[ResetKind, StopReason | None] = {
    ResetKind.SOFT: StopReason.SOFT_RESET,
    ResetKind.HARD: StopReason.HARD_RESET,
    ResetKind.ON_IDLE: None,
}


class Resets:
    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        clock: Clock,
        stop_loop: Callable[[], None],
        failpoints: Failpoints,
    ) -> None:
        self._failpoints = failpoints
        self._store = store
        self._backend = backend
        self._clock = clock
        self._stop_loop = stop_loop
        self._pending: ResetKind | None = None
        self._idle_since: float | None = None
        self.exit_status = 0

    @property
    def pending(self) -> ResetKind | None:
        return self._pending

    def load(self) -> StopReason | None:
        """At start-up: the stop reason of a reset committed before this restart (its
        sessions, still open in the store, are settled with it), None if there was none (or it
        was ``on_idle``: its sessions go on)."""
        raw = self._store.settings(RESET_KEY).get(RESET_KEY)
        if raw is None:
            return None
        try:
            kind = ResetKind(json.loads(raw)["kind"])
        except (ValueError, KeyError, TypeError) as err:
            log.error("unreadable reset entry %r ignored: %s", raw, err)
            return None
        log.warning("restarted for the %s reset the backend asked for", kind.value)
        return REASONS[kind]

    def restarted(self) -> None:
        """The reset is done (this start is its restart; its sessions are settled)."""
        self._store.set_setting(RESET_KEY, None)

    def request(self, item: ResetRequested, sessions: dict[str, str]) -> list[tuple[str, Event]]:
        """Commit the decision, then answer; the events end the running sessions."""
        if self._pending is None:
            entry = {"kind": item.kind.value, "command_id": item.command_id}
            self._store.set_setting(RESET_KEY, json.dumps(entry))  # commit first
            self._failpoints.hit(Point.RESET_COMMITTED)
            self._pending = item.kind
            log.warning("reset (%s) accepted: %d session(s) to end", item.kind.value, len(sessions))
        else:
            log.warning(
                "reset (%s) asked again: the %s reset is under way",
                item.kind.value,
                self._pending.value,
            )
        self._backend.command_result(
            CommandResponse(v=1, command_id=item.command_id, status=CommandStatus.ACCEPTED)
        )
        reason = REASONS[self._pending]
        if reason is None:
            return []
        return [(evse_id, StationReset(reason)) for evse_id in sorted(set(sessions.values()))]

    def tick(self, sessions: dict[str, str], queued_events: int) -> None:
        """Stop the loop once the sessions have ended and their stops went out (or waited
        :data:`DRAIN_S` for a backend that cannot take them)."""
        if self._pending is None or self.exit_status:
            return
        if sessions:
            self._idle_since = None
            return
        now = self._clock.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if queued_events == 0 or now - self._idle_since >= DRAIN_S:
            log.warning(
                "reset: sessions ended, %d event(s) still queued: exiting with status %d"
                " for the restart",
                queued_events,
                EXIT_RESET,
            )
            self.exit_status = EXIT_RESET
            self._stop_loop()
