"""The control socket's commands (``stationctl``): a table of name -> (arguments model, handler).

Loop commands run in the main loop (they see and change state consistently); direct commands
(``rfid.read``, ``qr.verify``) wait for a device in the client's own thread and only read
thread-safe driver state. Every request is validated against its command's strict model
(:mod:`agent.control_args`) before the handler runs: a wrong type, an out-of-range value or an
unknown argument is a clear error, never an exception out of the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from agent import diagnostics, views
from agent.control_args import (
    A,
    AuthListArgs,
    EvseArgs,
    NoArgs,
    PilotSetArgs,
    QrVerifyArgs,
    RfidReadArgs,
    SessionArgs,
    SessionsArgs,
    SimPlugArgs,
    SimQrArgs,
    SimRelayArgs,
    SimTapArgs,
    parse_args,
    resolve_evse,
)
from agent.control_web import WEB_COMMANDS
from agent.failover import ReportsBrokerLink
from agent.identifiers import normalize_uid
from agent.inputs import QrSightings
from drivers.pilot.sim import SimPilot
from drivers.plug.sim import SimPlug
from drivers.qr.sim import SimQrReader
from drivers.relay.sim import SimRelay
from drivers.rfid.sim import SimRfidReader

if TYPE_CHECKING:
    from agent.control import ControlServer
    from agent.controller import Controller

log = logging.getLogger(__name__)
T = TypeVar("T")


def _sim(device: Any, kind: str, sim_class: type[T]) -> T:
    """The device as its sim driver; sim commands never drive real devices."""
    if not device.simulated or not isinstance(device, sim_class):
        raise ValueError(
            f"the {kind} is not a sim driver ({type(device).__name__}); "
            "sim commands only drive simulated devices"
        )
    return device


@dataclass(frozen=True)
class Command(Generic[A]):
    """One control command: its arguments model and its handler (which gets them validated)."""

    args: type[A]
    handler: Callable[[Controller, A], Any]

    def bind(self, name: str) -> Callable[[Controller, dict[str, Any]], Any]:
        """The handler of a raw request: arguments parsed first (ArgumentError), then run."""

        def run(ctl: Controller, request: dict[str, Any]) -> Any:
            return self.handler(ctl, parse_args(name, self.args, request))

        run.__name__ = f"control_{name.replace('.', '_')}"
        return run


# ---------------------------------------------------------------------------- loop commands
def _status(ctl: Controller, args: NoArgs) -> dict[str, Any]:
    out = ctl.status().model_dump(mode="json")
    out["link"] = {"connected": ctl.backend.connected, "url": ctl.backend.endpoint}
    if isinstance(ctl.backend, ReportsBrokerLink):  # node, delays: the MQTT adapter's failover
        out["link"].update(asdict(ctl.backend.broker_link()))
    out["rfid"] = ctl.drivers.rfid.info()
    out["meter"] = views.meter_view(ctl.evses.values(), ctl.store)  # charging EVSEs, live
    return out


def _sim_tap(ctl: Controller, args: SimTapArgs) -> dict[str, Any]:
    uid = normalize_uid(args.uid)
    reader = _sim(ctl.drivers.rfid, "RFID reader", SimRfidReader)
    reader.tap(uid, args.card_type)
    return {"tapped": uid}


def _sim_plug(plugged: bool) -> Callable[[Controller, SimPlugArgs], dict[str, Any]]:
    """Plug or unplug the sim car: through the sim pilot where the EVSE has one (its car may
    be given its own maximum, ``car_max_a``), else through the sim plug sensor."""

    def handler(ctl: Controller, args: SimPlugArgs) -> dict[str, Any]:
        evse_id = resolve_evse(ctl, args.evse_id)
        rt = ctl.evses[evse_id]
        if rt.pilot is not None:
            pilot = _sim(rt.pilot, "pilot", SimPilot)
            if plugged:
                pilot.plug(args.car_max_a)
            else:
                pilot.unplug()
            return {"evse_id": evse_id, "plugged": plugged}
        if args.car_max_a is not None:
            raise ValueError(f"EVSE {evse_id} has no sim pilot: car_max_a needs one")
        _sim(rt.plug, "plug sensor", SimPlug).set(plugged)
        return {"evse_id": evse_id, "plugged": plugged}

    return handler


def _pilot_set(ctl: Controller, args: PilotSetArgs) -> dict[str, Any]:
    """A technician's test: offer a current on an idle EVSE's pilot (0 ends the test)."""
    evse_id = resolve_evse(ctl, args.evse_id)
    duty = ctl.current.set_test_offer(ctl.evses[evse_id], args.amps)
    for target, event in ctl.current.update(list(ctl.evses.values())):
        ctl.dispatch(target, event)
    return {"evse_id": evse_id, "amps": args.amps, "duty_percent": duty}


def _sim_relay(ctl: Controller, args: SimRelayArgs) -> dict[str, Any]:
    """Make a sim contactor misbehave: feedback ``welded``, ``stuck_open`` or ``normal``."""
    evse_id = resolve_evse(ctl, args.evse_id)
    relay = _sim(ctl.evses[evse_id].relay, "relay", SimRelay)
    relay.set_feedback_mode(args.mode)
    return {"evse_id": evse_id, "mode": args.mode}


def _sim_qr(ctl: Controller, args: SimQrArgs) -> dict[str, Any]:
    reader = ctl.drivers.qr
    if reader is None:
        raise ValueError('no QR reader configured (qr.driver = "none")')
    sim = _sim(reader, "QR reader", SimQrReader)
    return {"delivered": bool(sim.feed(args.payload))}


def _sessions(ctl: Controller, args: SessionsArgs) -> list[dict[str, Any]]:
    return views.sessions_view(ctl.store, views.live_energy(ctl.evses.values()), args.limit)


def _cdr_signed(ctl: Controller, args: SessionArgs) -> dict[str, Any]:
    """A session's signed meter records as committed (stationctl verifies them itself)."""
    row = ctl.store.get_session(args.session_id)
    if row is None:
        raise ValueError(f"no session {args.session_id!r} in the store")
    values = ctl.metering.stored(args.session_id)
    return {
        "session_id": row.session_id,
        "evse_id": row.evse_id,
        "state": row.state,
        "meter_start_kwh": row.meter_start_kwh,
        "meter_stop_kwh": row.meter_last_kwh if row.state == "ended" else None,
        "signed": values is not None,
        "signed_meter_values": values.model_dump(exclude_none=True) if values else None,
    }


