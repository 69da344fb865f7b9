"""Nothing lost: kill -9, SIGTERM, power loss, broker outages, corrupt and old databases.

Every test runs the real daemon as a child process against a real Mosquitto.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.backend_sim import BackendSim
from agent.broker import Mosquitto
from agent.errors import StoreError
from agent.store import _MIGRATIONS, DB_NAME, SCHEMA_VERSION, Store, _split_sql
from tests.helpers import EVSE1, UID_A, UID_B, Daemon, station_config, wait_msg, wait_until

ST = "ST-TEST"


def durable_config(tmp: Path, url: str, prefix: str, **over: Any) -> dict[str, Any]:
    cfg = station_config(tmp, url, prefix, **over)
    for i, evse in enumerate(cfg["evse"], start=1):
        evse["plug"] = {"driver": "sim", "state_file": str(tmp / f"plug{i}.state")}
        evse["meter"] = {
            "driver": "sim",
            "power_kw": 11.0,
            "time_factor": 60.0,
            "state_file": str(tmp / f"meter{i}.state"),
        }
    cfg["store"] = {"meter_interval_s": 0.2, **cfg.get("store", {})}
    (tmp / "boot_id").write_text("boot-1\n")
    return cfg


def wait_online(backend: BackendSim, start: int = 0) -> None:
    """Wait for the daemon's online status at the backend: from then on the daemon receives
    the backend's commands. (The link reports "connected" at CONNACK, before the broker has
    the subscription; the daemon subscribes before it publishes anything, so its first
    message proves the subscription is in place.)"""
    wait_msg(backend, "status", timeout=30, start=start, online=True)


def committed_session(d: Daemon, session_id: str) -> dict[str, Any]:
    """The session's row as the daemon has committed it, read over a read-only connection of
    our own (WAL: a reader never blocks the daemon's writes)."""
    path = Path(d.config["station"]["state_dir"]) / DB_NAME
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM sessions WHERE session_id=?", (session_id,)).fetchone()
        return dict(row) if row is not None else {}
    finally:
        db.close()


def wait_persisted_kwh(d: Daemon, session_id: str, kwh: float, timeout: float = 30.0) -> None:
    """Wait until the daemon has committed meter readings worth more than ``kwh`` for the
    session (meter_last_kwh - meter_start_kwh): the signal that meter persists happened."""

    def persisted() -> float:
        row = committed_session(d, session_id)
        if row.get("meter_last_kwh") is None or row.get("meter_start_kwh") is None:
            return 0.0
        return float(row["meter_last_kwh"] - row["meter_start_kwh"])

    wait_until(lambda: persisted() > kwh, timeout, f"{kwh} kWh persisted for {session_id}")


def wait_live_kwh(d: Daemon, session_id: str, kwh: float, timeout: float = 30.0) -> None:
    """Wait until the daemon reports (``sessions``) more than ``kwh`` charged in the session."""

    def live() -> float:
        row = next((r for r in d.ctl("sessions") if r["session_id"] == session_id), {})
        return float(row.get("energy_kwh") or 0.0)

    wait_until(lambda: live() > kwh, timeout, f"{kwh} kWh charged in {session_id}")


def parse_relay_log(path: Path) -> list[tuple[datetime, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        ts, what = line.split()
        out.append((datetime.fromisoformat(ts), what))
    return out


def closed_intervals(
    relay_log: Path, kills: list[datetime]
) -> list[tuple[datetime, datetime, bool]]:
    """(closed at, opened at, ended by a crash) for every time the sim relay was closed.

    A killed process logs no "open": its relay interval ends at the kill (the contactor of a
    dead controller drops out; the restarted agent opens it first thing)."""
    out = []
    closed_at: datetime | None = None
    for ts, what in parse_relay_log(relay_log):
        if closed_at is not None:
            crash = next((k for k in kills if closed_at <= k <= ts), None)
            if crash is not None:
                out.append((closed_at, crash, True))
                closed_at = None
        if what == "close" and closed_at is None:
            closed_at = ts
        elif what == "open" and closed_at is not None:
            out.append((closed_at, ts, False))
            closed_at = None
    if closed_at is not None:
        out.append((closed_at, max([*kills, closed_at]), True))
    return out


def assert_relay_only_closed_in_sessions(
    relay_log: Path, cdrs: list[dict[str, Any]], kills: list[datetime]
) -> int:
    """Every closed interval of the relay lies within an authorised session: it closed after
    the session's charging start was committed and opened by its (committed) end, or the
    process died while that session was still open."""
    slack = timedelta(milliseconds=2)  # timestamps are truncated to milliseconds
    sessions = [
        (datetime.fromisoformat(c["charging_start"]), datetime.fromisoformat(c["charging_end"]))
        for c in cdrs
        if c["charging_start"]
    ]
    starts = sorted(start for start, _ in sessions)
    intervals = closed_intervals(relay_log, kills)

    def covers(start: datetime, end: datetime, closed: datetime, opened: datetime) -> bool:
        if not start - slack <= closed:
            return False
        if opened <= end + slack:
            return True
        # ended by the recovery after a crash: its CDR ends at the last committed time, but the
        # session was open until the process died; no other session began meanwhile
        crash = next((k for k in kills if k >= opened), None)
        return crash is not None and end <= crash and not any(start < s <= opened for s in starts)

    for closed, opened, _ in intervals:
        assert any(covers(a, b, closed, opened) for a, b in sessions), (
            f"relay closed {closed} .. {opened} outside any authorised session"
        )
    return len(intervals)


@pytest.fixture
def durable(tmp_path, broker, prefix):
    daemons: list[Daemon] = []

    def make(**over: Any) -> Daemon:
        d = Daemon(tmp_path, durable_config(tmp_path, broker.url, prefix, **over))
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.stop(signal.SIGKILL)


# ------------------------------------------------------------------------------- crash test
KILL_POINTS = [
    "idle",
    "authorizing",  # auth request out, no answer yet
    "authorized",  # waiting for the car
    "charging",  # relay closed
    "charging_late",  # after several meter persists
    "just_after_unplug",  # unplug sent, kill at once
    "just_after_stop_tap",  # stop tap sent, kill at once
    "cdr_unacked",  # CDR published, ack not yet received
    "after_ack",  # everything settled
]


def test_kill_9_at_every_point_loses_no_cdr(durable, backend):
    """Crash test: kill -9 at many points, restart, every started session has exactly one CDR
    in the backend's view, and the relay was never closed outside an authorised session."""
    rng = random.Random(1234)
    d = durable()
    d.start()
    started: set[str] = set()
    kills = 0
    kill_times: list[datetime] = []
    points = [*KILL_POINTS, *(f"random-{i}" for i in range(8))]
    for point in points:
        backend.auto_ack = point != "cdr_unacked"
        backend.answer_auth = point != "authorizing"
        if d.evse()["plugged"]:
            d.ctl("sim.unplug")
        d.wait_state("available")
        mark = len(backend.received)
        if point == "idle":
            pass
        elif point == "authorizing":
            d.ctl("sim.tap", uid=UID_A)
            d.wait_state("authorizing")
        elif point == "authorized":
            d.ctl("sim.tap", uid=UID_A)
            d.wait_state("authorized")
        elif point.startswith(("charging", "just_after", "cdr_", "after_ack", "random")):
            d.ctl("sim.plug")
            d.ctl("sim.tap", uid=UID_A)
            sid = d.wait_state("charging")["session_id"]
            if point == "charging_late":
                # several meter persists (0.2 s apart, ~0.04 kWh each) are committed
                wait_persisted_kwh(d, sid, 0.1)
            elif point == "just_after_unplug":
                d.ctl("sim.unplug")
            elif point == "just_after_stop_tap":
                d.ctl("sim.tap", uid=UID_A)
            elif point == "cdr_unacked":
                d.ctl("sim.tap", uid=UID_A)
                wait_msg(backend, "cdr", start=mark)
            elif point == "after_ack":
                d.ctl("sim.tap", uid=UID_A)
                wait_until(lambda: d.ctl("outbox")["pending"] == 0, 5, "ack")
            else:
                # a random kill instant is the point of these kill points: not readiness waits
                time.sleep(rng.uniform(0.0, 0.6))
                if rng.random() < 0.5:
                    d.ctl("sim.tap", uid=UID_A)
                    time.sleep(rng.uniform(0.0, 0.05))
        d.kill()
        kill_times.append(datetime.now(UTC))
        kills += 1
        started |= {
            m["session_id"] for m in backend.messages("session", ST) if m["event"] == "started"
        }
        backend.auto_ack = True
        backend.answer_auth = True
        d.start()
        # a resumed session must be finished by the car leaving
        if d.evse()["state"] == "charging":
            d.ctl("sim.unplug")
        d.wait_state("available", timeout=10) if not d.evse()["plugged"] else None
    if d.evse()["plugged"]:
        d.ctl("sim.unplug")
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 15, "every CDR acknowledged")
    started |= {m["session_id"] for m in backend.messages("session", ST) if m["event"] == "started"}
    cdr_ids = {c["session_id"] for c in backend.messages("cdr", ST)}
    assert kills == len(points) >= 15
    assert started, "no session started: the test exercised nothing"
    assert cdr_ids == started, (
        f"missing CDRs: {started - cdr_ids}, unexpected CDRs: {cdr_ids - started}"
    )
    for cdr in backend.cdrs.values():
        assert cdr["energy_kwh"] >= 0 and cdr["meter_stop_kwh"] >= cdr["meter_start_kwh"]
    closes = assert_relay_only_closed_in_sessions(
        d.tmp / "relay1.log", list(backend.cdrs.values()), kill_times
    )
    assert closes >= len(started)
    print(f"crash test: {kills} kill -9 points, {len(started)} sessions, {closes} relay closings")


# ------------------------------------------------------------------------------- restart
def test_sigterm_mid_charge_resumes_the_same_session(durable, backend):
    d = durable()
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    sid = d.wait_state("charging")["session_id"]
    wait_live_kwh(d, sid, 0.09)  # ~0.5 s of charging before the restart
    assert d.stop() == 0  # SIGTERM: relay opened, store flushed, offline status
    assert d.relay_log()[-1] == "open"
    wait_msg(backend, "status", online=False)
    assert backend.messages("cdr", ST) == []  # a restart ends nothing
    d.start()
    e = d.wait_state("charging")
    assert e["session_id"] == sid and e["relay_closed"]
    wait_live_kwh(d, sid, 0.18)  # and as much again after it
    d.ctl("sim.unplug")
    cdr = wait_msg(backend, "cdr", session_id=sid)
    assert cdr["stop_reason"] == "ev_disconnected"
    # energy before and after the restart: >= 1 s of charging at 11 kW x 60 = 0.18 kWh/s
    assert cdr["energy_kwh"] >= 0.15
    first = [m for m in backend.messages("session", ST) if m["event"] == "authorized"]
    assert datetime.fromisoformat(cdr["session_start"]) <= datetime.fromisoformat(first[0]["ts"])
    assert len(backend.messages("cdr", ST)) == 1


def test_restart_with_car_gone_ends_session_ev_disconnected(durable, backend):
    d = durable()
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    sid = d.wait_state("charging")["session_id"]
    wait_persisted_kwh(d, sid, 0.0)  # a meter reading past the start is committed
    d.kill()
    (d.tmp / "plug1.state").write_text("unplugged\n")  # the car left while the agent was down
    d.start()
    cdr = wait_msg(backend, "cdr", session_id=sid)
    assert cdr["stop_reason"] == "ev_disconnected"
    assert cdr["energy_kwh"] > 0
    d.wait_state("available")


def test_power_loss_ends_session_with_last_persisted_facts(durable, backend):
    d = durable()
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    sid = d.wait_state("charging")["session_id"]
    wait_persisted_kwh(d, sid, 0.1)  # several meter persists (meter_interval_s = 0.2)
    d.kill()
    (d.tmp / "boot_id").write_text("boot-2\n")  # the station rebooted
    d.start()
    cdr = wait_msg(backend, "cdr", session_id=sid)
    assert cdr["stop_reason"] == "power_loss"
    assert cdr["energy_kwh"] > 0.1  # the persisted meter detail, not zero
    assert cdr["session_end"] < datetime.now().astimezone().isoformat()
    st = d.evse()
    assert st["state"] == "preparing" and not st["relay_closed"]  # car still there, no session


# ------------------------------------------------------------------------------- outage
def test_broker_outage_offline_sessions_delivered_in_order(tmp_path, prefix):
    with Mosquitto() as mosq:
        backend = BackendSim(mosq.url, prefix=prefix)
        backend.start()
        try:
            d = Daemon(
                tmp_path, durable_config(tmp_path, mosq.url, prefix, mqtt={"keepalive_s": 5})
            )
            d.start()
            wait_online(backend)
            cid = backend.command(
                ST,
                "update_local_list",
                version=1,
                mode="full",
                entries=[{"uid": UID_A, "status": "accepted"}],
            )
            assert wait_msg(backend, "cmd/res", command_id=cid)["status"] == "accepted"
            assert d.ctl("auth.list")["version"] == 1
            mosq.stop()
            wait_until(lambda: not d.ctl("status")["link"]["connected"], 10, "link down")
            offline_ids = []
            for _ in range(3):
                d.ctl("sim.plug")
                d.ctl("sim.tap", uid=UID_A)
                offline_ids.append(d.wait_state("charging")["session_id"])
                d.ctl("sim.unplug")
                d.wait_state("available")
            d.ctl("sim.plug")
            d.ctl("sim.tap", uid=UID_B)  # not on the list: refused offline
            wait_until(
                lambda: d.evse()["state"] == "preparing" and "unknown" in d.log(),
                5,
                "offline refusal",
            )
            d.ctl("sim.unplug")
            assert d.ctl("outbox")["pending"] == 3
            mosq.start()
            wait_until(lambda: d.ctl("outbox")["pending"] == 0, 20, "outbox drained")
            cdrs = backend.messages("cdr", ST)
            assert [c["session_id"] for c in cdrs][-3:] == offline_ids  # oldest first
            assert all(c["offline"] for c in cdrs[-3:])
            evs = [m for m in backend.messages("session", ST) if m["session_id"] in offline_ids]
            assert [(m["session_id"], m["event"]) for m in evs] == [
                (sid, ev) for sid in offline_ids for ev in ("authorized", "started", "stopped")
            ]
            assert all(m.get("offline") is True for m in evs)
            d.stop()
        finally:
            backend.stop()


def test_dead_link_noticed_within_one_and_a_half_keepalive(tmp_path, prefix):
    with Mosquitto() as mosq:
        backend = BackendSim(mosq.url, prefix=prefix)
        backend.start()
        d = Daemon(tmp_path, durable_config(tmp_path, mosq.url, prefix, mqtt={"keepalive_s": 5}))
        try:
            d.start()
            assert mosq.proc is not None
            mosq.proc.send_signal(signal.SIGSTOP)  # the broker hangs: TCP stays up, no answers
            t0 = time.monotonic()
            wait_until(lambda: not d.ctl("status")["link"]["connected"], 12, "dead link noticed")
            assert time.monotonic() - t0 <= 5 * 1.5 + 0.5
            mark = len(backend.received)
            mosq.proc.send_signal(signal.SIGCONT)
            wait_until(lambda: d.ctl("status")["link"]["connected"], 20, "reconnect")
            wait_msg(backend, "status", start=mark, online=True)  # republished on reconnect
        finally:
            if mosq.proc is not None:
                mosq.proc.send_signal(signal.SIGCONT)
            d.stop()
            backend.stop()


def test_unacked_cdr_is_resent_with_backoff_until_acked(durable, backend):
    backend.auto_ack = False
    d = durable(mqtt={"cdr_retry_initial_s": 0.5, "cdr_retry_max_s": 1.0})
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    d.ctl("sim.unplug")
    wait_until(lambda: len(backend.messages("cdr", ST)) >= 3, 10, "re-sends")
    assert d.ctl("outbox")["entries"][0]["attempts"] >= 3
    st = d.ctl("status")
    assert st["outbox"]["pending"] == 1 and st["outbox"]["oldest"]
    backend.auto_ack = True
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "acked")
    assert len({c["session_id"] for c in backend.messages("cdr", ST)}) == 1


def test_local_first_and_deauthorisation(durable, backend):
    backend.accept = set()  # the backend refuses everyone
    d = durable(auth={"local_first": True})
    d.start()
    wait_online(backend)
    cid = backend.command(
        ST,
        "update_local_list",
        version=5,
        mode="full",
        entries=[{"uid": UID_A, "status": "accepted"}],
    )
    assert wait_msg(backend, "cmd/res", command_id=cid)["status"] == "accepted"
    old = backend.command(ST, "update_local_list", version=5, mode="differential", entries=[])
    assert "not newer" in wait_msg(backend, "cmd/res", command_id=old)["reason"]
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    cdr = wait_msg(backend, "cdr")  # started locally at once, stopped when the backend refused
    assert cdr["stop_reason"] == "deauthorized"
    assert d.evse()["state"] in ("finishing", "preparing")


def test_auth_cache_used_when_backend_silent(durable, backend):
    d = durable(mqtt={"auth_timeout_s": 0.5})
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)  # backend accepts: cached
    d.wait_state("charging")
    d.ctl("sim.unplug")
    d.wait_state("available")
    backend.answer_auth = False
    d.stop()
    d.start()  # the cache survives a restart
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    e = d.wait_state("charging")
    ev = wait_msg(backend, "session", session_id=e["session_id"], event="authorized")
    assert ev["offline"] is True
    d.ctl("sim.unplug")
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_B)  # never seen: refused when the backend is silent
    wait_msg(backend, "session", event="timeout")
    assert d.evse()["state"] == "preparing"


