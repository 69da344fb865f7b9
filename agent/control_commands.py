"""The control socket's commands (``stationctl``): one handler each, arguments checked first.

Loop commands run in the main loop (they see and change state consistently); direct commands
(``rfid.read``, ``qr.verify``) wait for a device in the client's own thread and only read
thread-safe driver state. Every argument is validated before use: a wrong type or an
out-of-range value is a clear error, never an exception out of the loop.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from agent import diagnostics, views
from agent.control_args import evse_arg, int_arg, seconds_arg, str_arg
from agent.identifiers import normalize_uid
from agent.inputs import QrSightings
from drivers.plug.sim import SimPlug
from drivers.qr.sim import SimQrReader
from drivers.relay.sim import SimRelay
from drivers.rfid.base import CardType
from drivers.rfid.sim import SimRfidReader

if TYPE_CHECKING:
    from agent.control import ControlServer
    from agent.controller import Controller

log = logging.getLogger(__name__)
T = TypeVar("T")
FEEDBACK_MODES: tuple[Literal["normal", "welded", "stuck_open"], ...] = (
    "normal",
    "welded",
    "stuck_open",
)


def _sim(device: Any, kind: str, sim_class: type[T]) -> T:
    """The device as its sim driver; sim commands never drive real devices."""
    if not device.simulated or not isinstance(device, sim_class):
        raise ValueError(
            f"the {kind} is not a sim driver ({type(device).__name__}); "
            "sim commands only drive simulated devices"
        )
    return device


# ---------------------------------------------------------------------------- loop commands
def _status(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    out = ctl.status().model_dump(mode="json")
    out["link"] = {"connected": ctl.backend.connected, "url": ctl.backend.endpoint}
    out["rfid"] = ctl.drivers.rfid.info()
    return out


def _sim_tap(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    uid = normalize_uid(str_arg(req, "uid"))
    reader = _sim(ctl.drivers.rfid, "RFID reader", SimRfidReader)
    reader.tap(uid, CardType(req.get("card_type", CardType.UNKNOWN.value)))
    return {"tapped": uid}


def _sim_plug(plugged: bool) -> Any:
    def handler(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
        evse_id = evse_arg(ctl, req)
        _sim(ctl.evses[evse_id].plug, "plug sensor", SimPlug).set(plugged)
        return {"evse_id": evse_id, "plugged": plugged}

    return handler


def _sim_relay(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    """Make a sim contactor misbehave: feedback ``welded``, ``stuck_open`` or ``normal``."""
    evse_id = evse_arg(ctl, req)
    relay = _sim(ctl.evses[evse_id].relay, "relay", SimRelay)
    mode = req.get("mode", "normal")
    if mode not in FEEDBACK_MODES:
        raise ValueError(f"mode must be one of {', '.join(FEEDBACK_MODES)}, not {mode!r}")
    relay.set_feedback_mode(mode)
    return {"evse_id": evse_id, "mode": mode}


def _sim_qr(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    reader = ctl.drivers.qr
    if reader is None:
        raise ValueError('no QR reader configured (qr.driver = "none")')
    sim = _sim(reader, "QR reader", SimQrReader)
    payload = req.get("payload")
    if not isinstance(payload, str) or not payload:
        raise ValueError("sim qr needs a payload")
    return {"delivered": bool(sim.feed(payload))}


def _sessions(ctl: Controller, req: dict[str, Any]) -> list[dict[str, Any]]:
    limit = int_arg(req, "limit", 50, 1, 10_000)
    return views.sessions_view(ctl.store, views.live_energy(ctl.evses.values()), limit)


def _outbox(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    return views.outbox_view(ctl.store)


def _outbox_retry(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    if not ctl.backend.connected:
        raise ValueError("backend link is down: CDRs are re-sent automatically on reconnect")
    return {"sent": ctl.delivery.resend(force=True)}


def _auth_list(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    return views.auth_view(ctl.store, ctl.config, int_arg(req, "limit", 100, 1, 100_000))


def _metrics(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    return ctl.metrics.summary()


def _rfid_info(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    info = dict(ctl.drivers.rfid.info())
    health = ctl.drivers.rfid.health()
    info["healthy"] = health.ok
    info["fault"] = health.fault
    info["fault_detail"] = health.detail
    return info


LOOP_COMMANDS = {
    "status": _status,
    "sessions": _sessions,
    "outbox": _outbox,
    "outbox.retry": _outbox_retry,
    "auth.list": _auth_list,
    "metrics": _metrics,
    "rfid.info": _rfid_info,
    "sim.tap": _sim_tap,
    "sim.plug": _sim_plug(True),
    "sim.unplug": _sim_plug(False),
    "sim.relay": _sim_relay,
    "sim.qr": _sim_qr,
    "relay.cycle": diagnostics.relay_cycle,
    "relay.reset": diagnostics.relay_reset,
    "meter.read": diagnostics.meter_read,
    "selftest": diagnostics.selftest,
}


# ---------------------------------------------------------------------------- direct commands
def _rfid_read(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    """Wait for one card (technician at the station: the UID is shown unmasked)."""
    timeout = seconds_arg(req, "timeout", 10.0, 0.1, 120.0)
    got = ctl.drivers.rfid.read_once(timeout)
    if got is None:
        return {"card": None, "timeout_s": timeout}
    card, seconds = got
    return {
        "card": {"uid": card.uid, "card_type": card.card_type.value},
        "seconds": round(seconds, 3),
    }


def _qr_verify(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    """Wait for a station sticker in front of the camera; does its EvseID match this EVSE?"""
    if ctl.drivers.qr is None:
        raise ValueError('no QR reader configured (qr.driver = "none")')
    evse_id = evse_arg(ctl, req)
    timeout = seconds_arg(req, "timeout", 30.0, 0.1, 300.0)
    sightings: QrSightings = ctl.inputs.qr_sightings

    def say_waiting() -> None:
        log.info("qr verify: waiting up to %.0f s for a station code (%s)", timeout, evse_id)

    seen = sightings.wait_since(time.monotonic(), timeout, say_waiting)
    return {"evse_id": evse_id, "seen": seen, "match": seen == evse_id}


DIRECT_COMMANDS = {"rfid.read": _rfid_read, "qr.verify": _qr_verify}


def register(ctl: Controller, server: ControlServer[Controller]) -> None:
    for name, handler in LOOP_COMMANDS.items():
        ctl.register_control(name, handler)
    for name, direct in DIRECT_COMMANDS.items():
        server.register_direct(name, direct)
