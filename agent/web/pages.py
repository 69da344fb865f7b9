"""The status page's HTML, rendered on the server (every value escaped here, nowhere else).

Pages work without JavaScript; the station page's cards are refreshed by ``/static/live.js``
(server-sent events) when it runs. No inline script or style anywhere (the CSP forbids both).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from agent.clock import parse_rfc3339
from agent.web import plot

NAV = (("/", "Station"), ("/log", "Charge log"), ("/diagnostics", "Diagnostics"))
CSV_COLUMNS = (
    "session_id",
    "evse_id",
    "state",
    "token",
    "session_start",
    "charging_start",
    "session_end",
    "energy_kwh",
    "stop_reason",
    "delivery",
)


def when(value: object) -> str | None:
    """An RFC 3339 time stamp as ``2026-12-03 11:42:46 UTC`` (short enough for a phone)."""
    if not isinstance(value, str):
        return None
    try:
        ts = parse_rfc3339(value)
    except ValueError:
        return value
    offset = ts.utcoffset()
    zone = "UTC" if offset is not None and not offset else ts.strftime("%z")
    return f"{ts:%Y-%m-%d %H:%M:%S} {zone}"


def h(value: object) -> str:
    """Escaped text; None as a dash."""
    return "–" if value is None else escape(str(value), quote=True)


def layout(
    title: str, body: str, *, active: str = "", csrf: str | None = None, live: bool = False
) -> str:
    nav = ""
    if csrf is not None:
        links = "".join(
            f'<a href="{href}"{" class=active" if href == active else ""}>{h(text)}</a>'
            for href, text in NAV
        )
        nav = (
            f'<nav>{links}<form method="post" action="/logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            '<button type="submit" class="link">Log out</button></form></nav>'
        )
    script = '<script src="/static/live.js" defer></script>' if live else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · station-agent</title>"
        '<link rel="stylesheet" href="/static/style.css">'
        f'<link rel="icon" href="data:,">{script}</head>'
        f"<body><header><h1>{h(title)}</h1>{nav}</header><main>{body}</main></body></html>\n"
    )


def login_page(error: str | None = None) -> str:
    msg = f'<p class="error" role="alert">{h(error)}</p>' if error else ""
    body = (
        f'{msg}<form method="post" action="/login" class="login">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password"'
        " required autofocus>"
        '<button type="submit">Log in</button></form>'
    )
    return layout("Status page login", body)


def error_page(title: str, message: str, *, csrf: str | None = None) -> str:
    return layout(title, f'<p class="error" role="alert">{h(message)}</p>', csrf=csrf)


# ------------------------------------------------------------------------------ station
def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    s = int(seconds)
    d, s = divmod(s, 86400)
    hh, s = divmod(s, 3600)
    mm, s = divmod(s, 60)
    return f"{d} d {hh:02d}:{mm:02d}" if d else f"{hh:02d}:{mm:02d}:{s:02d}"


def _row(name: str, value: str, cls: str = "") -> str:
    return f'<div class="kv {cls}"><span>{h(name)}</span><b>{value}</b></div>'


def card(evse: Mapping[str, Any]) -> str:
    state = str(evse.get("state", "unknown"))
    sid = evse.get("session_id")
    session = (
        f'<a href="/session/{quote(str(sid), safe="")}">{h(str(sid)[:8])}…</a>' if sid else "–"
    )
    energy = evse.get("energy_kwh")
    rows = [
        _row("Session", session),
        _row("Energy", f"{energy:.3f} kWh" if isinstance(energy, int | float) else "–"),
    ]
    if evse.get("offered_a") is not None:  # EVSEs with a pilot (current control)
        limit = f" of {h(evse.get('limit_a'))} A ({h(evse.get('limit_source'))})"
        rows.append(_row("Offered current", f"{h(evse['offered_a'])} A{limit}"))
        rows.append(_row("Pilot", h(evse.get("pilot"))))
    rows += [
        _row("Relay", "closed" if evse.get("relay_closed") else "open"),
        _row("Plug", "plugged in" if evse.get("plugged") else "free"),
        _row("Fault", h(evse.get("fault")), "bad" if evse.get("fault") else ""),
    ]
    eid = h(evse.get("evse_id"))
    return (
        f'<section class="card state-{h(state)}" data-evse="{eid}">'
        f'<h2>{eid}</h2><p class="state">{h(state)}</p>{"".join(rows)}</section>'
    )


def summary(data: Mapping[str, Any]) -> str:
    link = data.get("link") or {}
    outbox = data.get("outbox") or {}
    faults = data.get("faults") or []
    rows = [
        _row(
            "Backend",
            f"{'connected' if link.get('connected') else 'down'} ({h(link.get('url'))})",
            "" if link.get("connected") else "bad",
        ),
        _row(
            "Outbox", f"{h(outbox.get('pending'))} pending, oldest {h(when(outbox.get('oldest')))}"
        ),
        _row("Firmware", h(data.get("version"))),
        _row("Uptime", h(_duration(data.get("uptime_s")))),
        _row("Faults", h(", ".join(faults)) if faults else "none", "bad" if faults else ""),
    ]
    return f'<section class="summary">{"".join(rows)}</section>'


def live_fragments(data: Mapping[str, Any]) -> dict[str, str]:
    """What the live script swaps in: the summary and the cards."""
    return {
        "asof": when(data.get("ts")) or "",
        "summary": summary(data),
        "cards": "".join(card(e) for e in data.get("evses") or []),
    }


def station_page(data: Mapping[str, Any], csrf: str) -> str:
    parts = live_fragments(data)
    body = (
        f'<p class="muted">Station {h(data.get("station_id"))} · as of '
        f'<span id="asof">{h(when(data.get("ts")))}</span></p>'
        f'<div id="summary">{parts["summary"]}</div>'
        f'<div id="cards" class="cards" data-events="/events">{parts["cards"]}</div>'
    )
    return layout("Station", body, active="/", csrf=csrf, live=True)


def unreachable_page(title: str, reason: str, csrf: str, active: str) -> str:
    body = (
        f'<p class="error" role="alert">The station daemon did not answer: {h(reason)}</p>'
        '<p class="muted">Charging is not affected by this page. Reload to try again.</p>'
    )
    return layout(title, body, active=active, csrf=csrf)


# ------------------------------------------------------------------------------ charge log
def _token(token: object) -> str:
    if isinstance(token, Mapping):
        kind = token.get("type") or token.get("kind") or ""
        value = token.get("uid") or token.get("contract_id") or ""
        return f"{kind}:{value}" if kind else str(value)
    return "" if token is None else str(token)


def log_page(data: Mapping[str, Any], page: int, per_page: int, csrf: str) -> str:
    total = int(data.get("total") or 0)
    rows = []
    for s in data.get("sessions") or []:
        sid = str(s.get("session_id"))
        energy = s.get("energy_kwh")
        kwh = f"{energy:.3f}" if isinstance(energy, int | float) else None
        rows.append(
            "<tr>"
            f'<td><a href="/session/{quote(sid, safe="")}">{h(sid[:8])}…</a></td>'
            f"<td>{h(s.get('evse_id'))}</td>"
            f"<td>{h(when(s.get('session_start')))}</td><td>{h(when(s.get('session_end')))}</td>"
            f'<td class="num">{h(kwh)}</td>'
            f"<td>{h(s.get('stop_reason'))}</td><td>{h(s.get('delivery'))}</td>"
            f"<td>{h(_token(s.get('token')))}</td></tr>"
        )
    pages = max(1, -(-total // per_page))
    nav = []
    if page > 1:
        nav.append(f'<a href="/log?page={page - 1}" rel="prev">← newer</a>')
    nav.append(f"<span>page {page} of {pages} ({total} sessions)</span>")
    if page < pages:
        nav.append(f'<a href="/log?page={page + 1}" rel="next">older →</a>')
    table = (
        '<div class="scroll"><table><thead><tr><th>Session</th><th>EVSE</th><th>Start</th>'
        "<th>End</th><th>kWh</th><th>Stop reason</th><th>CDR</th><th>Token</th></tr></thead>"
        f"<tbody>{''.join(rows) or '<tr><td colspan=8>No sessions yet.</td></tr>'}</tbody>"
        "</table></div>"
    )
    body = (
        f'<p><a class="button" href="/log.csv" download>Download CSV</a></p>{table}'
        f'<p class="pager">{" ".join(nav)}</p>'
    )
    return layout("Charge log", body, active="/log", csrf=csrf)


def _csv_cell(value: object) -> str:
    """A cell no spreadsheet runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def sessions_csv(sessions: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for s in sessions:
        row = dict(s, token=_token(s.get("token")))
        w.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


# ------------------------------------------------------------------------------ session
def session_page(data: Mapping[str, Any], csrf: str) -> str:
    s = data.get("session") or {}
    readings: Sequence[Mapping[str, Any]] = data.get("readings") or []
    sid = str(s.get("session_id"))
    shown = dict(s, token=_token(s.get("token")))
    for key in ("session_start", "charging_start", "session_end"):
        shown[key] = when(s.get(key))
    rows = "".join(
        _row(name, h(shown.get(key)))
        for name, key in (
            ("EVSE", "evse_id"),
            ("State", "state"),
            ("Token", "token"),
            ("Start", "session_start"),
            ("Charging from", "charging_start"),
            ("End", "session_end"),
            ("Energy (kWh)", "energy_kwh"),
            ("Stop reason", "stop_reason"),
            ("CDR", "delivery"),
        )
    )
    chart = plot.svg(plot.series(readings), f"Energy and power of session {sid}")
    cdr = data.get("cdr")
    signed = {k: v for k, v in (cdr or {}).items() if "signed" in k.lower()}
    body = (
        f'<section class="summary">{rows}</section><h2>Energy and power</h2>'
        f'<figure>{chart}<figcaption><span class="energy-label">— energy (kWh)</span> '
        f'<span class="power-label">— power (kW)</span> · {len(readings)} stored readings'
        "</figcaption></figure>"
        "<h2>CDR as queued for the backend</h2>"
        + (
            f"<pre>{h(json.dumps(cdr, indent=2, sort_keys=True, ensure_ascii=False))}</pre>"
            if cdr is not None
            else '<p class="muted">No CDR yet (session open) or purged after retention.</p>'
        )
        + "<h2>Signed meter values</h2>"
        + (
            f"<pre>{h(json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False))}</pre>"
            if signed
            else '<p class="muted">None: this session\'s meter reports no signed values.</p>'
        )
        + _readings_table(readings)
    )
    return layout(f"Session {sid[:8]}…", body, active="/log", csrf=csrf)


def _readings_table(readings: Sequence[Mapping[str, Any]]) -> str:
    if not readings:
        return ""
    rows = "".join(
        f"<tr><td>{h(when(r.get('ts')))}</td><td class=num>{h(r.get('energy_kwh'))}</td></tr>"
        for r in readings
    )
    return (
        f"<details><summary>Meter readings ({len(readings)})</summary>"
        '<div class="scroll"><table><thead><tr><th>Time</th><th>Meter (kWh)</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></div></details>"
    )


# ------------------------------------------------------------------------------ diagnostics
def diagnostics_page(
    csrf: str,
    checks: Sequence[Mapping[str, Any]] | None = None,
    message: str | None = None,
    error: str | None = None,
) -> str:
    parts = []
    if message:
        parts.append(f'<p class="ok" role="status">{h(message)}</p>')
    if error:
        parts.append(f'<p class="error" role="alert">{h(error)}</p>')
    if checks is not None:
        failed = sum(1 for c in checks if not c.get("ok"))
        rows = "".join(
            f'<tr class="{"pass" if c.get("ok") else "fail"}"><td>{h(c.get("check"))}</td>'
            f"<td>{'pass' if c.get('ok') else 'FAIL'}</td><td class=num>{h(c.get('ms'))}</td>"
            f"<td>{h(c.get('detail'))}</td></tr>"
            for c in checks
        )
        parts.append(
            f"<h2>Self-test: {len(checks) - failed} passed, {failed} failed</h2>"
            '<div class="scroll"><table><thead><tr><th>Check</th><th>Result</th><th>ms</th>'
            f"<th>Detail</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )
    hidden = f'<input type="hidden" name="csrf" value="{h(csrf)}">'
    parts.append(
        '<div class="actions">'
        f'<form method="post" action="/diagnostics/selftest">{hidden}'
        '<button type="submit">Run self-test</button></form>'
        f'<form method="post" action="/diagnostics/resend">{hidden}'
        '<button type="submit">Re-send the outbox</button></form></div>'
        '<p class="muted">The self-test probes every device (it briefly shows "Self-test" on the '
        "display); re-sending asks the daemon to send every unacknowledged CDR now.</p>"
    )
    return layout("Diagnostics", "".join(parts), active="/diagnostics", csrf=csrf)


def error_fragment(reason: str) -> str:
    """The summary while the daemon does not answer (live updates)."""
    return f'<p class="error" role="alert">The station daemon did not answer: {h(reason)}</p>'
