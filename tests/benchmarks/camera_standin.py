"""Camera footprint stand-in: the camera driver is not wired into the daemon yet, so this process
imports what it would (zxing-cpp, OpenCV, numpy, pyzbar through ``drivers.qr.decode``) and
decodes 640x480 BGR frames (``drivers.qr.synth``: half clean codes, half empty scenes) in a
loop, as a camera driver scanning at ``--fps`` would. The parent reads its RSS and CPU from /proc.

    python -m tests.benchmarks.camera_standin --seconds 10 [--fps 5] [--with-agent]

``--with-agent`` also imports the daemon's modules first (``agent.daemon``: pydantic, paho,
sqlite3...), approximating "daemon + camera" in one process. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=5.0, help="frames per second (0: flat out)")
    p.add_argument("--with-agent", action="store_true")
    args = p.parse_args(argv)
    t_import = time.perf_counter()
    if args.with_agent:
        import agent.daemon
        import agent.hardware  # noqa: F401
    from drivers.qr.decode import decode_image
    from drivers.qr.synth import make_frame

    frames = [
        make_frame("http://m.intercharge.eu/qr?evseid=DE*ICE*E000001*1", "clean", 1),
        make_frame(None, "clean", 2),
    ]
    decode_image(frames[0])  # imports cv2 / pyzbar
    import_s = time.perf_counter() - t_import
    print("ready", flush=True)
    times: list[float] = []
    found = 0
    t_end = time.monotonic() + args.seconds
    period = 1.0 / args.fps if args.fps > 0 else 0.0
    nxt = time.monotonic()
    i = 0
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        if decode_image(frames[i % 2]):
            found += 1
        times.append((time.perf_counter() - t0) * 1000)
        i += 1
        if period:
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    times.sort()
    print(
        json.dumps(
            {
                "frames": len(times),
                "found": found,
                "import_and_setup_s": import_s,
                "decode_ms_p50": times[len(times) // 2] if times else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
