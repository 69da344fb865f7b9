"""The first hour of a technician with the CLIs: no traceback, one line and a documented exit
status for every mistake, ``--version``, ``STATIONCTL_SOCKET``, clean help, human output,
progress while waiting, a fast client, and a card read that starts no charge."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import __version__, stationctl
from agent.cli import main as agent_main
from agent.cli_errors import EX_INTERRUPTED, EX_UNAVAILABLE
from agent.config import DEFAULT_CONFIG_PATH, StationConfig
from agent.control_client import DEFAULT_SOCKET, call
from agent.stationctl import main
from tests.helpers import EVSE1, UID_A, wait_until
from tests.test_stationctl import FakeDaemon

ROOT = Path(__file__).resolve().parent.parent
DEAD_BROKER = "mqtt://127.0.0.1:1"
STATIONCTL = [sys.executable, "-m", "agent.stationctl", "--socket"]
HEAVY = ("pydantic", "agent.config", "agent.controller", "paho", "cv2", "numpy", "segno")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(tmp_path / "ctl.sock")
    yield d
    d.close()


def _cli(*argv: str, module: str = "agent.cli", **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def _one_line(err: str, prog: str) -> None:
    assert "Traceback" not in err
    assert err.startswith(f"{prog}: ") and err.count("\n") == 1, err


# ------------------------------------------------------------------------ no tracebacks
@pytest.mark.parametrize(
    "argv",
    [["demo", "--broker", DEAD_BROKER], ["backend-sim", "--broker", DEAD_BROKER]],
    ids=["demo", "backend-sim"],
)
def test_a_dead_broker_is_one_line_and_exit_69(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_main(argv) == EX_UNAVAILABLE == 69
    err = capsys.readouterr().err
    _one_line(err, "station-agent")
    assert "cannot reach mqtt://127.0.0.1:1" in err and "--broker" in err


def test_qr_decode_of_a_text_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qr", "decode", str(ROOT / "README.md")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    _one_line(err, "stationctl")
    assert "README.md is not an image" in err


def test_ctrl_c_while_rfid_read_waits(daemon: FakeDaemon) -> None:
    daemon.result({"card": None, "timeout_s": 10.0})
    daemon.hold.clear()  # the daemon "waits for a card"
    proc = subprocess.Popen(
        [*STATIONCTL, str(daemon.path), "rfid", "read", "--timeout", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: daemon.requests, 20, "the rfid.read request")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == EX_INTERRUPTED == 130
    assert out == ""
    _one_line(err, "stationctl")
    assert "interrupted" in err


def test_unknown_exceptions_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only exception types with a handler are caught: a bug keeps its traceback."""

    def buggy(*_a: Any, **_kw: Any) -> Any:
        raise LookupError("bug")

    monkeypatch.setattr(stationctl, "call", buggy)
    with pytest.raises(LookupError):
        main(["status"])


# ------------------------------------------------------------- version, socket, help
def test_version_on_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for entry, prog in ((agent_main, "station-agent"), (main, "stationctl")):
        with pytest.raises(SystemExit) as done:
            entry(["--version"])
        assert done.value.code == 0
        assert capsys.readouterr().out == f"{prog} {__version__}\n"


