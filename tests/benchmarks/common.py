"""Shared pieces of the benchmarks: daemon child processes, /proc readings, percentiles, rows.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on the machine, so a
time taken in the benchmark process can be compared with one taken in a worker process).
Percentiles use the nearest-rank rule the agent's own ``Metrics.summary()`` uses
(``sorted[min(n - 1, int(p * n))]``), so the agent's share and the end-to-end figures are read
the same way.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backend_sim import BackendSim, Received
from agent.broker import Mosquitto
from tests.helpers import REPO, Daemon, station_config

__all__ = ["REPO"]  # re-exported for the other benchmark modules

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
UID_A = "04A224B2C13C80"
UID_B = "E3F1A27B"
CONTRACT = "DE8ACC12345678A"
EVSE1 = "DE*ICE*E000001*1"
LOG_LEVEL = "info"  # the daemon's default (``station-agent run``): what a station runs with
# Child processes keep compiled bytecode in a cache of their own (the repository is not
# touched): a station runs an installed package whose modules are compiled once, whereas this
# environment sets PYTHONDONTWRITEBYTECODE and would recompile agent/ and drivers/ at every start.
PYCACHE = Path(tempfile.gettempdir()) / "station-agent-bench-pycache"


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONUNBUFFERED="1", PYTHONPYCACHEPREFIX=str(PYCACHE))
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.update(extra)
    return env


def warm_bytecode() -> None:
    """Compile what the children import into :data:`PYCACHE` once, before anything is timed."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import agent.cli, agent.daemon, agent.hardware, agent.backend_sim, drivers.rfid.sim, "
            "drivers.rfid.pn532, drivers.rfid.pn532_sim, drivers.qr.decode, drivers.qr.synth, "
            "tests.benchmarks.fleet_backend, tests.benchmarks.camera_standin\n"
            "import nfc, nfc.clf.pn532, serial, cv2, numpy, pyzbar.pyzbar",
        ],
        cwd=REPO,
        env=child_env(),
        check=False,
        capture_output=True,
    )


def machine_busy(seconds: float = 2.0) -> float:
    """Busy share of all cores over ``seconds`` (% of one core), from /proc/stat."""
    busy0, _ = Load._proc_stat()
    time.sleep(seconds)
    busy1, _ = Load._proc_stat()
    return (busy1 - busy0) / CLK_TCK / seconds * 100


def wait_quiet(max_wait: float, threshold: float = 25.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine is quiet: less than ``threshold`` % of one
    core busy over 2 s while nothing of the benchmark runs. Returns the busy share seen last."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy()
    return round(busy, 1)


class Load:
    """Machine-wide CPU use over a benchmark (this VM may be shared with other work).

    ``machine``: busy share of all cores from /proc/stat, in % of one core; ``own``: this
    process and its (reaped) children from ``os.times()``; ``other`` = machine - own, i.e. what
    processes outside the benchmark used meanwhile."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._stat = self._proc_stat()
        self._own = self._own_s()

    @staticmethod
    def _proc_stat() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]) - idle, idle

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self._t
        busy0, _ = self._stat
        busy1, _ = self._proc_stat()
        machine = (busy1 - busy0) / CLK_TCK / wall * 100
        own = (self._own_s() - self._own) / wall * 100
        return {
            "wall_s": round(wall, 1),
            "machine_cpu_percent": round(machine, 1),
            "own_cpu_percent": round(own, 1),
            "other_cpu_percent": round(max(0.0, machine - own), 1),
            "loadavg_1m": float(open("/proc/loadavg").read().split()[0]),
        }


# ------------------------------------------------------------------------------ statistics
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile, the same rule as ``agent.evse.Metrics``."""
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(p * len(data)))]


