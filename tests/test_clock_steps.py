"""Promise: clock steps do not corrupt CDRs, and no session starts on a clock known to be unset.

Real processes: the daemon as a child process, a real Mosquitto, the reference backend, SQLite.
The daemon's wall clock is stepped from outside through its test clock (``OffsetClock``: the
environment names an offset file; rewriting the file is an NTP step). Nothing sleeps for a
fixed time: the tests wait for what the daemon publishes or logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.clock import (
    BUILD_DATE,
    OFFSET_FILE_ENV,
    ClockCheck,
    FakeClock,
    OffsetClock,
    parse_rfc3339,
)
from agent.inputs import CardTapped, Inputs
from agent.session import Evse, TokenPresented
from drivers.display.sim import SimDisplay
from drivers.rfid.base import CardRead
from tests.helpers import EVSE1, UID_A, Daemon, wait_msg, wait_until

ST = "ST-TEST"
YEAR_1970 = datetime(1970, 1, 2, tzinfo=UTC)  # a Raspberry Pi without RTC boots about here


def step_clock(path: Path, offset_s: float) -> None:
    """Step the daemon's wall clock (atomically, as NTP would: all at once)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{offset_s!r}\n")
    os.replace(tmp, path)


def offset_to(when: datetime) -> float:
    return (when - datetime.now(UTC)).total_seconds()


def stepped_daemon(
    make_daemon: Callable[..., Daemon], offset_s: float, **overrides: Any
) -> tuple[Daemon, Path]:
    d = make_daemon(start=False, **overrides)
    offset_file = d.tmp / "clock-offset"
    step_clock(offset_file, offset_s)
    (d.tmp / "boot_id").write_text("boot-clock-1\n")  # one boot: monotonic marks compare
    d.env[OFFSET_FILE_ENV] = str(offset_file)
    d.start()
    return d, offset_file


def stationctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "agent.stationctl",
        "--socket",
        str(d.socket),
        *(args or ("selftest",)),
    ]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def span(cdr: dict[str, Any], a: str = "session_start", b: str = "session_end") -> float:
    return (parse_rfc3339(cdr[b]) - parse_rfc3339(cdr[a])).total_seconds()


def charge(d: Daemon) -> float:
    """Plug, tap, charging; returns the monotonic time just before the tap."""
    d.ctl("sim.plug")
    d.wait_state("preparing")
    t0 = time.monotonic()
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    return t0


