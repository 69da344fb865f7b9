"""``station-agent run``: wire config, drivers, store, backend, controller and control socket."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from agent import control_commands
from agent.backend_mqtt import MqttBackend
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.control import ControlServer
from agent.controller import Controller
from agent.hardware import build_drivers
from agent.inputs import Shutdown
from agent.sdnotify import Notifier, WatchdogPinger
from agent.store import Store

log = logging.getLogger(__name__)


def read_boot_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError as err:
        log.warning("cannot read boot id from %s: %s", path, err)
        return None


def status_line(ctl: Controller) -> str:
    """One line for ``systemctl status``: EVSE states, link, outbox, faults."""
    evses = ", ".join(f"{e}={rt.state.phase.value}" for e, rt in ctl.evses.items())
    pending, _ = ctl.store.outbox_stats() if "store" not in ctl.station_faults else (-1, None)
    link = "backend connected" if ctl.backend.connected else "backend DOWN"
    faults = f"; faults: {', '.join(sorted(ctl.station_faults))}" if ctl.station_faults else ""
    return f"{evses}; {link}; {pending} CDR(s) pending{faults}"


class SystemdReporter:
    """``READY``/``STATUS``/``WATCHDOG`` for systemd: the watchdog is fed from the main loop,
    and only while the loop and the store are healthy."""

    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl
        self._notifier = Notifier()
        self._pinger = WatchdogPinger(self._notifier)
        self._last_status = ""
        self._last_tick = 0.0

    def ready(self) -> None:
        self._notifier.ready(status=status_line(self._ctl))

    def stopping(self) -> None:
        self._notifier.stopping()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick < 1.0:
            return
        self._last_tick = now
        self._pinger.tick(now, healthy="store" not in self._ctl.station_faults)
        summary = status_line(self._ctl)
        if summary != self._last_status:
            self._last_status = summary
            self._notifier.status(summary)


def _on_signals(ctl: Controller, stop: threading.Event) -> None:
    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        threading.Thread(target=ctl.post, args=(Shutdown(),), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


# ---------------------------------------------------------------------------- run
def run(config: AgentConfig, clock: Clock | None = None) -> int:
    clock = clock or SystemClock()
    backend = MqttBackend(config, clock)
    store = Store(config.station.state_dir, max_kb=config.store.max_db_kb)
    ctl = Controller(
        config,
        build_drivers(config, clock),
        store,
        backend,
        clock=clock,
        boot_id=read_boot_id(config.station.boot_id_file),
    )
    ctl.open_relays("start-up")  # the safe state before anything else
    store.open()
    control = ControlServer(config.station.control_socket, ctl.post, ctl)
    control_commands.register(ctl, control)
    stop = threading.Event()
    _on_signals(ctl, stop)
    systemd = SystemdReporter(ctl)
    try:
        ctl.start()
        control.start()
        backend.start(ctl.post_backend)
        log.info(
            "station %s up: %d EVSE(s), backend %s, control socket %s",
            config.station.id,
            len(ctl.evses),
            backend.endpoint,
            config.station.control_socket,
        )
        systemd.ready()  # store open, relays open, drivers up
        ctl.run(stop, on_tick=systemd.tick)
    finally:
        systemd.stopping()
        ctl.shutdown()
        backend.stop()
        control.stop()
        store.close()
        log.info("station %s stopped", config.station.id)
    return 0
