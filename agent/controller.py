"""The controller: owns the EVSE state machines and carries out their actions.

One thread (the daemon's main loop) runs everything that touches state: driver threads, the MQTT
network thread and the control socket only ``post()`` items into a queue. Order of effects for
every action: commit to the store first, then switch hardware, then publish.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from agent import __version__
from agent.clock import Clock, rfc3339
from agent.config import AgentConfig, EvseConfig
from agent.errors import AgentError, DriverError, ProtocolError, StoreError
from agent.link import Inbound, LinkChange
from agent.messages import (
    TOKEN_ADAPTER,
    AuthRequest,
    AuthResponse,
    AuthStatus,
    Cdr,
    CommandResponse,
    CommandStatus,
    EvseState,
    EvseStatus,
    OfflineStatus,
    OutboxStatus,
    QrToken,
    RemoteStart,
    RemoteStop,
    RfidToken,
    SessionEvent,
    SessionEventKind,
    SetAvailability,
    StatusMessage,
    StopReason,
    UpdateLocalList,
    check_version,
    dump,
    load_json_object,
    parse_auth_response,
    parse_cdr_ack,
    parse_command,
    token_for_record,
    token_key,
)
from agent.privacy import mask
from agent.session import (
    Action,
    AdoptSession,
    AnyToken,
    Authorize,
    AuthResult,
    AuthTimeout,
    BeginCharging,
    CancelTimer,
    CommandResult,
    ConnectionTimeout,
    Deauthorized,
    DropSession,
    EndSession,
    Event,
    Evse,
    FaultCleared,
    FaultRaised,
    Ignored,
    Notify,
    OpenRelay,
    PlugIn,
    PlugOut,
    Policy,
    ReleaseSession,
    RemoteStartCmd,
    RemoteStopCmd,
    RequestAuth,
    ResumeCharging,
    ResumeSession,
    SessionInfo,
    SetAvailable,
    StartTimer,
    Timer,
    TokenPresented,
    step,
)
from agent.store import AuthEntry, SessionRow, Store
from drivers.display.base import Display, EvseScreen
from drivers.meter.base import Meter, MeterReading
from drivers.plug.base import PlugSensor
from drivers.qr.base import QrReader
from drivers.relay.base import Relay
from drivers.relay.feedback import RelayFault
from drivers.rfid.base import CardRead, RfidReader

log = logging.getLogger(__name__)


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> bool: ...


# ---------------------------------------------------------------------------- queue items
@dataclass(frozen=True)
class CardTapped:
    read: CardRead
    t: float = field(default_factory=time.perf_counter)  # when the reader reported it


@dataclass(frozen=True)
class QrScanned:
    payload: str


@dataclass(frozen=True)
class PlugChanged:
    evse_id: str
    plugged: bool


@dataclass
class ControlCall:
    """A control-socket request, answered from the main loop."""

    request: dict[str, Any]
    reply: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class MeterSample:
    """A periodic reading taken off the main loop (a slow or dead meter never stalls it)."""

    evse_id: str
    reading: MeterReading | None


Item = (
    CardTapped
    | QrScanned
    | PlugChanged
    | Inbound
    | LinkChange
    | ControlCall
    | Shutdown
    | MeterSample
)
ControlHandler = Callable[["Controller", dict[str, Any]], Any]


@dataclass(frozen=True)
class PendingAuth:
    evse_id: str
    token_key: str
    session_id: str
    confirm_only: bool = False  # local_first: the session already runs; a refusal stops it


@dataclass
class EvseRuntime:
    config: EvseConfig
    relay: Relay
    meter: Meter
    plug: PlugSensor
    state: Evse
    timers: dict[Timer, int] = field(default_factory=dict)
    message: str | None = None
    last_meter_store: float = 0.0
    last_meter_read: float = 0.0
    last_energy_kwh: float | None = None
    meter_busy: bool = False  # a background reading is under way


@dataclass(frozen=True)
class StationDrivers:
    rfid: RfidReader
    display: Display
    relays: dict[str, Relay]
    meters: dict[str, Meter]
    plugs: dict[str, PlugSensor]
    qr: QrReader | None = None


DEFAULT_MESSAGES = {
    EvseState.AVAILABLE: "Tap your card or scan the QR code",
    EvseState.PREPARING: "Tap your card",
    EvseState.AUTHORIZING: "Authorising...",
    EvseState.AUTHORIZED: "Plug in your car",
    EvseState.CHARGING: "Charging",
    EvseState.FINISHING: "Unplug your car",
    EvseState.UNAVAILABLE: "Out of service",
    EvseState.FAULTED: "Fault - out of service",
}


class Metrics:
    """Latency samples (ms) of the agent's own share of a tap, kept for benchmarks/diagnostics."""

    def __init__(self, size: int = 5000) -> None:
        self.samples: dict[str, deque[float]] = {}
        self._size = size

    def add(self, name: str, started: float | None) -> None:
        if started is not None:
            self.samples.setdefault(name, deque(maxlen=self._size)).append(
                (time.perf_counter() - started) * 1000.0
            )

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, values in self.samples.items():
            data = sorted(values)
            if not data:
                continue

            def pct(p: float, data: list[float] = data) -> float:
                return round(data[min(len(data) - 1, int(p * len(data)))], 3)

            out[name] = {
                "n": len(data),
                "p50": pct(0.5),
                "p95": pct(0.95),
                "p99": pct(0.99),
                "max": round(data[-1], 3),
            }
        return out