# ------------------------------------------------------------------------------- database
def test_corrupt_database_moved_aside_and_fresh_one_created(durable, backend):
    d = durable()
    state = d.tmp / "state"
    state.mkdir(parents=True)
    (state / DB_NAME).write_bytes(b"this is not a database" * 100)
    d.start()
    assert list(state.glob(f"{DB_NAME}.corrupt-*")), "corrupt file not kept"
    assert "moved aside" in d.log()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")


def test_newer_agent_upgrades_an_older_database(tmp_path):
    db_path = tmp_path / DB_NAME
    db = sqlite3.connect(db_path)
    for stmt in _split_sql(_MIGRATIONS[1]):
        db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    sid = str(uuid.uuid4())
    db.execute(
        "INSERT INTO sessions (session_id, evse_id, token, state, session_start,"
        " updated_at) VALUES (?, ?, ?, 'ended', ?, ?)",
        (
            sid,
            EVSE1,
            json.dumps({"type": "rfid", "uid": UID_A}),
            "2026-01-01T00:00:00.000+00:00",
            "2026-01-01T00:00:00.000+00:00",
        ),
    )
    db.execute(
        "INSERT INTO outbox (session_id, payload, created_at) VALUES (?, '{}', ?)",
        (sid, "2026-01-01T00:00:00.000+00:00"),
    )
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.open()
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert store.get_session(sid) is not None
    assert store.outbox_stats()[0] == 1
    assert store.local_list_version() == 0  # the v2 tables exist
    store.close()


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs for the state directory: a real 'No space left on device'."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root (CI runs as root)")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    try:
        with path.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as err:
        assert err.errno == errno.ENOSPC


