"""Promises #2 and #8 of "Keep the promises under attack": the control socket.

#2: no control request, however hostile, kills the daemon or cuts a charging session; each
gets an error reply that says what was wrong. #8: the control socket does not die for good
when its client threads run out, the accept loop survives failing accepts (EMFILE), and when
its accept thread is dead after all the watchdog stops, so systemd restarts the service.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.control import MAX_CLIENTS, ControlServer, call
from agent.controller import Controller
from agent.daemon import SystemdReporter
from agent.errors import StoreError
from agent.inputs import ControlCall
from tests.helpers import UID_A, wait_until


def raw_request(path: Path, data: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """Send ``data`` as it is (json.dumps cannot write 1e400) and return the daemon's reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        # refused before all was sent (too large): the reply is waiting all the same
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.endswith(b"\n"), f"no reply to {data[:60]!r}: {buf[:200]!r}"
    reply = json.loads(buf)
    assert isinstance(reply, dict)
    return reply


HUGE_INT = b"1" + b"0" * 400
DEEP = b"[" * 40_000  # under the 64 kB line limit; deeper than any recursion limit

# (raw request line, what the error reply must say)
HOSTILE: list[tuple[bytes, str]] = [
    (b'{"cmd":"sessions","limit":1e400}\n', "sessions: limit: Input should be a valid integer"),
    (b'{"cmd":"auth.list","limit":-1e999}\n', "auth.list: limit: Input should be a valid integer"),
    (b'{"cmd":"sessions","limit":NaN}\n', "sessions: limit: Input should be a valid integer"),
    (b'{"cmd":"sessions","limit":' + HUGE_INT + b"}\n", "less than or equal to 10000"),
    (b'{"cmd":"auth.list","limit":-' + HUGE_INT + b"}\n", "greater than or equal to 1"),
    (b'{"cmd":"sessions","limit":"5"}\n', "sessions: limit: Input should be a valid integer"),
    (b'{"cmd":"sessions","limit":true}\n', "sessions: limit: Input should be a valid integer"),
    (b'{"cmd":"rfid.read","timeout":NaN}\n', "rfid.read: timeout: Input should be a finite"),
    (b'{"cmd":"rfid.read","timeout":' + HUGE_INT + b"}\n", "rfid.read: timeout: Input should be"),
    (b'{"cmd":"qr.verify","timeout":-Infinity}\n', "qr.verify: timeout: Input should be a finite"),
    (b'{"cmd":"sim.tap","uid":["04A224B2C13C80"]}\n', "sim.tap: uid: Input should be a valid str"),
    (b'{"cmd":"sim.tap","uid":"04A224B2C13C80","card_type":"visa"}\n', "sim.tap: card_type"),
    (b'{"cmd":"sim.relay","mode":"melted"}\n', "sim.relay: mode: Input should be"),
    (b'{"cmd":"sim.unplug","evse_id":{"a":[[[{}]]]}}\n', "sim.unplug: evse_id: Input should be"),
    (b'{"cmd":"relay.cycle","evse_id":1e400}\n', "relay.cycle: evse_id: Input should be"),
    (b'{"cmd":"status","verbose":true}\n', "status: verbose: unknown field"),
    (b'{"cmd":"sim.unplug","evse_id":null,"force":1e400}\n', "sim.unplug: force: unknown field"),
    (b'{"cmd":"reboot"}\n', "unknown control command 'reboot'"),
    (b'{"cmd":["status"]}\n', "cmd must be a command name, not a list"),
    (b'{"cmd":' + b"[" * 980 + b"]" * 980 + b"}\n", "cmd must be a command name, not a list"),
    (b'{"limit":5}\n', "cmd must be a command name, not missing"),
    (b'["status"]\n', "request must be a JSON object"),
    (DEEP + b"\n", "nested too deeply"),
    (b'{"cmd":"status","pad":"' + b"x" * 70_000 + b'"}\n', "request too large"),
    (b'{"cmd":"st\xff\xc0tus"}\n', "not UTF-8"),
    (b"\n", "request is not JSON"),
]


def test_hostile_control_requests_do_not_cut_a_charging_session(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    assert d.wait_state("charging")["relay_closed"]
    pid = d.pid
    for data, needle in HOSTILE:
        reply = raw_request(d.socket, data)
        assert reply["ok"] is False, (data[:60], reply)
        assert needle in reply["error"], (data[:60], reply)
        assert len(reply["error"]) < 1000  # names what was wrong, does not echo the junk
    assert d.proc is not None and d.proc.poll() is None, d.log()[-3000:]
    assert d.pid == pid  # the same process: nothing for systemd to restart
    e = d.evse()
    assert e["state"] == "charging" and e["relay_closed"] and e["plugged"]
    assert d.relay_log()[1::2] == ["close"]  # the contactor never opened
    assert "Traceback" not in d.log()
    assert d.ctl("sessions", limit=1)[0]["state"] == "charging"  # valid requests: answered


def test_the_control_socket_survives_a_thread_limit(make_daemon):
    """Every client slot (one thread each) held by clients that trickle bytes and never end
    their line: more clients are told "busy" at once, and the slots come back within the
    read deadline, while the hostile clients are still connected and still trickling."""
    d = make_daemon()
    holders = []
    for _ in range(MAX_CLIENTS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(d.socket))
        s.sendall(b'{"cmd": "status"')  # ... and never a newline
        holders.append(s)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.3):
            for s in holders:
                with contextlib.suppress(OSError):  # the daemon hung up on it: as it should
                    s.sendall(b" ")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        for _ in range(5):
            t0 = time.monotonic()
            reply = raw_request(d.socket, b'{"cmd": "status"}\n', timeout=5)
            assert time.monotonic() - t0 < 2.0  # refused at once, not a hang
            assert reply["ok"] is False and "busy" in reply["error"]
        # the slow clients are cut off at the read deadline; the socket serves again
        st = wait_until(lambda: d.try_ctl("status"), 15, "status again")  # deadline: 5 s
        assert st["station_id"] == "ST-TEST"
        for s in holders:
            s.settimeout(5)
            reply = json.loads(s.makefile("rb").readline())
            assert reply["ok"] is False and "bad request" in reply["error"]
    finally:
        stop.set()
        trickler.join(5)
        for s in holders:
            s.close()
    assert d.ctl("status")["station_id"] == "ST-TEST"
    assert d.proc is not None and d.proc.poll() is None
    assert "Traceback" not in d.log()


