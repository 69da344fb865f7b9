"""The control socket server and its argument checks, in process, over a real Unix socket."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.control import MAX_CLIENTS, ControlServer, call
from agent.control_args import MAX_ERROR_CHARS, ArgumentError, parse_args
from agent.control_commands import DIRECT_COMMANDS, LOOP_COMMANDS
from agent.errors import AgentError
from agent.inputs import ControlCall


class Answerer:
    """Stands in for the main loop: answers every posted call at once."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def post(self, item: ControlCall) -> None:
        self.requests.append(item.request)
        item.reply = {"ok": True, "result": {"echo": item.request.get("cmd")}}
        item.done.set()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


def test_stop_without_start_or_direct_commands_is_clean(sock_path: Path) -> None:
    """Regression: the socket, thread and stop flag were only set in register_direct."""
    server = ControlServer(sock_path, Answerer().post, None)
    server.stop()  # must not raise AttributeError
    assert not sock_path.exists()


def test_loop_and_direct_commands_over_the_socket(sock_path: Path) -> None:
    loop = Answerer()
    server = ControlServer(sock_path, loop.post, "ctx")
    server.register_direct("direct", lambda ctx, req: {"ctx": ctx, "n": req["n"]})
    server.start()
    try:
        assert call(sock_path, {"cmd": "status"}) == {"echo": "status"}
        assert call(sock_path, {"cmd": "direct", "n": 3}) == {"ctx": "ctx", "n": 3}
        assert loop.requests == [{"cmd": "status"}]
    finally:
        server.stop()


def test_a_direct_handler_overflow_is_an_error_reply_not_a_dead_thread(sock_path: Path) -> None:
    def overflow(ctx: object, req: dict[str, Any]) -> float:
        return float(10**400)  # OverflowError

    server = ControlServer(sock_path, Answerer().post, None)
    server.register_direct("boom", overflow)
    server.start()
    try:
        with pytest.raises(AgentError, match="too large"):
            call(sock_path, {"cmd": "boom"})
        assert call(sock_path, {"cmd": "status"}) == {"echo": "status"}  # still serving
    finally:
        server.stop()


def test_more_clients_than_slots_are_told_busy_and_the_server_lives_on(sock_path: Path) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(ctx: object, req: dict[str, Any]) -> str:
        entered.release()
        release.wait(30)
        return "done"

    server = ControlServer(sock_path, Answerer().post, None)
    server.register_direct("hold", hold)
    server.start()
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CLIENTS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock_path))
            s.sendall(b'{"cmd": "hold"}\n')
            held.append(s)
        for _ in range(MAX_CLIENTS):
            assert entered.acquire(timeout=30)  # every slot is taken (a signal, not a sleep)
        with pytest.raises(AgentError, match="busy"):
            call(sock_path, {"cmd": "status"})
        release.set()
        for s in held:
            s.settimeout(30)
            assert json.loads(s.makefile().readline())["result"] == "done"
        assert call(sock_path, {"cmd": "status"}) == {"echo": "status"}
    finally:
        release.set()
        for s in held:
            s.close()
        server.stop()


# ------------------------------------------------------------------- the argument models
# through the same table the daemon registers: command name -> (arguments model, handler)
def _args(cmd: str, **args: Any) -> Any:
    command = {**LOOP_COMMANDS, **DIRECT_COMMANDS}[cmd]
    return parse_args(cmd, command.args, {"cmd": cmd, **args})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1e400, "sessions: limit: Input should be a valid integer"),
        (-1e999, "sessions: limit: Input should be a valid integer"),
        (float("nan"), "sessions: limit: Input should be a valid integer"),
        (True, "sessions: limit: Input should be a valid integer"),
        ("5", "sessions: limit: Input should be a valid integer"),
        (2.5, "sessions: limit: Input should be a valid integer"),
        (2.0, "sessions: limit: Input should be a valid integer"),
        (None, "sessions: limit: Input should be a valid integer"),
        (0, "sessions: limit: Input should be greater than or equal to 1"),
        (10_001, "sessions: limit: Input should be less than or equal to 10000"),
        (10**400, "sessions: limit: Input should be less than or equal to 10000"),
        (-(10**400), "sessions: limit: Input should be greater than or equal to 1"),
    ],
)
def test_int_arguments_are_checked(value: object, message: str) -> None:
    with pytest.raises(ArgumentError) as exc:
        _args("sessions", limit=value)
    assert str(exc.value) == message


@pytest.mark.parametrize("value", [1e400, -1e999, 0, 100_001, 10**400, True, "5"])
def test_auth_list_limit_is_checked(value: object) -> None:
    with pytest.raises(ArgumentError, match=r"^auth\.list: limit: Input should be"):
        _args("auth.list", limit=value)


def test_int_argument_default_and_valid_value() -> None:
    assert _args("sessions").limit == 50
    assert _args("sessions", limit=10_000).limit == 10_000
    assert _args("auth.list").limit == 100
    assert _args("auth.list", limit=100_000).limit == 100_000


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_seconds_arguments_must_be_finite(value: object) -> None:
    with pytest.raises(
        ArgumentError, match=r"^rfid\.read: timeout: Input should be a finite number"
    ):
        _args("rfid.read", timeout=value)


