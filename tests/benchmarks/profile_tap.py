"""Where the agent's share of a tap goes: py-spy on the daemon while it handles taps.

    python -m tests.benchmarks.profile_tap [--taps 500] [--offline] [--pn532-idle SECONDS]
                                           [--out DIR]

Starts Mosquitto, the in-process ``BackendSim`` and one daemon (as the tap benchmark does),
attaches ``py-spy record`` (``pip install py-spy``; 1 kHz, ``--nonblocking``, non-idle samples,
collapsed stacks) to the daemon and runs the taps. Then it prints, for the samples taken in the
controller's main loop while it handled a tap or an auth answer, the share of the functions
below, split by the item the loop was handling (start tap, auth answer, stop tap, CDR ack,
the status publish after each item) and by cost (SQLite commits, paho publishes, logging...).
``--pn532-idle S`` instead profiles an idle daemon whose PN532 driver polls a simulated reader.
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.common import (
    UID_A,
    Station,
    broker_and_backend,
    wait_event,
    wait_suffix,
    wait_until,
    workdir,
)
from tests.benchmarks.tap import evse_config


def pyspy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "1000",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attached
    return proc


CATEGORIES = (  # first match wins: what the controller's main loop was handling
    ("auth answer (auth/res -> relay closed)", "_on_auth_answer"),
    ("stop tap (session end, CDR)", "_end_session"),
    ("start tap (card -> auth/req)", "_on_input"),
    ("CDR ack", "acknowledged"),
    ("remote command", "_on_command"),
    ("control call", "_on_control"),
    ("status publish after an item", "publish_status"),
    ("display refresh after an item", "refresh_display"),
)
COSTS = (  # the first of these found in a stack (outermost first) gets the sample
    ("SQLite COMMIT (fsync, synchronous=FULL)", "_Transaction.__exit__"),
    ("SQLite BEGIN", "_Transaction.__enter__"),
    ("paho publish (queue + wake the network thread, GIL hand-over)", "Client._packet_queue"),
    ("outbox_stats query (status)", "Store.outbox_stats"),
    ("logging", "Logger."),
    ("pydantic dump/validate", "BaseModel."),
    ("JSON encode", "JSONEncoder."),
)


def _short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)'."""
    if " (" not in frame:
        return frame
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].split('/')[-1]})"


def analyse(raw: Path, anchor: str, top: int = 20) -> str:
    """Samples per thread, per item the main loop handled and per cost below ``anchor``."""
    total = 0
    anchored = 0
    by_thread: collections.Counter[str] = collections.Counter()
    by_item: collections.Counter[str] = collections.Counter()
    cost: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        by_thread[frames[0]] += n
        first = next((i for i, f in enumerate(frames) if anchor in f), None)
        if first is None:
            continue
        anchored += n
        below = frames[first:]
        for name in {_short(f) for f in below}:
            incl[name] += n
        item = next((label for label, key in CATEGORIES if any(key in f for f in below)), "other")
        by_item[item] += n
        what = next(
            (label for f in below for label, key in COSTS if key in f),
            "rest (" + _short(below[-1]) + ")",
        )
        cost[item][what] += n
    out = [f"samples: {total} (1 ms each), {anchored} under {anchor!r}", "", "by thread:"]
    out += [f"  {n:6d}  {t}" for t, n in by_thread.most_common(8)]
    out += ["", "by item handled (samples; largest costs inside):"]
    for item, n in by_item.most_common():
        out.append(f"  {n:6d}  {item}")
        out += [f"            {m:6d}  {c}" for c, m in cost[item].most_common(5)]
    out += ["", f"inclusive share below {anchor!r}:"]
    out += [f"  {n / max(anchored, 1):6.1%}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--taps", type=int, default=500)
    p.add_argument("--offline", action="store_true", help="broker down, local list")
    p.add_argument("--pn532-idle", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--out", type=Path, default=Path("/tmp"))
    args = p.parse_args(argv)
    raw = args.out / "profile-tap.txt"
    with workdir("profile") as tmp, broker_and_backend() as (mosq, backend):
        if args.pn532_idle:
            from drivers.rfid.pn532_sim import SimulatedPN532
            from tests.benchmarks.pn532 import pn532_station, wait_reader

            with SimulatedPN532() as sim:
                st = pn532_station(tmp, mosq.url, sim).start()
                wait_reader(st)
                spy = pyspy(st.pid, raw)
                time.sleep(args.pn532_idle)
                spy.send_signal(signal.SIGINT)
                spy.wait()
                st.stop()
            print(analyse(raw, "_run (drivers/rfid/pn532.py"))
            return 0
        st = Station(
            tmp, mosq.url, "bench", evse=evse_config(), mqtt={"reconnect_max_s": 1.0}
        ).start()
        try:
            st.ctl("sim.plug")
            if args.offline:
                mark = len(backend.received)
                cid = backend.command(
                    st.station_id,
                    "update_local_list",
                    version=1,
                    mode="full",
                    entries=[{"uid": UID_A, "status": "accepted"}],
                )
                wait_suffix(backend, "cmd/res", mark, command_id=cid)
                mosq.stop()
                wait_until(lambda: not st.ctl("status")["link"]["connected"], 10, "link down")
            spy = pyspy(st.pid, raw)
            for _ in range(args.taps):
                mark = len(backend.received)
                st.ctl("sim.tap", uid=UID_A)
                if args.offline:
                    wait_until(lambda: st.evse()["relay_closed"], 5, "relay closed")
                else:
                    wait_event(backend, "started", mark)
                st.ctl("sim.tap", uid=UID_A)
                if not args.offline:
                    wait_suffix(backend, "cdr", mark)
                time.sleep(0.005)
            spy.send_signal(signal.SIGINT)
            spy.wait()
            print(st.ctl("metrics"))
        finally:
            st.stop()
    print(analyse(raw, "handle (agent/controller.py"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