def test_boot_at_1970_then_ntp_step_gives_a_sane_flagged_cdr(make_daemon, backend):
    d, offset_file = stepped_daemon(
        make_daemon, offset_to(YEAR_1970), station={"allow_unset_clock": True}
    )
    t0 = charge(d)
    session = d.ctl("sessions")[0]
    assert session["session_start"].startswith("1970-01-0")  # the clock really was at 1970
    step_clock(offset_file, 0.0)  # NTP: the clock jumps 56 years forward
    wait_until(lambda: "clock:unset" not in d.ctl("status")["faults"], 5, "the clock to be set")
    d.ctl("sim.tap", uid=UID_A)  # stop
    cdr = wait_msg(backend, "cdr")
    real = time.monotonic() - t0
    assert 0 <= span(cdr) <= real + 1.0, cdr  # not 20,789 days
    assert 0 <= span(cdr, "charging_start", "charging_end") <= real + 1.0
    assert abs(parse_rfc3339(cdr["session_end"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert cdr["session_start"] <= cdr["charging_start"] <= cdr["charging_end"]
    assert cdr["clock_corrected"] is True
    assert "CDR times corrected" in d.log()


def test_a_step_back_mid_session_keeps_the_cdr_in_order(make_daemon, backend):
    d, offset_file = stepped_daemon(make_daemon, 0.0)
    t0 = charge(d)
    step_clock(offset_file, -3600.0)  # NTP steps the clock an hour back
    wait_until(lambda: d.ctl("status")["ts"] < d.ctl("sessions")[0]["session_start"], 5, "step")
    d.ctl("sim.unplug")
    cdr = wait_msg(backend, "cdr")
    real = time.monotonic() - t0
    assert cdr["session_end"] >= cdr["session_start"], cdr
    assert 0 <= span(cdr) <= real + 1.0
    assert cdr["session_start"] <= cdr["charging_start"] <= cdr["charging_end"]
    assert cdr["clock_corrected"] is True


def test_a_session_without_a_step_is_not_flagged(make_daemon, backend):
    d, _ = stepped_daemon(make_daemon, 0.0)
    charge(d)
    d.ctl("sim.unplug")
    cdr = wait_msg(backend, "cdr")
    assert "clock_corrected" not in cdr  # additive: absent unless corrected
    assert span(cdr) >= 0


def test_cdr_resends_survive_a_step_back(make_daemon, backend):
    backend.auto_ack = False
    d, offset_file = stepped_daemon(
        make_daemon, 0.0, mqtt={"cdr_retry_initial_s": 1.0, "cdr_retry_max_s": 2.0}
    )
    charge(d)
    d.ctl("sim.unplug")
    first = wait_msg(backend, "cdr")
    sid = first["session_id"]
    n = len(backend.received)
    step_clock(offset_file, -3600.0)  # last_attempt_at is now an hour in the future
    wait_msg(backend, "cdr", timeout=30.0, start=n, session_id=sid)  # re-sent, not stalled
    n = len(backend.received)
    wait_msg(backend, "cdr", timeout=30.0, start=n, session_id=sid)  # and again
    assert d.ctl("outbox")["pending"] == 1


def test_unset_clock_refuses_sessions_until_ntp_sets_it(make_daemon, backend):
    d, offset_file = stepped_daemon(make_daemon, offset_to(YEAR_1970))
    status = d.ctl("status")
    assert "clock:unset" in status["faults"]
    published = wait_msg(backend, "status", timeout=10.0, online=True)
    assert "clock:unset" in published["faults"]
    [clock] = [c for c in d.ctl("selftest") if c["check"] == "clock"]
    assert clock["ok"] is False and "not set" in clock["detail"]
    assert "are refused" in clock["detail"]
    r = stationctl(d, "selftest")
    assert r.returncode >= 1
    assert any(ln.startswith("FAIL") and "clock" in ln for ln in r.stdout.splitlines()), r.stdout

    d.ctl("sim.plug")
    d.wait_state("preparing")
    d.ctl("sim.tap", uid=UID_A)
    wait_until(lambda: "refused: clock not set" in d.log(), 5, "the refusal in the log")
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A")
    res = wait_msg(backend, "cmd/res", command_id=cid)
    assert res["status"] == "rejected" and res["reason"] == "station clock is not set"
    assert backend.messages("auth/req", ST) == []
    assert d.evse()["state"] == "preparing" and not d.evse()["relay_closed"]

    step_clock(offset_file, 0.0)  # NTP sets the clock: no restart needed
    wait_until(lambda: "clock:unset" not in d.ctl("status")["faults"], 5, "the fault to clear")
    [clock] = [c for c in d.ctl("selftest") if c["check"] == "clock"]
    assert clock["ok"] is True
    assert any(ln.startswith("PASS") and "clock" in ln for ln in stationctl(d).stdout.splitlines())
    d.ctl("sim.tap", uid=UID_A)
    wait_msg(backend, "auth/req")
    d.wait_state("charging")


def test_not_yet_synchronised_where_timesyncd_runs(make_daemon, backend, tmp_path):
    """Where systemd-timesyncd runs (its directory exists), the clock is unset until it has
    written its 'synchronized' flag, whatever the time reads."""
    sync_dir = tmp_path / "timesync"
    sync_dir.mkdir()
    flag = sync_dir / "synchronized"
    d = make_daemon(station={"clock_sync_file": str(flag)})
    assert "clock:unset" in d.ctl("status")["faults"]
    d.ctl("sim.plug")
    d.wait_state("preparing")
    d.ctl("sim.tap", uid=UID_A)
    wait_until(lambda: "refused: clock not set" in d.log(), 5, "the refusal in the log")
    assert backend.messages("auth/req", ST) == []
    flag.touch()  # time-sync.target reached
    wait_until(lambda: "clock:unset" not in d.ctl("status")["faults"], 5, "the fault to clear")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")


@pytest.mark.parametrize("offset", [0.0, -3600.0])
def test_allow_unset_clock_is_reported_but_not_refused(make_daemon, backend, offset):
    d, _ = stepped_daemon(
        make_daemon, offset_to(YEAR_1970) + offset, station={"allow_unset_clock": True}
    )
    assert "clock:unset" in d.ctl("status")["faults"]
    [clock] = [c for c in d.ctl("selftest") if c["check"] == "clock"]
    assert clock["ok"] is False and "start anyway" in clock["detail"]
    charge(d)


# ------------------------------------------------------------------------- in process
def test_offset_clock_steps_wall_time_only(tmp_path):
    base = FakeClock()
    path = tmp_path / "offset"
    clock = OffsetClock(path, base)
    assert clock.now() == base.now()  # no file: no offset
    step_clock(path, -3600.5)
    assert clock.now() == base.now() - timedelta(seconds=3600.5)  # a new file: read at once
    assert clock.monotonic() == base.monotonic()
    step_clock(path, 0.0)
    assert clock.now() == base.now()
    path.write_text("not a number")
    assert clock.now() == base.now()  # unreadable: the last offset stays
    path.write_text("inf")
    assert clock.now() == base.now()
    path.unlink()
    assert clock.now() == base.now()


def test_offset_clock_rereads_an_unchanged_looking_file_after_50_ms(tmp_path):
    base = FakeClock()
    path = tmp_path / "offset"
    path.write_text("10.0")
    clock = OffsetClock(path, base)
    assert clock.offset() == 10.0
    st = os.stat(path)
    path.write_text("20.0")  # same size, same inode; force the old mtime back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert clock.offset() == 10.0  # looks unchanged, read < 50 ms ago
    base.advance(0.06)
    assert clock.offset() == 20.0


def test_clock_check_build_date_and_timesync(tmp_path):
    early = FakeClock(BUILD_DATE - timedelta(seconds=1))
    assert "not set" in (ClockCheck(early).problem() or "")
    assert ClockCheck(early).refuses_sessions() is not None
    assert ClockCheck(early, allow_unset=True).refuses_sessions() is None
    assert ClockCheck(early, allow_unset=True).problem() is not None  # still reported
    good = FakeClock(BUILD_DATE)
    assert ClockCheck(good).problem() is None
    flag = tmp_path / "timesync" / "synchronized"
    assert ClockCheck(good, sync_file=flag).problem() is None  # no timesyncd here: date rule
    flag.parent.mkdir()
    assert "not synchronised" in (ClockCheck(good, sync_file=flag).problem() or "")
    flag.touch()
    assert ClockCheck(good, sync_file=flag).problem() is None


def test_a_tap_on_an_unset_clock_is_refused_with_a_message():
    clock = FakeClock(datetime(1970, 1, 1, tzinfo=UTC))
    display = SimDisplay()
    inputs = Inputs(
        states=lambda: [Evse(evse_id=EVSE1, plugged=True)],
        display=display,
        post=lambda item: None,
        new_id=lambda: "00000000-0000-4000-8000-000000000001",
        clock_check=ClockCheck(clock),
    )
    tap = CardTapped(CardRead(uid=UID_A))
    assert inputs.handle(tap) == []
    assert display.message == "Clock not set - try again shortly"
    clock.advance((datetime.now(UTC) - clock.now()).total_seconds())  # NTP sets it
    [(evse_id, event, _)] = inputs.handle(tap)
    assert evse_id == EVSE1 and isinstance(event, TokenPresented)
