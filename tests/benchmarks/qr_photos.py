"""QR decoding on a folder of real photos laid out like zxing's blackbox test sets.

``DIR`` holds one or more sets: every folder under ``DIR`` (``DIR`` itself included) with images
in it is a set, named by its path below ``DIR``. An image ``NAME.png`` / ``NAME.jpg`` / ``.jpeg``
is expected to decode to the text of ``NAME.txt`` beside it, read as UTF-8 and compared exactly
(CR/LF included, nothing stripped: what zxing's own test does). Where there is no ``NAME.txt`` but
a ``NAME.bin``, the expected text is that file's bytes read as ISO-8859-1, one character per byte
(again zxing's rule): such a photo counts as decoded when the decoder's text is exactly those
characters, i.e. a code whose bytes are ISO-8859-1 text (or ASCII). ``NAME.metadata.txt`` is
ignored, and so are images with neither file (they are counted as skipped).

Each photo is read in grey the way ``stationctl qr decode`` reads a file, then decoded at 0, 90,
180 and 270 degrees (turned in memory with ``numpy.rot90``, not timed); each decode is timed alone.
A decode "misreads" when it returns texts but not the expected one.

zxing's sets are at ``core/src/test/resources/blackbox/qrcode-1`` ... ``qrcode-6`` of
github.com/zxing/zxing; nothing of them is in this repository.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers.qr.decode import Stage, decode_image_staged

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ROTATIONS = (0, 90, 180, 270)


@dataclass(kw_only=True)
class Photo:
    set_name: str
    name: str
    expected: str
    gray: np.ndarray

    @property
    def ascii(self) -> bool:
        return self.expected.isascii()


@dataclass(kw_only=True)
class Tally:
    decoded: int = 0
    total: int = 0
    misread: int = 0
    times_ms: list[float] = field(default_factory=list)

    def add(self, ok: bool, misread: bool, ms: float) -> None:
        self.total += 1
        self.decoded += ok
        self.misread += misread
        self.times_ms.append(ms)


def expected_text(image: Path) -> str | None:
    base = image.with_name(image.name.split(".")[0])
    txt, binary = base.with_suffix(".txt"), base.with_suffix(".bin")
    if txt.is_file():
        return txt.read_bytes().decode("utf-8")
    if binary.is_file():
        return binary.read_bytes().decode("iso-8859-1")
    return None


def load_photos(root: Path) -> tuple[list[Photo], list[Path]]:
    """Every photo under ``root`` with its expected text, and the images without one."""
    photos: list[Photo] = []
    skipped: list[Path] = []
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for image in images:
        expected = expected_text(image)
        gray = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        if expected is None or gray is None:
            skipped.append(image)
            continue
        set_name = str(image.parent.relative_to(root)) if image.parent != root else root.name
        photos.append(Photo(set_name=set_name, name=image.name, expected=expected, gray=gray))
    return photos, skipped


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_photos(photos: list[Photo], stages: Sequence[Stage]) -> dict[str, Any]:
    """Decode every photo at every rotation; tallies per set, per rotation, ASCII-only, all."""
    tallies: dict[str, Tally] = {}
    hits: Counter[str] = Counter()
    for photo in photos:
        for rot in ROTATIONS:
            img = np.ascontiguousarray(np.rot90(photo.gray, k=-rot // 90))
            t0 = time.perf_counter()
            found, stage = decode_image_staged(img, stages=stages)
            ms = (time.perf_counter() - t0) * 1000.0
            ok = photo.expected in found
            if ok and stage is not None:
                hits[stage] += 1
            keys = [f"set:{photo.set_name}", f"rot:{rot}", "all"]
            keys += ["ascii"] if photo.ascii else ["non-ascii"]
            for key in keys:
                tallies.setdefault(key, Tally()).add(ok, bool(found) and not ok, ms)
    return {"tallies": tallies, "stage_hits": dict(hits)}


def _row(label: str, t: Tally) -> str:
    share = t.decoded / t.total if t.total else 0.0
    return (
        f"| {label} | {t.decoded} / {t.total} = {share:.1%} | {t.misread} "
        f"| {percentile(t.times_ms, 0.5):.2f} / {percentile(t.times_ms, 0.95):.1f} "
        f"| {max(t.times_ms, default=float('nan')):.1f} |"
    )


def photos_markdown(result: dict[str, Any]) -> str:
    tallies: dict[str, Tally] = result["tallies"]
    out = [
        "| set / rotation | decoded | misread | p50 / p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(k for k in tallies if k.startswith("set:")):
        out.append(_row(key[4:], tallies[key]))
    for rot in ROTATIONS:
        out.append(_row(f"{rot}°", tallies[f"rot:{rot}"]))
    for key, label in (("ascii", "ASCII payloads"), ("non-ascii", "non-ASCII payloads")):
        if key in tallies:
            out.append(_row(label, tallies[key]))
    out.append(_row("**all**", tallies["all"]))
    hits = ", ".join(f"{k} {v}" for k, v in sorted(result["stage_hits"].items()))
    out.append(f"\nDecoded by: {hits or '-'}")
    return "\n".join(out)


def photos_json(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"stage_hits": result["stage_hits"]}
    for key, t in result["tallies"].items():
        out[key] = {
            "decoded": t.decoded,
            "total": t.total,
            "misread": t.misread,
            "p50_ms": round(percentile(t.times_ms, 0.5), 3),
            "p95_ms": round(percentile(t.times_ms, 0.95), 3),
        }
    return out
