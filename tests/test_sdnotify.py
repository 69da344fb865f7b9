"""The systemd notify protocol against real AF_UNIX datagram sockets (path and abstract name)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, NotifyError, WatchdogPinger, one_line


class Receiver:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        sock.settimeout(2.0)

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096)
        except (TimeoutError, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        yield Receiver(s, str(path))


@pytest.fixture
def abstract_socket() -> Iterator[Receiver]:
    name = f"station-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        yield Receiver(s, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    yield request.getfixturevalue(f"{request.param}_socket")


def test_exact_datagrams(receiver: Receiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": receiver.env_value})
    assert n.enabled
    assert n.ready()
    assert receiver.recv() == b"READY=1"
    assert n.status("2 EVSEs, broker connected")
    assert receiver.recv() == b"STATUS=2 EVSEs, broker connected"
    assert n.watchdog()
    assert receiver.recv() == b"WATCHDOG=1"
    assert n.stopping()
    assert receiver.recv() == b"STOPPING=1"
    assert n.ready(status="up")
    assert receiver.recv() == b"READY=1\nSTATUS=up"
    assert n.extend_timeout(1.5)
    assert receiver.recv() == b"EXTEND_TIMEOUT_USEC=1500000"
    assert receiver.nothing_pending()


def test_status_is_folded_into_one_line(path_socket: Receiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_socket.env_value})
    assert n.status("line one\n  line two\n\n")
    assert path_socket.recv() == b"STATUS=line one / line two"
    assert len(one_line("x" * 500)) == 200


def test_caller_mistakes_raise(path_socket: Receiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_socket.env_value})
    with pytest.raises(NotifyError, match="newline"):
        n.send(STATUS="a\nREADY=1")  # would smuggle a second variable in
    with pytest.raises(NotifyError, match="invalid variable name"):
        n.send(ready=1)
    with pytest.raises(NotifyError, match="nothing"):
        n.send()
    assert path_socket.nothing_pending()


def test_disabled_without_notify_socket(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({})
    assert not n.enabled
    with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
    assert caplog.records == []  # not an error: simply not run by systemd
    assert n.watchdog_interval_s() is None
    assert Notifier({"NOTIFY_SOCKET": ""}).enabled is False


def test_default_env_is_os_environ(monkeypatch: pytest.MonkeyPatch, path_socket: Receiver) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.env_value)
    assert Notifier().ready()
    assert path_socket.recv() == b"READY=1"


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    n = Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid})
    assert n.watchdog_interval_s() == 30.0
    assert n.ping_interval_s() == 15.0
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval_s() == 2.0  # no PID: ours


def test_watchdog_pid_mismatch_disables_watchdog() -> None:
    other = str(os.getpid() + 1)
    n = Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other})
    assert n.watchdog_interval_s() is None
    assert n.ping_interval_s() is None
    assert WatchdogPinger(n).tick(0.0) is False


@pytest.mark.parametrize("usec", ["abc", "0", "-5"])
def test_bad_watchdog_usec_is_reported(usec: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        assert Notifier({"WATCHDOG_USEC": usec}).watchdog_interval_s() is None
    assert any("WATCHDOG_USEC" in r.getMessage() for r in caplog.records)


def test_pinger_schedules_at_half_the_interval(path_socket: Receiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_socket.env_value, "WATCHDOG_USEC": "10000000"})
    p = WatchdogPinger(n)
    assert p.active and p.interval_s == 5.0
    assert p.tick(100.0)  # first tick pings at once
    assert path_socket.recv() == b"WATCHDOG=1"
    assert not p.tick(104.9)  # not due yet
    assert not p.tick(106.0, healthy=False)  # due, but the loop says it is unhealthy
    assert path_socket.nothing_pending()
    assert p.tick(106.0)
    assert path_socket.recv() == b"WATCHDOG=1"


def test_delivery_failure_is_logged_once_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    n = Notifier({"NOTIFY_SOCKET": str(path)})  # nobody listens there yet
    with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
        assert n.watchdog() is False
        assert n.watchdog() is False
        assert n.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 1 and len(debugs) == 2
    assert str(path) in warnings[0].getMessage()
    assert "FileNotFoundError" in warnings[0].getMessage()

    caplog.clear()
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s,
        caplog.at_level(logging.INFO, logger="agent.sdnotify"),
    ):
        s.bind(str(path))
        s.settimeout(2.0)
        assert n.watchdog() is True
        assert s.recv(100) == b"WATCHDOG=1"
    assert [r.getMessage() for r in caplog.records] == [f"sd_notify to {path} works again"]


def test_refused_by_a_stream_socket_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
            assert Notifier({"NOTIFY_SOCKET": str(path)}).ready() is False
    assert len(caplog.records) == 1
    assert "READY" in caplog.records[0].getMessage()


@pytest.mark.parametrize("value", ["relative/notify", "@", "/" + "x" * 200])
def test_unusable_socket_name_is_reported(value: str, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": value})
    assert n.enabled  # systemd asked for notifications: failing to send is worth a warning
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        assert n.ready() is False
    assert len(caplog.records) == 1
    assert "neither an absolute path nor an abstract name" in caplog.records[0].getMessage()