def dist(values: list[float], digits: int = 3) -> dict[str, float]:
    """n / p50 / p95 / p99 / max / mean of a list of milliseconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(pct(values, 0.50), digits),
        "p95": round(pct(values, 0.95), digits),
        "p99": round(pct(values, 0.99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


def fmt_dist(d: dict[str, Any] | None, unit: str = "ms") -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"p50 {d['p50']:.2f} / p95 {d['p95']:.2f} / p99 {d['p99']:.2f} {unit} (n={d['n']})"


# ------------------------------------------------------------------------------ table rows
@dataclass
class Row:
    bench: str
    measure: str
    result: str
    target: str = ""
    met: bool | None = None  # None: no target

    @property
    def status(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "**missed**")

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "measure": self.measure,
            "result": self.result,
            "target": self.target,
            "met": self.met,
        }


@dataclass
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def row(self, measure: str, result: str, target: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(self.name, measure, result, target, met))


# ------------------------------------------------------------------------------ /proc
def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (clock ticks) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        text = fh.read()
    fields_ = text[text.rindex(")") + 2 :].split()
    return int(fields_[11]) + int(fields_[12])  # fields 14 and 15 of stat(5)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def host_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_kb / 2**20, 1),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "mosquitto": mosquitto_version(),
    }


def mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run(
            [binary, "-h"], check=False, capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].replace("mosquitto version ", "") if out else "?"


# ------------------------------------------------------------------------------ waiting
def wait_until(
    pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.005
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_event(
    backend: BackendSim, kind: str, start: int, timeout: float = 10.0, station: str | None = None
) -> Received:
    """The first session event ``kind`` ('started', 'stopped', ...) received after index start."""
    return backend.wait_for(
        lambda r: (
            r.suffix == "session"
            and isinstance(r.data, dict)
            and r.data.get("event") == kind
            and (station is None or r.station_id == station)
        ),
        timeout=timeout,
        start=start,
    )


def wait_suffix(
    backend: BackendSim, suffix: str, start: int, timeout: float = 10.0, **match: Any
) -> Received:
    return backend.wait_for(
        lambda r: (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        ),
        timeout=timeout,
        start=start,
    )


# ------------------------------------------------------------------------------ daemons
class Station(Daemon):
    """A ``tests.helpers.Daemon`` configured for measuring: the daemon's default log level
    (info, not the tests' debug) so the numbers are those of a production configuration, and
    the benchmark environment (bytecode cache outside the repository)."""

    def __init__(
        self,
        tmp: Path,
        broker_url: str,
        prefix: str,
        station_id: str = "ST-BENCH",
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        overrides.setdefault("mqtt", {})
        overrides["mqtt"] = {"keepalive_s": 30, "auth_timeout_s": 5.0, **overrides["mqtt"]}
        super().__init__(
            tmp,
            station_config(tmp, broker_url, prefix, station_id=station_id, **overrides),
            log_level=LOG_LEVEL,
            env=child_env(**(env or {})),
        )
        self.station_id = station_id
        self.prefix = prefix

    def wait_ready(self, timeout: float = 60.0, connected: bool = True) -> Station:
        super().wait_ready(timeout, connected)
        return self

    def start(self, wait_connected: bool = True, timeout: float = 60.0) -> Station:
        self.spawn()
        return self.wait_ready(timeout, wait_connected)


class TcpRelay:
    """A TCP relay in this process between stations and the broker: ``cut()`` closes the
    listener and every relayed connection (stations see their broker go away and get
    "connection refused" while retrying), ``restore()`` listens again on the same port. Unlike
    stopping Mosquitto, the backend's own connection and subscriptions are not touched. Both
    legs have TCP_NODELAY. ``accepted`` holds the ``time.monotonic()`` of every connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.accepted: list[float] = []
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._peers: dict[socket.socket, socket.socket] = {}
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listen()
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        self._sel.register(ls, selectors.EVENT_READ)

    def _drop_all(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        for s in list(self._peers):
            self._close(s)

    def _close(self, s: socket.socket) -> None:
        peer = self._peers.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._peers.pop(x, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(x)
            x.close()

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        with self._lock:
            self._calls.append((fn, done))
        done.wait(5)

    def cut(self) -> None:
        self._call(self._drop_all)

    def restore(self) -> None:
        self._call(self._listen)

    def close(self) -> None:
        self._call(self._drop_all)
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                calls, self._calls = self._calls, []
            for fn, done in calls:
                fn()
                done.set()
            for key, _ in self._sel.select(0.02):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is self._listener:
                    try:
                        conn, _ = s.accept()
                        up = socket.create_connection(("127.0.0.1", self.target_port))
                    except OSError:
                        continue
                    self.accepted.append(time.monotonic())
                    for x in (conn, up):
                        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        self._sel.register(x, selectors.EVENT_READ)
                    self._peers[conn], self._peers[up] = up, conn
                    continue
                try:
                    data = s.recv(262144)
                    if data:
                        self._peers[s].sendall(data)
                        continue
                except (OSError, KeyError):
                    pass
                self._close(s)


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A fresh directory on the real disk (``$TMPDIR``, not tmpfs on this machine: the store's
    fsyncs are part of what is measured)."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def broker_and_backend(
    prefix: str = "bench", **backend_kw: Any
) -> Iterator[tuple[Mosquitto, BackendSim]]:
    """A private Mosquitto (``set_tcp_nodelay true``) and the reference backend in this process.

    ``BackendSim`` answers ``auth/req`` and acks CDRs from its paho network thread the moment
    a message arrives (an "instant backend"); every message's arrival is stamped with
    ``time.monotonic()`` in ``Received.t``."""
    mosq = Mosquitto()
    mosq.start()
    backend = BackendSim(mosq.url, prefix=prefix, **backend_kw)
    try:
        backend.start()
        yield mosq, backend
    finally:
        backend.stop()
        mosq.close()
