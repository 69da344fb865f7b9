"""The control socket server and its argument checks, in process, over a real Unix socket."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.control import MAX_CLIENTS, ControlServer, call
from agent.control_args import int_arg, seconds_arg, str_arg
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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1e400, "whole number"),
        (-1e999, "whole number"),
        (True, "whole number"),
        ("5", "whole number"),
        (2.5, "whole number"),
        (0, "from 1 to 100"),
        (101, "from 1 to 100"),
        (10**400, "from 1 to 100"),
    ],
)
def test_int_arguments_are_checked(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        int_arg({"limit": value}, "limit", 10, 1, 100)


def test_int_argument_default_and_valid_value() -> None:
    assert int_arg({}, "limit", 10, 1, 100) == 10
    assert int_arg({"limit": 100}, "limit", 10, 1, 100) == 100


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "3", None, False])
def test_seconds_arguments_must_be_finite_numbers(value: object) -> None:
    with pytest.raises(ValueError, match="seconds"):
        seconds_arg({"timeout": value}, "timeout", 10.0, 0.1, 120.0)


def test_seconds_arguments_are_clamped() -> None:
    assert seconds_arg({"timeout": 1e300}, "timeout", 10.0, 0.1, 120.0) == 120.0
    assert seconds_arg({"timeout": -5}, "timeout", 10.0, 0.1, 120.0) == 0.1
    assert seconds_arg({}, "timeout", 10.0, 0.1, 120.0) == 10.0


@pytest.mark.parametrize("value", [None, "", 5, ["04A2"]])
def test_string_arguments_are_required(value: object) -> None:
    with pytest.raises(ValueError, match="uid is required"):
        str_arg({"uid": value}, "uid")
