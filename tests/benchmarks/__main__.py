"""``python -m tests.benchmarks``: every benchmark against real processes; a Markdown table.

    python -m tests.benchmarks                      # full run (< 10 min on 2 cores)
    python -m tests.benchmarks --quick              # smoke run (< 1 min): CI runs this
    python -m tests.benchmarks --json out.json      # also write every result as JSON
    python -m tests.benchmarks --only tap,drain     # a subset (names below)
    python -m tests.benchmarks --only flood         # tap to relay under inbound floods

What runs where:

* Stations: ``station-agent run`` child processes (``python -m agent.cli run``, log level
  info, sim drivers unless said otherwise, store on the real disk) driven through their
  control sockets.
* Broker: a private Mosquitto per benchmark on 127.0.0.1, ``set_tcp_nodelay true``
  (``agent.broker.Mosquitto``).
* Backend: ``agent.backend_sim.BackendSim`` **inside the benchmark process** (its paho network
  thread answers ``auth/req`` and acks CDRs the moment they arrive, and stamps every arrival);
  the fleet benchmark uses 1 or 4 worker **processes** on an MQTT 5 shared subscription
  (``tests/benchmarks/fleet_backend.py``).
* QR decoding: ``tests/benchmarks/qr_decode.py`` (``--quick`` in quick mode) as a child
  process, running while the idle daemons of the footprint benchmark are measured (it keeps
  one core busy; idle daemons' CPU is their own process time, which a busy neighbour barely
  changes), to keep the full run under 10 minutes.

Each module's docstring describes its method; the JSON has the raw distributions, the host and
the machine-wide CPU load during each benchmark (this VM can be shared with other work).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.common import (
    REPO,
    Load,
    Result,
    child_env,
    host_info,
    wait_quiet,
    warm_bytecode,
)

BUSY_NOTE = 25.0  # % of one core used by other processes: noted in the table
BENCHES = (
    "tap",
    "pn532",
    "pn532idle",
    "remote",
    "startup",
    "footprint",
    "drain",
    "fleet",
    "qr",
    "flood",
    "limits",
    "ocmf",
    "web",
    "ocpp",
    "cli",
)


def _runner(name: str) -> Callable[[bool], Result]:
    if name == "tap":
        from tests.benchmarks.tap import run_tap

        return run_tap
    if name == "remote":
        from tests.benchmarks.tap import run_remote

        return run_remote
    if name == "pn532":
        from tests.benchmarks.pn532 import run_pn532

        return run_pn532
    if name == "pn532idle":
        from tests.benchmarks.pn532_idle import run_pn532_idle

        return run_pn532_idle
    if name == "startup":
        from tests.benchmarks.startup import run_startup

        return run_startup
    if name == "footprint":
        from tests.benchmarks.footprint import run_footprint

        return run_footprint
    if name == "drain":
        from tests.benchmarks.drain import run_drain

        return run_drain
    if name == "fleet":
        from tests.benchmarks.fleet import run_fleet

        return run_fleet
    if name == "flood":
        from tests.benchmarks.flood import run_flood

        return run_flood
    if name == "ocmf":
        from tests.benchmarks.ocmf import run_ocmf

        return run_ocmf
    if name == "web":  # the status page (tests/benchmarks/web.py)
        from tests.benchmarks.web import run_web

        return run_web
    if name == "limits":
        from tests.benchmarks.limits import run_limits

        return run_limits
    if name == "ocpp":
        from tests.benchmarks.ocpp_tap import run_ocpp_tap

        return run_ocpp_tap
    if name == "cli":
        from tests.benchmarks.cli import run_cli

        return run_cli
    raise ValueError(name)


class QrRun:
    """``qr_decode.py`` as a child process (started early, collected later)."""

    def __init__(self, quick: bool) -> None:
        self.out = Path(tempfile.mkstemp(prefix="bench-qr-", suffix=".json")[1])
        cmd = [
            sys.executable,
            str(REPO / "tests/benchmarks/qr_decode.py"),
            "--json",
            str(self.out),
        ] + (["--quick"] if quick else [])
        self.t0 = time.monotonic()
        self.load = Load()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def result(self) -> Result:
        res = Result("8. QR decode (tests/benchmarks/qr_decode.py)")
        stdout, _ = self.proc.communicate()
        res.seconds = time.monotonic() - self.t0
        res.data["load"] = self.load.result()
        if self.proc.returncode != 0:
            res.error = f"qr_decode.py exited with {self.proc.returncode}"
            return res
        data = json.loads(self.out.read_text())
        self.out.unlink()
        res.data.update(data)
        res.data["markdown"] = stdout[stdout.find("| frame") :].strip()
        frames = data["meta"]["frames_per_class"]
        for r in data["rows"]:
            a, b = r["before"], r["pipeline"]
            res.row(
                f"{r['resolution']} {r['class']} ({frames} frames)",
                f"before {a['p50_ms']:.1f} ms / {a['success']:.0%}; pipeline "
                f"{b['p50_ms']:.1f} (p95 {b['p95_ms']:.1f}) ms / {b['success']:.0%}",
            )
        return res


def markdown(results: list[Result]) -> str:
    out = ["| Benchmark | Measure | Result | Target | Status |", "|---|---|---|---|---|"]
    for res in results:
        if res.error:
            out.append(
                f"| {res.name} | (failed) | {res.error.splitlines()[-1][:200]} | | **error** |"
            )
        for r in res.rows:
            out.append(f"| {r.bench} | {r.measure} | {r.result} | {r.target} | {r.status} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--quick", action="store_true", help="fewer samples, shorter windows")
    p.add_argument("--json", metavar="FILE", help="write every result as JSON")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--fleet-sizes", help="e.g. 10,50,200 (default: 10 quick, 10,50,200 full)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each benchmark wait up to SECONDS for a quiet machine (< 25 %% "
        "of one core busy): for shared machines",
    )
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    t_all = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    host = host_info()
    print(
        f"# station-agent benchmarks ({'quick' if args.quick else 'full'}) on "
        f"{host['cpu_model']}, {host['cores']} cores",
        file=sys.stderr,
    )
    warm_bytecode()
    results: list[Result] = []
    qr: QrRun | None = None
    waited = 0.0
    for name in names:
        if name == "qr":
            continue
        tw = time.monotonic()
        quiet = wait_quiet(args.wait_quiet) if args.wait_quiet else None
        waited += time.monotonic() - tw
        if name == "footprint" and "qr" in names:
            qr = QrRun(args.quick)  # runs beside the idle window
        print(f"## {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        load = Load()
        try:
            runner = _runner(name)
            if name == "fleet" and args.fleet_sizes:
                from tests.benchmarks.fleet import run_fleet

                res = run_fleet(args.quick, [int(x) for x in args.fleet_sizes.split(",")])
            else:
                res = runner(args.quick)
        except Exception as err:  # noqa: BLE001 - one failure must not hide the others
            res = Result(name, error=f"{type(err).__name__}: {err}")
            res.data["traceback"] = traceback.format_exc()
            print(res.data["traceback"], file=sys.stderr)
        res.seconds = time.monotonic() - t0
        res.data["load"] = load.result()
        if quiet is not None:
            res.data["load"]["busy_before_percent"] = quiet
        other = res.data["load"]["other_cpu_percent"]
        if other > BUSY_NOTE and name != "footprint":
            res.row(
                "(machine busy)",
                f"other processes used {other:.0f} % of one core during "
                "this benchmark: latencies are inflated; rerun on a quiet machine",
            )
        print(f"   {name}: {res.seconds:.1f} s", file=sys.stderr, flush=True)
        results.append(res)
    if "qr" in names:
        if qr is None:
            qr = QrRun(args.quick)
        print("## qr (collecting) ...", file=sys.stderr, flush=True)
        results.append(qr.result())
    total = time.monotonic() - t_all
    order = {n: i for i, n in enumerate(["1.", "2.", "3.", "4.", "5.", "6.", "7.", "8.", "9."])}
    results.sort(key=lambda r: order.get(r.name[:2], 99))
    table = markdown(results)
    mode = "quick" if args.quick else "full"
    print(f"\n## station-agent benchmarks ({mode}), {time.strftime('%Y-%m-%d')}\n")
    print(
        f"Machine: {host['cpu_model']}, {host['cores']} cores, {host['mem_gb']} GB; "
        f"Python {host['python']}, Mosquitto {host['mosquitto']}, Linux {host['kernel']}. "
        f"Command: `python -m tests.benchmarks{' --quick' if args.quick else ''}`; "
        f"total {total:.0f} s"
        + (
            f" ({total - waited:.0f} s without waiting for a quiet machine)"
            if args.wait_quiet
            else ""
        )
        + ".\n"
    )
    print(table)
    busy = [(r.name, r.data.get("load", {})) for r in results]
    other = [
        f"{n.split(' ')[0]} {ld.get('other_cpu_percent', 0):.0f} %"
        + (" (incl. the QR decode run beside it)" if n.startswith("5.") and qr else "")
        for n, ld in busy
        if ld
    ]
    print(
        "\nCPU used by other processes on the machine during each benchmark (% of one core): "
        + ", ".join(other)
    )
    for r in results:
        if r.data.get("markdown"):
            print(f"\n### QR decode detail\n\n{r.data['markdown']}")
    missed = [row for r in results for row in r.rows if row.met is False]
    if args.json:
        payload: dict[str, Any] = {
            "mode": mode,
            "started_at": started_at,
            "total_s": round(total, 1),
            "waited_for_quiet_s": round(waited, 1),
            "host": host,
            "platform": platform.platform(),
            "argv": sys.argv,
            "results": [
                {
                    "name": r.name,
                    "seconds": round(r.seconds, 1),
                    "error": r.error,
                    "rows": [row.as_dict() for row in r.rows],
                    "data": r.data,
                }
                for r in results
            ],
            "targets_missed": [row.as_dict() for row in missed],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\n(total {total:.0f} s)", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
