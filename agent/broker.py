"""Start a private Mosquitto broker on a free loopback port (for the demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from agent.errors import AgentError

INSTALL_HINT = "install it with: sudo apt-get install mosquitto"

# Chosen on purpose: Mosquitto's default (1000) silently drops QoS 1 messages for a slow or
# briefly absent subscriber; a station's outage backlog can exceed that.
MAX_QUEUED_MESSAGES = 100000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_config(port: int, extra: str = "") -> str:
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        "max_inflight_messages 100\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
        f"{extra}"
    )


class Mosquitto:
    """A ``mosquitto`` child process; ``start()``/``stop()`` may be repeated (outage tests)."""

    def __init__(
        self, port: int | None = None, extra_config: str = "", workdir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self._extra = extra_config
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
            None,
        )
        if binary is None:
            raise AgentError(f"the mosquitto broker is not installed; {INSTALL_HINT}")
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
            self._workdir = Path(self._tmp.name)
        conf = self._workdir / "mosquitto.conf"
        user = "user root\n" if _is_root() else ""
        conf.write_text(broker_config(self.port, user + self._extra))
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AgentError(f"mosquitto exited at start: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise AgentError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
