"""``stationctl`` in process (``main([...])``) against a fake daemon on a real Unix socket.

The fake peer answers each connection's JSON line with a canned reply and records the exact
bytes it received, so the requests the CLI sends are checked byte for byte, and every error
class is checked for its exit status and its single stderr line (never a traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from agent import stationctl
from agent.control import ControlError
from agent.errors import AgentError, ConfigError, DriverError, ProtocolError, StoreError
from agent.stationctl import UsageError, main

ROOT = Path(__file__).resolve().parent.parent
SIMULATED = ROOT / "hardware" / "simulated.toml"  # two EVSEs
EVSE1 = "DE*ICE*E000001*1"
ONE_EVSE_CONFIG = f"""\
[station]
id = "ST-0001"
operator_id = "DE*ICE"
location = "Porschestr. 1, Stuttgart"

[[evse]]
id = "{EVSE1}"
"""


class FakeDaemon:
    """A Unix-socket server in a thread: one JSON line in, the next canned reply out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.replies: list[Any] = []  # dicts are sent as JSON lines, bytes as they are
        self.hold = threading.Event()  # cleared: the reply waits until it is set
        self.hold.set()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def result(self, result: Any) -> FakeDaemon:
        self.replies.append({"ok": True, "result": result})
        return self

    def refuse(self, error: str) -> FakeDaemon:
        self.replies.append({"ok": False, "error": error})
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                reply = self.replies.pop(0) if self.replies else {"ok": False, "error": "no reply"}
                self.hold.wait(10)
                raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode() + b"\n"
                with contextlib.suppress(OSError):  # the client may be gone
                    conn.sendall(raw)

    def close(self) -> None:
        self._stop.set()
        self.hold.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(tmp_path / "ctl.sock")
    yield d
    d.close()


def run(d: FakeDaemon, *argv: str) -> int:
    return main(["--socket", str(d.path), *argv])


