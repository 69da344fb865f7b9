"""Footprint: RSS and CPU of idle daemons, and of the camera stand-in.

Two daemons idle side by side for the same window (60 s; quick: 20 s), both connected to the
broker, no car, no session:

* sim drivers only (sim reader, relay, meter, plug);
* the PN532 driver polling a simulated PN532 (pty, simulator thread in the benchmark process)
  at 10 Hz with nobody tapping - the CPU of the simulator is the benchmark's, not the daemon's.

CPU = (utime + stime) delta from ``/proc/<pid>/stat`` over the window / wall time, in percent of
one core (clock ticks of 10 ms: resolution 0.017 % over 60 s, 0.05 % over 20 s). RSS = ``VmRSS``
from ``/proc/<pid>/status`` at the end of the window (the maximum of 1 s samples is reported
too). The window starts once the daemon is connected (and the reader open) plus 1 s.

Camera: the camera driver is not wired into the daemon yet, so a stand-in process
(:mod:`tests.benchmarks.camera_standin`) imports zxing-cpp, OpenCV and pyzbar and decodes 640x480
frames with ``drivers.qr.decode`` at 5 frames/s (``qr.scan_fps`` default); reported with and
without the daemon's own modules imported in the same process. Its numbers are labelled
"stand-in". The two stand-ins run during the idle window (their RSS and CPU are their own; at 5
frames/s they use under 10 % of a core), which keeps the run short.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from drivers.rfid.pn532_sim import SimulatedPN532
from tests.benchmarks.common import (
    CLK_TCK,
    REPO,
    Result,
    Station,
    broker_and_backend,
    child_env,
    cpu_ticks,
    rss_kb,
    workdir,
)
from tests.benchmarks.pn532 import pn532_station, wait_reader
from tests.benchmarks.tap import evse_config

TARGET_RSS_MB = 45.0
TARGET_CPU = 1.0
FLOOR_CPU = 2.0


def _window(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    start = {k: cpu_ticks(p) for k, p in pids.items()}
    peak = {k: rss_kb(p) for k, p in pids.items()}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(min(1.0, seconds - (time.monotonic() - t0)) if seconds > 0 else 0)
        for k, p in pids.items():
            peak[k] = max(peak[k], rss_kb(p))
    wall = time.monotonic() - t0
    out = {}
    for k, p in pids.items():
        ticks = cpu_ticks(p) - start[k]
        out[k] = {
            "cpu_percent": round(ticks / CLK_TCK / wall * 100, 3),
            "cpu_ticks": ticks,
            "window_s": round(wall, 1),
            "rss_mb": round(rss_kb(p) / 1024, 1),
            "rss_peak_mb": round(peak[k] / 1024, 1),
        }
    return out


def start_camera_standin(seconds: float, with_agent: bool) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "tests.benchmarks.camera_standin",
        "--seconds",
        str(seconds),
        "--fps",
        "5",
    ] + (["--with-agent"] if with_agent else [])
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True)


def camera_standin(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for the stand-in's "ready" (imports done, first frame decoded), then sample it."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.wait()
        raise RuntimeError(f"camera stand-in failed: {line!r}")
    t_ready = time.monotonic()
    start = cpu_ticks(proc.pid)
    peak = rss_kb(proc.pid)
    last, ticks, wall = peak, 0, 1e-6
    while proc.poll() is None:
        try:
            now_kb = rss_kb(proc.pid)
            now_ticks = cpu_ticks(proc.pid) - start
        except (OSError, ValueError):
            break
        if now_kb == 0:  # exited (a zombie has no VmRSS)
            break
        last, ticks, wall = now_kb, now_ticks, time.monotonic() - t_ready
        peak = max(peak, last)
        time.sleep(0.25)
    out: dict[str, Any] = json.loads(proc.stdout.read().strip().splitlines()[-1])
    proc.wait()
    out.update(
        {
            "rss_mb": round(last / 1024, 1),
            "rss_peak_mb": round(peak / 1024, 1),
            "cpu_percent": round(ticks / CLK_TCK / max(wall, 1e-6) * 100, 1),
        }
    )
    return out


def run_footprint(quick: bool) -> Result:
    res = Result("5. Footprint")
    window = 20.0 if quick else 60.0
    with workdir("idle") as tmp, broker_and_backend() as (mosq, _backend), SimulatedPN532() as sim:
        plain = Station(
            tmp / "sim", mosq.url, "bench", station_id="ST-IDLE-SIM", evse=evse_config()
        )
        reader = pn532_station(tmp / "pn532", mosq.url, sim)
        reader.config["station"]["id"] = "ST-IDLE-PN532"
        try:
            plain.spawn()
            reader.spawn()
            plain.wait_ready()
            reader.wait_ready()
            wait_reader(reader)
            time.sleep(1.0)
            polls0 = sim.polls
            cams = {
                name: start_camera_standin(window - 4.0, with_agent=name == "agent")
                for name in ("plain", "agent")
            }
            cam_out: dict[str, dict[str, Any]] = {}
            threads = [
                threading.Thread(target=lambda k=k, p=p: cam_out.__setitem__(k, camera_standin(p)))
                for k, p in cams.items()
            ]
            for t in threads:
                t.start()
            idle = _window({"sim": plain.pid, "pn532": reader.pid}, window)
            for t in threads:
                t.join()
            idle["pn532"]["polls_per_s"] = round((sim.polls - polls0) / window, 1)
            idle["sim"]["age_s"] = round(time.monotonic() - plain.t_spawn, 1)
            idle["pn532"]["age_s"] = round(time.monotonic() - reader.t_spawn, 1)
        finally:
            stopper = threading.Thread(target=plain.stop)
            stopper.start()
            reader.stop()
            stopper.join()
    cam, cam_agent = cam_out["plain"], cam_out["agent"]
    res.data = {"idle": idle, "camera_standin": cam, "camera_standin_with_agent": cam_agent}
    s, p = idle["sim"], idle["pn532"]
    res.row(
        f"idle daemon, sim drivers: RSS after {s['age_s']:.0f} s",
        f"{s['rss_mb']:.1f} MB (peak {s['rss_peak_mb']:.1f})",
        f"< {TARGET_RSS_MB:.0f} MB",
        s["rss_mb"] < TARGET_RSS_MB,
    )
    res.row(
        f"idle daemon, sim drivers: CPU over {s['window_s']:.0f} s",
        f"{s['cpu_percent']:.3f} % of one core",
        f"< {TARGET_CPU:.0f} %",
        s["cpu_percent"] < TARGET_CPU,
    )
    res.row(
        f"idle daemon, PN532 polling at {p['polls_per_s']:.1f} Hz: RSS",
        f"{p['rss_mb']:.1f} MB (peak {p['rss_peak_mb']:.1f})",
        f"< {TARGET_RSS_MB:.0f} MB",
        p["rss_mb"] < TARGET_RSS_MB,
    )
    res.row(
        f"idle daemon, PN532 polling at {p['polls_per_s']:.1f} Hz: CPU over {p['window_s']:.0f} s",
        f"{p['cpu_percent']:.3f} % of one core",
        f"< {TARGET_CPU:.0f} % (floor {FLOOR_CPU:.0f} %)",
        p["cpu_percent"] < TARGET_CPU,
    )
    for label, c in (("cv2+pyzbar", cam), ("cv2+pyzbar + agent modules", cam_agent)):
        res.row(
            f"camera STAND-IN ({label}), 640x480 at 5 fps, {c['frames']} frames",
            f"RSS {c['rss_mb']:.1f} MB (peak {c['rss_peak_mb']:.1f}), CPU "
            f"{c['cpu_percent']:.1f} %, decode p50 {c['decode_ms_p50']:.1f} ms",
        )
    return res
