"""A connected broker is not an answering backend, and one station id must not be used twice:
``agent/backend_watch.py`` in isolation (a stepped clock) and in real daemons on a real broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.backend_watch import (
    DUPLICATE,
    DUPLICATE_HOLD_S,
    NOT_ANSWERING,
    SHORT_LINK_S,
    SHORT_RUNS,
    BackendWatch,
)
from agent.stationctl import main
from tests.helpers import EVSE1, UID_A, Daemon, station_config, wait_until

STARTED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _watch(clock: Clock) -> BackendWatch:
    return BackendWatch(station_id="ST-1", auth_timeout_s=5.0, started=STARTED, monotonic=clock)


def _status(ts: datetime, online: bool = True) -> bytes:
    return json.dumps(
        {"v": 1, "station_id": "ST-1", "online": online, "ts": ts.isoformat()}
    ).encode()


def test_not_answering_after_the_auth_timeout_until_the_backend_speaks() -> None:
    clock = Clock()
    w = _watch(clock)
    assert w.faults() == {}
    w.asked()
    clock.t += 5.0
    assert w.faults() == {}  # not yet past the time-out
    clock.t += 0.5
    w.asked()  # a second request does not restart the count
    assert w.faults() == {NOT_ANSWERING: "no answer to auth/req for 6 s"}
    w.heard()
    assert w.faults() == {}
    w.asked()
    clock.t += 10
    w.link_down()  # a lost broker is reported as such, not as a silent backend
    assert w.faults() == {}


def test_a_status_from_another_instance_is_a_duplicate_id() -> None:
    clock = Clock()
    w = _watch(clock)
    ours = _status(STARTED + timedelta(seconds=1))
    w.published(ours)
    w.status_seen(ours)  # our own echo
    w.status_seen(_status(STARTED - timedelta(seconds=5)))  # a previous run's, retained
    w.status_seen(_status(STARTED + timedelta(seconds=2), online=False))  # a will
    for junk in (b"", b"[]", b'{"online": true}', b'{"online": true, "ts": "x"}'):
        w.status_seen(junk)
    assert w.faults() == {}
    w.status_seen(_status(STARTED + timedelta(seconds=3)))  # someone else, now
    assert DUPLICATE in w.faults()
    clock.t += DUPLICATE_HOLD_S + 1
    assert w.faults() == {}


def test_links_the_broker_keeps_closing_are_a_duplicate_id() -> None:
    clock = Clock()
    w = _watch(clock)
    for _ in range(SHORT_RUNS - 1):
        w.link_up()
        clock.t += 1.0
        w.link_down()
    w.link_up()
    clock.t += SHORT_LINK_S + 1  # one link that held: the count starts again
    w.link_down()
    for _ in range(SHORT_RUNS - 1):
        w.link_up()
        clock.t += 1.0
        w.link_down()
    assert w.faults() == {}
    w.link_up()
    clock.t += 1.0
    w.link_down()
    assert DUPLICATE in w.faults()


# ----------------------------------------------------------------------- real daemons
def test_a_silent_backend_shows_in_status_and_selftest(make_daemon, capsys) -> None:
    """No backend behind the broker: after the first auth/req times out."""
    d = make_daemon(mqtt={"auth_timeout_s": 0.5})
    d.ctl("sim.plug", evse_id=EVSE1)
    d.ctl("sim.tap", uid=UID_A)
    wait_until(lambda: NOT_ANSWERING in d.ctl("status")["faults"], 10, "not answering")
    assert main(["--socket", str(d.socket), "status"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "broker connected" in first and "backend NOT ANSWERING" in first
    checks = {c["check"]: c for c in d.ctl("selftest")}
    assert checks["broker"]["ok"] and not checks["backend"]["ok"]
    assert "does not answer" in checks["backend"]["detail"]


def test_two_daemons_with_one_station_id_say_so(tmp_path: Path, broker, prefix) -> None:
    daemons = [
        Daemon(tmp_path / name, station_config(tmp_path / name, broker.url, prefix))
        for name in ("a", "b")
    ]
    try:
        for d in daemons:
            d.spawn()
        for d in daemons:
            d.wait_ready(connected=False)
        for d in daemons:
            wait_until(lambda d=d: DUPLICATE in d.ctl("status")["faults"], 20, "duplicate id")
            assert "another station-agent is probably connected as station ST-TEST" in d.log()
    finally:
        for d in daemons:
            d.stop()
