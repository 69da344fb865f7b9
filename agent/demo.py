"""``station-agent demo``: a whole charging story on one machine, told as a timeline.

Starts Mosquitto on a free loopback port (or uses ``--broker``), the backend simulator, and the
agent as a child process with the simulated station config; plays one session on every EVSE
through the control socket (tap, plug, charge, stop); ends with the acknowledged CDRs.
Exit status 0 only if every CDR was acknowledged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from agent.backend_sim import BackendSim, Received
from agent.broker import Mosquitto
from agent.config import load_config
from agent.control import ControlError, call
from agent.errors import AgentError
from agent.shipped import simulated_station

DEMO_CARDS = ["04A224B2C13C80", "E3F1A27B", "04112233445566", "0A0B0C0D"]


def default_config() -> Path:
    """The shipped simulated station (found in an installed package as in the checkout)."""
    return simulated_station()


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._last_status = ""

    def say(self, who: str, text: str) -> None:
        print(f"{time.monotonic() - self.t0:7.3f}s  {who:<8} {text}", flush=True)

    def backend(self, rec: Received) -> None:
        d = rec.data if isinstance(rec.data, dict) else {}
        if rec.suffix == "auth/req":
            tok = d.get("token", {})
            ident = tok.get("uid") or tok.get("contract_id")
            self.say(
                "station",
                f"auth/req  {tok.get('type')} {ident} for {d.get('evse_id') or 'any free EVSE'}",
            )
        elif rec.suffix == "session":
            extra = f" ({d['reason']})" if d.get("reason") else ""
            self.say("station", f"session   {d.get('event')}{extra} on {d.get('evse_id')}")
        elif rec.suffix == "cdr":
            self.say("station", f"cdr       {d.get('session_id')} {d.get('energy_kwh')} kWh")
        elif rec.suffix == "status":
            states = ", ".join(_evse_summary(e) for e in d.get("evses", []))
            line = f"status    {'online' if d.get('online') else 'OFFLINE'} {states}"
            if line != self._last_status:  # a change the summary does not show: not twice
                self._last_status = line
                self.say("station", line)

    def replied(self, suffix: str, data: Any) -> None:
        """What the backend sent back (``auth/res``, ``cdr/ack``)."""
        d = data if isinstance(data, dict) else {}
        if suffix == "auth/res":
            extra = f" ({d['contract_id']})" if d.get("contract_id") else ""
            self.say("backend", f"auth/res  {d.get('status')}{extra}")
        elif suffix == "cdr/ack":
            self.say("backend", f"cdr/ack   {d.get('session_id')}")


@dataclass
class _TellingBackend(BackendSim):
    """The reference backend, telling the timeline what it publishes (after the message it
    answers, which the timeline is told about last)."""

    timeline: Timeline | None = None
    _replies: list[tuple[str, Any]] = field(default_factory=list)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        replies, self._replies = self._replies, []
        for suffix, data in replies:
            if self.timeline is not None:
                self.timeline.replied(suffix, data)

    def publish(
        self,
        station_id: str,
        suffix: str,
        data: Any,
        *,
        raw: bytes | None = None,
        retain: bool = False,
    ) -> None:
        self._replies.append((suffix, data))
        super().publish(station_id, suffix, data, raw=raw, retain=retain)


def _evse_summary(e: dict[str, Any]) -> str:
    """``1:charging`` and, with a control pilot, the current offered and its limit:
    ``1:charging 16A (pilot C, limit 20A station)``."""
    text = f"{e['evse_id'][-1]}:{e['state']}"
    if e.get("offered_a") is not None:
        limit = "-" if e.get("limit_a") is None else f"{e['limit_a']:g}A {e['limit_source']}"
        text += f" {e['offered_a']:g}A (pilot {e.get('pilot') or '-'}, limit {limit})"
    return text


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AgentError(f"demo: timed out waiting for {what}")


def _new_cdr(rec: Received, *, evse_id: str, seen: list[str]) -> bool:
    return (
        rec.suffix == "cdr"
        and isinstance(rec.data, dict)
        and rec.data.get("evse_id") == evse_id
        and rec.data["session_id"] not in seen
    )


def _evse_state(sock: Path, evse_id: str) -> str:
    st = call(sock, {"cmd": "status"})
    return str(next(e["state"] for e in st["evses"] if e["evse_id"] == evse_id))


def _start_broker(stack: ExitStack, tl: Timeline) -> str:
    """A private Mosquitto on a free loopback port, stopped with ``stack``; returns its URL."""
    mosq = Mosquitto()
    mosq.start()
    stack.callback(mosq.close)
    tl.say("demo", f"Mosquitto started on {mosq.url}")
    return mosq.url


def _start_backend(stack: ExitStack, broker: str, prefix: str, tl: Timeline) -> BackendSim:
    backend = _TellingBackend(broker, prefix=prefix, on_message=tl.backend, timeline=tl)
    backend.start()
    stack.callback(backend.stop)
    tl.say("demo", "backend simulator connected (accepts every token, acks every CDR)")
    return backend


def _stop_agent(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


def _start_agent(
    stack: ExitStack, config: Path, broker: str, tmp: Path, sock: Path
) -> subprocess.Popen[bytes]:
    """``station-agent run`` as a child process logging to ``tmp/agent.log``, stopped with
    ``stack``."""
    log = (tmp / "agent.log").open("wb")
    stack.callback(log.close)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--config",
            str(config),
            "--broker",
            broker,
            "--state-dir",
            str(tmp / "state"),
            "--socket",
            str(sock),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    stack.callback(_stop_agent, proc)
    return proc


def _agent_ready(proc: subprocess.Popen[bytes], sock: Path, tmp: Path) -> bool:
    """Wait for the control socket and the MQTT link; False (log printed) if the agent died."""
    _wait(lambda: sock.exists() or proc.poll() is not None, 15, "the agent to start")
    if proc.poll() is not None:
        print((tmp / "agent.log").read_text(), file=sys.stderr)
        return False
    _wait(lambda: call(sock, {"cmd": "status"})["link"]["connected"], 15, "the MQTT link")
    return True


@dataclass(frozen=True)
class _Stage:
    """Where the sessions are played: the agent's control socket, the backend, the timeline."""

    sock: Path
    backend: BackendSim
    tl: Timeline

    def state(self, evse_id: str) -> str:
        return _evse_state(self.sock, evse_id)


