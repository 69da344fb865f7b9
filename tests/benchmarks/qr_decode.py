"""QR decode benchmark: time per frame and success rate, plain pyzbar vs the full pipeline.

Frames come from :mod:`drivers.qr.synth` (deterministic seeds): the classes clean, rotated,
blurred, low_contrast, noisy, small, combined, plus ``no_code`` (the same scenes without a
code: what a station camera sees most of the time; "success" there means no false read).

    python tests/benchmarks/qr_decode.py            # 60 frames per class, 640x480 and 1280x720
    python tests/benchmarks/qr_decode.py --quick    # 15 frames per class
    python tests/benchmarks/qr_decode.py --json out.json

Prints a Markdown table. Frame generation is not timed; each decode is timed alone
(``time.perf_counter``), single-threaded from Python's side. Shared machines vary by about
+-30 % between runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.display.qrcode import intercharge_payload
from drivers.qr.decode import DEFAULT_STAGES, Stage, decode_image_staged
from drivers.qr.synth import FRAME_CLASSES, make_frame, random_evse_id

PIPELINES: dict[str, tuple[Stage, ...]] = {
    "pyzbar": ("pyzbar",),
    "pipeline": DEFAULT_STAGES,
}
CLASSES = (*FRAME_CLASSES, "no_code")
RESOLUTIONS = ((640, 480), (1280, 720))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run(frames: int, resolutions: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for width, height in resolutions:
        for cls in CLASSES:
            rnd = random.Random(f"bench:{cls}")
            cases = []
            for seed in range(frames):
                payload = intercharge_payload(random_evse_id(rnd))
                kind = "noisy" if cls == "no_code" else cls
                shown = None if cls == "no_code" else payload
                cases.append((shown, make_frame(shown, kind, seed, width, height)))
            row: dict[str, Any] = {"resolution": f"{width}x{height}", "class": cls}
            for name, stages in PIPELINES.items():
                times: list[float] = []
                ok = 0
                hits: Counter[str] = Counter()
                for expected, frame in cases:
                    t0 = time.perf_counter()
                    found, stage = decode_image_staged(frame, stages=stages)
                    times.append((time.perf_counter() - t0) * 1000.0)
                    if (expected is None and not found) or (expected in found):
                        ok += 1
                    if stage is not None:
                        hits[stage] += 1
                row[name] = {
                    "p50_ms": round(_percentile(times, 0.5), 2),
                    "p95_ms": round(_percentile(times, 0.95), 2),
                    "success": round(ok / len(cases), 4),
                    "frames": len(cases),
                    "stage_hits": dict(hits),
                }
            rows.append(row)
            print(f"  {width}x{height} {cls}: done", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| frame | class | pyzbar p50 / p95 ms | pyzbar success | pipeline p50 / p95 ms "
        "| pipeline success | found by (pipeline) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["pyzbar"], r["pipeline"]
        hits = ", ".join(f"{k} {v}" for k, v in sorted(b["stage_hits"].items())) or "-"
        out.append(
            f"| {r['resolution']} | {r['class']} | {a['p50_ms']:.1f} / {a['p95_ms']:.1f} "
            f"| {a['success']:.0%} | {b['p50_ms']:.1f} / {b['p95_ms']:.1f} "
            f"| {b['success']:.0%} | {hits} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="15 frames per class instead of 60")
    parser.add_argument("--frames", type=int, default=None, help="frames per class")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only-vga", action="store_true", help="640x480 only (skip 1280x720)")
    args = parser.parse_args(argv)
    frames = args.frames or (15 if args.quick else 60)
    resolutions = RESOLUTIONS[:1] if args.only_vga else RESOLUTIONS
    t0 = time.perf_counter()
    rows = run(frames, resolutions)
    elapsed = time.perf_counter() - t0
    import cv2

    print(
        f"\nQR decode, {frames} frames per class; Python {platform.python_version()}, "
        f"OpenCV {cv2.__version__}, {platform.machine()}; pipeline = {' -> '.join(DEFAULT_STAGES)}"
        f"; {elapsed:.0f} s\n"
    )
    print(markdown(rows))
    if args.json:
        meta = {
            "frames_per_class": frames,
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "machine": platform.machine(),
            "pipeline": list(DEFAULT_STAGES),
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
