"""Shared fakes for the in-process component tests: a recording backend, a config, a store.

:class:`FakeBackend` implements the :class:`agent.backend.Backend` protocol. It records every
message it accepted (in one ordered log, so that tests can check the order across kinds), every
message it refused, and can be switched connected/disconnected, made to refuse sends while
"connected", or told to drop the link after a number of accepted sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.backend import Backend, BackendSink
from agent.config import AgentConfig, parse_config
from agent.messages import (
    AuthRequest,
    Cdr,
    CommandResponse,
    MeterValues,
    SessionEvent,
    StatusMessage,
)
from agent.store import Store
from tests.helpers import station_config


class FakeBackend:
    def __init__(self, *, connected: bool = True) -> None:
        self.refs: list[int] = []  # queue refs of the session events taken, in order
        self.acked: list[int] = []  # refs acknowledged, not yet taken by delivered()
        self.auto_ack = True  # every event taken is acknowledged at once
        self.connected = connected
        self.refuse = False  # connected, but every send is refused (a full client queue)
        self.drop_after: int | None = None  # accepted sends left before the link drops
        self.refuse_if: Callable[[str, BaseModel], bool] | None = None  # refuse just these
        self.sent: list[tuple[str, BaseModel]] = []  # (kind, message), in the order accepted
        self.refused: list[tuple[str, BaseModel]] = []
        self.on_send: Callable[[str, BaseModel], None] | None = None  # before it is accepted
        self.sink: BackendSink | None = None
        self.stopped = False

    # ---------------------------------------------------------------- the protocol
    @property
    def endpoint(self) -> str:
        return "mqtt://fake.invalid:1883"

    def start(self, sink: BackendSink) -> None:
        self.sink = sink

    def stop(self) -> None:
        self.stopped = True
        self.connected = False

    def authorize(self, request: AuthRequest) -> bool:
        return self._send("authorize", request)

    def session_event(self, event: SessionEvent, ref: int) -> bool:
        ok = self._send("session_event", event)
        if ok:
            self.refs.append(ref)
            if self.auto_ack:
                self.acked.append(ref)
        return ok

    def acknowledged_cdrs(self) -> list[str]:
        return []

    def delivered(self) -> list[int]:
        refs, self.acked = self.acked, []
        return refs

    def inbound_dropped(self) -> dict[str, int]:
        return {}

    def cdr(self, cdr: Cdr) -> bool:
        return self._send("cdr", cdr)

    def command_result(self, result: CommandResponse) -> bool:
        return self._send("command_result", result)

    def status(self, status: StatusMessage) -> bool:
        return self._send("status", status)

    def meter_values(self, values: MeterValues) -> bool:
        return self._send("meter", values)

    def faults(self) -> dict[str, str]:
        return {}

    # ---------------------------------------------------------------- recording
    def _send(self, kind: str, msg: BaseModel) -> bool:
        if self.drop_after is not None and self.drop_after <= 0:
            self.connected = False
            self.drop_after = None
        picked = self.refuse_if is not None and self.refuse_if(kind, msg)
        if not self.connected or self.refuse or picked:
            self.refused.append((kind, msg))
            return False
        if self.on_send is not None:
            self.on_send(kind, msg)
        self.sent.append((kind, msg))
        if self.drop_after is not None:
            self.drop_after -= 1
        return True

    def of(self, kind: str) -> list[Any]:
        return [msg for k, msg in self.sent if k == kind]

    def refused_of(self, kind: str) -> list[Any]:
        return [msg for k, msg in self.refused if k == kind]

    @property
    def auth_requests(self) -> list[AuthRequest]:
        return self.of("authorize")

    @property
    def events(self) -> list[SessionEvent]:
        return self.of("session_event")

    @property
    def cdrs(self) -> list[Cdr]:
        return self.of("cdr")

    @property
    def command_results(self) -> list[CommandResponse]:
        return self.of("command_result")

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]


def _check_protocol(backend: FakeBackend) -> Backend:
    return backend  # mypy: FakeBackend must satisfy the Backend protocol


def make_config(tmp_path: Path, evses: int = 1, **overrides: Any) -> AgentConfig:
    """A valid station configuration (tests.helpers.station_config) with ``overrides``."""
    data = station_config(tmp_path, "mqtt://127.0.0.1:1", "t", evses=evses, **overrides)
    return parse_config(data, tmp_path / "config.toml")


def open_store(tmp_path: Path) -> Iterator[Store]:
    """A real SQLite store in ``tmp_path`` (use as a generator fixture body)."""
    store = Store(tmp_path / "state")
    store.open()
    try:
        yield store
    finally:
        store.close()
