"""The controller: the EVSE state machines on a thin event loop, wired to their components.

One thread (the one that calls :meth:`Controller.run`) runs everything that touches state:
driver threads, the backend adapter and the control socket only ``post()`` items. An item is
turned into table events (:mod:`agent.session`); each event runs through the EVSE's table, the
actions it returns are carried out by :class:`~agent.actions.ActionRunner` (commit first, then
switch, then tell), and the events they report back run through the table in turn. The
components (authorisation, routing, delivery, commands, power path, presentation, views) never
call back into the loop.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent import recovery
from agent.actions import ActionRunner, Context
from agent.authorization import Authorizer
from agent.backend import (
    AuthAnswer,
    Backend,
    BackendInput,
    CdrAcked,
    CommandIn,
    CommandUnreadable,
    Deauthorize,
    Delivered,
    LinkDown,
    LinkUp,
    ResetRequested,
)
from agent.clock import Clock, ClockCheck
from agent.commands import Commands
from agent.config import AgentConfig
from agent.control import answer
from agent.current import CurrentControl
from agent.delivery import Delivery
from agent.errors import ProtocolError, StoreError
from agent.evse import EvseRuntime, MeterSample, Metrics, PowerPath, StationDrivers
from agent.failpoints import Failpoints
from agent.inputs import (
    CardTapped,
    ControlCall,
    Inputs,
    PilotChanged,
    PlugChanged,
    QrScanned,
    Shutdown,
)
from agent.loop import EventLoop, TimerFired
from agent.messages import StatusMessage
from agent.meter_values import note_reading
from agent.metering import SignedMetering
from agent.presentation import Presenter
from agent.reset import Resets
from agent.routing import floating_move, holder_of
from agent.session import (
    AdoptSession,
    ConnectionTimeout,
    Deauthorized,
    Event,
    Evse,
    FaultKind,
    FaultRaised,
    PlugIn,
    Policy,
    ReleaseSession,
    ResumeSession,
    SetAvailable,
    Timer,
    step,
)
from agent.store import Store

log = logging.getLogger(__name__)

__all__ = ["Controller", "StationDrivers"]

Item = (
    CardTapped
    | QrScanned
    | PlugChanged
    | PilotChanged
    | ControlCall
    | Shutdown
    | MeterSample
    | LinkUp
    | LinkDown
    | AuthAnswer
    | CdrAcked
    | CommandIn
    | CommandUnreadable
    | Delivered
    | Deauthorize
    | ResetRequested
)
ControlHandler = Callable[["Controller", dict[str, Any]], Any]
PURGE_EVERY_S = 3600.0  # retention purge and running-time checkpoint, hourly


@dataclass
class _Deferred:
    """Events reported by actions, run after the current transition's actions are done."""

    items: deque[tuple[str, Event]] = field(default_factory=deque)


def _runtimes(config: AgentConfig, drivers: StationDrivers) -> dict[str, EvseRuntime]:
    """Every EVSE's devices and (initial) table state."""
    return {
        ec.id: EvseRuntime(
            config=ec,
            relay=drivers.relays[ec.id],
            meter=drivers.meters[ec.id],
            plug=drivers.plugs[ec.id],
            pilot=drivers.pilots.get(ec.id),
            state=Evse(evse_id=ec.id),
        )
        for ec in config.evse
    }


def _can_resume(rt: EvseRuntime | None) -> bool:
    """After a restart: the EVSE exists, has a car plugged, is available and idle."""
    return (
        rt is not None and rt.plug.is_plugged() and rt.state.available and rt.state.session is None
    )