def _play_session(stage: _Stage, evse_id: str, uid: str, seconds: float, seen: list[str]) -> str:
    """Plug, tap, charge ``seconds``, tap again, unplug; returns the session id of the CDR the
    backend then receives for ``evse_id`` (one not in ``seen``)."""
    sock, tl = stage.sock, stage.tl
    tl.say("driver", f"plugs the car into {evse_id}")
    call(sock, {"cmd": "sim.plug", "evse_id": evse_id})
    _wait(lambda: stage.state(evse_id) == "preparing", 5, "preparing")
    tl.say("driver", f"taps card {uid}")
    call(sock, {"cmd": "sim.tap", "uid": uid})
    _wait(lambda: stage.state(evse_id) == "charging", 10, "charging")
    tl.say("demo", f"relay closed on {evse_id}; charging for {seconds:.1f} s")
    _show_charging(stage, evse_id, seconds)
    tl.say("driver", f"taps card {uid} again to stop, then unplugs")
    call(sock, {"cmd": "sim.tap", "uid": uid})
    _wait(lambda: stage.state(evse_id) == "finishing", 10, "finishing")
    call(sock, {"cmd": "sim.unplug", "evse_id": evse_id})
    rec = stage.backend.wait_for(partial(_new_cdr, evse_id=evse_id, seen=seen), 10)
    return str(rec.data["session_id"])


def _show_charging(stage: _Stage, evse_id: str, seconds: float) -> None:
    """Charge for ``seconds``, showing the meter (energy, power) about every second."""
    end = time.monotonic() + seconds
    start: float | None = None
    while True:
        m = call(stage.sock, {"cmd": "meter.read", "evse_id": evse_id})
        start = m["energy_kwh"] if start is None else start
        stage.tl.say(
            "meter",
            f"{evse_id}: {m['energy_kwh'] - start:.3f} kWh charged, "
            f"{(m['power_w'] or 0) / 1000:.1f} kW (register {m['energy_kwh']:.3f} kWh)",
        )
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(1.0, left))  # the demo's pace: a car charging, told every second


def _play_sessions(stage: _Stage, evse_ids: list[str], seconds: float) -> list[str]:
    """One session on every EVSE, then wait for every CDR's ack; returns the session ids."""
    session_ids: list[str] = []
    for i, evse_id in enumerate(evse_ids):
        uid = DEMO_CARDS[i % len(DEMO_CARDS)]
        session_ids.append(_play_session(stage, evse_id, uid, seconds, session_ids))
    _wait(lambda: call(stage.sock, {"cmd": "outbox"})["pending"] == 0, 15, "CDR acks")
    return session_ids


def _report(
    tl: Timeline,
    backend: BackendSim,
    session_ids: list[str],
    evse_count: int,
    proc: subprocess.Popen[bytes],
) -> int:
    """The acknowledged CDRs and a summary; 0 if every EVSE's CDR was acknowledged."""
    tl.say("demo", "every CDR acknowledged by the backend; the CDRs:")
    for sid in session_ids:
        print(json.dumps(backend.cdrs[sid], indent=2))
    _stop_agent(proc)
    acked = len(session_ids) == evse_count
    print(
        f"\n{len(session_ids)} session(s), {len(session_ids)} CDR(s) acknowledged, "
        f"{backend.cdr_duplicates} duplicate(s)"
    )
    return 0 if acked else 1


def run_demo(config: Path | None = None, broker: str | None = None, seconds: float = 3.0) -> int:
    config = config or default_config()
    cfg = load_config(config)
    tl = Timeline()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="station-demo-")))
        if broker is None:
            broker = _start_broker(stack, tl)
        backend = _start_backend(stack, broker, cfg.mqtt.topic_prefix, tl)
        sock = tmp / "control.sock"
        proc = _start_agent(stack, config, broker, tmp, sock)
        if not _agent_ready(proc, sock, tmp):
            return 1
        tl.say("demo", f"agent running: station {cfg.station.id}, {len(cfg.evse)} EVSE(s)")
        stage = _Stage(sock, backend, tl)
        try:
            session_ids = _play_sessions(stage, [ec.id for ec in cfg.evse], seconds)
        except (AgentError, ControlError, TimeoutError) as err:
            print(f"demo failed: {err}", file=sys.stderr)
            print((tmp / "agent.log").read_text()[-4000:], file=sys.stderr)
            return 1
        return _report(tl, backend, session_ids, len(cfg.evse), proc)
