"""The status page's parts without processes: the password file and `stationctl web passwd`,
login sessions and the back-off, the plot, the CSV, escaping, the readings table, [web] config,
and the 500 page that carries no traceback."""

from __future__ import annotations

import csv
import io
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent import readings
from agent.config import WebConfig
from agent.errors import ConfigError
from agent.store import Store
from agent.web import pages, plot
from agent.web.auth import MAX_BACKOFF_S, MAX_SESSIONS, LoginLimiter, Sessions
from agent.web.passwd import hash_password, parse_hash, read_hash

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
STATIONCTL = [sys.executable, "-m", "agent.stationctl", "web", "passwd"]


# ------------------------------------------------------------------------------ passwords
def test_hash_verifies_only_the_password_and_survives_the_file(tmp_path: Path) -> None:
    pw = hash_password("s3cret-enough")
    assert pw.verify("s3cret-enough") and not pw.verify("s3cret-enougH")
    assert pw.salt != hash_password("s3cret-enough").salt  # salted
    again = parse_hash(pw.line(), "x")
    assert again == pw and "s3cret" not in pw.line()
    for bad in ("", "plain", "scrypt$3$8$1$00$00", "scrypt$16384$8$1$zz$00", "bcrypt$1$2$3$4$5"):
        with pytest.raises(ConfigError, match="not a password file"):
            parse_hash(bad, "web.password_file")
    with pytest.raises(ConfigError, match="stationctl web passwd"):
        read_hash(tmp_path / "missing")


def test_stationctl_web_passwd_from_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.stationctl import main

    target = tmp_path / "web.pass"
    os.umask(old := os.umask(0))  # whatever the umask: 0640
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO("from a pipe 1\nignored\n"))
        assert main(["web", "passwd", str(target)]) == 0
    finally:
        os.umask(old)
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert read_hash(target).verify("from a pipe 1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["web", "passwd", str(target)]) == 1
    assert "at least 8" in capsys.readouterr().err
    assert read_hash(target).verify("from a pipe 1")  # unchanged


def _on_a_tty(target: Path, first: str, second: str) -> tuple[int, str]:
    """``stationctl web passwd`` with a pseudo-terminal as stdin/stdout (getpass asks twice)."""
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [*STATIONCTL, str(target)], stdin=sub, stdout=sub, stderr=sub, start_new_session=True
    )
    os.close(sub)
    out = b""
    for answer in (first, second):
        while b":" not in out.rsplit(b"\n", 1)[-1]:  # wait for the prompt
            out += os.read(main, 1024)
        os.write(main, answer.encode() + b"\n")
        out = out.rsplit(b"\n", 1)[0] + b"\n"
    rc = proc.wait(30)
    try:
        while chunk := os.read(main, 1024):
            out += chunk
    except OSError:  # EIO: the child closed the terminal
        pass
    os.close(main)
    return rc, out.decode(errors="replace")


def test_stationctl_web_passwd_on_a_terminal_asks_twice(tmp_path: Path) -> None:
    target = tmp_path / "web.pass"
    rc, out = _on_a_tty(target, "typed twice 1", "typed twice 2")
    assert rc == 1 and "differ" in out and not target.exists()
    rc, out = _on_a_tty(target, "typed twice 1", "typed twice 1")
    assert rc == 0, out
    assert read_hash(target).verify("typed twice 1") and "typed twice" not in out


# ------------------------------------------------------------------------------ login state
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_are_bounded() -> None:
    clock = Clock()
    sessions = Sessions(600.0, clock)
    s = sessions.create()
    assert sessions.get(s.token) is s and sessions.get("x" * 43) is None
    assert sessions.get(None) is None and sessions.get("y" * 500) is None
    assert Sessions.csrf_ok(s, s.csrf) and not Sessions.csrf_ok(s, s.csrf[:-1] + "x")
    assert not Sessions.csrf_ok(s, None)
    clock.now += 599.9
    assert sessions.get(s.token) is s
    clock.now += 0.1
    assert sessions.get(s.token) is None  # expired on the server, whatever the cookie says
    first = sessions.create()
    for _ in range(MAX_SESSIONS):
        sessions.create()
    assert sessions.get(first.token) is None  # the oldest went first


