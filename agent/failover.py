"""Which broker node to try next, and after how long: the reconnect policy of :mod:`agent.link`.

Pure (no I/O, no sleeping): the random source is injected, so the policy is tested by drawing
numbers, not by waiting.

* Nodes are tried in the configured order, preferred first. A working connection is never given
  up for a "better" node (no flapping): the station stays where it is until that node fails.
* When a connection is lost, the lost node goes to the back of the order and the others are
  tried in their configured order: the station fails over to the next node, and comes back to
  its preferred node only on a later failure (if the preferred node is up again by then).
* A failed attempt moves on to the next node of that order (round and round), unless the node
  answered (TCP connected) and then failed the attempt (dropped it before CONNACK or SUBACK,
  refused a subscription): that node is alive but busy, and it gets ``SAME_NODE_TRIES``
  attempts in all before the station moves on. Measured on NATS: a node still electing its
  stream leaders takes seconds to refuse, and a station that hopped to another node meanwhile
  made the two nodes fight over its session ("a remote connection has started with the same
  client ID"), which kept both attempts failing.
* Every reconnect waits a delay drawn with *full jitter*: uniformly between ``min_s`` and a cap
  that starts at ``2 * min_s`` and doubles with every failed attempt up to ``max_s``. All the
  stations a node carried lose it at the same moment; the jitter spreads their reconnects over
  the window instead of bringing them back in one wave (and in waves of the same rhythm after
  that, which a fixed doubling back-off does).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Uniform = Callable[[float, float], float]
SAME_NODE_TRIES = 3  # attempts on a node that answers but fails them, before moving on


@dataclass(frozen=True, kw_only=True)
class BrokerLink:
    """Where the link is: the node in use (or being tried) and the reconnect policy's state."""

    url: str
    node: int  # 1-based position in the configured list
    nodes: int
    connected: bool
    reconnect_delay_s: float | None  # the delay before the latest (re)connection attempt
    next_attempt_in_s: float | None  # while disconnected: time left before the next attempt
    failovers: int  # times the station came back on another node than before


@runtime_checkable
class ReportsBrokerLink(Protocol):
    """A backend adapter that can say which broker node it uses (the MQTT one)."""

    def broker_link(self) -> BrokerLink: ...


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """The next connection attempt: the node (index into the configured list) and the delay."""

    node: int
    delay_s: float


class FailoverPolicy:
    def __init__(
        self,
        nodes: int,
        *,
        min_s: float,
        max_s: float,
        uniform: Uniform = random.uniform,
    ) -> None:
        if nodes < 1:
            raise ValueError("at least one broker node is needed")
        if not 0 < min_s <= max_s:
            raise ValueError("need 0 < min_s <= max_s")
        self._n = nodes
        self._min = min_s
        self._max = max_s
        self._uniform = uniform
        self._order = list(range(nodes))  # the order of this round of attempts
        self._pos = 0
        self._failures = 0  # failed attempts since the last connection (or loss)
        self._same = 0  # failed attempts in a row on the current node
        self.node = 0  # the node in use, or being tried
        self.last_delay_s: float | None = None  # the delay before the latest attempt
        self.failovers = 0  # times the station connected to another node than before
        self._connected_node: int | None = None

    @property
    def nodes(self) -> int:
        return self._n

    def connected(self) -> None:
        """The attempt on :attr:`node` succeeded."""
        if self._connected_node is not None and self._connected_node != self.node:
            self.failovers += 1
        self._connected_node = self.node
        self._failures = 0
        self._same = 0

    def lost(self) -> Attempt:
        """The connection to :attr:`node` was lost: the others first, in configured order."""
        lost = self.node
        self._order = [i for i in range(self._n) if i != lost] + [lost]
        self._pos = 0
        self._failures = 0
        self._same = 0
        return self._next()

    def failed(self, *, answered: bool = False) -> Attempt:
        """The attempt on :attr:`node` failed: unreachable, or (``answered``) it connected and
        then dropped the attempt or refused a subscription."""
        self._same += 1
        if not answered or self._same >= SAME_NODE_TRIES:
            self._pos = (self._pos + 1) % self._n
            self._same = 0
        self._failures += 1
        return self._next()

    def window(self) -> tuple[float, float]:
        """The interval the next delay is drawn from."""
        cap = self._min * 2.0 ** min(self._failures + 1, 60)
        return self._min, min(self._max, cap)

    def _next(self) -> Attempt:
        low, high = self.window()
        delay = min(high, max(low, self._uniform(low, high)))
        self.node = self._order[self._pos]
        self.last_delay_s = delay
        return Attempt(node=self.node, delay_s=delay)
