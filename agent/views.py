"""Read-only views for the control socket (``stationctl``): sessions, outbox, auth lists.

Pure functions of the store and the EVSEs' state; personal identifiers are masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from agent.clock import rfc3339
from agent.config import AgentConfig
from agent.evse import EvseRuntime
from agent.messages import EvseState
from agent.privacy import mask, mask_token
from agent.store import SessionRow, Store


def _masked_key(token_key: str) -> str:
    kind, _, value = token_key.partition(":")
    return f"{kind}:{mask(value)}"


def live_energy(evses: Iterable[EvseRuntime]) -> dict[str, float | None]:
    """The last meter value of every session that is charging now, by session id."""
    return {
        rt.state.session.session_id: rt.last_energy_kwh
        for rt in evses
        if rt.state.session is not None and rt.state.phase is EvseState.CHARGING
    }


def meter_view(evses: Iterable[EvseRuntime], store: Store) -> dict[str, dict[str, Any]]:
    """Energy charged so far and power now of every charging EVSE, by EVSE id."""
    out: dict[str, dict[str, Any]] = {}
    for rt in evses:
        session = rt.state.session
        if session is None or rt.state.phase is not EvseState.CHARGING:
            continue
        row = store.get_session(session.session_id)
        start = row.meter_start_kwh if row is not None else None
        energy = None
        if start is not None and rt.last_energy_kwh is not None:
            energy = round(max(0.0, rt.last_energy_kwh - start), 3)
        out[rt.evse_id] = {"energy_kwh": energy, "power_w": rt.last_power_w}
    return out


def sessions_view(
    store: Store, live: Mapping[str, float | None], limit: int = 50
) -> list[dict[str, Any]]:
    return [session_row_view(row, live) for row in store.recent_sessions(limit)]


def session_row_view(row: SessionRow, live: Mapping[str, float | None]) -> dict[str, Any]:
    """One session as the views show it (token and contract id masked)."""
    last_kwh = live.get(row.session_id) or row.meter_last_kwh
    energy = None
    if last_kwh is not None and row.meter_start_kwh is not None:
        energy = round(last_kwh - row.meter_start_kwh, 3)
    return {
        "session_id": row.session_id,
        "evse_id": row.evse_id,
        "state": row.state,
        "token": mask_token(row.token),
        "contract_id": mask(row.contract_id) if row.contract_id else None,
        "session_start": rfc3339(row.session_start),
        "charging_start": rfc3339(row.charging_start) if row.charging_start else None,
        "session_end": rfc3339(row.session_end) if row.session_end else None,
        "energy_kwh": energy,
        "stop_reason": row.stop_reason,
    }


def outbox_view(store: Store, limit: int = 200) -> dict[str, Any]:
    pending, oldest = store.outbox_stats()
    entries = []
    for e in store.pending_cdrs(limit=limit):
        cdr = json.loads(e.payload)
        entries.append(
            {
                "session_id": e.session_id,
                "evse_id": cdr.get("evse_id"),
                "energy_kwh": cdr.get("energy_kwh"),
                "token": mask_token(cdr.get("token", {})),
                "created_at": rfc3339(e.created_at),
                "attempts": e.attempts,
                "last_attempt_at": rfc3339(e.last_attempt_at) if e.last_attempt_at else None,
            }
        )
    return {
        "pending": pending,
        "oldest": rfc3339(oldest) if oldest else None,
        "entries": entries,
    }


def auth_view(store: Store, config: AgentConfig, limit: int = 100) -> dict[str, Any]:
    entries = [
        {
            "token": _masked_key(e.token_key),
            "status": e.status,
            "expires_at": e.expires_at.isoformat() if e.expires_at else None,
        }
        for e in store.local_list_entries(limit=limit)
    ]
    return {
        "version": store.local_list_version(),
        "size": store.local_list_size(),
        "cache_size": store.cache_size(),
        "offline_policy": config.auth.offline_policy,
        "entries": entries,
    }