def test_stationctl_socket_from_the_environment(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.result({"sent": 1})
    monkeypatch.setenv("STATIONCTL_SOCKET", str(daemon.path))
    assert main(["outbox", "retry"]) == 0
    assert capsys.readouterr().out == "re-sent 1 CDR(s)\n"


def test_socket_is_accepted_by_config_check(capsys: pytest.CaptureFixture[str]) -> None:
    sim = ROOT / "hardware" / "simulated.toml"
    assert main(["config", "check", "--socket", "/nonexistent", str(sim)]) == 0
    assert "OK (station ST-SIM-0001" in capsys.readouterr().out


def test_the_client_defaults_are_the_daemons() -> None:
    assert StationConfig.model_fields["control_socket"].default == DEFAULT_SOCKET
    assert stationctl.DEFAULT_CONFIG_PATH == DEFAULT_CONFIG_PATH


def test_help_renders_cleanly_at_any_width(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No reST markup, no path broken at a hyphen, the exit statuses documented."""
    monkeypatch.setenv("COLUMNS", "50")
    for argv in (["--help"], ["status", "--help"], ["rfid", "read", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "``" not in out and ":mod:" not in out
        assert str(DEFAULT_SOCKET) in out, out
        if argv == ["--help"]:
            assert "exit status" in out and "141" in out and "STATIONCTL_SOCKET" in out
    for argv in (["--help"], ["init", "--help"]):
        with pytest.raises(SystemExit):
            agent_main(argv)
        out = capsys.readouterr().out
        assert "``" not in out and "station-\n" not in out
        if argv == ["--help"]:
            assert "exit status" in out and "69" in out and "78" in out


def test_the_client_imports_no_heavy_module() -> None:
    """stationctl answers in well under 150 ms because it imports neither pydantic, the
    config, the MQTT client nor the QR libraries (timed in tests/benchmarks/cli.py)."""
    code = (
        "import sys, agent.stationctl\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


# ------------------------------------------------------------------------- human output
def test_rfid_info_and_outbox_without_python_reprs(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.result(
        {
            "driver": "pn532",
            "last_error": None,
            "connected": True,
            "open_seconds": 0.04471529699981147,
        }
    )
    daemon.result(
        {
            "pending": 1,
            "oldest": "2026-01-01T00:00:00.000+00:00",
            "entries": [
                {
                    "session_id": "s-1",
                    "evse_id": EVSE1,
                    "energy_kwh": 1.5,
                    "token": {"type": "rfid", "uid": "04A2…3C80", "card_type": "unknown"},
                    "attempts": 2,
                    "created_at": "2026-01-01T00:00:00.000+00:00",
                }
            ],
        }
    )
    assert main(["--socket", str(daemon.path), "rfid", "info"]) == 0
    assert main(["--socket", str(daemon.path), "outbox"]) == 0
    out = capsys.readouterr().out
    assert "last_error: -\n" in out and "connected: yes\n" in out and "open_seconds: 0.045\n" in out
    assert "token rfid 04A2…3C80  attempts 2" in out
    assert "None" not in out and "{" not in out


# ------------------------------------------------------------------------------ progress
def test_rfid_read_counts_down_on_a_terminal(daemon: FakeDaemon) -> None:
    daemon.result({"card": None, "timeout_s": 5.0})
    daemon.hold.clear()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*STATIONCTL, str(daemon.path), "rfid", "read", "--timeout", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    seen = b""
    try:
        while b"s left" not in seen:
            ready, _, _ = select.select([master], [], [], 20)
            assert ready, f"no countdown on the terminal: {seen!r}"
            seen += os.read(master, 4096)
        daemon.hold.set()
        out, _ = proc.communicate(timeout=20)
    finally:
        os.close(master)
    assert b"waiting for a card on the reader" in seen
    assert out == "no card within 5 s\n" and proc.returncode == 1


# -------------------------------------------------------- a technician's read is no tap
def test_rfid_read_on_a_plugged_evse_starts_no_charge(make_daemon, backend) -> None:
    d = make_daemon()
    d.ctl("sim.plug", evse_id=EVSE1)
    d.wait_state("preparing")
    result: dict[str, Any] = {}
    reader = threading.Thread(
        target=lambda: result.update(call(d.socket, {"cmd": "rfid.read", "timeout": 10}))
    )
    reader.start()
    wait_until(lambda: "rfid read: waiting" in d.log(), 10, "the read to wait")
    d.ctl("sim.tap", uid=UID_A)
    reader.join(15)
    assert result["card"]["uid"] == UID_A
    wait_until(lambda: "read by a technician" in d.log(), 10, "the card to be set aside")
    assert d.evse()["state"] == "preparing"
    assert not [r for r in backend.received if r.suffix == "auth/req"]
    d.ctl("sim.tap", uid=UID_A)  # the next tap is a tap again
    d.wait_state("charging")


# ---------------------------------------------------------------------------- completion
def _complete(script: Path, fn: str, *words: str) -> list[str]:
    """Run the bash completion function ``fn`` on ``words`` (the last one being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    code = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; {fn}; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    res = subprocess.run(["bash", "-c", code], check=True, capture_output=True, text=True)
    return res.stdout.split()


def test_bash_completion_of_both_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "stationctl.bash"
    script.write_text(capsys.readouterr().out)
    assert {"status", "rfid", "selftest", "--socket", "--version"} <= set(
        _complete(script, "_stationctl", "stationctl", "")
    )
    assert _complete(script, "_stationctl", "stationctl", "--socket", "/s", "rfid", "r") == ["read"]
    assert _complete(script, "_stationctl", "stationctl", "qr", "verify", "--t") == ["--timeout"]
    assert _complete(script, "_station_agent", "station-agent", "de") == ["demo"]
    assert "init" in _complete(script, "_station_agent", "station-agent", "")


# ------------------------------------------------------------------------------ display
def test_the_display_shows_energy_power_and_time_while_charging() -> None:
    from agent.presentation import charging_text

    assert charging_text(3.214, 11000.0, 754.9) == "Charging 3.21 kWh  11.0 kW  0:12:34"
    assert charging_text(0.0, None, 3725) == "Charging 0.00 kWh  1:02:05"
    assert charging_text(1.5, 7400.0, None) == "Charging 1.50 kWh  7.4 kW"
    assert charging_text(1.5, None, -3) == "Charging 1.50 kWh  0:00:00"  # a clock step back


def test_no_text_is_cut_on_a_small_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    """480x320, two EVSEs: ids, states and the charging line are drawn whole (smaller rather
    than cut: a bold stroke used to push the EVSE id over the edge, "DE*ICE*E0000...")."""
    import cv2

    from agent.presentation import charging_text
    from drivers.display.base import EvseScreen
    from drivers.display.render import render_screen

    drawn: list[str] = []
    real = cv2.putText
    monkeypatch.setattr(
        cv2, "putText", lambda img, text, *a: (drawn.append(text), real(img, text, *a))[1]
    )
    screens = [
        EvseScreen("DE*ICE*E000001*1", "charging", charging_text(3.214, 22000.0, 7354)),
        EvseScreen("DE*ICE*E000001*2", "available", "Tap your card or scan the QR code"),
    ]
    render_screen(screens, None, width=480, height=320, color=True)
    assert "DE*ICE*E000001*1" in drawn and "DE*ICE*E000001*2" in drawn
    assert "Charging 3.21 kWh  22.0 kW  2:02:34" in drawn
    assert not [t for t in drawn if t.endswith("...")], drawn


def test_a_message_is_shown_once(make_daemon) -> None:
    """The terminal display's frames (in the daemon's log): "Tap your card" in the EVSE's panel,
    not also in the station-wide band."""
    d = make_daemon(display={"driver": "terminal"})
    d.ctl("sim.plug", evse_id=EVSE1)
    d.wait_state("preparing")
    frame = wait_until(
        lambda: next(
            (f for f in reversed(d.log().split("-" * 40 + "\n")) if "[preparing]" in f), None
        ),
        10,
        "a frame of the preparing EVSE",
    )
    assert frame.count("Tap your card") == 1, frame


# -------------------------------------------------------------------------- EVSE arguments
def test_evse_arguments_get_a_helpful_refusal(make_daemon, capsys) -> None:
    """Two EVSEs: none named says which there are; an id the shell expanded (no '*' left)
    says to quote it."""
    d = make_daemon(evses=2)
    assert main(["--socket", str(d.socket), "relay", "cycle"]) == 1
    err = capsys.readouterr().err
    _one_line(err, "stationctl")
    assert "this station has 2 EVSEs: name one of DE*ICE*E000001*1, DE*ICE*E000001*2" in err
    assert main(["--socket", str(d.socket), "meter", "read", "README.md"]) == 1
    err = capsys.readouterr().err
    _one_line(err, "stationctl")
    assert "unknown EVSE 'README.md'" in err and "quote EVSE ids" in err