# ---------------------------------------------------------------------------- in process
class Answerer:
    """Stands in for the main loop: answers every posted call at once."""

    def post(self, item: ControlCall) -> None:
        item.reply = {"ok": True, "result": {"echo": item.request.get("cmd")}}
        item.done.set()


def test_the_accept_loop_survives_running_out_of_file_descriptors(tmp_path, monkeypatch, caplog):
    real_accept = socket.socket.accept
    failures = 0

    def accept(self: socket.socket) -> Any:
        nonlocal failures
        if failures < 4:
            failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept)
    caplog.set_level(logging.DEBUG, logger="agent.control")
    server = ControlServer(tmp_path / "control.sock", Answerer().post, None)
    server.start()
    try:
        assert call(server.path, {"cmd": "status"}, timeout=5) == {"echo": "status"}
        assert failures == 4 and server.alive
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "EMFILE" in errors[0].getMessage()  # repeats: debug
        assert any("accepts connections again" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
    assert not server.alive


def test_a_client_thread_that_cannot_start_is_refused_not_fatal(tmp_path, monkeypatch):
    server = ControlServer(tmp_path / "control.sock", Answerer().post, None)
    server.start()
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name != "control" and threading.current_thread().name == "control":
            raise RuntimeError("can't start new thread")
        real_start(self)

    try:
        monkeypatch.setattr(threading.Thread, "start", start)
        for _ in range(MAX_CLIENTS + 2):  # every refusal gives its slot back
            reply = raw_request(server.path, b'{"cmd": "status"}\n', timeout=5)
            assert reply["ok"] is False and "cannot serve" in reply["error"]
        monkeypatch.setattr(threading.Thread, "start", real_start)
        assert call(server.path, {"cmd": "status"}, timeout=5) == {"echo": "status"}
        assert server.alive
    finally:
        monkeypatch.setattr(threading.Thread, "start", real_start)
        server.stop()


def test_a_handler_bug_is_an_error_reply_and_never_leaves_the_loop(caplog):
    def bug(ctl: Any, req: dict[str, Any]) -> Any:
        raise RuntimeError("simulated bug")

    def disk_full(ctl: Any, req: dict[str, Any]) -> Any:
        raise StoreError("database or disk is full")

    ctl = SimpleNamespace(_control={"bug": bug, "disk": disk_full})
    item = ControlCall({"cmd": "bug"})
    Controller._on_control(ctl, item)  # type: ignore[arg-type]
    assert item.done.is_set() and item.reply is not None
    assert item.reply["ok"] is False and "RuntimeError: simulated bug" in item.reply["error"]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(logged) == 1 and "bug" in logged[0].getMessage()
    # a store failure is answered too, and goes on to the loop, which faults the station
    item = ControlCall({"cmd": "disk"})
    with pytest.raises(StoreError):
        Controller._on_control(ctl, item)  # type: ignore[arg-type]
    assert item.done.is_set() and item.reply is not None and item.reply["ok"] is False


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.5  # every tick is due
        return self.t


def _datagrams(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.3)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def test_the_watchdog_stops_when_the_control_accept_thread_is_dead(tmp_path, monkeypatch, caplog):
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    ctl = SimpleNamespace(
        evses={},
        store=SimpleNamespace(outbox_stats=lambda: (0, None)),
        backend=SimpleNamespace(connected=True),
        station_faults={},
    )
    server = ControlServer(tmp_path / "control.sock", Answerer().post, None)
    server.start()
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    try:
        reporter = SystemdReporter(ctl, server, monotonic=FakeClock())  # type: ignore[arg-type]
        reporter.tick()
        healthy = _datagrams(notify)
        assert "WATCHDOG=1" in healthy and not any("DEAD" in m for m in healthy)

        def broken_accept(self: socket.socket) -> Any:
            raise RuntimeError("simulated bug in the accept loop")

        monkeypatch.setattr(socket.socket, "accept", broken_accept)
        wait_until(lambda: not server.alive, 5, "the accept thread to die")
        assert died and isinstance(died[0], RuntimeError)
        for _ in range(3):
            reporter.tick()
        dead = _datagrams(notify)
        assert "WATCHDOG=1" not in dead  # systemd restarts the service after WatchdogSec
        assert any("STATUS=" in m and "DEAD: control socket" in m for m in dead), dead
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1 and "control socket" in critical[0].getMessage()  # once
    finally:
        server.stop()
        notify.close()
