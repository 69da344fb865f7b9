"""The durable event queue drains completely, in order, in-process with a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

from agent.clock import FakeClock
from agent.config import parse_config
from agent.controller import Controller
from agent.hardware import build_drivers
from agent.store import Store
from tests.helpers import station_config


class FakeLink:
    def __init__(self) -> None:
        self.connected = False
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.connected:
            return False
        self.sent.append((suffix, payload))
        return True


def make(tmp_path: Path) -> tuple[Controller, FakeLink, FakeClock]:
    cfg = parse_config(station_config(tmp_path, "mqtt://127.0.0.1:1", "t"), tmp_path / "x.toml")
    clock = FakeClock()
    store = Store(cfg.station.state_dir)
    store.open()
    link = FakeLink()
    return Controller(cfg, build_drivers(cfg, clock), store, link, clock=clock), link, clock


def test_a_long_outage_backlog_drains_completely_and_in_order(tmp_path: Path) -> None:
    ctl, link, _clock = make(tmp_path)
    for i in range(1234):  # more than one batch
        ctl._publish_or_queue("session", json.dumps({"n": i}).encode())
    assert ctl.store.queued_event_count() == 1234 and link.sent == []
    link.connected = True
    assert ctl.flush_events() == 1234
    assert [json.loads(p)["n"] for _, p in link.sent] == list(range(1234))
    assert ctl.store.queued_event_count() == 0
    ctl._publish_or_queue("session", b'{"n": "live"}')  # live events go straight out again
    assert link.sent[-1] == ("session", b'{"n": "live"}')


def test_a_link_that_drops_mid_flush_keeps_the_rest_queued(tmp_path: Path) -> None:
    ctl, link, _ = make(tmp_path)
    for i in range(10):
        ctl._publish_or_queue("session", json.dumps({"n": i}).encode())
    link.connected = True
    real = link.publish
    drops = [4]  # the link drops once, after the 4th message

    def flaky(suffix: str, payload: bytes, *, retain: bool = False) -> bool:
        if drops and len(link.sent) == drops[0]:
            drops.clear()
            link.connected = False
        return real(suffix, payload, retain=retain)

    link.publish = flaky  # type: ignore[method-assign]
    assert ctl.flush_events() == 4
    assert ctl.store.queued_event_count() == 6
    link.connected = True
    assert ctl.flush_events() == 6
    assert [json.loads(p)["n"] for _, p in link.sent] == list(range(10))