@pytest.mark.parametrize("value", ["3", None, False, True, [1], 10**400])
def test_seconds_arguments_must_be_numbers(value: object) -> None:
    with pytest.raises(
        ArgumentError, match=r"^qr\.verify: timeout: Input should be a valid number"
    ):
        _args("qr.verify", timeout=value)


def test_seconds_arguments_are_clamped() -> None:
    assert _args("rfid.read", timeout=1e300).timeout == 120.0
    assert _args("rfid.read", timeout=-5).timeout == 0.1
    assert _args("rfid.read", timeout=1.5).timeout == 1.5
    assert _args("rfid.read").timeout == 10.0
    assert _args("qr.verify", timeout=1e300).timeout == 300.0
    assert _args("qr.verify").timeout == 30.0


@pytest.mark.parametrize("value", [None, "", 5, ["04A2"]])
def test_string_arguments_are_required(value: object) -> None:
    with pytest.raises(ArgumentError, match=r"^sim\.tap: uid: "):
        _args("sim.tap", uid=value)
    with pytest.raises(ArgumentError, match=r"^sim\.qr: payload: "):
        _args("sim.qr", payload=value)


def test_missing_required_argument_is_named() -> None:
    with pytest.raises(ArgumentError, match=r"^sim\.tap: uid: Field required$"):
        _args("sim.tap")


def test_unknown_arguments_are_named() -> None:
    with pytest.raises(ArgumentError, match=r"^status: verbose: unknown field$"):
        _args("status", verbose=True)
    with pytest.raises(ArgumentError, match=r"limt: unknown field"):
        _args("sessions", limt=5)


def test_a_long_unknown_argument_is_shortened_in_the_error() -> None:
    with pytest.raises(ArgumentError) as exc:
        _args("status", **{"x" * 60_000: 1})
    assert len(str(exc.value)) <= MAX_ERROR_CHARS


def test_enum_and_literal_arguments() -> None:
    assert _args("sim.tap", uid="04A2", card_type="mifare_classic").card_type == "mifare_classic"
    assert _args("sim.tap", uid="04A2").card_type == "unknown"
    assert _args("sim.relay", mode="welded", evse_id=None).mode == "welded"
    with pytest.raises(ArgumentError, match=r"^sim\.tap: card_type: Input should be"):
        _args("sim.tap", uid="04A2", card_type="visa")
    with pytest.raises(ArgumentError, match=r"^sim\.tap: card_type: Input should be"):
        _args("sim.tap", uid="04A2", card_type=1)
    with pytest.raises(ArgumentError, match=r"^sim\.relay: mode: Input should be"):
        _args("sim.relay", mode="melted")


@pytest.mark.parametrize("cmd", ["sim.plug", "sim.unplug", "relay.cycle", "relay.reset"])
def test_evse_id_may_be_null_but_not_another_type(cmd: str) -> None:
    assert _args(cmd, evse_id=None).evse_id is None  # stationctl sends null: "the only one"
    assert _args(cmd).evse_id is None
    assert _args(cmd, evse_id="DE*ICE*E000001*1").evse_id == "DE*ICE*E000001*1"
    with pytest.raises(
        ArgumentError, match=f"^{re.escape(cmd)}: evse_id: Input should be a valid string"
    ):
        _args(cmd, evse_id=1)


def test_every_command_has_a_strict_model_that_forbids_unknown_keys() -> None:
    for name, command in {**LOOP_COMMANDS, **DIRECT_COMMANDS}.items():
        config = command.args.model_config
        assert config.get("strict") is True and config.get("extra") == "forbid", name


def test_every_request_stationctl_sends_is_accepted() -> None:
    """The exact requests of tests/test_stationctl.py (what the CLI puts on the wire)."""
    requests = [
        {"cmd": "sessions", "limit": 3},
        {"cmd": "sim.tap", "uid": "04A224B2C13C80", "card_type": "unknown"},
        {"cmd": "sim.plug", "evse_id": None},
        {"cmd": "sim.unplug", "evse_id": "DE*ICE*E000001*1"},
        {"cmd": "sim.qr", "payload": "hello"},
        {"cmd": "relay.cycle", "evse_id": None},
        {"cmd": "relay.reset", "evse_id": "DE*ICE*E000001*1"},
        {"cmd": "qr.verify", "evse_id": "DE*ICE*E000001*1", "timeout": 2.0},
        {"cmd": "rfid.read", "timeout": 1.5},
        {"cmd": "meter.read", "evse_id": None},
        {"cmd": "status"},
        {"cmd": "outbox"},
        {"cmd": "outbox.retry"},
        {"cmd": "auth.list"},
        {"cmd": "rfid.info"},
        {"cmd": "selftest"},
        {"cmd": "metrics"},
    ]
    for request in requests:
        cmd = request["cmd"]
        assert isinstance(cmd, str)
        _args(cmd, **{k: v for k, v in request.items() if k != "cmd"})
