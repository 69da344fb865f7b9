"""QR decode benchmark: time per frame and success rate, the pipeline before and now.

Generated frames come from :mod:`drivers.qr.synth` (deterministic seeds): the classes clean,
rotated, blurred, low_contrast, noisy, small, combined, plus ``no_code`` (the same scenes without a
code: what a station camera sees most of the time; "success" there means no false read).

    python tests/benchmarks/qr_decode.py            # 60 frames per class, 640x480 and 1280x720
    python tests/benchmarks/qr_decode.py --quick    # 15 frames per class
    python tests/benchmarks/qr_decode.py --json out.json
    python tests/benchmarks/qr_decode.py --photos DIR   # real photos instead (see qr_photos.py)
    python tests/benchmarks/qr_decode.py --photos DIR --ablate   # what each stage adds

``before`` is the pipeline up to issue 19 (pyzbar -> Otsu -> adaptive -> OpenCV Aruco),
``pipeline`` today's default (:data:`drivers.qr.decode.DEFAULT_STAGES`); ``--stages a,b,c``
measures another one instead. ``--ablate`` runs the pipeline once without each of its stages
and prints how many decodes each one adds (on the photos, or on the generated 640x480 frames).

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
from drivers.qr.decode import ALL_STAGES, DEFAULT_STAGES, Stage, decode_image_staged
from drivers.qr.synth import FRAME_CLASSES, make_frame, random_evse_id
from tests.benchmarks.qr_photos import load_photos, photos_json, photos_markdown, run_photos

BEFORE: tuple[Stage, ...] = ("pyzbar", "pyzbar_otsu", "pyzbar_adaptive", "opencv_aruco")
PIPELINES: dict[str, tuple[Stage, ...]] = {
    "before": BEFORE,
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


def make_cases(cls: str, frames: int, width: int, height: int) -> list[tuple[str | None, Any]]:
    rnd = random.Random(f"bench:{cls}")
    cases = []
    for seed in range(frames):
        payload = intercharge_payload(random_evse_id(rnd))
        kind = "noisy" if cls == "no_code" else cls
        shown = None if cls == "no_code" else payload
        cases.append((shown, make_frame(shown, kind, seed, width, height)))
    return cases


def run(
    frames: int,
    resolutions: tuple[tuple[int, int], ...],
    pipelines: dict[str, tuple[Stage, ...]] = PIPELINES,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for width, height in resolutions:
        for cls in CLASSES:
            cases = make_cases(cls, frames, width, height)
            row: dict[str, Any] = {"resolution": f"{width}x{height}", "class": cls}
            for name, stages in pipelines.items():
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
    names = [k for k in rows[0] if k not in ("resolution", "class")] if rows else []
    head = "| frame | class | " + " | ".join(f"{n} p50 / p95 ms | {n} success" for n in names)
    out = [head + " | found by (last) |", "|---|---|" + "---|---|" * len(names) + "---|"]
    for r in rows:
        cells = " | ".join(
            f"{r[n]['p50_ms']:.1f} / {r[n]['p95_ms']:.1f} | {r[n]['success']:.0%}" for n in names
        )
        last = r[names[-1]]["stage_hits"] if names else {}
        hits = ", ".join(f"{k} {v}" for k, v in sorted(last.items())) or "-"
        out.append(f"| {r['resolution']} | {r['class']} | {cells} | {hits} |")
    return "\n".join(out)


def _generated_decodes(stages: tuple[Stage, ...], frames: int) -> int:
    ok = 0
    for cls in FRAME_CLASSES:
        for expected, frame in make_cases(cls, frames, 640, 480):
            found, _stage = decode_image_staged(frame, stages=stages)
            ok += expected in found
    return ok


def ablate(stages: tuple[Stage, ...], photos: list[Any] | None, frames: int) -> str:
    """How many decodes the pipeline loses without each of its stages."""

    def score(st: tuple[Stage, ...]) -> tuple[int, int]:
        if photos is not None:
            tallies = run_photos(photos, st)["tallies"]
            return tallies["all"].decoded, tallies["all"].total
        return _generated_decodes(st, frames), frames * len(FRAME_CLASSES)

    full, total = score(stages)
    where = "photos x 4 rotations" if photos is not None else "generated 640x480 frames"
    out = [
        f"Full pipeline: {full} / {total} ({where})\n",
        "| stage left out | decoded | lost |",
        "|---|---|---|",
    ]
    for stage in stages:
        rest = tuple(s for s in stages if s != stage)
        got = score(rest)[0] if rest else 0
        out.append(f"| {stage} | {got} | {full - got} |")
        print(f"  without {stage}: {got}", file=sys.stderr)
    return "\n".join(out)


def _parse_stages(text: str | None) -> tuple[Stage, ...]:
    if not text:
        return DEFAULT_STAGES
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in ALL_STAGES]
    if bad:
        raise SystemExit(f"unknown stages {bad}; choose from {', '.join(ALL_STAGES)}")
    return names  # type: ignore[return-value]


def _versions() -> str:
    from importlib.metadata import version

    import cv2

    return (
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}, "
        f"zxing-cpp {version('zxing-cpp')}, {platform.machine()}"
    )


def main_photos(args: argparse.Namespace, stages: tuple[Stage, ...]) -> int:
    photos, skipped = load_photos(Path(args.photos))
    if not photos:
        print(f"no photos with expected text under {args.photos}", file=sys.stderr)
        return 2
    print(f"{len(photos)} photos ({len(skipped)} skipped: no .txt/.bin)", file=sys.stderr)
    if args.ablate:
        print(ablate(stages, photos, 0))
        return 0
    pipelines = {"before": BEFORE, "pipeline": stages} if args.compare else {"pipeline": stages}
    results = {}
    for name, st in pipelines.items():
        result = run_photos(photos, st)
        results[name] = photos_json(result)
        print(f"\n{name}: {' -> '.join(st)}; {_versions()}\n")
        print(photos_markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="15 frames per class instead of 60")
    parser.add_argument("--frames", type=int, default=None, help="frames per class")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only-vga", action="store_true", help="640x480 only (skip 1280x720)")
    parser.add_argument("--photos", metavar="DIR", help="real photos with .txt/.bin beside")
    parser.add_argument("--stages", help="comma-separated stages instead of the default")
    parser.add_argument("--ablate", action="store_true", help="what each stage adds")
    parser.add_argument("--compare", action="store_true", help="photos: also run 'before'")
    args = parser.parse_args(argv)
    stages = _parse_stages(args.stages)
    if args.photos:
        return main_photos(args, stages)
    frames = args.frames or (15 if args.quick else 60)
    if args.ablate:
        print(ablate(stages, None, frames))
        return 0
    resolutions = RESOLUTIONS[:1] if args.only_vga else RESOLUTIONS
    t0 = time.perf_counter()
    rows = run(frames, resolutions, {"before": BEFORE, "pipeline": stages})
    elapsed = time.perf_counter() - t0
    print(
        f"\nQR decode, {frames} frames per class; {_versions()}; "
        f"pipeline = {' -> '.join(stages)}; {elapsed:.0f} s\n"
    )
    print(markdown(rows))
    if args.json:
        meta = {"frames_per_class": frames, "versions": _versions(), "pipeline": list(stages)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