class Controller:
    def __init__(
        self,
        config: AgentConfig,
        drivers: StationDrivers,
        store: Store,
        backend: Backend,
        *,
        clock: Clock,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        boot_id: str | None = None,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.config = config
        self.drivers = drivers
        self.store = store
        self.backend = backend
        self.clock = clock
        self.boot_id = boot_id
        self.failpoints = failpoints or Failpoints()
        runtime_dir = config.station.control_socket.parent
        self.interrupted = recovery.InterruptedSessions(runtime_dir / "interrupted-sessions.json")
        self.policy = Policy(stop_with_same_token=config.auth.stop_with_same_token)
        self.evses = _runtimes(config, drivers)
        self.loop: EventLoop[Item] = EventLoop(
            clock, tick_s=min(1.0, config.store.meter_interval_s)
        )
        self.metrics = Metrics()
        self.station_faults: dict[str, str] = {}
        self._build_components(new_id)
        self._control: dict[str, ControlHandler] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            CardTapped: self._on_input,
            QrScanned: self._on_input,
            PlugChanged: self._on_input,
            PilotChanged: self._on_input,
            ControlCall: self._on_control,
            Shutdown: lambda item: self.loop.stop(),
            MeterSample: self._on_meter_sample,
            LinkUp: self._on_link_up,
            LinkDown: self._on_link_down,
            Delivered: lambda item: self.delivery.confirmed(self.backend.delivered()),
            AuthAnswer: self._on_auth_answer,
            CdrAcked: lambda item: self.delivery.acknowledged(self.backend.acknowledged_cdrs()),
            CommandIn: self._on_command,
            Deauthorize: lambda item: self._to_holder(item.session_id, Deauthorized),
            ResetRequested: lambda item: self._all(self.resets.request(item, self.sessions())),
            CommandUnreadable: lambda item: self.commands.reject_unstored(
                item.command_id, item.reason
            ),
        }
        self._deferred = _Deferred()
        self._dispatching = False
        self._last_housekeeping = 0.0
        self._last_purge: float | None = None

    def _build_components(self, new_id: Callable[[], str]) -> None:
        config, store, backend, clock = self.config, self.store, self.backend, self.clock
        pool = ThreadPoolExecutor(max_workers=max(1, len(self.evses)), thread_name_prefix="meter")
        self.power = PowerPath(clock=clock, post_sample=self.post, pool=pool)
        self.clock_check = ClockCheck.from_config(config.station, clock)
        self.metering = SignedMetering(
            store, self.drivers.meters, lambda: self.clock_check.problem() is None
        )
        self.delivery = Delivery(
            config, store, backend, clock, boot_id=self.boot_id, metering=self.metering
        )
        self.authorizer = Authorizer(config=config.auth, store=store, backend=backend, clock=clock)
        stop, fp = self.loop.stop, self.failpoints
        self.resets = Resets(
            store=store, backend=backend, clock=clock, stop_loop=stop, failpoints=fp
        )
        self.current = CurrentControl(
            config=config, store=store, clock=clock, pool=pool, grid_meter=self.drivers.grid_meter
        )
        self.commands = Commands(
            config=config,
            store=store,
            backend=backend,
            clock=clock,
            new_id=new_id,
            failpoints=self.failpoints,
            current=self.current,
        )
        self.actions = ActionRunner(
            config=config,
            store=store,
            power=self.power,
            delivery=self.delivery,
            authorizer=self.authorizer,
            commands=self.commands,
            timers=self.loop.timers,
            display=self.drivers.display,
            metrics=self.metrics,
            boot_id=self.boot_id,
            failpoints=self.failpoints,
            metering=self.metering,
        )
        self.inputs = Inputs(
            states=lambda: [rt.state for rt in self.evses.values()],
            display=self.drivers.display,
            post=self.post,
            new_id=new_id,
            clock_check=self.clock_check,
        )
        self.presenter = Presenter(
            station_id=config.station.id,
            drivers=self.drivers,
            store=store,
            backend=backend,
            clock=clock,
            evses=list(self.evses.values()),
            station_faults=self.station_faults,
            clock_check=self.clock_check,
        )

    # ------------------------------------------------------------------ wiring
    def post(self, item: Item) -> None:
        """Thread-safe: hand a local item (device, technician) to the main loop."""
        self.loop.post(item, local=True)

    def post_backend(self, item: BackendInput) -> None:
        """Thread-safe: hand a backend input to the main loop (served after local items)."""
        self.loop.post(item, local=False)

    def register_control(self, name: str, handler: ControlHandler) -> None:
        self._control[name] = handler

    # ------------------------------------------------------------------ start-up
    def open_relays(self, why: str) -> None:
        """The safe state, first thing at start-up and last at shutdown."""
        for evse_id, rt in self.evses.items():
            fault = self.power.open_relay(rt, why)
            if fault is not None:
                self.dispatch(evse_id, fault)

    def start(self) -> None:
        """With the relays open: read the store and recover, then start the drivers."""
        available = self.store.availability()
        for evse_id in self.evses:
            if not available.get(evse_id, True):
                self.dispatch(evse_id, SetAvailable(False))
        self.current.load()
        for evse_id, event in self.current.start_pilots(self.evses, self.inputs.on_pilot):
            self.dispatch(evse_id, event)  # the pilot is the plug sensor: known first
        self._recover()
        for evse_id, rt in self.evses.items():
            rt.plug.start(self.inputs.on_plug(evse_id))
            if rt.plug.is_plugged():
                self.post(PlugChanged(evse_id, True))
        self.drivers.rfid.start(self.inputs.on_card)
        if self.drivers.qr is not None:
            self.drivers.qr.start(self.inputs.on_qr)
        self.refresh_display()

    def _recover(self) -> None:
        plan = recovery.plan(
            self.store.open_sessions(),
            boot_id=self.boot_id,
            can_resume=lambda evse_id: _can_resume(self.evses.get(evse_id)),
            interrupted=self.interrupted.read(),
            reset=self.resets.load(),
        )
        for evse_id, session in plan.resume:
            self.dispatch(evse_id, PlugIn())
            self.dispatch(evse_id, ResumeSession(session))
        recovery.close_out(plan, self.store, self.delivery, self.metering)
        self.resets.restarted()  # after its sessions are settled: a reset never runs twice
        self.interrupted.clear()  # settled and committed

    # ------------------------------------------------------------------ main loop
    def run(
        self, stop: threading.Event | None = None, on_tick: Callable[[], None] | None = None
    ) -> None:
        def tick() -> None:
            self._housekeeping()
            if on_tick is not None:
                on_tick()

        self.loop.run(self.handle, self._on_timer, tick, stop)

    def shutdown(self) -> None:
        self.loop.stop()
        self.drivers.rfid.stop()
        if self.drivers.qr is not None:
            self.drivers.qr.stop()
        self.open_relays("shutdown")
        for rt in self.evses.values():
            rt.plug.stop()
        self.current.stop_pilots(self.evses.values())
        self.power.pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.delivery.forget_acked()  # else they are sent once more after the restart
        except StoreError as err:
            log.error("acknowledged events not cleared: %s", err)

    def handle(self, item: Item) -> None:
        try:
            self._handlers[type(item)](item)
            self._update_current()
        except StoreError as err:
            self._store_failed(err)
        self.publish_status()
        self.refresh_display()

    def _store_failed(self, err: StoreError) -> None:
        """The store cannot be written (disk full, I/O error): nothing may go on unrecorded.
        Every relay opens and every EVSE is faulted; open sessions stay open in the store and
        are settled by the recovery at the next start."""
        log.critical("store failure: %s; opening every relay, station faulted", err)
        self.station_faults["store"] = str(err)
        self.interrupted.add(self.sessions())  # a restart settles them, never resumes them
        self.open_relays("store failure")
        for evse_id in self.evses:
            try:
                self.dispatch(evse_id, FaultRaised(FaultKind.STORE_FAILURE))
            except StoreError as again:
                log.critical("%s: store still failing: %s", evse_id, again)

    # ------------------------------------------------------------------ the table
    def dispatch(self, evse_id: str, event: Event, ctx: Context | None = None) -> None:
        """Run one event through the EVSE's table, carry out the actions, then the events the
        actions reported (deferred, so one transition's actions never interleave another's)."""
        self._deferred.items.append((evse_id, event))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._deferred.items:
                target, nxt = self._deferred.items.popleft()
                self._step(target, nxt, ctx or Context())
        finally:
            self._dispatching = False
            self._deferred.items.clear()
        self._rebind_floating()

    def _step(self, evse_id: str, event: Event, ctx: Context) -> None:
        rt = self.evses[evse_id]
        before = rt.state
        rt.state, actions = step(self.policy, rt.state, event)
        if rt.state.phase != before.phase:
            rt.message = None
            log.info(
                "%s: %s -> %s (%s)",
                evse_id,
                before.phase.value,
                rt.state.phase.value,
                type(event).__name__,
            )
        for action in actions:
            for follow_up in self.actions.run(rt, action, ctx):
                self._deferred.items.append((evse_id, follow_up))

    def _rebind_floating(self) -> None:
        """A tap that could not be tied to one EVSE follows the car to the plugged EVSE."""
        move = floating_move([rt.state for rt in self.evses.values()])
        if move is None:
            return
        sid, source, target = move.session.session_id, move.source, move.target
        log.info("floating session %s moves from %s to %s", sid, source, target)
        self.dispatch(move.source, ReleaseSession(move.session.session_id))
        self.dispatch(move.target, AdoptSession(move.session))

    def _to_holder(self, session_id: str, event: Callable[[str], Event]) -> None:
        if (evse_id := self.sessions().get(session_id)) is not None:
            self.dispatch(evse_id, event(session_id))

    def sessions(self) -> dict[str, str]:
        """Session ids the EVSEs hold now, with their EVSE."""
        return {
            rt.state.session.session_id: evse_id
            for evse_id, rt in self.evses.items()
            if rt.state.session is not None
        }

    # ------------------------------------------------------------------ timers and ticks
    def _on_timer(self, fired: TimerFired) -> None:
        try:
            if fired.timer is Timer.AUTH:
                log.warning(
                    "%s: no auth answer within %.1f s",
                    fired.evse_id,
                    self.config.mqtt.auth_timeout_s,
                )
                self.dispatch(fired.evse_id, self.authorizer.timed_out(fired.key))
            else:
                self.dispatch(fired.evse_id, ConnectionTimeout(fired.key))
        except StoreError as err:
            self._store_failed(err)
        self.publish_status()
        self.refresh_display()

    def _housekeeping(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._last_housekeeping < min(1.0, self.config.store.meter_interval_s):
            return
        self._last_housekeeping = mono
        try:
            self.store.check_file()  # a deleted state directory is a store failure now
            self._all(self.power.tick(self.evses.values(), self.config.store))
            self.resets.tick(self.sessions(), self.store.queued_event_count())
            self.current.tick()
            self._update_current()
            self.delivery.forget_acked()
            if self.backend.connected and self.store.queued_event_count():
                self.delivery.flush_events()  # whatever a reconnect could not send yet
            self.delivery.resend()
            if self._last_purge is None or mono - self._last_purge >= PURGE_EVERY_S:
                self._last_purge = mono
                self.store.checkpoint_runtime()  # the age retention counts in
                purged = self.store.purge(self.clock.now(), self.config.store.retention_days)
                if any(purged.values()):
                    log.info("retention purge: %s", purged)
        except StoreError as err:
            self._store_failed(err)
        self.publish_status()
        self.refresh_display()

    def _update_current(self) -> None:
        self._all(self.current.update(list(self.evses.values())))

    def _all(self, routed: Iterable[tuple[str, Event]]) -> None:
        for evse_id, event in routed:
            self.dispatch(evse_id, event)

    def _on_meter_sample(self, sample: MeterSample) -> None:
        rt = self.evses[sample.evse_id]
        rt.meter_busy = False
        if sample.reading is not None:
            note_reading(
                rt,
                sample.reading,
                store=self.store,
                backend=self.backend,
                clock=self.clock,
                config=self.config,
            )
        for event in self.power.supervise(rt):
            self.dispatch(sample.evse_id, event)

    # ------------------------------------------------------------------ backend inputs
    def _on_link_down(self, item: LinkDown) -> None:
        log.warning("backend link down (%s)", item.reason)
        self.delivery.link_lost()

    def _on_link_up(self, item: LinkUp) -> None:
        self.presenter.publisher.forget()  # republish on every (re)connect
        self.publish_status()
        queued = self.delivery.flush_events()
        sent = self.delivery.resend(force=True)
        if queued or sent:
            log.info("link up: sent %d queued event(s) and %d pending CDR(s)", queued, sent)

    def _on_input(self, item: CardTapped | QrScanned | PlugChanged) -> None:
        for evse_id, event, ctx in self.inputs.handle(item):
            self.dispatch(evse_id, event, ctx)

    def _on_auth_answer(self, item: AuthAnswer) -> None:
        answer = self.authorizer.answer(item.response)
        if answer is None:
            return
        if answer.event is not None:
            states = [rt.state for rt in self.evses.values()]
            evse_id = holder_of(states, answer.session_id) or answer.evse_id
            self.dispatch(evse_id, answer.event, Context(answer_t=item.t))
        self.authorizer.remember(answer.entry)  # after the relay: no commit on the tap's path

    def _on_command(self, item: CommandIn) -> None:
        try:
            routed = self.commands.receive(item, self.sessions())
        except ProtocolError as err:
            log.warning("rejected cmd/req payload: %s", err)
            self.commands.reject_unstored(item.command.command_id, str(err))
            return
        for evse_id, event in routed:
            self.dispatch(evse_id, event, Context(answer_t=item.t))

    # ------------------------------------------------------------------ status, display, control
    def status(self) -> StatusMessage:
        return self.presenter.status()

    def publish_status(self) -> None:
        self.presenter.publish()

    def refresh_display(self) -> None:
        self.presenter.refresh()

    def _on_control(self, call: ControlCall) -> None:
        """A control request must never take the main loop (and every charging session) down:
        :func:`agent.control.answer` turns whatever a handler raises into an error reply,
        but for a StoreError, which faults the station like anywhere else in the loop."""
        try:
            call.reply = answer(self._control, self, call.request)
        except StoreError as err:
            call.reply = {"ok": False, "error": f"store failure: {err}"}
            raise  # handle() faults the station: nothing may go on unrecorded
        finally:
            call.done.set()
