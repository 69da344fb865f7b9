"""``station-agent run``: wire config, drivers, store, backend, controller and control socket."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent import control_commands
from agent.backends import make_backend
from agent.clock import OFFSET_FILE_ENV, Clock, OffsetClock, SystemClock
from agent.config import AgentConfig
from agent.control import ControlServer
from agent.controller import Controller
from agent.failpoints import Failpoints
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


def status_line(ctl: Controller, dead: Iterable[str] = ()) -> str:
    """One line for ``systemctl status``: EVSE states, link, outbox, faults, and the parts of
    the daemon that died (``dead``: the watchdog is no longer fed because of them)."""
    evses = ", ".join(f"{e}={rt.state.phase.value}" for e, rt in ctl.evses.items())
    pending, _ = ctl.store.outbox_stats() if "store" not in ctl.station_faults else (-1, None)
    link = "backend connected" if ctl.backend.connected else "backend DOWN"
    faults = f"; faults: {', '.join(sorted(ctl.station_faults))}" if ctl.station_faults else ""
    parts = sorted(dead)
    stopped = f"; DEAD: {', '.join(parts)} (watchdog stopped)" if parts else ""
    return f"{evses}; {link}; {pending} CDR(s) pending{faults}{stopped}"


class SystemdReporter:
    """``READY``/``STATUS``/``WATCHDOG`` for systemd: the watchdog is fed from the main loop
    (so a stuck loop stops it), and only while the store is healthy and the control socket's
    accept thread is alive; otherwise systemd restarts the service after ``WatchdogSec=``."""

    def __init__(
        self,
        ctl: Controller,
        control: ControlServer[Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctl = ctl
        self._control = control
        self._monotonic = monotonic
        self._notifier = Notifier()
        self._pinger = WatchdogPinger(self._notifier)
        self._last_status = ""
        self._last_tick = 0.0
        self._reported_dead: set[str] = set()

    def ready(self) -> None:
        self._notifier.ready(status=status_line(self._ctl))

    def stopping(self) -> None:
        self._notifier.stopping()

    def dead_parts(self) -> list[str]:
        """The parts the station needs that no longer work (the main loop runs: it calls us)."""
        dead = []
        if "store" in self._ctl.station_faults:
            dead.append("store")
        if self._control is not None and not self._control.alive:
            dead.append("control socket")
        return dead

    def tick(self) -> None:
        now = self._monotonic()
        if now - self._last_tick < 1.0:
            return
        self._last_tick = now
        dead = self.dead_parts()
        for part in dead:
            if part not in self._reported_dead and part != "store":  # the store logs its own
                log.critical("%s is dead: watchdog pings stop, systemd restarts the service", part)
        self._reported_dead.update(dead)
        self._pinger.tick(now, healthy=not dead)
        summary = status_line(self._ctl, [p for p in dead if p != "store"])
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
def _choose_clock(env: Mapping[str, str]) -> Clock:
    """The system clock; a test's :class:`OffsetClock` when the environment names its file."""
    offset_file = env.get(OFFSET_FILE_ENV)
    if not offset_file:
        return SystemClock()
    log.warning(
        "TESTING ONLY: %s is set: the wall clock is offset by the seconds in %s",
        OFFSET_FILE_ENV,
        offset_file,
    )
    return OffsetClock(Path(offset_file))


def run(config: AgentConfig, clock: Clock | None = None) -> int:
    clock = clock or _choose_clock(os.environ)
    backend = make_backend(config, clock)
    store = Store(config.station.state_dir, max_kb=config.store.max_db_kb)
    ctl = Controller(
        config,
        build_drivers(config, clock),
        store,
        backend,
        clock=clock,
        boot_id=read_boot_id(config.station.boot_id_file),
        failpoints=Failpoints.from_env(os.environ),
    )
    ctl.open_relays("start-up")  # the safe state before anything else
    store.open()
    control = ControlServer(config.station.control_socket, ctl.post, ctl)
    control_commands.register(ctl, control)
    stop = threading.Event()
    _on_signals(ctl, stop)
    systemd = SystemdReporter(ctl, control)
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
    return ctl.resets.exit_status  # 0, or EXIT_RESET after a backend reset: restarted
