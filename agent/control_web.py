"""Read-only control commands for the status page (``station-agent web``).

``web.station``: the ``status`` object plus what a technician's card shows beside it (energy
of the running session, the daemon's uptime); ``web.sessions``: one page of the charge log and
the total; ``web.session``: one session with its stored meter readings and its CDR as queued.
All of them only read; tokens and contract ids are masked as in every other view.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from agent import views
from agent.control_args import Args, NoArgs
from agent.privacy import mask_token

if TYPE_CHECKING:
    from agent.controller import Controller


class WebSessionsArgs(Args):
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 25


class WebSessionArgs(Args):
    session_id: Annotated[str, Field(min_length=1, max_length=200)]


def process_uptime_s(proc: Path = Path("/proc")) -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where unknown."""
    try:
        stat = (proc / "self/stat").read_text()
        since_boot = float((proc / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    ticks = int(fields[19])  # field 22 of stat(5): starttime, counted after the ")" as 20th
    return round(since_boot - ticks / os.sysconf("SC_CLK_TCK"), 1)


def _station(ctl: Controller, args: NoArgs) -> dict[str, Any]:
    out = ctl.status().model_dump(mode="json")
    out["link"] = {"connected": ctl.backend.connected, "url": ctl.backend.endpoint}
    live = views.live_energy(ctl.evses.values())
    for evse in out["evses"]:
        evse["energy_kwh"] = None
        sid = evse.get("session_id")
        row = ctl.store.get_session(sid) if sid else None
        last = live.get(sid) if sid else None
        if row is not None and row.meter_start_kwh is not None and last is not None:
            evse["energy_kwh"] = round(max(0.0, last - row.meter_start_kwh), 3)
    out["uptime_s"] = process_uptime_s()
    return out


def _sessions(ctl: Controller, args: WebSessionsArgs) -> dict[str, Any]:
    live = views.live_energy(ctl.evses.values())
    rows = ctl.store.sessions_page(args.offset, args.limit)
    return {
        "total": ctl.store.count_sessions(),
        "offset": args.offset,
        "sessions": [_with_delivery(ctl, views.session_row_view(row, live)) for row in rows],
    }


def _with_delivery(ctl: Controller, view: dict[str, Any]) -> dict[str, Any]:
    """``delivery``: where the session's CDR is (acknowledged, pending, or none yet)."""
    queued = ctl.store.cdr_payload(view["session_id"])
    if queued is None:
        view["delivery"] = "open" if view["state"] != "ended" else "none"
    else:
        view["delivery"] = "acknowledged" if queued[1] else "pending"
    return view


def _session(ctl: Controller, args: WebSessionArgs) -> dict[str, Any]:
    row = ctl.store.get_session(args.session_id)
    if row is None:
        return {"session": None}
    live = views.live_energy(ctl.evses.values())
    cdr: dict[str, Any] | None = None
    acked_at = None
    queued = ctl.store.cdr_payload(row.session_id)
    if queued is not None:
        cdr = json.loads(queued[0])
        acked_at = queued[1]
        if isinstance(cdr.get("token"), dict):
            cdr["token"] = mask_token(cdr["token"])
    return {
        "session": _with_delivery(ctl, views.session_row_view(row, live)),
        "readings": [
            {"ts": ts, "energy_kwh": kwh} for ts, kwh in ctl.store.session_readings(row.session_id)
        ],
        "cdr": cdr,
        "cdr_acked_at": acked_at,
    }


WEB_COMMANDS: dict[str, tuple[type[Args], Callable[[Controller, Any], Any]]] = {
    "web.station": (NoArgs, _station),
    "web.sessions": (WebSessionsArgs, _sessions),
    "web.session": (WebSessionArgs, _session),
}
