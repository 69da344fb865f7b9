"""Tap to relay under inbound floods (issue #7 "Floods starve taps").

Method: one daemon per scenario (sim drivers, car plugged, store on the real disk), the
reference backend in this process answering ``auth/req`` at once (as in ``tap.py``), and a
**flood publisher in a child process** (``python -m tests.benchmarks.flood --publish ...``:
paho, QoS 0, paced in 1 ms steps to the target rate) sending to the station's inbound topics:

* ``junk``: 5,000 messages/s on ``cmd/req`` - not UTF-8, not JSON, not an object, a wrong
  ``v`` or an unknown command (the last two carry a readable ``command_id``);
* ``auth``: 5,000 random ``auth/res``/s - well-formed answers to requests nobody made;
* ``stop``: 1,000 valid ``remote_stop``/s for unknown sessions (each one the station handles
  is answered and its answer stored: an fsync'd commit);
* ``none``: no flood, the baseline.

While the flood runs, the card is tapped again and again (0.1 s apart, so the taps sample the
whole flood: ~2 s of it in quick mode, ~8 s in full) as in ``tap.py``: ``t0`` right
before ``sim.tap`` goes out over the control socket, the end when the session's ``started``
event reaches the backend (published right after the relay closed); the same card then stops
the session and the next tap starts a new one. Reported: p50/p95 of tap -> ``started``, the
rate the publisher really reached, and the station's ``inbound_dropped`` counts (status).
Target: p95 < 50 ms under 5,000 junk messages/s (the tap target of ``tap.py``); the other
floods are reported against the same figure for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from agent.backend_sim import BackendSim
from tests.benchmarks.common import (
    REPO,
    UID_A,
    Result,
    Station,
    broker_and_backend,
    child_env,
    dist,
    fmt_dist,
    wait_event,
    wait_suffix,
    wait_until,
    workdir,
)
from tests.benchmarks.tap import evse_config
from tests.helpers import Daemon

TARGET_P95_MS = 50.0
# flood kind -> (topic suffix, messages per second)
FLOODS: dict[str, tuple[str, float]] = {
    "junk": ("cmd/req", 5000.0),
    "auth": ("auth/res", 5000.0),
    "stop": ("cmd/req", 1000.0),
}
# the station's default inbound limits (rate per second, burst): what it may let in of a flood
DEFAULT_LIMITS: dict[str, tuple[float, float]] = {
    "cmd/req": (50.0, 100.0),
    "auth/res": (200.0, 400.0),
}


def dropped(d: Daemon, suffix: str) -> int:
    """What the station says it dropped on ``suffix`` (its status, refreshed once a second)."""
    counts = d.ctl("status").get("inbound_dropped") or {}
    return int(counts.get(suffix, 0))


def flood_arrived(d: Daemon, kind: str, timeout: float = 10.0) -> None:
    """The flood is under way: the station itself reports drops on its topic."""
    suffix = FLOODS[kind][0]
    wait_until(lambda: dropped(d, suffix) > 0, timeout, f"the {kind} flood at the station")


def flood_counted(d: Daemon, kind: str, sent: int, seconds: float, timeout: float = 10.0) -> None:
    """The station's counts cover the whole flood: at most the limit's budget got in."""
    suffix = FLOODS[kind][0]
    rate, burst = DEFAULT_LIMITS[suffix]
    least = sent - (burst + rate * (seconds + 1))
    wait_until(lambda: dropped(d, suffix) >= least, timeout, f"{kind} flood counted")


# ------------------------------------------------------------------------------ payloads
def _junk(i: int) -> bytes:
    kind = i % 5
    if kind == 0:
        return b"\xff\xfe\x00" + os.urandom(16)  # not UTF-8
    if kind == 1:
        return b"not json %d" % i
    if kind == 2:
        return b"[1,2,3]"
    if kind == 3:
        return b'{"v":2,"command_id":"junk-%d","command":"remote_stop"}' % i
    return b'{"v":1,"command_id":"junk-%d","command":"self_destruct"}' % i


def _auth(i: int) -> bytes:
    return b'{"v":1,"request_id":"%s","status":"accepted"}' % str(uuid.uuid4()).encode()


def _stop(i: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "command_id": f"flood-{os.getpid()}-{i}",
            "command": "remote_stop",
            "session_id": str(uuid.uuid4()),
        }
    ).encode()


PAYLOADS: dict[str, Callable[[int], bytes]] = {"junk": _junk, "auth": _auth, "stop": _stop}


def publish_flood(url: str, topic: str, kind: str, rate: float, seconds: float) -> None:
    """The child process: publish ``kind`` at ``rate``/s on ``topic`` until SIGTERM or
    ``seconds``; print ``ready`` once connected, then one JSON line with what was sent."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
    client.loop_start()
    make = PAYLOADS[kind]
    print("ready", flush=True)
    sent = 0
    t0 = time.monotonic()
    elapsed = 0.0
    while not stop.is_set() and elapsed < seconds:
        due = int(rate * elapsed) + 1
        while sent < due:
            client.publish(topic, make(sent), qos=0)
            sent += 1
        time.sleep(0.001)
        elapsed = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 3)}), flush=True)
    client.disconnect()
    client.loop_stop()