def _outbox(ctl: Controller, args: NoArgs) -> dict[str, Any]:
    return views.outbox_view(ctl.store)


def _outbox_retry(ctl: Controller, args: NoArgs) -> dict[str, Any]:
    if not ctl.backend.connected:
        raise ValueError("backend link is down: CDRs are re-sent automatically on reconnect")
    return {"sent": ctl.delivery.resend(force=True)}


def _auth_list(ctl: Controller, args: AuthListArgs) -> dict[str, Any]:
    return views.auth_view(ctl.store, ctl.config, args.limit)


def _metrics(ctl: Controller, args: NoArgs) -> dict[str, Any]:
    return ctl.metrics.summary()


def _rfid_info(ctl: Controller, args: NoArgs) -> dict[str, Any]:
    info = dict(ctl.drivers.rfid.info())
    health = ctl.drivers.rfid.health()
    info["healthy"] = health.ok
    info["fault"] = health.fault
    info["fault_detail"] = health.detail
    return info


LOOP_COMMANDS: dict[str, Command[Any]] = {
    "status": Command(NoArgs, _status),
    "sessions": Command(SessionsArgs, _sessions),
    "outbox": Command(NoArgs, _outbox),
    "cdr.signed": Command(SessionArgs, _cdr_signed),
    "outbox.retry": Command(NoArgs, _outbox_retry),
    "auth.list": Command(AuthListArgs, _auth_list),
    "metrics": Command(NoArgs, _metrics),
    "rfid.info": Command(NoArgs, _rfid_info),
    "sim.tap": Command(SimTapArgs, _sim_tap),
    "sim.plug": Command(SimPlugArgs, _sim_plug(True)),
    "sim.unplug": Command(SimPlugArgs, _sim_plug(False)),
    "pilot.set": Command(PilotSetArgs, _pilot_set),
    "sim.relay": Command(SimRelayArgs, _sim_relay),
    "sim.qr": Command(SimQrArgs, _sim_qr),
    "relay.cycle": Command(EvseArgs, diagnostics.relay_cycle),
    "relay.reset": Command(EvseArgs, diagnostics.relay_reset),
    "meter.read": Command(EvseArgs, diagnostics.meter_read),
    "selftest": Command(NoArgs, diagnostics.selftest),
}
# the status page's read-only views (agent/control_web.py)
LOOP_COMMANDS.update({name: Command(a, h) for name, (a, h) in WEB_COMMANDS.items()})


# ---------------------------------------------------------------------------- direct commands
def _rfid_read(ctl: Controller, args: RfidReadArgs) -> dict[str, Any]:
    """Wait for one card (technician at the station: the UID is shown unmasked). The card is
    not a tap: it starts no session (:mod:`agent.technician`)."""
    reads = ctl.inputs.technician_reads
    reads.begin()
    log.info(
        "rfid read: waiting up to %.0f s for a card (a technician's read, not a tap)", args.timeout
    )
    got = None
    try:
        got = ctl.drivers.rfid.read_once(args.timeout)
    finally:
        reads.end(got[0].uid if got else None)
    if got is None:
        return {"card": None, "timeout_s": args.timeout}
    card, seconds = got
    return {
        "card": {"uid": card.uid, "card_type": card.card_type.value},
        "seconds": round(seconds, 3),
    }


def _qr_verify(ctl: Controller, args: QrVerifyArgs) -> dict[str, Any]:
    """Wait for a station sticker in front of the camera; does its EvseID match this EVSE?"""
    if ctl.drivers.qr is None:
        raise ValueError('no QR reader configured (qr.driver = "none")')
    evse_id = resolve_evse(ctl, args.evse_id)
    timeout = args.timeout
    sightings: QrSightings = ctl.inputs.qr_sightings

    def say_waiting() -> None:
        log.info("qr verify: waiting up to %.0f s for a station code (%s)", timeout, evse_id)

    seen = sightings.wait_since(time.monotonic(), timeout, say_waiting)
    return {"evse_id": evse_id, "seen": seen, "match": seen == evse_id}


DIRECT_COMMANDS: dict[str, Command[Any]] = {
    "rfid.read": Command(RfidReadArgs, _rfid_read),
    "qr.verify": Command(QrVerifyArgs, _qr_verify),
}


def register(ctl: Controller, server: ControlServer[Controller]) -> None:
    for name, command in LOOP_COMMANDS.items():
        ctl.register_control(name, command.bind(name))
    for name, command in DIRECT_COMMANDS.items():
        server.register_direct(name, command.bind(name))
