"""``stationctl`` latency: what a technician waits for each command, interpreter start included.

A station daemon (sim drivers) runs; ``stationctl --socket ... status`` and ``... sessions`` are
run as child processes the way a shell runs them (``python -m agent.stationctl``, bytecode
already cached, as in an installed package), ``t0 = time.monotonic()`` right before ``Popen``
and the end at ``wait()``. One untimed run first. Besides, ``python -X importtime -c "import
agent.stationctl"`` gives the import time of the client (the sum of its top-level imports,
``site`` excluded) and the bare interpreter start (``python -c pass``) the floor nobody can
go under. Target: a command answers in under 150 ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from tests.benchmarks.common import REPO, Result, Station, broker_and_backend, child_env, workdir
from tests.benchmarks.tap import evse_config

TARGET_S = 0.150


def _timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL)
    if proc.wait(30) != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
    return time.monotonic() - t0


def import_ms() -> float:
    """The client's import time (``-X importtime``, the ``agent.stationctl`` line), in ms."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import agent.stationctl"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    line = next(x for x in out.splitlines() if x.rstrip().endswith("| agent.stationctl"))
    return int(line.split("|")[1]) / 1000


def run_cli(quick: bool) -> Result:
    res = Result("9. stationctl latency")
    runs = 5 if quick else 20
    with workdir("cli") as tmp, broker_and_backend() as (mosq, _backend):
        st = Station(tmp, mosq.url, "bench", evse=evse_config()).start()
        try:
            ctl = [sys.executable, "-m", "agent.stationctl", "--socket", str(st.socket)]
            times: dict[str, list[float]] = {}
            for name in ("status", "sessions"):
                _timed([*ctl, name])  # untimed: warms the page cache
                times[name] = [_timed([*ctl, name]) for _ in range(runs)]
            bare = [_timed([sys.executable, "-c", "pass"]) for _ in range(runs)]
            imports = sorted(import_ms() for _ in range(3 if quick else 5))
        finally:
            st.stop()
    med = statistics.median
    res.data = {
        "runs": runs,
        **{f"{k}_s": sorted(round(x, 4) for x in v) for k, v in times.items()},
        "python_c_pass_s": sorted(round(x, 4) for x in bare),
        "import_ms": [round(x, 1) for x in imports],
    }
    for name, samples in times.items():
        res.row(
            f"`stationctl {name}`, process start -> exit (median of {runs})",
            f"{med(samples) * 1000:.0f} ms (max {max(samples) * 1000:.0f})",
            f"< {TARGET_S * 1000:.0f} ms",
            med(samples) < TARGET_S,
        )
    res.row(
        "of which: interpreter start (`python -c pass`) / `import agent.stationctl`",
        f"{med(bare) * 1000:.0f} ms / {med(imports):.0f} ms",
    )
    return res
