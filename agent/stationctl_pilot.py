"""``stationctl`` parts for current control: ``pilot set`` and the pilot columns of ``status``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from agent.control_client import call


def pilot_columns(evse: dict[str, Any]) -> str:
    """`` pilot=C offered=16A limit=32A(station)`` for an EVSE with a control pilot, else ''."""
    if evse.get("pilot") is None and evse.get("offered_a") is None:
        return ""
    limit = evse.get("limit_a")
    shown = "-" if limit is None else f"{limit:g}A({evse.get('limit_source')})"
    offered = evse.get("offered_a") or 0.0
    return f" pilot={evse.get('pilot') or '-'} offered={offered:g}A limit={shown}"


def cmd_pilot_set(args: argparse.Namespace) -> int:
    res = call(args.socket, {"cmd": "pilot.set", "evse_id": args.evse_id, "amps": args.amps})
    if res["amps"]:
        print(f"{res['evse_id']}: offering {res['amps']:g} A (duty {res['duty_percent']:.1f} %)")
    else:
        print(f"{res['evse_id']}: pilot test ended (0 A)")
    return 0


def add_pilot_commands(
    sub: Any,
    common: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
) -> None:
    pl = sub.add_parser("pilot", parents=[common], help="control pilot (current) diagnostics")
    plsub = pl.add_subparsers(dest="pilot_command", required=True)
    ps = command(
        plsub,
        "set",
        cmd_pilot_set,
        common,
        help="offer AMPS on an idle EVSE's pilot (a technician's test; 0 ends it)",
    )
    ps.add_argument("evse_id")
    ps.add_argument("amps", type=float)
