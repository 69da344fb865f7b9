"""Arguments of control-socket requests: checked before use, with a clear error."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.controller import Controller


def int_arg(req: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = req.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, not {value}")
    return value


def seconds_arg(req: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    """A number of seconds, clamped into [lo, hi]; not a number (or inf/nan) is an error."""
    value = req.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds")
    return min(max(float(value), lo), hi)


def str_arg(req: dict[str, Any], name: str) -> str:
    value = req.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is required (a non-empty string)")
    return value


def evse_arg(ctl: Controller, req: dict[str, Any]) -> str:
    """The EVSE a request names, or the only one the station has."""
    evse_id = req.get("evse_id")
    if evse_id is None:
        if len(ctl.evses) != 1:
            raise ValueError(
                f"this station has {len(ctl.evses)} EVSEs: name one of {', '.join(ctl.evses)}"
            )
        return next(iter(ctl.evses))
    if not isinstance(evse_id, str) or evse_id not in ctl.evses:
        raise ValueError(f"unknown EVSE {evse_id!r} (known: {', '.join(ctl.evses)})")
    return evse_id