def test_login_back_off_doubles_per_client_and_resets() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock)
    assert limiter.wait_s("a") == 0
    assert [limiter.failed("a") for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert limiter.wait_s("a") == 8.0 and limiter.wait_s("b") == 0
    clock.now += 8.0
    assert limiter.wait_s("a") == 0
    for _ in range(40):
        limiter.failed("a")
    assert limiter.wait_s("a") == MAX_BACKOFF_S
    limiter.succeeded("a")
    assert limiter.wait_s("a") == 0 and limiter.failed("a") == 1.0
    clock.now += 1.0
    assert limiter.begin("a") == 0  # an attempt of "a" is being checked ...
    assert limiter.begin("a") > 0  # ... so a parallel one waits
    assert limiter.begin("b") == 0
    limiter.succeeded("a")
    assert limiter.begin("a") == 0


# ------------------------------------------------------------------------------ plot, pages
def _readings(*points: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"ts": (T0 + timedelta(seconds=t)).isoformat(), "energy_kwh": kwh} for t, kwh in points]


def test_series_power_is_the_slope_between_readings() -> None:
    s = plot.series(_readings((0, 100.0), (60, 100.1), (180, 100.5), (180, 100.5)))
    assert s.seconds == [0, 60, 180, 180]
    assert s.energy_kwh == pytest.approx([0, 0.1, 0.5, 0.5])
    assert [(a, b) for a, b, _ in s.power_kw] == [(0, 60), (60, 180)]  # no slope over 0 s
    assert [p for _, _, p in s.power_kw] == pytest.approx([6.0, 12.0])
    svg = plot.svg(s, "Session <1>")
    assert svg.count("<polyline") == 2 and "Session &lt;1&gt;" in svg and "style=" not in svg
    assert "seconds" not in svg and "minutes" in svg
    assert "Fewer than two" in plot.svg(plot.series(_readings((0, 1.0))), "x")
    assert [plot.nice_max(v) for v in (0.0, 0.3, 1.0, 7.0, 1234.0)] == [1, 0.5, 1, 10, 2000]


def test_pages_escape_what_the_daemon_says() -> None:
    evse = {"evse_id": "<b>E1</b>", "state": "faulted", "fault": "<script>alert(1)</script>"}
    html = pages.card(evse)
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>E1" not in html
    assert "&lt;img" in pages.login_page("<img src=x onerror=alert(1)>")


def test_a_card_shows_the_offered_current_where_a_pilot_exists() -> None:
    plain = pages.card({"evse_id": "E1", "state": "idle"})
    assert "Offered current" not in plain and "Pilot" not in plain
    evse = {"evse_id": "E1", "state": "charging", "pilot": "C", "offered_a": 8}
    html = pages.card(evse | {"limit_a": 16, "limit_source": "station"})
    assert "<b>8 A of 16 A (station)</b>" in html and "<b>C</b>" in html


def test_csv_masks_tokens_and_defuses_formulas() -> None:
    rows = [
        {
            "session_id": '=HYPERLINK("http://evil")',
            "evse_id": "DE*ICE*E000001*1",
            "token": {"type": "rfid", "uid": "04A2…3C80"},
            "energy_kwh": 1.5,
            "stop_reason": "+local",
        }
    ]
    header, row = list(csv.reader(io.StringIO(pages.sessions_csv(rows))))
    assert header == list(pages.CSV_COLUMNS)
    cells = dict(zip(header, row, strict=True))
    assert cells["session_id"].startswith("'=HYPERLINK") and cells["stop_reason"] == "'+local"
    assert cells["token"] == "rfid:04A2…3C80" and cells["energy_kwh"] == "1.5"