class Controller:
    def __init__(
        self,
        config: AgentConfig,
        drivers: StationDrivers,
        store: Store,
        link: Publisher,
        *,
        clock: Clock,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        boot_id: str | None = None,
        qr_payload: Callable[[str], str] | None = None,
    ) -> None:
        self.config = config
        self.drivers = drivers
        self.store = store
        self.link = link
        self.clock = clock
        self.new_id = new_id
        self.boot_id = boot_id
        self.policy = Policy(stop_with_same_token=config.auth.stop_with_same_token)
        self.queue: queue.Queue[Item] = queue.Queue()
        self.evses: dict[str, EvseRuntime] = {}
        for ec in config.evse:
            self.evses[ec.id] = EvseRuntime(
                config=ec,
                relay=drivers.relays[ec.id],
                meter=drivers.meters[ec.id],
                plug=drivers.plugs[ec.id],
                state=Evse(evse_id=ec.id),
            )
        self._qr_payload = qr_payload
        self._meter_pool = ThreadPoolExecutor(
            max_workers=max(1, len(self.evses)), thread_name_prefix="meter"
        )
        self._pending_auth: dict[str, PendingAuth] = {}  # by request_id
        self._deferred: list[tuple[str, Event]] = []
        self._dispatching = False
        self._timers: list[tuple[float, int, str, Timer, str]] = []
        self._timer_seq = itertools.count()
        self._last_status: str | None = None
        self._control_handlers: dict[str, ControlHandler] = {}
        self._running = False
        self._last_housekeeping = 0.0
        self._last_purge: float | None = None
        self.station_faults: dict[str, str] = {}
        self.metrics = Metrics()
        self.qr_evse_codes: deque[tuple[float, str]] = deque(maxlen=20)
        self.qr_seen = threading.Condition()
        self._command_digest: str | None = None  # of the command being answered
        self._connected_at: float | None = None
        self._echo_seen = True
        self._tap_t: float | None = None  # perf_counter of the tap being handled
        self._answer_t: float | None = None  # perf_counter of the auth answer/command handled
        self.started_at = clock.now()

    # ------------------------------------------------------------------ wiring
    def post(self, item: Item) -> None:
        """Thread-safe: hand an item to the main loop."""
        self.queue.put(item)

    def on_card(self, read: CardRead) -> None:
        self.post(CardTapped(read))

    def on_plug(self, evse_id: str) -> Callable[[bool], None]:
        def cb(plugged: bool) -> None:
            self.post(PlugChanged(evse_id, plugged))

        return cb

    def register_control(self, name: str, handler: ControlHandler) -> None:
        self._control_handlers[name] = handler

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        """Open every relay first, then read the store and recover, then start the drivers."""
        for rt in self.evses.values():
            self._open_relay(rt, "start-up")
        available = self.store.availability()
        for evse_id, rt in self.evses.items():
            if not available.get(evse_id, True):
                rt.state = replace(rt.state, available=False, phase=EvseState.UNAVAILABLE)
        self._recover_sessions()
        for evse_id, rt in self.evses.items():
            rt.plug.start(self.on_plug(evse_id))
            if rt.plug.is_plugged():
                self.post(PlugChanged(evse_id, True))
        self.drivers.rfid.start(self.on_card)
        if self.drivers.qr is not None:
            self.drivers.qr.start(lambda payload: self.post(QrScanned(payload)))
        self._refresh_display()

    def _recover_sessions(self) -> None:
        """Sessions the store still holds open after a crash, restart or power cut.

        Charging, same boot, car still plugged: the session resumes (same id, relay closed
        again, one CDR for the whole session). Car gone, or the station lost power (boot id
        changed): it ends at its last persisted time and meter reading, and its CDR is queued.
        A session still waiting for a car is cancelled.
        """
        for row in self.store.open_sessions():
            rt = self.evses.get(row.evse_id)
            power_loss = bool(self.boot_id and row.boot_id and row.boot_id != self.boot_id)
            if (
                row.state == "charging"
                and not power_loss
                and rt is not None
                and rt.plug.is_plugged()
                and rt.state.available
                and rt.state.session is None
            ):
                self._resume(rt, row)
                continue
            if row.state == "charging":
                reason = StopReason.POWER_LOSS if power_loss else StopReason.EV_DISCONNECTED
                end = row.meter_last_at or row.updated_at
                meter_stop = row.meter_last_kwh if row.meter_last_kwh is not None else 0.0
                self._finish_record(row.session_id, reason, end, meter_stop, evse_id=row.evse_id)
                log.warning(
                    "session %s was charging when the agent stopped: ended (%s)",
                    row.session_id,
                    reason.value,
                )
            else:
                self.store.end_session(row.session_id, end=row.updated_at, reason="restart")
                self._session_event(
                    row.session_id,
                    row.evse_id,
                    SessionEventKind.STOPPED,
                    "restart",
                    offline=row.offline,
                )
                log.warning(
                    "session %s was waiting for a car when the agent stopped: cancelled",
                    row.session_id,
                )

    def _resume(self, rt: EvseRuntime, row: SessionRow) -> None:
        token = TOKEN_ADAPTER.validate_python(row.token)
        session = SessionInfo(
            session_id=row.session_id,
            token=token,
            token_key=token_key(token),
            contract_id=row.contract_id,
            offline=row.offline,
        )
        self.dispatch(rt.config.id, PlugIn())
        self.dispatch(rt.config.id, ResumeSession(session))

    # ------------------------------------------------------------------ main loop
    def run(
        self,
        stop: threading.Event | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._running = True
        while self._running and not (stop is not None and stop.is_set()):
            timeout = self._next_timeout()
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None:
                self.handle(item)
            self._fire_timers()
            self._housekeeping()
            if on_tick is not None:
                on_tick()

    def drain(self) -> None:
        """Process everything queued (tests)."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            self.handle(item)
        self._fire_timers()

    def shutdown(self) -> None:
        self._running = False
        self.drivers.rfid.stop()
        if self.drivers.qr is not None:
            self.drivers.qr.stop()
        for rt in self.evses.values():
            self._open_relay(rt, "shutdown")
            rt.plug.stop()
        self._meter_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def _tick_s(self) -> float:
        """Housekeeping cadence: once a second, or faster if meter readings must be kept so."""
        return min(1.0, self.config.store.meter_interval_s)

    def _next_timeout(self) -> float:
        now = self.clock.monotonic()
        nxt = self._tick_s
        if self._timers:
            nxt = min(nxt, max(0.0, self._timers[0][0] - now))
        return nxt

    # ------------------------------------------------------------------ dispatch
    def handle(self, item: Item) -> None:
        try:
            if isinstance(item, CardTapped):
                self._tap_t = item.t
                self._on_card(item.read)
            elif isinstance(item, PlugChanged):
                self._on_plug(item.evse_id, item.plugged)
            elif isinstance(item, Inbound):
                self._answer_t = item.t
                self._on_inbound(item)
            elif isinstance(item, LinkChange):
                self._on_link(item)
            elif isinstance(item, ControlCall):
                self._on_control(item)
            elif isinstance(item, QrScanned):
                self._on_qr(item.payload)
            elif isinstance(item, MeterSample):
                self._on_meter_sample(item)
            elif isinstance(item, Shutdown):
                self._running = False
        except StoreError as err:
            self._store_failed(err)
        finally:
            self._tap_t = self._answer_t = None
        self._publish_status()
        self._refresh_display()

    def _store_failed(self, err: StoreError) -> None:
        """The store cannot be written (disk full, I/O error): nothing may go on unrecorded.
        Every relay opens and every EVSE is faulted; open sessions stay open in the store and
        are settled by the recovery at the next start."""
        log.critical("store failure: %s; opening every relay, station faulted", err)
        self.station_faults["store"] = str(err)
        for rt in self.evses.values():
            self._open_relay(rt, "store failure")
        for evse_id in self.evses:
            try:
                self.dispatch(evse_id, FaultRaised("store_failure"))
            except StoreError as again:
                log.critical("%s: store still failing: %s", evse_id, again)

    def dispatch(self, evse_id: str, event: Event) -> None:
        """Run one event through the EVSE's table, carry out the actions, then any events the
        actions produced (deferred, so one transition's actions never interleave another's)."""
        if self._dispatching:
            self._deferred.append((evse_id, event))
            return
        self._dispatching = True
        try:
            self._step(evse_id, event)
            while self._deferred:
                self._step(*self._deferred.pop(0))
        finally:
            self._dispatching = False
            self._deferred.clear()
        self._rebind_floating()

    def _step(self, evse_id: str, event: Event) -> None:
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
        skip: set[int] = set()
        for i, action in enumerate(actions):
            if i in skip:
                continue
            nxt = actions[i + 1] if i + 1 < len(actions) else None
            if (
                isinstance(action, Authorize)
                and isinstance(nxt, BeginCharging)
                and nxt.session_id == action.session.session_id
            ):
                self._authorize(rt, action.session, charge=True)  # one commit, then the relay
                skip.add(i + 1)
                continue
            self._execute(rt, action)

    def _execute(self, rt: EvseRuntime, action: Action) -> None:
        evse_id = rt.config.id
        if isinstance(action, RequestAuth):
            self._request_auth(rt, action)
        elif isinstance(action, StartTimer):
            self._start_timer(rt, action.timer, action.key)
        elif isinstance(action, CancelTimer):
            rt.timers.pop(action.timer, None)
        elif isinstance(action, Authorize):
            self._authorize(rt, action.session)
        elif isinstance(action, BeginCharging):
            self._begin_charging(rt, action.session_id)
        elif isinstance(action, ResumeCharging):
            self._resume_charging(rt, action.session_id)
        elif isinstance(action, EndSession):
            self._end_session(rt, action.session_id, action.reason)
        elif isinstance(action, DropSession):
            self._drop_session(rt, action)
        elif isinstance(action, OpenRelay):
            self._open_relay(rt, "state change")
        elif isinstance(action, CommandResult):
            self._command_result(action.command_id, action.accepted, action.reason)
        elif isinstance(action, Notify):
            rt.message = action.message
            self.drivers.display.show_message(action.message)
        elif isinstance(action, Ignored):
            log.info("%s: %s", evse_id, action.reason)

    # ------------------------------------------------------------------ actions
    def _request_auth(self, rt: EvseRuntime, action: RequestAuth) -> None:
        evse_id = rt.config.id
        session = rt.state.session
        key = token_key(action.token)
        session_id = session.session_id if session else ""
        if not self.link.connected:
            log.info(
                "%s: backend link down: deciding offline (%s)",
                evse_id,
                self.config.auth.offline_policy,
            )
            self.dispatch(evse_id, self._offline_result(action.request_id, key))
            return
        local = self._local_decision(key)
        confirm = bool(
            self.config.auth.local_first and local is not None and local.valid(self.clock.now())
        )
        self._pending_auth[action.request_id] = PendingAuth(evse_id, key, session_id, confirm)
        msg = AuthRequest(
            request_id=action.request_id,
            evse_id=None if action.floating else evse_id,
            token=action.token,
            ts=self.clock.now(),
        )
        if not self.link.publish("auth/req", dump(msg)):
            self._pending_auth.pop(action.request_id, None)
            self.dispatch(evse_id, self._offline_result(action.request_id, key))
            return
        self.metrics.add("tap_to_auth_req", self._tap_t)
        if confirm and local is not None:
            log.info("%s: token accepted locally, confirming with the backend", evse_id)
            self.dispatch(
                evse_id, AuthResult(action.request_id, True, "accepted", local.contract_id)
            )

    def _local_decision(self, key: str) -> AuthEntry | None:
        """The local list decides first (it may block a token); else the auth cache."""
        entry = self.store.local_list_lookup(key)
        if entry is not None:
            return entry
        return self.store.cache_lookup(key)

    def _offline_result(self, request_id: str, key: str) -> AuthResult:
        """What the station decides on its own under ``auth.offline_policy``."""
        policy = self.config.auth.offline_policy
        entry = self._local_decision(key)
        if policy == "accept_all":
            if entry is not None and entry.status == "blocked":
                return AuthResult(request_id, False, "blocked", offline=True)
            return AuthResult(
                request_id, True, "accepted", entry.contract_id if entry else None, offline=True
            )
        if policy == "local_list":
            if entry is not None and entry.valid(self.clock.now()):
                return AuthResult(request_id, True, "accepted", entry.contract_id, offline=True)
            status = entry.status if entry is not None else "unknown"
            return AuthResult(request_id, False, status, offline=True)
        return AuthResult(request_id, False, "rejected", offline=True)

    def _start_timer(self, rt: EvseRuntime, timer: Timer, key: str) -> None:
        seconds = (
            self.config.mqtt.auth_timeout_s
            if timer is Timer.AUTH
            else self.config.auth.connection_timeout_s
        )
        seq = next(self._timer_seq)
        rt.timers[timer] = seq
        heapq.heappush(
            self._timers, (self.clock.monotonic() + seconds, seq, rt.config.id, timer, key)
        )

    def _fire_timers(self) -> None:
        now = self.clock.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, seq, evse_id, timer, key = heapq.heappop(self._timers)
            rt = self.evses[evse_id]
            if rt.timers.get(timer) != seq:
                continue  # cancelled or replaced
            del rt.timers[timer]
            if timer is Timer.AUTH:
                pending = self._pending_auth.pop(key, None)
                log.warning(
                    "%s: no auth answer within %.1f s", evse_id, self.config.mqtt.auth_timeout_s
                )
                result = self._offline_result(key, pending.token_key) if pending else None
                if result is not None and result.accepted:
                    self.dispatch(evse_id, result)
                else:
                    self.dispatch(evse_id, AuthTimeout(key))
            else:
                self.dispatch(evse_id, ConnectionTimeout(key))
            self._publish_status()
            self._refresh_display()

    def _session_event(
        self,
        session_id: str,
        evse_id: str,
        kind: SessionEventKind,
        reason: str | None = None,
        offline: bool = False,
    ) -> None:
        msg = SessionEvent(
            session_id=session_id,
            evse_id=evse_id,
            event=kind,
            ts=self.clock.now(),
            reason=reason,
            offline=offline or None,
        )
        self._publish_or_queue("session", dump(msg))

    def _publish_or_queue(self, suffix: str, payload: bytes) -> None:
        """Publish now, or keep it in the store and send it, in order, when the link returns."""
        if self.store.queued_event_count() == 0 and self.link.publish(suffix, payload):
            return
        self.store.queue_event(suffix, payload.decode(), self.clock.now())

    def flush_events(self) -> int:
        """Publish the queued events oldest first, in batches, until the queue is empty."""
        sent = 0
        while True:
            batch = self.store.queued_events(limit=500)
            done: list[int] = []
            for seq, suffix, payload in batch:
                if not self.link.publish(suffix, payload.encode()):
                    break
                done.append(seq)
            if done:
                self.store.drop_events(done)
                sent += len(done)
            if not batch or len(done) < len(batch):
                return sent

    def _authorize(self, rt: EvseRuntime, session: SessionInfo, *, charge: bool = False) -> None:
        """Commit the authorised session, then tell the backend. With ``charge`` (the car is
        already plugged) the charging start goes into the same commit and the relay closes
        before anything is published."""
        reading = self._read_meter(rt) if charge else None
        token = token_for_record(session.token).model_dump(exclude_none=True)
        self.store.insert_session(
            session_id=session.session_id,
            evse_id=rt.config.id,
            token=token,
            contract_id=session.contract_id,
            start=self.clock.now(),
            offline=session.offline,
            boot_id=self.boot_id,
            meter_kwh=reading.energy_kwh if reading is not None else None,
        )
        log.info(
            "%s: session %s authorised%s for %s",
            rt.config.id,
            session.session_id,
            " offline" if session.offline else "",
            mask(session.token_key.split(":", 1)[1]),
        )
        if charge and reading is not None:
            rt.last_meter_store = self.clock.monotonic()
            closed = self._close_relay(rt, session.session_id)
            self._session_event(
                session.session_id,
                rt.config.id,
                SessionEventKind.AUTHORIZED,
                offline=session.offline,
            )
            if closed:
                self._charging_started(rt, session.session_id, reading.energy_kwh)
            return
        self._session_event(
            session.session_id, rt.config.id, SessionEventKind.AUTHORIZED, offline=session.offline
        )
        if charge:  # the meter could not be read: no session starts unmetered
            self.dispatch(rt.config.id, FaultRaised("meter_failed"))

    def _read_meter(self, rt: EvseRuntime) -> MeterReading | None:
        try:
            reading = rt.meter.read()
        except DriverError as err:
            log.error("%s: meter read failed: %s", rt.config.id, err)
            return None
        rt.last_energy_kwh = reading.energy_kwh
        return reading

    def _begin_charging(self, rt: EvseRuntime, session_id: str) -> None:
        reading = self._read_meter(rt)
        if reading is None:
            self.dispatch(rt.config.id, FaultRaised("meter_failed"))
            return
        now = self.clock.now()
        self.store.mark_charging(session_id, now, reading.energy_kwh, evse_id=rt.config.id)
        rt.last_meter_store = self.clock.monotonic()
        if self._close_relay(rt, session_id):
            self._charging_started(rt, session_id, reading.energy_kwh)

    def _close_relay(self, rt: EvseRuntime, session_id: str) -> bool:
        try:
            rt.relay.close()
        except DriverError as err:
            log.error("%s: relay did not close for %s: %s", rt.config.id, session_id, err)
            self.dispatch(rt.config.id, FaultRaised(getattr(err, "kind", "relay_failed")))
            return False
        self.metrics.add("answer_to_relay", self._answer_t)  # auth/res or remote_start in
        self.metrics.add("tap_to_relay", self._tap_t)  # offline / local list: no round trip
        return True

    def _charging_started(self, rt: EvseRuntime, session_id: str, meter_kwh: float) -> None:
        log.info("%s: charging, session %s, meter %.3f kWh", rt.config.id, session_id, meter_kwh)
        session = rt.state.session
        self._session_event(
            session_id,
            rt.config.id,
            SessionEventKind.STARTED,
            offline=bool(session and session.offline),
        )

    def _resume_charging(self, rt: EvseRuntime, session_id: str) -> None:
        try:
            rt.relay.close()
        except DriverError as err:
            log.error("%s: relay did not close on resume: %s", rt.config.id, err)
            self.dispatch(rt.config.id, FaultRaised("relay_failed"))
            return
        rt.last_meter_store = self.clock.monotonic()
        log.warning("%s: session %s resumed after restart", rt.config.id, session_id)

    def _open_relay(self, rt: EvseRuntime, why: str) -> None:
        try:
            rt.relay.open()
        except RelayFault as err:
            if rt.state.fault != err.kind:  # latched: report once
                log.critical("%s: %s after opening (%s): EVSE faulted", rt.config.id, err, why)
                self.dispatch(rt.config.id, FaultRaised(err.kind))
        except DriverError as err:
            log.critical("%s: relay did not open (%s): %s", rt.config.id, why, err)
            if rt.state.fault != "relay_failed":
                self.dispatch(rt.config.id, FaultRaised("relay_failed"))

    def _supervise_devices(self, rt: EvseRuntime) -> None:
        """Between switches: a contact that welds or drops out, a meter that stopped answering."""
        check = getattr(rt.relay, "check_feedback", None)
        if callable(check):
            health = check()
            if not health.ok and rt.state.fault is None:
                log.critical(
                    "%s: relay supervision: %s (%s)", rt.config.id, health.fault, health.detail
                )
                self.dispatch(rt.config.id, FaultRaised(health.fault or "relay_failed"))
        mono = self.clock.monotonic()
        if (
            rt.state.fault == "meter_failed"
            and mono - rt.last_meter_read >= rt.config.meter.poll_interval_s
        ):
            self._poll_meter(rt)  # probe: a meter that answers again heals the fault
        meter_health = rt.meter.health()
        if not meter_health.ok and rt.state.fault is None:
            log.error("%s: meter unhealthy: %s", rt.config.id, meter_health.detail)
            self.dispatch(rt.config.id, FaultRaised(meter_health.fault or "meter_failed"))
        elif meter_health.ok and rt.state.fault == "meter_failed":
            log.info("%s: meter answers again: fault cleared", rt.config.id)
            self.dispatch(rt.config.id, FaultCleared())

    def _poll_meter(self, rt: EvseRuntime) -> None:
        """Read the meter in the background; the sample comes back through the queue."""
        if rt.meter_busy:
            return
        rt.meter_busy = True
        rt.last_meter_read = self.clock.monotonic()
        self._meter_pool.submit(self._background_read, rt.config.id, rt.meter)

    def _background_read(self, evse_id: str, meter: Meter) -> None:
        try:
            reading: MeterReading | None = meter.read()
        except DriverError as err:
            log.error("%s: meter read failed: %s", evse_id, err)
            reading = None
        self.post(MeterSample(evse_id, reading))

    def _on_meter_sample(self, sample: MeterSample) -> None:
        rt = self.evses[sample.evse_id]
        rt.meter_busy = False
        if sample.reading is None:
            self._supervise_devices(rt)
            return
        rt.last_energy_kwh = sample.reading.energy_kwh
        session = rt.state.session
        mono = self.clock.monotonic()
        if (
            rt.state.phase is EvseState.CHARGING
            and session is not None
            and mono - rt.last_meter_store >= self.config.store.meter_interval_s
        ):
            self.store.record_meter(session.session_id, self.clock.now(), sample.reading.energy_kwh)
            rt.last_meter_store = mono
        self._supervise_devices(rt)

    def reset_relay(self, evse_id: str) -> dict[str, Any]:
        """``stationctl relay reset``: clear a latched relay fault once the feedback is open."""
        rt = self.evses[evse_id]
        reset = getattr(rt.relay, "reset", None)
        if not callable(reset):
            raise ValueError(f"{evse_id}: this relay driver has no fault to reset")
        try:
            reset()
        except RelayFault as err:
            raise ValueError(f"{evse_id}: not reset, {err}") from err
        if rt.state.fault is not None and rt.state.fault.startswith("relay"):
            self.dispatch(evse_id, FaultCleared())
        log.warning("%s: relay fault reset by a technician", evse_id)
        return {"evse_id": evse_id, "state": rt.state.phase.value}

    def _end_session(self, rt: EvseRuntime, session_id: str, reason: StopReason) -> None:
        self._open_relay(rt, f"session end ({reason.value})")
        reading = self._read_meter(rt)
        row = self.store.get_session(session_id)
        if row is None:
            log.error("%s: session %s not in the store", rt.config.id, session_id)
            return
        meter_stop = reading.energy_kwh if reading is not None else row.meter_last_kwh
        self._finish_record(
            session_id, reason, self.clock.now(), meter_stop or 0.0, evse_id=rt.config.id
        )

    def _finish_record(
        self,
        session_id: str,
        reason: StopReason,
        end: datetime,
        meter_stop: float,
        *,
        evse_id: str | None = None,
    ) -> None:
        """Persist the end of a charging session with its CDR (one transaction), then tell the
        backend: the 'stopped' event (when ``evse_id`` is given) and the CDR itself."""
        row = self.store.get_session(session_id)
        if row is None:
            return
        meter_start = row.meter_start_kwh if row.meter_start_kwh is not None else meter_stop
        meter_stop = max(meter_stop, meter_start)
        cdr = Cdr(
            session_id=session_id,
            evse_id=row.evse_id,
            operator_id=self.config.station.operator_id,
            location=self.config.station.location,
            contract_id=row.contract_id,
            token=row.token,  # type: ignore[arg-type]
            session_start=row.session_start,
            session_end=end,
            charging_start=row.charging_start,
            charging_end=end if row.charging_start is not None else None,
            meter_start_kwh=meter_start,
            meter_stop_kwh=meter_stop,
            energy_kwh=meter_stop - meter_start,
            stop_reason=reason,
            offline=row.offline,
        )
        payload = dump(cdr).decode()
        self.store.end_session(
            session_id, end=end, reason=reason.value, meter_stop_kwh=meter_stop, cdr_payload=payload
        )
        log.info(
            "session %s ended (%s): %.3f kWh, CDR queued", session_id, reason.value, cdr.energy_kwh
        )
        if evse_id is not None:
            self._session_event(
                session_id, evse_id, SessionEventKind.STOPPED, reason.value, offline=row.offline
            )
        if self.store.queued_event_count() == 0:  # else it follows the queued events
            self._send_cdr(session_id, payload)

    def _send_cdr(self, session_id: str, payload: str) -> None:
        if self.link.publish("cdr", payload.encode()):
            self.store.mark_attempt(session_id, self.clock.now())

    def _drop_session(self, rt: EvseRuntime, action: DropSession) -> None:
        session = action.session
        if session.request_id is not None:
            self._pending_auth.pop(session.request_id, None)
        if self.store.get_session(session.session_id) is not None:
            self.store.end_session(session.session_id, end=self.clock.now(), reason=action.reason)
        self._session_event(
            session.session_id, rt.config.id, action.event, action.reason, offline=session.offline
        )

    def _command_result(self, command_id: str, accepted: bool, reason: str | None) -> None:
        msg = CommandResponse(
            command_id=command_id,
            status=CommandStatus.ACCEPTED if accepted else CommandStatus.REJECTED,
            reason=reason,
        )
        payload = dump(msg)
        self.store.save_command(
            command_id, payload.decode(), self.clock.now(), self._command_digest
        )
        if not accepted:
            log.info("command %s rejected: %s", command_id, reason)
        self.link.publish("cmd/res", payload)

    def _reject_unstored(self, command_id: str, reason: str) -> None:
        msg = CommandResponse(command_id=command_id, status=CommandStatus.REJECTED, reason=reason)
        self.link.publish("cmd/res", dump(msg))

    # ------------------------------------------------------------------ floating authorisations
    def _rebind_floating(self) -> None:
        """A tap that could not be tied to one EVSE follows the car: move it to the plugged EVSE."""
        for holder in self.evses.values():
            s = holder.state.session
            if holder.state.phase is not EvseState.AUTHORIZED or s is None or not s.floating:
                continue
            target = next(
                (
                    rt
                    for rt in self.evses.values()
                    if rt is not holder and rt.state.phase is EvseState.PREPARING
                ),
                None,
            )
            if target is None:
                continue
            log.info(
                "floating session %s moves from %s to %s",
                s.session_id,
                holder.config.id,
                target.config.id,
            )
            self.dispatch(holder.config.id, ReleaseSession(s.session_id))
            self.dispatch(target.config.id, AdoptSession(s))
            return

    # ------------------------------------------------------------------ inputs
    def _on_card(self, read: CardRead) -> None:
        try:
            token: AnyToken = RfidToken(uid=read.uid, card_type=read.card_type.value)
        except ValueError:
            log.warning("card with malformed UID %s ignored", mask(read.uid))
            return
        log.info("card %s (%s) presented", mask(read.uid), read.card_type.value)
        self._present(token)  # the screen says "Authorising..." once the request is out

    def _on_qr(self, payload: str) -> None:
        """A code held to the camera: a contract (EMAID, with or without PIN) authorises like a
        card; a station sticker (evseid=) is recorded for ``stationctl qr verify``; anything
        else is refused with a message. The PIN goes only into the auth request."""
        from drivers.qr.payload import classify

        code = classify(payload)
        if code.kind == "contract" and code.emaid:
            log.info("QR contract code %s read", code.to_dict(masked=True))
            self._present(QrToken(contract_id=code.emaid, pin=code.pin))
        elif code.kind == "evse" and code.evse_id:
            log.info("QR station code for %s read (not an authorisation)", code.evse_id)
            with self.qr_seen:
                self.qr_evse_codes.append((time.monotonic(), code.evse_id))
                self.qr_seen.notify_all()
        else:
            log.warning("QR code refused: %s", code.reason or "not a contract or station code")
            self.drivers.display.show_message("Unknown code")

    def _present(self, token: AnyToken) -> None:
        key = token_key(token)
        evse_id, floating = self._route_token(key)
        if evse_id is None:
            log.info("token %s: no EVSE free for it", mask(key.split(":", 1)[1]))
            self.drivers.display.show_message("No free charge point")
            return
        self.dispatch(
            evse_id,
            TokenPresented(
                token=token,
                token_key=key,
                session_id=self.new_id(),
                request_id=self.new_id(),
                floating=floating,
            ),
        )

    def _route_token(self, key: str) -> tuple[str | None, bool]:
        states = [(rt.config.id, rt.state) for rt in self.evses.values()]
        for evse_id, st in states:  # the holder's own session: stop or ignore there
            if st.session is not None and st.session.token_key == key:
                return evse_id, False
        if len(states) == 1:
            return states[0][0], False
        waiting = [e for e, st in states if st.phase is EvseState.PREPARING]
        if len(waiting) == 1:
            return waiting[0], False
        free = [e for e, st in states if st.phase is EvseState.AVAILABLE]
        if free:
            return free[0], True
        if waiting:
            return waiting[0], False
        finishing = [e for e, st in states if st.phase is EvseState.FINISHING]
        return (finishing[0], False) if finishing else (None, False)

    def _on_plug(self, evse_id: str, plugged: bool) -> None:
        rt = self.evses.get(evse_id)
        if rt is None:
            return
        if rt.state.plugged == plugged:
            return
        log.info("%s: car %s", evse_id, "plugged in" if plugged else "unplugged")
        self.dispatch(evse_id, PlugIn() if plugged else PlugOut())

    def raise_fault(self, evse_id: str, fault: str) -> None:
        self.dispatch(evse_id, FaultRaised(fault))

    def clear_fault(self, evse_id: str) -> None:
        self.dispatch(evse_id, FaultCleared())

    # ------------------------------------------------------------------ MQTT
    def _on_link(self, change: LinkChange) -> None:
        if not change.connected:
            log.warning("backend link down (%s)", change.reason)
            return
        self._last_status = None  # republish on every (re)connect
        self._connected_at = self.clock.monotonic()
        self._echo_seen = False
        self._publish_status()
        queued = self.flush_events()
        sent = self.resend_outbox(force=True)
        if queued or sent:
            log.info("link up: sent %d queued event(s) and %d pending CDR(s)", queued, sent)

    def _on_inbound(self, msg: Inbound) -> None:
        if msg.suffix == "status":
            self._echo_seen = True
            return
        try:
            data = load_json_object(msg.payload)
        except ProtocolError as err:
            log.warning("rejected %s payload: %s", msg.suffix, err)
            self._reject_if_command(msg, None, str(err))
            return
        try:
            check_version(data)
            if msg.suffix == "auth/res":
                self._on_auth_response(data)
            elif msg.suffix == "cdr/ack":
                self._on_cdr_ack(data)
            elif msg.suffix == "cmd/req":
                self._on_command(data)
            else:
                log.warning("message on unexpected topic %s ignored", msg.suffix)
        except ProtocolError as err:
            log.warning("rejected %s payload: %s", msg.suffix, err)
            self._reject_if_command(msg, data, str(err))

    def _reject_if_command(self, msg: Inbound, data: dict[str, Any] | None, reason: str) -> None:
        if msg.suffix != "cmd/req" or data is None:
            return
        cid = data.get("command_id")
        if isinstance(cid, str) and 0 < len(cid) <= 64:
            self._reject_unstored(cid, reason)

    def _on_auth_response(self, data: dict[str, Any]) -> None:
        res = parse_auth_response(data)
        pending = self._pending_auth.pop(res.request_id, None)
        if pending is None:
            log.warning("auth response for unknown or stale request %s ignored", res.request_id)
            return
        evse_id = pending.evse_id
        if pending.confirm_only:
            self._cache(pending, res)
            if res.status is not AuthStatus.ACCEPTED:
                log.warning(
                    "%s: backend refused a locally accepted token (%s): stopping",
                    evse_id,
                    res.status.value,
                )
                self.dispatch(evse_id, Deauthorized(pending.session_id))
            return
        self._answer_auth(pending, res)
        self._cache(pending, res)  # after the relay: no extra commit on the tap's path

    def _cache(self, pending: PendingAuth, res: AuthResponse) -> None:
        if self.config.auth.cache_size > 0:
            self.store.cache_put(
                AuthEntry(pending.token_key, res.status.value, res.contract_id, res.expires_at),
                self.clock.now(),
                self.config.auth.cache_size,
            )

    def _answer_auth(self, pending: PendingAuth, res: AuthResponse) -> None:
        evse_id = pending.evse_id
        contract_id = res.contract_id
        if contract_id is None:
            session = self.evses[evse_id].state.session
            if session is not None and not isinstance(session.token, RfidToken):
                contract_id = getattr(session.token, "contract_id", None)
        accepted = res.status is AuthStatus.ACCEPTED
        if res.expires_at is not None and res.expires_at <= self.clock.now():
            accepted = False
        log.info("%s: auth %s for request %s", evse_id, res.status.value, res.request_id)
        self.dispatch(evse_id, AuthResult(res.request_id, accepted, res.status.value, contract_id))

    def _on_cdr_ack(self, data: dict[str, Any]) -> None:
        ack = parse_cdr_ack(data)
        outcome = self.store.ack_cdr(ack.session_id, self.clock.now())
        if outcome == "acked":
            log.info("CDR %s acknowledged", ack.session_id)
        else:
            log.info("CDR ack for %s ignored (%s)", ack.session_id, outcome)

    def _on_command(self, data: dict[str, Any]) -> None:
        cid = data.get("command_id")
        self._command_digest = _digest(data)
        if isinstance(cid, str):
            previous = self.store.command_response(cid)
            if previous is not None:
                answer, digest = previous
                if digest is not None and digest != self._command_digest:
                    raise ProtocolError(f"command_id {cid} was already used for another command")
                log.info("command %s replayed: same answer, no action", cid)
                self.link.publish("cmd/res", answer.encode())
                return
        cmd = parse_command(data)
        if cmd.station_id is not None and cmd.station_id != self.config.station.id:
            raise ProtocolError(
                f"addressed to station {cmd.station_id}, not {self.config.station.id}"
            )
        if cmd.ts is not None:
            age = (self.clock.now() - cmd.ts).total_seconds()
            if age > self.config.cmd.max_age_s:
                raise ProtocolError(
                    f"command is {age:.0f} s old (limit {self.config.cmd.max_age_s:.0f} s)"
                )
            if -age > self.config.cmd.max_age_s:
                raise ProtocolError(f"command ts is {-age:.0f} s in the future: a clock is wrong")
        if isinstance(cmd, RemoteStart):
            self._remote_start(cmd)
        elif isinstance(cmd, RemoteStop):
            self._remote_stop(cmd)
        elif isinstance(cmd, SetAvailability):
            self._set_availability(cmd)
        elif isinstance(cmd, UpdateLocalList):
            self._update_local_list(cmd)

    def _update_local_list(self, cmd: UpdateLocalList) -> None:
        current = self.store.local_list_version()
        if cmd.version <= current:
            self._command_result(
                cmd.command_id, False, f"version {cmd.version} is not newer than {current}"
            )
            return
        entries = [
            AuthEntry(e.token_key, e.status.value, e.contract_id, e.expires_at) for e in cmd.entries
        ]
        self.store.replace_local_list(cmd.version, entries, full=cmd.mode == "full")
        log.info(
            "local list now version %d (%s update, %d entries)", cmd.version, cmd.mode, len(entries)
        )
        self._command_result(cmd.command_id, True, None)

    def _remote_start(self, cmd: RemoteStart) -> None:
        if cmd.evse_id not in self.evses:
            self._command_result(cmd.command_id, False, f"unknown evse_id {cmd.evse_id}")
            return
        session_id = cmd.session_id or self.new_id()
        if self.store.get_session(session_id) is not None:
            self._command_result(cmd.command_id, False, "session_id already used")
            return
        self.dispatch(cmd.evse_id, RemoteStartCmd(cmd.command_id, cmd.contract_id, session_id))

    def _remote_stop(self, cmd: RemoteStop) -> None:
        for evse_id, rt in self.evses.items():
            if rt.state.session is not None and rt.state.session.session_id == cmd.session_id:
                self.dispatch(evse_id, RemoteStopCmd(cmd.command_id, cmd.session_id))
                return
        self._command_result(cmd.command_id, False, "unknown session_id")

    def _set_availability(self, cmd: SetAvailability) -> None:
        if cmd.evse_id not in self.evses:
            self._command_result(cmd.command_id, False, f"unknown evse_id {cmd.evse_id}")
            return
        self.store.set_availability(cmd.evse_id, cmd.available)
        self.dispatch(cmd.evse_id, SetAvailable(cmd.available, cmd.command_id))

    # ------------------------------------------------------------------ outbox
    def resend_outbox(self, *, force: bool = False) -> int:
        """Send pending CDRs oldest first: all of them on reconnect, else those due by back-off."""
        if not self.link.connected:
            return 0
        now = self.clock.now()
        sent = 0
        for entry in self.store.pending_cdrs(limit=1000):
            if not force and entry.last_attempt_at is not None:
                backoff = min(
                    self.config.mqtt.cdr_retry_initial_s * 2 ** max(0, entry.attempts - 1),
                    self.config.mqtt.cdr_retry_max_s,
                )
                if (now - entry.last_attempt_at).total_seconds() < backoff:
                    continue
            if not self.link.publish("cdr", entry.payload.encode()):
                break
            self.store.mark_attempt(entry.session_id, now)
            sent += 1
        return sent

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._last_housekeeping < self._tick_s:
            return
        self._last_housekeeping = mono
        try:
            for rt in self.evses.values():
                session = rt.state.session
                if (
                    rt.state.phase is EvseState.CHARGING
                    and session is not None
                    and (
                        mono - rt.last_meter_store >= self.config.store.meter_interval_s
                        or mono - rt.last_meter_read >= rt.config.meter.poll_interval_s
                    )
                ):
                    self._poll_meter(rt)
                self._supervise_devices(rt)
            if self.link.connected and self.store.queued_event_count():
                self.flush_events()  # whatever a reconnect could not send yet
            self.resend_outbox()
            self._check_echo(mono)
            if self._last_purge is None or mono - self._last_purge >= 86400:
                self._last_purge = mono
                purged = self.store.purge(self.clock.now(), self.config.store.retention_days)
                if any(purged.values()):
                    log.info("retention purge: %s", purged)
        except StoreError as err:
            self._store_failed(err)
            self._publish_status()
        self._refresh_display()

    def _check_echo(self, mono: float) -> None:
        if self._echo_seen or self._connected_at is None or not self.link.connected:
            return
        if mono - self._connected_at > 5.0:
            self._echo_seen = True  # say it once per connection
            log.error(
                "the broker does not deliver this station's own messages back: its ACL does not "
                "let this identity use %s/#; the certificate CN or username must be %r",
                self.config.topic_root,
                self.config.station.id,
            )
            self.station_faults["broker_acl"] = "own topics not delivered"

    # ------------------------------------------------------------------ status & display
    def status(self) -> StatusMessage:
        evses = []
        for evse_id, rt in self.evses.items():
            st = rt.state
            evses.append(
                EvseStatus(
                    evse_id=evse_id,
                    state=st.phase,
                    session_id=st.session.session_id if st.session else None,
                    plugged=st.plugged,
                    relay_closed=rt.relay.is_closed(),
                    fault=st.fault,
                )
            )
        faults = sorted(self.station_faults)
        devices: list[tuple[str, Any]] = [
            ("rfid", self.drivers.rfid),
            ("display", self.drivers.display),
        ]
        if self.drivers.qr is not None:
            devices.append(("qr", self.drivers.qr))
        for kind, device in devices:
            health = device.health()
            if not health.ok:
                faults.append(f"{kind}:{health.fault}")
        pending, oldest = self.store.outbox_stats()
        return StatusMessage(
            station_id=self.config.station.id,
            ts=self.clock.now(),
            version=__version__,
            evses=evses,
            faults=faults,
            outbox=OutboxStatus(pending=pending, oldest=oldest),
            local_list_version=self.store.local_list_version(),
        )

    def _publish_status(self) -> None:
        status = self.status()
        key = json.dumps(status.model_dump(mode="json", exclude={"ts"}), sort_keys=True)
        if key == self._last_status:
            return
        if self.link.publish("status", dump(status), retain=True):
            self._last_status = key

    def offline_payload(self) -> bytes:
        return dump(OfflineStatus(station_id=self.config.station.id))

    def _refresh_display(self) -> None:
        for evse_id, rt in self.evses.items():
            st = rt.state
            message = rt.message or DEFAULT_MESSAGES[st.phase]
            if st.phase is EvseState.CHARGING and rt.message is None and st.session is not None:
                row_energy = self._session_energy(rt)
                if row_energy is not None:
                    message = f"Charging {row_energy:.1f} kWh"
            if st.phase is EvseState.FAULTED and st.fault:
                message = f"Fault: {st.fault}"
            screen = EvseScreen(
                evse_id=evse_id,
                state=st.phase.value,
                message=message,
                qr_payload=self._qr_payload(evse_id) if self._qr_payload else None,
            )
            try:
                self.drivers.display.show(screen)
            except DriverError as err:
                log.error("display failed: %s", err)

    def _session_energy(self, rt: EvseRuntime) -> float | None:
        session = rt.state.session
        if session is None or rt.last_energy_kwh is None:
            return None
        row = self.store.get_session(session.session_id)
        if row is None or row.meter_start_kwh is None:
            return None
        return max(0.0, rt.last_energy_kwh - row.meter_start_kwh)

    # ------------------------------------------------------------------ control socket
    def _on_control(self, call: ControlCall) -> None:
        name = call.request.get("cmd")
        handler = self._control_handlers.get(name) if isinstance(name, str) else None
        try:
            if handler is None:
                call.reply = {"ok": False, "error": f"unknown control command {name!r}"}
            else:
                call.reply = {"ok": True, "result": handler(self, call.request)}
        except AgentError as err:
            call.reply = {"ok": False, "error": str(err)}
        except (KeyError, TypeError, ValueError) as err:
            call.reply = {"ok": False, "error": f"bad request: {err}"}
        finally:
            call.done.set()

    def sessions_view(self, limit: int = 50) -> list[dict[str, Any]]:
        out = []
        live = {
            rt.state.session.session_id: rt.last_energy_kwh
            for rt in self.evses.values()
            if rt.state.session is not None and rt.state.phase is EvseState.CHARGING
        }
        for row in self.store.recent_sessions(limit):
            token = dict(row.token)
            last_kwh = live.get(row.session_id) or row.meter_last_kwh
            out.append(
                {
                    "session_id": row.session_id,
                    "evse_id": row.evse_id,
                    "state": row.state,
                    "token": {
                        k: (mask(str(v)) if k in ("uid", "contract_id") else v)
                        for k, v in token.items()
                    },
                    "contract_id": mask(row.contract_id) if row.contract_id else None,
                    "session_start": rfc3339(row.session_start),
                    "charging_start": rfc3339(row.charging_start) if row.charging_start else None,
                    "session_end": rfc3339(row.session_end) if row.session_end else None,
                    "energy_kwh": (
                        round(last_kwh - row.meter_start_kwh, 3)
                        if last_kwh is not None and row.meter_start_kwh is not None
                        else None
                    ),
                    "stop_reason": row.stop_reason,
                }
            )
        return out

    def outbox_view(self) -> dict[str, Any]:
        pending, oldest = self.store.outbox_stats()
        entries = []
        for e in self.store.pending_cdrs(limit=200):
            cdr = json.loads(e.payload)
            entries.append(
                {
                    "session_id": e.session_id,
                    "evse_id": cdr.get("evse_id"),
                    "energy_kwh": cdr.get("energy_kwh"),
                    "token": {
                        k: (mask(str(v)) if k in ("uid", "contract_id") else v)
                        for k, v in cdr.get("token", {}).items()
                    },
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


def _digest(data: dict[str, Any]) -> str:
    """What identifies a command for replay detection (its send time aside)."""
    body = {k: v for k, v in data.items() if k != "ts"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
