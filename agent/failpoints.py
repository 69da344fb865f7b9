"""Failpoints: named instants at which a test kills the daemon, as a power cut or ``kill -9``
would, to prove that nothing is lost or done twice whatever the instant.

Off unless the environment names them: ``STATION_AGENT_FAILPOINTS=relay_opened,command_answered``
(comma-separated). At a named point the daemon logs one critical line and sends itself SIGKILL:
no clean-up, no flush beyond what was already committed. Production never sets the variable;
the daemon logs loudly at start-up if it is set.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from enum import StrEnum

log = logging.getLogger(__name__)

ENV = "STATION_AGENT_FAILPOINTS"


class Point(StrEnum):
    SESSION_ENDED = "session_ended"  # the end of a session is committed, the relay not yet open
    RELAY_OPENED = "relay_opened"  # the relay opened on a session end, nothing published yet
    START_COMMITTED = "start_committed"  # a remote start is committed, not yet answered
    COMMAND_ANSWERED = "command_answered"  # a command's answer was handed to the backend
    EVENT_PUBLISHED = "event_published"  # a session event was handed to the backend
    RESET_COMMITTED = "reset_committed"  # a backend reset is committed, not yet answered


class Failpoints:
    def __init__(self, armed: frozenset[Point] = frozenset()) -> None:
        self._armed = armed

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Failpoints:
        names = [n.strip() for n in environ.get(ENV, "").split(",") if n.strip()]
        known = {p.value for p in Point}
        unknown = [n for n in names if n not in known]
        if unknown:
            log.error("%s: unknown failpoint(s) %s ignored", ENV, ", ".join(unknown))
        armed = frozenset(Point(n) for n in names if n in known)
        if armed:
            log.critical("failpoints armed (testing only): %s", ", ".join(sorted(armed)))
        return cls(armed)

    def hit(self, point: Point) -> None:
        if point in self._armed:
            log.critical("failpoint %s: killing the daemon", point.value)
            os.kill(os.getpid(), signal.SIGKILL)