class Flood:
    """A flood publisher child process (context manager); ``result`` after it stopped."""

    def __init__(
        self, broker_url: str, prefix: str, station_id: str, kind: str, rate: float | None = None
    ) -> None:
        suffix, default_rate = FLOODS[kind]
        self.kind = kind
        self.rate = rate or default_rate
        self.result: dict[str, Any] = {}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.flood",
                "--publish",
                broker_url,
                f"{prefix}/{station_id}/{suffix}",
                kind,
                str(self.rate),
                "3600",
            ],
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"flood publisher did not start (said {line!r})")

    def stop(self) -> dict[str, Any]:
        if self.result:
            return self.result
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [x for x in out.splitlines() if x.startswith("{")]
        data = json.loads(lines[-1]) if lines else {"sent": 0, "seconds": 0.0}
        data["rate"] = round(data["sent"] / data["seconds"], 1) if data["seconds"] else 0.0
        self.result = data
        return data

    def __enter__(self) -> Flood:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------ measuring
def taps(
    d: Daemon,
    backend: BackendSim,
    n: int,
    *,
    warmup: int = 0,
    timeout: float = 15.0,
    gap: float = 0.005,
) -> list[float]:
    """``n`` tap -> ``started`` latencies (ms) on a plugged EVSE; each session is stopped with
    the same card (CDR sent) before the next tap, ``gap`` seconds later."""
    out: list[float] = []
    for i in range(n + warmup):
        mark = len(backend.received)
        t0 = time.monotonic()
        d.ctl("sim.tap", uid=UID_A)
        started = wait_event(backend, "started", mark, timeout=timeout)
        if i >= warmup:
            out.append((started.t - t0) * 1000)
        mark = len(backend.received)
        d.ctl("sim.tap", uid=UID_A)  # same card: stop, CDR
        wait_suffix(backend, "cdr", mark, timeout=timeout)
        wait_until(lambda: d.ctl("outbox")["pending"] == 0, timeout, "CDR acknowledged")
        time.sleep(gap)  # pacing: the taps are spread over the flood (not a readiness wait)
    return out


def scenario(kind: str, n: int, warmup: int, gap: float) -> dict[str, Any]:
    with workdir(f"flood-{kind}") as tmp, broker_and_backend() as (mosq, backend):
        st = Station(tmp, mosq.url, "bench", evse=evse_config()).start()
        try:
            st.ctl("sim.plug")
            wait_until(lambda: st.evse()["state"] == "preparing", 5, "preparing")
            if kind == "none":
                lat = taps(st, backend, n, warmup=warmup, gap=gap)
                flood: dict[str, Any] = {}
            else:
                with Flood(mosq.url, "bench", st.station_id, kind) as fl:
                    flood_arrived(st, kind)
                    lat = taps(st, backend, n, warmup=warmup, gap=gap)
                flood = fl.result
                flood_counted(st, kind, int(flood["sent"]), float(flood["seconds"]))
            status = st.ctl("status")
            alive = st.proc is not None and st.proc.poll() is None
            metrics = st.ctl("metrics")
        finally:
            st.stop()
    return {
        "e2e": dist(lat),
        "flood": flood,
        "inbound_dropped": status.get("inbound_dropped") or {},
        "alive": alive,
        "agent_metrics": metrics,
    }


def run_flood(quick: bool) -> Result:
    res = Result("9. Tap to relay under inbound floods")
    n, warmup, gap = (15, 2, 0.1) if quick else (60, 5, 0.1)  # ~2 s / ~8 s of flood
    for kind in ("none", "junk", "auth", "stop"):
        r = scenario(kind, n, warmup, gap)
        res.data[kind] = r
        if kind == "none":
            what = "no flood (baseline)"
        else:
            suffix, rate = FLOODS[kind]
            what = f"{rate:,.0f} {kind} msg/s on {suffix} (reached {r['flood']['rate']:,.0f}/s)"
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(r["inbound_dropped"].items()))
        res.row(
            f"sim.tap -> 'started', {what}",
            fmt_dist(r["e2e"])
            + (f"; dropped {dropped}" if dropped else "")
            + ("" if r["alive"] else "; DAEMON DIED"),
            f"p95 < {TARGET_P95_MS:.0f} ms" if kind == "junk" else "",
            r["e2e"]["p95"] < TARGET_P95_MS and r["alive"] if kind == "junk" else None,
        )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.flood")
    p.add_argument(
        "--publish",
        nargs=5,
        metavar=("URL", "TOPIC", "KIND", "RATE", "SECONDS"),
        help="be the flood publisher (used by the benchmark and the tests)",
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.publish:
        url, topic, kind, rate, seconds = args.publish
        publish_flood(url, topic, kind, float(rate), float(seconds))
        return 0
    res = run_flood(args.quick)
    for row in res.rows:
        print(f"| {row.measure} | {row.result} | {row.target} | {row.status} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