# ------------------------------------------------------------------------------ readings
def test_readings_are_committed_with_the_session_bounded_and_purged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readings, "MAX_PER_SESSION", 10)
    store = Store(tmp_path)
    store.open()
    rfid = {"type": "rfid", "uid": "04A224B2C13C80"}
    store.insert_session(session_id="s1", evse_id="E", token=rfid, contract_id=None, start=T0)
    store.record_meter("s1", T0, 1.0)  # not charging yet: nothing stored
    assert store.session_readings("s1") == []
    store.mark_charging("s1", T0, 100.0)
    for i in range(1, 30):
        store.record_meter("s1", T0 + timedelta(seconds=i), 100.0 + i)
        assert len(store.session_readings("s1")) <= 10
    store.end_session("s1", end=T0 + timedelta(seconds=30), reason="local", meter_stop_kwh=130.0)
    kept = store.session_readings("s1")
    assert kept[0][1] == 100.0 and kept[-1][1] == 130.0  # the whole span stays
    assert [kwh for _, kwh in kept] == sorted(kwh for _, kwh in kept)
    store.purge(T0 + timedelta(days=400), retention_days=30)
    assert store.get_session("s1") is None and store.session_readings("s1") == []
    store.close()


# ------------------------------------------------------------------------------ config
def test_web_config_checks() -> None:
    assert WebConfig().listen == "0.0.0.0:8443"
    assert WebConfig(listen="[::1]:8080", tls=False).tls is False
    for bad, match in [
        ({"listen": "8443"}, "host:port"),
        ({"listen": "0.0.0.0:99999"}, "host:port"),
        ({"tls": False}, "loopback"),
        ({"tls_cert_file": "/x.pem"}, "go together"),
    ]:
        with pytest.raises(ValueError, match=match):
            WebConfig.model_validate(bad)


# ------------------------------------------------------------------------------ errors
def test_an_internal_error_is_a_500_without_traceback(tmp_path: Path) -> None:
    from agent.web.app import COOKIE, WebState, build_app
    from agent.web.live import LiveFeed

    class Broken:
        async def call(self, cmd: str, **kw: Any) -> Any:
            raise RuntimeError("secret internals /etc/shadow")

    sessions = Sessions(600.0)
    s = sessions.create()
    state = WebState(
        link=Broken(),  # type: ignore[arg-type]
        password=hash_password("whatever1"),
        sessions=sessions,
        limiter=LoginLimiter(),
        feed=LiveFeed(Broken().call),  # type: ignore[arg-type]
        tls=True,
        static={},
    )
    app = build_app(state)
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [(b"host", b"station"), (b"cookie", f"{COOKIE}={s.token}".encode())],
            "scheme": "https",
            "server": ("station", 443),
            "client": ("10.0.0.9", 5555),
            "http_version": "1.1",
            "root_path": "",
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        with pytest.raises(RuntimeError):  # re-raised for the server's log, after the answer
            await app(scope, receive, send)

    anyio.run(run)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 500
    assert b"secret" not in body and b"Traceback" not in body and b"Internal error" in body
    assert (b"x-frame-options", b"DENY") in start["headers"]


def test_the_web_control_commands_are_strict_and_read_only() -> None:
    from agent.control_args import ArgumentError, parse_args
    from agent.control_commands import LOOP_COMMANDS
    from agent.control_web import WEB_COMMANDS

    assert set(WEB_COMMANDS) <= set(LOOP_COMMANDS) and all(
        n.startswith("web.") for n in WEB_COMMANDS
    )
    sessions = LOOP_COMMANDS["web.sessions"].args
    assert parse_args("web.sessions", sessions, {"offset": 25, "limit": 25}).offset == 25
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"offset": "1"}, {"page": 1}):
        with pytest.raises(ArgumentError, match=r"^web\.sessions: "):
            parse_args("web.sessions", sessions, bad)
    session = LOOP_COMMANDS["web.session"].args
    for bad in ({}, {"session_id": ""}, {"session_id": "x" * 201}, {"session_id": 7}):
        with pytest.raises(ArgumentError, match=r"^web\.session: "):
            parse_args("web.session", session, bad)