def test_disk_full_faults_opens_relay_and_leaves_no_half_state(durable, backend, small_disk):
    d = durable()
    d.config["station"]["state_dir"] = str(small_disk)
    d.start()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    sid = d.wait_state("charging")["session_id"]
    fill(small_disk / "ballast")  # the disk fills up while the car charges
    wait_until(lambda: d.evse()["state"] == "faulted", 15, "store fault")
    st = d.ctl("status")
    assert any(f.startswith("store") for f in st["faults"])
    assert not d.evse()["relay_closed"] and d.relay_log()[-1] == "open"
    assert d.proc is not None and d.proc.poll() is None  # reported, not crashed
    d.stop()
    check = sqlite3.connect(small_disk / DB_NAME)
    row = check.execute("SELECT state FROM sessions WHERE session_id=?", (sid,)).fetchone()
    queued = check.execute("SELECT COUNT(*) FROM outbox WHERE session_id=?", (sid,)).fetchone()
    check.close()
    assert row is not None and (row[0] == "ended") == (queued[0] == 1)  # no half-written end
    # the technician frees space and restarts: the car is still there, but the station stopped
    # that session while it could not write it down: it is settled, never resumed
    (small_disk / "ballast").unlink()
    d.start()
    cdr = wait_msg(backend, "cdr", session_id=sid)
    assert cdr["stop_reason"] == "fault"
    assert d.evse()["session_id"] != sid and not d.evse()["relay_closed"]
    assert d.relay_log()[-1] == "open"


def test_database_size_cap_fails_writes_cleanly(tmp_path):
    store = Store(tmp_path, max_kb=192)
    store.open()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(StoreError, match="full"):
        for _ in range(10000):
            sid = str(uuid.uuid4())
            store.insert_session(
                session_id=sid,
                evse_id=EVSE1,
                token={"type": "rfid", "uid": UID_A},
                contract_id=None,
                start=now,
            )
    assert store.get_session(sid) is None  # the failing transaction left nothing
    assert store.integrity_ok()
    store.close()
