"""The session plot: energy and power over time as an inline SVG (no script, no library).

Energy (kWh charged since the first reading) is drawn as a line against the left axis; power
(kW, the slope between two consecutive readings) as steps against the right axis. Colours and
line styles come from the page's style sheet (classes ``energy`` and ``power``), so the SVG
carries no inline style (the page's CSP forbids it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from agent.clock import parse_rfc3339

WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 70, 64, 30, 36
TICKS = 5


@dataclass(frozen=True, kw_only=True)
class Series:
    seconds: list[float]  # since the first reading
    energy_kwh: list[float]  # since the first reading
    power_kw: list[tuple[float, float, float]]  # (from s, to s, kW)


def series(readings: Sequence[Mapping[str, object]]) -> Series:
    points: list[tuple[datetime, float]] = []
    for r in readings:
        ts, kwh = r.get("ts"), r.get("energy_kwh")
        if isinstance(ts, str) and isinstance(kwh, int | float) and math.isfinite(kwh):
            points.append((parse_rfc3339(ts), float(kwh)))
    if not points:
        return Series(seconds=[], energy_kwh=[], power_kw=[])
    t0, e0 = points[0]
    secs = [(t - t0).total_seconds() for t, _ in points]
    energy = [e - e0 for _, e in points]
    power = []
    for i in range(1, len(points)):
        dt = secs[i] - secs[i - 1]
        if dt > 0:
            power.append((secs[i - 1], secs[i], max(0.0, (energy[i] - energy[i - 1]) * 3600 / dt)))
    return Series(seconds=secs, energy_kwh=energy, power_kw=power)


def nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^n at or above ``value`` (> 0)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0**exp >= value * 0.999:
            return float(m * 10.0**exp)
    return 10.0 ** (exp + 1)


def _fmt(v: float) -> str:
    """A tick label: no exponents, at most three significant digits below 100."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def time_unit(t_max: float) -> tuple[str, float]:
    """The time axis's unit and its length in seconds, for a session of ``t_max`` seconds."""
    if t_max < 120:
        return "seconds", 1.0
    if t_max < 3 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def svg(s: Series, title: str) -> str:
    """The plot, or a short note when there are fewer than two readings."""
    if len(s.seconds) < 2:
        return '<p class="muted">Fewer than two meter readings are stored for this session.</p>'
    t_max = max(s.seconds[-1], 1.0)
    e_max = nice_max(max(s.energy_kwh))
    p_max = nice_max(max((p for _, _, p in s.power_kw), default=0.0))
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + w * t / t_max

    def ye(e: float) -> float:
        return TOP + h * (1 - e / e_max)

    def yp(p: float) -> float:
        return TOP + h * (1 - p / p_max)

    out = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{w}" height="{h}"/>',
    ]
    out += _axes(t_max, e_max, p_max, w, h)
    steps = " ".join(f"{x(a):.1f},{yp(p):.1f} {x(b):.1f},{yp(p):.1f}" for a, b, p in s.power_kw)
    if steps:
        out.append(f'<polyline class="power" points="{steps}"/>')
    line = " ".join(f"{x(t):.1f},{ye(e):.1f}" for t, e in zip(s.seconds, s.energy_kwh, strict=True))
    out.append(f'<polyline class="energy" points="{line}"/>')
    out.append("</svg>")
    return "\n".join(out)


def _axes(t_max: float, e_max: float, p_max: float, w: int, h: int) -> list[str]:
    unit, unit_s = time_unit(t_max)
    span = t_max / unit_s
    out = []
    for i in range(TICKS + 1):
        f = i / TICKS
        y = TOP + h * (1 - f)
        xx = LEFT + w * f
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + w}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="axis energy-label" x="{LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{_fmt(e_max * f)}</text>'
        )
        out.append(
            f'<text class="axis power-label" x="{LEFT + w + 6}" y="{y + 4:.1f}">'
            f"{_fmt(p_max * f)}</text>"
        )
        out.append(
            f'<text class="axis" x="{xx:.1f}" y="{TOP + h + 16}" text-anchor="middle">'
            f"{_fmt(span * f)}</text>"
        )
    out.append(
        f'<text class="axis energy-label" x="{LEFT - 6}" y="{TOP - 14}" text-anchor="end">kWh'
        f'</text><text class="axis power-label" x="{LEFT + w + 6}" y="{TOP - 14}">kW</text>'
        f'<text class="axis" x="{LEFT + w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{unit}</text>"
    )
    return out