def assert_one_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    assert err.startswith("stationctl: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


# ------------------------------------------------------------------------- requests sent
SESSION_ROW = {
    "session_id": "2b2964a6-960f-4fc1-9bfe-703c91c73529",
    "evse_id": EVSE1,
    "state": "ended",
    "energy_kwh": 1.5,
    "stop_reason": "local",
    "session_start": "2026-01-01T00:00:00.000+00:00",
}
CYCLE_OK = {
    "evse_id": EVSE1,
    "verdict": "ok",
    "steps": [
        {"step": "close", "ms": 12.0, "feedback_closed": True},
        {"step": "open", "ms": 11.0, "feedback_closed": False},
    ],
}


class Case(NamedTuple):
    argv: list[str]
    result: Any  # what the fake daemon answers
    request: bytes  # the exact line the daemon must receive
    stdout: str  # part of the output
    status: int


CASES = [
    Case(
        ["sessions", "--limit", "3"],
        [SESSION_ROW],
        b'{"cmd": "sessions", "limit": 3}\n',
        "1.500 local",
        0,
    ),
    Case(["sessions"], [], b'{"cmd": "sessions", "limit": 50}\n', "no sessions\n", 0),
    Case(
        ["sim", "tap", "04A224B2C13C80"],
        {"tapped": "04A2…3C80"},
        b'{"cmd": "sim.tap", "uid": "04A224B2C13C80", "card_type": "unknown"}\n',
        "tapped 04A2…3C80\n",
        0,
    ),
    Case(
        ["sim", "tap", "E3F1A27B", "--card-type", "mifare_classic"],
        {"tapped": "E3F1…A27B"},
        b'{"cmd": "sim.tap", "uid": "E3F1A27B", "card_type": "mifare_classic"}\n',
        "tapped",
        0,
    ),
    Case(
        ["sim", "plug"],
        {"evse_id": EVSE1, "plugged": True},
        b'{"cmd": "sim.plug", "evse_id": null}\n',
        f"{EVSE1}: plugged\n",
        0,
    ),
    Case(
        ["sim", "unplug", EVSE1],
        {"evse_id": EVSE1, "plugged": False},
        b'{"cmd": "sim.unplug", "evse_id": "DE*ICE*E000001*1"}\n',
        f"{EVSE1}: unplugged\n",
        0,
    ),
    Case(
        ["sim", "qr", "hello"],
        {"delivered": False},
        b'{"cmd": "sim.qr", "payload": "hello"}\n',
        "ignored",
        0,
    ),
    Case(
        ["relay", "cycle", "EVSE"],
        CYCLE_OK,
        b'{"cmd": "relay.cycle", "evse_id": "EVSE"}\n',
        f"{EVSE1}: ok\n",
        0,
    ),
    Case(
        ["relay", "cycle"],
        {**CYCLE_OK, "verdict": "welded"},
        b'{"cmd": "relay.cycle", "evse_id": null}\n',
        "welded",
        1,
    ),
    Case(
        ["relay", "reset", EVSE1],
        {"evse_id": EVSE1, "state": "available"},
        b'{"cmd": "relay.reset", "evse_id": "DE*ICE*E000001*1"}\n',
        "fault cleared, now available",
        0,
    ),
    Case(
        ["qr", "verify", EVSE1, "--timeout", "2"],
        {"seen": None, "match": False, "evse_id": EVSE1},
        b'{"cmd": "qr.verify", "evse_id": "DE*ICE*E000001*1", "timeout": 2.0}\n',
        "no station code seen within 2 s\n",
        1,
    ),
    Case(
        ["rfid", "read", "--timeout", "1.5"],
        {"card": {"uid": "E3F1A27B", "card_type": "mifare_classic"}, "seconds": 0.25},
        b'{"cmd": "rfid.read", "timeout": 1.5}\n',
        "UID E3F1A27B  type mifare_classic  after 0.250 s\n",
        0,
    ),
    Case(["rfid", "info"], {"firmware": "1.6"}, b'{"cmd": "rfid.info"}\n', "firmware: 1.6\n", 0),
    Case(["outbox", "retry"], {"sent": 2}, b'{"cmd": "outbox.retry"}\n', "re-sent 2 CDR(s)\n", 0),
    Case(
        ["selftest"],
        [
            {"check": "store", "ok": True, "ms": 1.0, "detail": "ok"},
            {"check": "relay 1", "ok": False, "ms": 2.0, "detail": "welded"},
        ],
        b'{"cmd": "selftest"}\n',
        "FAIL  relay 1",
        1,  # the number of failed checks
    ),
    Case(
        ["meter", "read", EVSE1, "--json"],
        {"evse_id": EVSE1, "energy_kwh": 1.0},
        b'{"cmd": "meter.read", "evse_id": "DE*ICE*E000001*1"}\n',
        '"energy_kwh": 1.0',
        0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c.argv))
def test_request_sent_and_output(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    daemon.result(case.result)
    assert run(daemon, *case.argv) == case.status
    assert daemon.requests == [case.request]
    out, err = capsys.readouterr()
    assert case.stdout in out
    assert err == ""


def test_socket_option_after_the_command(daemon: FakeDaemon) -> None:
    daemon.result({"tapped": "x"})
    assert main(["sim", "tap", "04A224B2C13C80", "--socket", str(daemon.path)]) == 0
    assert json.loads(daemon.requests[0])["cmd"] == "sim.tap"


def test_status_text(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.result(
        {
            "station_id": "ST-0001",
            "version": "1.0",
            "link": {"connected": False, "url": "mqtt://x"},
            "outbox": {"pending": 1, "oldest": "2026-01-01"},
            "faults": ["rfid"],
            "evses": [
                {
                    "evse_id": EVSE1,
                    "state": "faulted",
                    "plugged": True,
                    "relay_closed": False,
                    "session_id": None,
                    "fault": "relay_welded",
                }
            ],
        }
    )
    assert run(daemon, "status") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "station ST-0001  version 1.0  broker DISCONNECTED (mqtt://x)"
    assert out[1] == "outbox: 1 CDR(s) pending, oldest 2026-01-01"
    assert out[2] == "faults: rfid"
    assert out[3].split() == [
        EVSE1,
        "faulted",
        "plugged=yes",
        "relay=open",
        "session=-",
        "FAULT",
        "relay_welded",
    ]
    assert daemon.requests == [b'{"cmd": "status"}\n']


# ---------------------------------------------------------------------- errors -> status
def test_daemon_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", str(tmp_path / "absent.sock"), "status"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, "not running", str(tmp_path / "absent.sock"))


def test_refused_request(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.refuse("unknown EVSE 'DE*XX*E1'")
    assert run(daemon, "sim", "unplug", "DE*XX*E1") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "stationctl: unknown EVSE 'DE*XX*E1'\n"


def test_multi_line_refusal_is_one_line(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.refuse("relay not reset:\n  feedback still reads closed")
    assert run(daemon, "relay", "reset") == 1
    assert capsys.readouterr().err == (
        "stationctl: relay not reset:; feedback still reads closed\n"
    )


def test_garbled_reply(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.replies.append(b"<html>\n")
    assert run(daemon, "outbox") == 1
    assert_one_error_line(capsys.readouterr().err, "garbled reply")


def test_config_check_of_broken_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[station\nid = "ST-0001"\n')
    assert main(["config", "check", str(path)]) == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, str(path), "not valid TOML")


def test_config_check_of_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "invalid.toml"
    path.write_text(ONE_EVSE_CONFIG + '[mqtt]\nurl = "http://x"\nkeepalive_s = "often"\n')
    assert main(["config", "check", str(path)]) == 78
    # the validation problems (several lines in the exception) on one line
    assert_one_error_line(capsys.readouterr().err, str(path), "mqtt.url", "mqtt.keepalive_s")


def test_config_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(SIMULATED)]) == 0
    assert capsys.readouterr().out == f"{SIMULATED}: OK (station ST-SIM-0001, 2 EVSE(s))\n"


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConfigError("bad config"), 78),
        (UsageError("bad argument"), 2),
        (ControlError("refused"), 1),
        (DriverError("reader gone"), 1),
        (StoreError("disk full"), 1),
        (AgentError("something"), 1),
    ],
)
def test_exception_classes_map_to_exit_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    exc: Exception,
    status: int,
) -> None:
    def failing_call(*_a: Any, **_kw: Any) -> Any:
        raise exc

    monkeypatch.setattr(stationctl, "call", failing_call)
    assert main(["--socket", str(tmp_path / "s"), "status"]) == status
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"stationctl: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("not hex"), ProtocolError("not a UID")])
def test_value_and_protocol_errors_in_an_argument_are_usage_errors(exc: Exception) -> None:
    with pytest.raises(UsageError, match=f"UID: {exc}"), stationctl._argument("UID"):
        raise exc


