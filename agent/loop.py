"""The thin event loop: a queue with two lanes, a timer heap and run/shutdown.

Driver threads, the backend adapter and the control socket only ``post()`` items. Local items
(a card, a plug, a meter sample, a technician's request) go into the local lane and are always
taken before anything the backend sent, so a flood of backend traffic never delays a tap.
Everything that touches state runs in the one thread that calls :meth:`EventLoop.run`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agent.clock import Clock
from agent.session import Timer

T = TypeVar("T")


@dataclass(frozen=True)
class TimerFired:
    evse_id: str
    timer: Timer
    key: str  # the request id or session id the timer belongs to


@dataclass
class Timers:
    """Per-EVSE timers on one heap; starting a timer again replaces it, cancelling is O(1)."""

    clock: Clock
    _heap: list[tuple[float, int, TimerFired]] = field(default_factory=list)
    _live: dict[tuple[str, Timer], int] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def start(self, evse_id: str, timer: Timer, key: str, seconds: float) -> None:
        seq = next(self._seq)
        self._live[(evse_id, timer)] = seq
        deadline = self.clock.monotonic() + seconds
        heapq.heappush(self._heap, (deadline, seq, TimerFired(evse_id, timer, key)))

    def cancel(self, evse_id: str, timer: Timer) -> None:
        self._live.pop((evse_id, timer), None)

    def next_in(self) -> float | None:
        """Seconds until the next live timer fires (None: no timer)."""
        while self._heap and not self._is_live(self._heap[0]):
            heapq.heappop(self._heap)  # cancelled or replaced: forget it now
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self.clock.monotonic())

    def _is_live(self, entry: tuple[float, int, TimerFired]) -> bool:
        _, seq, item = entry
        return self._live.get((item.evse_id, item.timer)) == seq

    def due(self) -> list[TimerFired]:
        """The timers that have fired, in deadline order; each fires once."""
        now = self.clock.monotonic()
        fired: list[TimerFired] = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, item = heapq.heappop(self._heap)
            if self._live.get((item.evse_id, item.timer)) != seq:
                continue  # cancelled or replaced
            del self._live[(item.evse_id, item.timer)]
            fired.append(item)
        return fired

    def running(self, evse_id: str, timer: Timer) -> bool:
        return (evse_id, timer) in self._live


class Lanes(Generic[T]):
    """A thread-safe queue with a local lane that is always served first."""

    def __init__(self) -> None:
        self._local: deque[T] = deque()
        self._backend: deque[T] = deque()
        self._ready = threading.Condition()

    def put(self, item: T, *, local: bool) -> None:
        with self._ready:
            (self._local if local else self._backend).append(item)
            self._ready.notify()

    def get(self, timeout: float) -> T | None:
        with self._ready:
            if not self._local and not self._backend:
                self._ready.wait(timeout)
            if self._local:
                return self._local.popleft()
            if self._backend:
                return self._backend.popleft()
            return None

    def sizes(self) -> tuple[int, int]:
        with self._ready:
            return len(self._local), len(self._backend)


class EventLoop(Generic[T]):
    """Take items one at a time, hand each to ``handle``; fire timers; tick housekeeping."""

    def __init__(self, clock: Clock, *, tick_s: float) -> None:
        self.clock = clock
        self.timers = Timers(clock)
        self.lanes: Lanes[T] = Lanes()
        self._tick_s = tick_s
        self._running = False

    def post(self, item: T, *, local: bool = True) -> None:
        """Thread-safe: hand an item to the loop."""
        self.lanes.put(item, local=local)

    def stop(self) -> None:
        self._running = False

    def run(
        self,
        handle: Callable[[T], None],
        fired: Callable[[TimerFired], None],
        tick: Callable[[], None],
        stop: threading.Event | None = None,
    ) -> None:
        self._running = True
        while self._running and not (stop is not None and stop.is_set()):
            timeout = self._tick_s
            next_timer = self.timers.next_in()
            if next_timer is not None:
                timeout = min(timeout, next_timer)
            item = self.lanes.get(timeout)
            if item is not None:
                handle(item)
            for timer in self.timers.due():
                fired(timer)
            tick()
