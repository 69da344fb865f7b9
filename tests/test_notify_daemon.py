"""The daemon speaks the systemd notify protocol: READY once up, STATUS lines, WATCHDOG pings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from tests.helpers import Daemon, station_config, to_toml


def test_ready_status_and_watchdog(tmp_path, broker, prefix):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    d = Daemon(tmp_path, station_config(tmp_path, broker.url, prefix))
    d.config_path.write_text(to_toml(d.config))
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="1000000")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(d.config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages: list[str] = []
        ready_after = None
        while time.monotonic() - t0 < 8 and sum("WATCHDOG=1" in m for m in messages) < 3:
            msg = sock.recv(4096).decode()
            messages.append(msg)
            if "READY=1" in msg and ready_after is None:
                ready_after = time.monotonic() - t0
                assert d.socket.exists()  # the control socket is up before READY
        assert ready_after is not None and ready_after < 5.0
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=" in ready and "available" in ready
        assert sum("WATCHDOG=1" in m for m in messages) >= 3  # pinged at half of WATCHDOG_USEC
        print(f"process start -> READY=1: {ready_after * 1000:.0f} ms")
        proc.terminate()
        proc.wait(10)
        tail = []
        sock.settimeout(1)
        try:
            while True:
                tail.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert any("STOPPING=1" in m for m in tail)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