def test_unexpected_value_error_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside argument interpretation a ValueError is a bug: it is not turned into exit 2."""

    def buggy_call(*_a: Any, **_kw: Any) -> Any:
        raise ValueError("bug")

    monkeypatch.setattr(stationctl, "call", buggy_call)
    with pytest.raises(ValueError, match="bug"):
        main(["status"])


def test_argparse_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["sessions", "--limit", "many"])
    assert exc_info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


# ----------------------------------------------------------------- local (qr) commands
def test_qr_show_invalid_evse_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qr", "show", "not-an-evse", "--config", str(SIMULATED)]) == 2
    assert_one_error_line(capsys.readouterr().err, "not a valid EvseID", "not-an-evse")


def test_qr_show_needs_an_evse_when_there_are_several(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["qr", "show", "--config", str(SIMULATED)]) == 2
    assert_one_error_line(capsys.readouterr().err, "name an EVSE", EVSE1)


def test_qr_show_without_evse_or_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qr", "show", "--config", str(tmp_path / "none.toml")]) == 78
    assert_one_error_line(capsys.readouterr().err, "no EVSE_ID given and no readable config")


def test_qr_show_the_only_evse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "one.toml"
    config.write_text(ONE_EVSE_CONFIG)
    assert main(["qr", "show", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"EVSE:    {EVSE1}" in out and "Payload: http://m.intercharge.eu/qr?evseid=" in out


def test_qr_show_unwritable_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "missing-dir" / "code.png"
    assert main(["qr", "show", EVSE1, "--png", str(png), "--config", str(SIMULATED)]) == 1
    assert_one_error_line(capsys.readouterr().err, f"cannot write {png}")


def test_qr_decode_missing_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "absent.png"
    assert main(["qr", "decode", str(image)]) == 1
    assert_one_error_line(capsys.readouterr().err, "cannot read", str(image))


# ------------------------------------------------------------------------- broken pipe
class ClosedStdout:
    """A stdout whose reader went away."""

    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_pipe_in_process(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.result([SESSION_ROW])
    monkeypatch.setattr(sys, "stdout", ClosedStdout())
    assert run(daemon, "sessions") == 141
    assert capsys.readouterr().err == ""


def _stationctl(d: FakeDaemon, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.stationctl", "--socket", str(d.path), *argv],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # a buffered stdout
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_broken_pipe_like_head(daemon: FakeDaemon) -> None:
    """``stationctl sessions | head -1`` with more output than a pipe holds."""
    daemon.result([SESSION_ROW] * 3000)  # ~400 kB: the writer blocks until the reader closes
    proc = _stationctl(daemon, "sessions")
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"session")
    proc.stdout.close()
    assert proc.wait(30) == 141
    assert proc.stderr.read() == b""


def test_broken_pipe_before_the_first_write(daemon: FakeDaemon) -> None:
    """The reader is gone before anything is written (small, buffered output): the error comes
    with the final flush, still quietly."""
    daemon.result({"sent": 0})
    daemon.hold.clear()
    proc = _stationctl(daemon, "outbox", "retry")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    daemon.hold.set()
    assert proc.wait(30) == 141
    assert proc.stderr.read() == b""
