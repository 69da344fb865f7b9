"""Injectable clocks: production uses :class:`SystemClock`, tests step a :class:`FakeClock`.

:class:`Clock`, :class:`SystemClock` and :class:`FakeClock` are defined in :mod:`drivers.clock`
(the drivers import nothing from the agent) and re-exported here. This module adds what only the
agent needs: :class:`OffsetClock`, a system clock whose wall time a test steps from outside the
process (as NTP would), and :class:`ClockCheck`, the one place that decides whether the wall
clock is known to be unset.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from agent import BUILD_DATE
from drivers.clock import Clock, FakeClock, SystemClock, parse_rfc3339, rfc3339

__all__ = [
    "BUILD_DATE",
    "OFFSET_FILE_ENV",
    "TIMESYNC_FILE",
    "Clock",
    "ClockCheck",
    "FakeClock",
    "OffsetClock",
    "SystemClock",
    "parse_rfc3339",
    "rfc3339",
]

log = logging.getLogger(__name__)

OFFSET_FILE_ENV = "STATION_AGENT_TEST_CLOCK_OFFSET_FILE"
# systemd-timesyncd creates this once the clock is synchronised (time-sync.target)
TIMESYNC_FILE = Path("/run/systemd/timesync/synchronized")
REREAD_S = 0.05


class OffsetClock:
    """The system clock with a wall-clock offset read from a file (seconds, a float): tests
    "boot at 1970" (a large negative offset) and "NTP-step" (rewrite the file) a real daemon.
    Monotonic time is untouched, as a real clock step leaves it. The file is re-read when it
    changed (mtime, size or inode) and at least every 50 ms; a missing file is offset 0, an
    unreadable one keeps the last offset. Testing only: the daemon warns loudly when it is on.
    """

    def __init__(self, path: Path, base: Clock | None = None) -> None:
        self.path = path
        self._base: Clock = base or SystemClock()
        self._lock = threading.Lock()
        self._offset = 0.0
        self._identity: tuple[int, int, int] | None = None
        self._read_at = -math.inf

    def now(self) -> datetime:
        return self._base.now() + timedelta(seconds=self.offset())

    def monotonic(self) -> float:
        return self._base.monotonic()

    def offset(self) -> float:
        with self._lock:
            mono = self._base.monotonic()
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._offset, self._identity = 0.0, None
                return 0.0
            except OSError as err:
                log.warning("test clock offset file %s: %s", self.path, err)
                return self._offset
            identity = (st.st_mtime_ns, st.st_size, st.st_ino)
            if identity != self._identity or mono - self._read_at >= REREAD_S:
                self._read(identity, mono)
            return self._offset

    def _read(self, identity: tuple[int, int, int], mono: float) -> None:
        try:
            value = float(self.path.read_text().strip() or "0")
        except (OSError, ValueError) as err:
            log.warning("test clock offset file %s unreadable (%s): offset stays", self.path, err)
            return
        if not math.isfinite(value):
            log.warning("test clock offset %r in %s is not finite: ignored", value, self.path)
            return
        self._offset, self._identity, self._read_at = value, identity, mono


class _StationClockSettings(Protocol):
    @property
    def allow_unset_clock(self) -> bool: ...

    @property
    def clock_sync_file(self) -> Path | None: ...


@dataclass(frozen=True)
class ClockCheck:
    """Is the wall clock known to be unset? Before :data:`BUILD_DATE` it is (a board without
    a real-time clock boots at 1970); where systemd-timesyncd is used (the directory of
    ``sync_file`` exists) it is also unset until timesyncd has created ``sync_file``. Asked
    anew every time: a later NTP step makes it good without a restart. Sessions do not start
    on an unset clock unless ``allow_unset`` (config ``station.allow_unset_clock``)."""

    clock: Clock
    allow_unset: bool = False
    sync_file: Path | None = None
    build_date: datetime = BUILD_DATE

    @classmethod
    def from_config(cls, station: _StationClockSettings, clock: Clock) -> ClockCheck:
        return cls(clock, station.allow_unset_clock, station.clock_sync_file)

    def problem(self) -> str | None:
        """Why the clock is known to be unset, or None."""
        now = self.clock.now()
        if now < self.build_date:
            return (
                f"wall clock reads {rfc3339(now)}, before this build "
                f"({self.build_date.date().isoformat()}): not set"
            )
        sync = self.sync_file
        if sync is not None and sync.parent.is_dir() and not sync.exists():
            return f"not synchronised yet (no {sync}: systemd-timesyncd has no time)"
        return None

    def refuses_sessions(self) -> str | None:
        """The reason no session may start now, or None."""
        if self.allow_unset:
            return None
        return self.problem()
