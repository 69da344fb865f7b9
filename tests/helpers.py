"""Test helpers: TOML writing, a daemon subprocess handle, waiting without fixed sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backend_sim import BackendSim, Received
from agent.control import ControlError, call

REPO = Path(__file__).resolve().parent.parent
EVSE1 = "DE*ICE*E000001*1"
EVSE2 = "DE*ICE*E000001*2"
UID_A = "04A224B2C13C80"
UID_B = "E3F1A27B"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Write the subset of TOML our configs use: tables, arrays of tables, inline tables."""
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
            lines.append("")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            lines.insert(0, f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def station_config(
    tmp: Path,
    broker_url: str,
    prefix: str,
    station_id: str = "ST-TEST",
    evses: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "station": {
            "id": station_id,
            "operator_id": "DE*ICE",
            "location": "Teststr. 1, Stuttgart",
            "state_dir": str(tmp / "state"),
            "control_socket": str(tmp / "control.sock"),
            "boot_id_file": str(tmp / "boot_id"),
            # the test machine's own time sync is not the station's: the build-date rule only
            "clock_sync_file": str(tmp / "no-timesyncd" / "synchronized"),
        },
        "mqtt": {
            "url": broker_url,
            "topic_prefix": prefix,
            "auth_timeout_s": 3.0,
            "keepalive_s": 5,
            "cdr_retry_initial_s": 1.0,
        },
        "auth": {"stop_with_same_token": True, "connection_timeout_s": 30.0},
        "rfid": {"driver": "sim"},
        "display": {"driver": "sim"},
        "evse": [
            {
                "id": f"DE*ICE*E000001*{i + 1}",
                "relay": {"driver": "sim", "log_file": str(tmp / f"relay{i + 1}.log")},
                "meter": {"driver": "sim", "power_kw": 11.0, "time_factor": 60.0},
                "plug": {"driver": "sim"},
            }
            for i in range(evses)
        ],
    }
    for key, value in overrides.items():
        cfg[key] = deep_merge(cfg.get(key, {}), value) if isinstance(value, dict) else value
    return cfg


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # the polling interval of this wait, not a wait for readiness


def wait_msg(
    backend: BackendSim, suffix: str, timeout: float = 10.0, start: int = 0, **match: Any
) -> Any:
    """The first message on ``suffix`` (from index ``start``) whose fields match ``match``."""

    def pred(r: Received) -> bool:
        return (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        )

    return backend.wait_for(pred, timeout, start).data


@dataclass
class Daemon:
    """A station-agent child process with its config, socket and log.

    ``start()`` = ``spawn()`` + ``wait_ready()``; the two halves let many start in parallel.
    """

    tmp: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    log_level: str = "debug"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ, PYTHONUNBUFFERED="1"))
    log_path: Path = field(init=False)
    config_path: Path = field(init=False)
    t_spawn: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.log_path = self.tmp / "agent.log"
        self.config_path = self.tmp / "config.toml"

    @property
    def socket(self) -> Path:
        return Path(self.config["station"]["control_socket"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> Daemon:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_toml(self.config))
        if self.socket.exists():
            self.socket.unlink()
        with self.log_path.open("ab") as log:
            self.t_spawn = time.monotonic()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent.cli",
                    "run",
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    self.log_level,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env=self.env,
            )
        return self

    def wait_ready(self, timeout: float = 30.0, connected: bool = True) -> Daemon:
        proc = self.proc
        assert proc is not None
        wait_until(
            lambda: self.socket.exists() or proc.poll() is not None, timeout, "control socket"
        )
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{self.log()[-3000:]}")
        if connected:
            wait_until(
                lambda: (self.try_ctl("status") or {}).get("link", {}).get("connected"),
                timeout,
                "MQTT link",
            )
        return self

    def start(self, wait_connected: bool = True, timeout: float = 30.0) -> Daemon:
        return self.spawn().wait_ready(timeout, wait_connected)

    def ctl(self, cmd: str, **kw: Any) -> Any:
        return call(self.socket, {"cmd": cmd, **kw})

    def try_ctl(self, cmd: str, **kw: Any) -> Any:
        try:
            return self.ctl(cmd, **kw)
        except ControlError:
            return None

    def evse(self, evse_id: str = EVSE1) -> dict[str, Any]:
        st = self.ctl("status")
        return next(e for e in st["evses"] if e["evse_id"] == evse_id)

    def wait_state(self, state: str, evse_id: str = EVSE1, timeout: float = 20.0) -> dict[str, Any]:
        return wait_until(
            lambda: (e := self.evse(evse_id))["state"] == state and e,
            timeout,
            f"{evse_id} to be {state} (now {self.evse(evse_id)['state']})",
        )

    def relay_log(self, n: int = 1) -> list[str]:
        p = self.tmp / f"relay{n}.log"
        return p.read_text().split() if p.exists() else []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
