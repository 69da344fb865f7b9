"""``station-agent run``: wire config, drivers, store, MQTT link, controller and control socket."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from agent import diagnostics
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.control import ControlServer
from agent.controller import Controller, Shutdown
from agent.errors import AgentError
from agent.hardware import build_drivers
from agent.link import MqttLink
from agent.messages import OfflineStatus, dump
from agent.sdnotify import Notifier, WatchdogPinger
from agent.store import Store
from drivers.rfid.base import CardType

log = logging.getLogger(__name__)


def read_boot_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError as err:
        log.warning("cannot read boot id from %s: %s", path, err)
        return None


# ---------------------------------------------------------------------------- control commands
def _evse_arg(ctl: Controller, req: dict[str, Any]) -> str:
    evse_id = req.get("evse_id")
    if evse_id is None:
        if len(ctl.evses) != 1:
            raise ValueError(
                f"this station has {len(ctl.evses)} EVSEs: name one of {', '.join(ctl.evses)}"
            )
        return next(iter(ctl.evses))
    if evse_id not in ctl.evses:
        raise ValueError(f"unknown EVSE {evse_id!r} (known: {', '.join(ctl.evses)})")
    return str(evse_id)


def _sim_device(device: object, kind: str, method: str) -> Any:
    if not type(device).__name__.startswith("Sim") or not hasattr(device, method):
        raise ValueError(
            f"the {kind} is not a sim driver ({type(device).__name__}); "
            "sim commands only drive simulated devices"
        )
    return getattr(device, method)


def _status(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    out = ctl.status().model_dump(mode="json")
    out["link"] = {"connected": ctl.link.connected, "url": ctl.config.mqtt.url}
    out["rfid"] = ctl.drivers.rfid.info()
    return out


def _sim_tap(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    from agent.identifiers import normalize_uid

    uid = normalize_uid(str(req.get("uid", "")))
    tap = _sim_device(ctl.drivers.rfid, "RFID reader", "tap")
    card_type = CardType(req.get("card_type", CardType.UNKNOWN.value))
    tap(uid, card_type)
    return {"tapped": uid}


def _sim_plug(plugged: bool) -> Any:
    def handler(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
        evse_id = _evse_arg(ctl, req)
        setter = _sim_device(ctl.evses[evse_id].plug, "plug sensor", "set")
        setter(plugged)
        return {"evse_id": evse_id, "plugged": plugged}

    return handler


def _sessions(ctl: Controller, req: dict[str, Any]) -> list[dict[str, Any]]:
    return ctl.sessions_view(int(req.get("limit", 50)))


def _outbox(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    return ctl.outbox_view()


def _outbox_retry(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    if not ctl.link.connected:
        raise ValueError("backend link is down: CDRs are re-sent automatically on reconnect")
    return {"sent": ctl.resend_outbox(force=True)}


def _auth_list(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    from agent.privacy import mask

    entries = [
        {
            "token": f"{e.token_key.split(':', 1)[0]}:{mask(e.token_key.split(':', 1)[1])}",
            "status": e.status,
            "expires_at": e.expires_at.isoformat() if e.expires_at else None,
        }
        for e in ctl.store.local_list_entries(limit=int(req.get("limit", 100)))
    ]
    return {
        "version": ctl.store.local_list_version(),
        "size": ctl.store.local_list_size(),
        "cache_size": ctl.store.cache_size(),
        "offline_policy": ctl.config.auth.offline_policy,
        "entries": entries,
    }


def _metrics(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    return ctl.metrics.summary()


def _sim_qr(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    reader = ctl.drivers.qr
    if reader is None:
        raise ValueError('no QR reader configured (qr.driver = "none")')
    feed = _sim_device(reader, "QR reader", "feed")
    payload = req.get("payload")
    if not isinstance(payload, str) or not payload:
        raise ValueError("sim qr needs a payload")
    return {"delivered": bool(feed(payload))}


def _rfid_read(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    """Wait for one card (technician at the station: the UID is shown unmasked)."""
    read_once = getattr(ctl.drivers.rfid, "read_once", None)
    if read_once is None:
        raise ValueError(f"the {ctl.config.rfid.driver!r} reader cannot be read directly")
    timeout = float(req.get("timeout", 10.0))
    got = read_once(min(max(timeout, 0.1), 120.0))
    if got is None:
        return {"card": None, "timeout_s": timeout}
    card, seconds = got
    return {
        "card": {"uid": card.uid, "card_type": card.card_type.value},
        "seconds": round(seconds, 3),
    }


def _rfid_info(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    info = dict(ctl.drivers.rfid.info())
    health = ctl.drivers.rfid.health()
    info["healthy"] = health.ok
    info["fault"] = health.fault
    info["fault_detail"] = health.detail
    return info


def _qr_verify(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    """Wait for a station sticker in front of the camera; does its EvseID match this EVSE?"""
    if ctl.drivers.qr is None:
        raise ValueError('no QR reader configured (qr.driver = "none")')
    evse_id = _evse_arg(ctl, req)
    timeout = min(max(float(req.get("timeout", 30.0)), 0.1), 300.0)
    since = time.monotonic()
    deadline = since + timeout
    with ctl.qr_seen:
        log.info("qr verify: waiting up to %.0f s for a station code (%s)", timeout, evse_id)
        while True:
            seen = [e for t, e in ctl.qr_evse_codes if t >= since]
            if seen:
                return {"evse_id": evse_id, "seen": seen[-1], "match": seen[-1] == evse_id}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"evse_id": evse_id, "seen": None, "match": False}
            ctl.qr_seen.wait(remaining)


def register_direct_commands(server: ControlServer) -> None:
    server.register_direct("rfid.read", _rfid_read)
    server.register_direct("qr.verify", _qr_verify)


def _sim_relay(ctl: Controller, req: dict[str, Any]) -> dict[str, Any]:
    """Make a sim contactor misbehave: feedback ``welded``, ``stuck_open`` or ``normal``."""
    evse_id = _evse_arg(ctl, req)
    setter = _sim_device(ctl.evses[evse_id].relay, "relay", "set_feedback_mode")
    setter(str(req.get("mode", "normal")))
    return {"evse_id": evse_id, "mode": req.get("mode", "normal")}


def register_control_commands(ctl: Controller) -> None:
    ctl.register_control("sim.relay", _sim_relay)
    ctl.register_control("rfid.info", _rfid_info)
    ctl.register_control("sim.qr", _sim_qr)
    ctl.register_control("auth.list", _auth_list)
    ctl.register_control("metrics", _metrics)
    ctl.register_control("status", _status)
    ctl.register_control("sim.tap", _sim_tap)
    ctl.register_control("sim.plug", _sim_plug(True))
    ctl.register_control("sim.unplug", _sim_plug(False))
    ctl.register_control("sessions", _sessions)
    ctl.register_control("outbox", _outbox)
    ctl.register_control("outbox.retry", _outbox_retry)


def status_line(ctl: Controller) -> str:
    """One line for ``systemctl status``: EVSE states, link, outbox, faults."""
    evses = ", ".join(f"{e}={rt.state.phase.value}" for e, rt in ctl.evses.items())
    pending, _ = ctl.store.outbox_stats() if "store" not in ctl.station_faults else (-1, None)
    link = "backend connected" if ctl.link.connected else "backend DOWN"
    faults = f"; faults: {', '.join(sorted(ctl.station_faults))}" if ctl.station_faults else ""
    return f"{evses}; {link}; {pending} CDR(s) pending{faults}"


# ---------------------------------------------------------------------------- run
def run(config: AgentConfig, clock: Clock | None = None) -> int:
    clock = clock or SystemClock()
    drivers = build_drivers(config, clock)
    for evse_id, relay in drivers.relays.items():  # safe state before anything else
        try:
            relay.open()
        except AgentError as err:
            log.critical("%s: cannot open relay at start-up: %s", evse_id, err)
    store = Store(config.station.state_dir, max_kb=config.store.max_db_kb)
    store.open()
    link = MqttLink(
        config.mqtt,
        client_id=config.station.id,
        root=config.topic_root,
        will_payload=dump(OfflineStatus(station_id=config.station.id)),
    )
    ctl = Controller(
        config,
        drivers,
        store,
        link,
        clock=clock,
        boot_id=read_boot_id(config.station.boot_id_file),
    )
    register_control_commands(ctl)
    diagnostics.register(ctl)
    control = ControlServer(config.station.control_socket, ctl)
    register_direct_commands(control)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        threading.Thread(target=ctl.post, args=(Shutdown(),), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    notifier = Notifier()
    pinger = WatchdogPinger(notifier)
    last_status = ""

    last_tick = 0.0

    def on_tick() -> None:
        nonlocal last_status, last_tick
        now = time.monotonic()
        if now - last_tick < 1.0:
            return
        last_tick = now
        pinger.tick(now, healthy="store" not in ctl.station_faults)
        summary = status_line(ctl)
        if summary != last_status:
            last_status = summary
            notifier.status(summary)

    try:
        ctl.start()
        control.start()
        link.start(ctl.post)
        log.info(
            "station %s up: %d EVSE(s), broker %s, control socket %s",
            config.station.id,
            len(ctl.evses),
            config.mqtt.url,
            config.station.control_socket,
        )
        notifier.ready(status=status_line(ctl))  # store open, relays open, drivers up
        ctl.run(stop, on_tick=on_tick)
    finally:
        notifier.stopping()
        ctl.shutdown()
        link.stop(ctl.offline_payload())
        control.stop()
        store.close()
        log.info("station %s stopped", config.station.id)
    return 0
