"""OCPP 1.6J as an adapter on the backend port (:mod:`agent.backend`).

The station's core does not know it talks OCPP: it authorises, queues session events and CDRs
and answers commands as it does for MQTT; this adapter translates.

- ``authorize`` -> ``Authorize``; the answer comes back as an :class:`AuthAnswer`.
- Session events arrive from the core's durable event queue, oldest first, only while the link
  is up (after an accepted BootNotification). They are worked off one at a time, each waiting
  for the CSMS's answer: ``started`` -> ``StartTransaction`` (meterStart in Wh from the
  session's stored meter reading), ``stopped`` -> ``StopTransaction`` (meterStop, reason, and
  the transactionId the CSMS assigned); the others have no OCPP message. An event leaves the
  core's queue (:meth:`delivered`) only once answered, so an outage or a restart sends it again,
  in order: a session started offline gets its StartTransaction first, then its stop carries
  the id the CSMS assigned. The id is committed (:class:`agent.ocpp_state.OcppState`) the
  moment it arrives; an event whose answer is already on disk is not sent twice.
- A CDR is acknowledged once the session's StopTransaction is answered (OCPP has no CDR; ours
  stays in the local log, with the OCPP transaction id beside our session id in the log line
  and in ``ocpp.sqlite3``).
- Status messages -> ``StatusNotification`` for every connector whose OCPP status changed.
- CSMS calls -> :mod:`agent.ocpp16_cp`, which posts commands and awaits the core's answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ocpp.exceptions import OCPPError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent.backend import (
    AckBatches,
    AuthAnswer,
    BackendSink,
    CdrAcked,
    CommandIn,
    Deauthorize,
    Delivered,
    LinkDown,
    LinkUp,
    ResetKind,
    ResetRequested,
)
from agent.backend_mqtt import InboundLimiter
from agent.clock import Clock
from agent.config import AgentConfig, OcppConfig
from agent.errors import StoreError
from agent.messages import (
    AnyCommand,
    AuthRequest,
    AuthResponse,
    Cdr,
    CommandResponse,
    CommandStatus,
    SessionEvent,
    StatusMessage,
    token_for_record,
)
from agent.ocpp16 import Dialect16
from agent.ocpp_config import OcppSettings
from agent.ocpp_link import OcppLink, summarise
from agent.ocpp_meter import MeterValuesTask
from agent.ocpp_profiles import ChargingProfiles
from agent.ocpp_state import OcppState, StationView, TxRow
from agent.ocpp_tx import masked
from agent.store import DB_NAME

log = logging.getLogger(__name__)

CSMS_CALLS = "ocpp calls"  # the key of dropped CSMS calls in the status's inbound_dropped
COMMAND_WAIT_S = 10.0  # the core answers a command within one loop turn; this is a backstop


class Dialect(Protocol):
    """What differs between OCPP versions: the messages the station sends."""

    subprotocol: str

    def make_cp(self, ws: ClientConnection) -> Any: ...

    async def boot(self, cp: Any) -> tuple[str, int]: ...

    async def heartbeat(self, cp: Any) -> None: ...

    def statuses(self, status: StatusMessage) -> dict[int, tuple[str, ...]]: ...

    async def send_status(self, cp: Any, connector: int, value: tuple[str, ...]) -> None: ...

    async def authorize(self, cp: Any, token: dict[str, Any]) -> tuple[str, str | None]: ...

    async def message(self, cp: Any, event: SessionEvent) -> None: ...

    def cdr_settled(self, cdr: Cdr) -> bool: ...

    async def meter_values(
        self, cp: Any, tx: TxRow, kwh: float, at: datetime, context: str
    ) -> None: ...


def _dialect(subprotocol: str, backend: OcppBackend) -> Dialect:
    if subprotocol == "ocpp2.0.1":
        from agent.ocpp201 import Dialect201

        return Dialect201(backend)
    return Dialect16(backend)


@dataclass(frozen=True)
class _EventJob:
    event: SessionEvent
    ref: int | None  # None: rebuilt by the adapter, not from the core's queue


@dataclass(frozen=True)
class _CdrJob:
    cdr: Cdr


class OcppBackend:
    def __init__(self, config: AgentConfig, clock: Clock, subprotocol: str = "ocpp1.6") -> None:
        if config.ocpp is None:
            raise ValueError("OcppBackend needs an [ocpp] section")
        self._config = config
        self._ocpp: OcppConfig = config.ocpp
        self._clock = clock
        self._station_id = config.station.id
        self._link = OcppLink(config.ocpp, config.station.id, subprotocol)
        self._state = OcppState(config.station.state_dir)
        self._view = StationView(config.station.state_dir / DB_NAME)
        self.settings = OcppSettings(config, self._state)
        self._evses = config.evse_ids()
        self._sink: BackendSink = lambda item: None
        self._up = threading.Event()
        self.up_since: datetime | None = None  # wall clock of the current connection's boot
        self._acks = AckBatches()  # acknowledged events and CDRs, taken in batches
        self._boot_rejected = False
        # asyncio thread only
        self._cp: Any = None
        self._jobs: asyncio.Queue[_EventJob | _CdrJob] | None = None
        self._waiting: dict[str, asyncio.Future[CommandResponse]] = {}
        self._latest: StatusMessage | None = None
        self._status_dirty: asyncio.Event | None = None
        self._sent_status: dict[int, tuple[str, ...]] = {}
        self._meter = MeterValuesTask(self)
        limits = {CSMS_CALLS: (config.ocpp.inbound_rate_per_s, config.ocpp.inbound_burst)}
        self._limiter = InboundLimiter(limits, clock.monotonic)
        self.dialect: Dialect = _dialect(subprotocol, self)
        self._triggered: set[asyncio.Future[Any]] = set()
        self._limits_task: concurrent.futures.Future[None] | None = None
        self.profiles = ChargingProfiles(
            config, self._state, self._view, clock.now, self.run_command
        )

    # ---------------------------------------------------------------- port (loop thread)
    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def endpoint(self) -> str:
        return self._link.url

    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        self._state.open()
        self._link.start(self._serve)
        self._limits_task = self._link.submit(self.profiles.run())

    def stop(self) -> None:
        if self._limits_task is not None:
            self._limits_task.cancel()  # ends before the link's loop does (scheduled first)
        self._link.stop()
        self._state.close()
        self._view.close()

    def authorize(self, request: AuthRequest) -> bool:
        if not self.connected:
            return False
        return self._link.submit(self._authorize(request)) is not None

    def session_event(self, event: SessionEvent, ref: int) -> bool:
        return self.connected and self._link.call_soon(self._enqueue, _EventJob(event, ref))

    def cdr(self, cdr: Cdr) -> bool:
        return self.connected and self._link.call_soon(self._enqueue, _CdrJob(cdr))

    def delivered(self) -> list[int]:
        return self._acks.take_events()

    def acknowledged_cdrs(self) -> list[str]:
        return self._acks.take_cdrs()

    def command_result(self, result: CommandResponse) -> bool:
        return self._link.call_soon(self._resolve, result)

    def status(self, status: StatusMessage) -> bool:
        self._link.call_soon(self._status_changed, status)
        return self.connected

    def faults(self) -> dict[str, str]:
        if self._link.auth_refused:
            return {"ocpp_auth": "the CSMS refused the basic-auth key"}
        if self._boot_rejected:
            return {"ocpp_boot": "the CSMS rejected the BootNotification"}
        return {}

    def inbound_dropped(self) -> dict[str, int]:
        return self._limiter.dropped()

    def admit(self, raw: str) -> bool:
        """CSMS calls pass a token bucket (``ocpp.inbound_rate_per_s``, ``inbound_burst``);
        answers to the station's own calls and anything else always pass (the worker waits
        for them). A dropped call is not answered: answering a flood amplifies it."""
        if not raw.lstrip().startswith("[2"):
            return True
        return self._limiter.admit(CSMS_CALLS, b"")

    # ---------------------------------------------------------------- acks (asyncio thread)
    def _ack_event(self, ref: int) -> None:
        if self._acks.event_acked(ref):
            self._sink(Delivered())

    def _ack_cdr(self, session_id: str) -> None:
        if self._acks.cdr_acked(session_id):
            self._sink(CdrAcked())

    # ---------------------------------------------------------------- for the CSMS calls
    def evse_of(self, connector: int) -> str | None:
        return self._evses[connector - 1] if 1 <= connector <= len(self._evses) else None

    def connector_of(self, evse_id: str) -> int:
        return self._evses.index(evse_id) + 1

    def connector_or_none(self, evse_id: str) -> int | None:
        return self._evses.index(evse_id) + 1 if evse_id in self._evses else None

    def evse_ids(self) -> list[str]:
        return list(self._evses)

    async def run_command(self, command: AnyCommand, action: str) -> CommandResponse | None:
        """Hand a command to the core and wait for its answer (committed first, as for MQTT)."""
        body = json.dumps([action, command.model_dump(mode="json")], sort_keys=True)
        item = CommandIn(command, hashlib.sha256(body.encode()).hexdigest())
        return await self._ask(command.command_id, item, action)

    async def run_reset(self, kind: ResetKind, call_id: str) -> bool:
        """Hand a reset to the core (:mod:`agent.reset`); True once it committed the decision."""
        answer = await self._ask(call_id, ResetRequested(call_id, kind), "Reset")
        return answer is not None and answer.status is CommandStatus.ACCEPTED

    def transactions_running(self) -> bool:
        return bool(self._view.charging())

    async def _ask(
        self, command_id: str, item: CommandIn | ResetRequested, action: str
    ) -> CommandResponse | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CommandResponse] = loop.create_future()
        self._waiting[command_id] = fut
        self._sink(item)
        try:
            return await asyncio.wait_for(fut, COMMAND_WAIT_S)
        except TimeoutError:
            log.error("%s %s: the station did not answer in time", action, command_id)
            return None
        finally:
            self._waiting.pop(command_id, None)

    def _resolve(self, result: CommandResponse) -> None:
        fut = self._waiting.pop(result.command_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def session_of_transaction(self, transaction_id: int) -> str | None:
        row = self._state.by_transaction(str(transaction_id))
        return None if row is None or row.stopped else row.session_id

    def local_list_version(self) -> int:
        return self._view.local_list_version()

    def configuration(self, keys: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
        return self.settings.get(keys)

    def change_configuration(self, key: str, value: str) -> str:
        return self.settings.change(key, value)

    def trigger(self, message: str, connector: int | None) -> None:
        cp = self._cp
        if cp is None:
            return
        if message == "BootNotification":
            self._spawn(self.dialect.boot(cp))
        elif message == "Heartbeat":
            self._spawn(self.dialect.heartbeat(cp))
        elif message == "StatusNotification":
            self._sent_status.clear() if connector is None else self._sent_status.pop(
                connector, None
            )
            self._mark_status()
        else:
            self._spawn(self._meter.send_now(cp, connector))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A triggered message, sent after the answer to the trigger (kept until done)."""
        task = asyncio.ensure_future(coro)
        self._triggered.add(task)
        task.add_done_callback(self._triggered.discard)

    # ---------------------------------------------------------------- session (asyncio thread)
    async def _serve(self, ws: ClientConnection) -> None:
        cp = self.dialect.make_cp(ws)
        receiver = asyncio.ensure_future(cp.start())
        session = asyncio.ensure_future(self._session(cp))
        try:
            done, _ = await asyncio.wait({receiver, session}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:  # a closed socket, a CALLERROR to a boot, a call without answer
                err = task.exception()
                if err is not None and not isinstance(err, ConnectionClosed):
                    log.warning("OCPP session ended (%s): reconnecting", summarise(err))
        finally:
            for task in (receiver, session):
                task.cancel()
            await asyncio.gather(receiver, session, return_exceptions=True)
            was_up = self._up.is_set()
            self._up.clear()
            self._cp, self._jobs = None, None
            for fut in self._waiting.values():
                fut.cancel()
            if was_up:
                self._sink(LinkDown("CSMS connection closed"))

    async def _session(self, cp: Any) -> None:
        await self._boot(cp)
        self._cp = cp
        self._jobs = asyncio.Queue()
        self._status_dirty = asyncio.Event()
        self._sent_status = {}
        self.up_since = self._clock.now()
        self._up.set()
        self._sink(LinkUp())
        self._refused_again()
        self._mark_status()
        await asyncio.gather(
            self._work(cp, self._jobs),
            self._heartbeat(cp),
            self._send_status(cp, self._status_dirty),
            self._meter.run(cp),
        )

    async def _boot(self, cp: Any) -> None:
        """BootNotification until Accepted; Pending and Rejected wait the interval the CSMS
        gives (at least one second) before the next."""
        while True:
            status, interval = await self.dialect.boot(cp)
            self._boot_rejected = status == "Rejected"
            if status == "Accepted":
                if interval > 0:
                    self.settings.heartbeat_from_csms(interval)
                log.info("BootNotification accepted (heartbeat every %d s)", interval)
                return
            wait = max(1, interval)
            log.warning("BootNotification %s: next one in %d s", status, wait)
            await asyncio.sleep(wait)

    async def _heartbeat(self, cp: Any) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval())
            await self.dialect.heartbeat(cp)

    # ---------------------------------------------------------------- transaction messages
    def _enqueue(self, job: _EventJob | _CdrJob) -> None:
        if self._jobs is not None:
            self._jobs.put_nowait(job)

    async def _work(self, cp: Any, jobs: asyncio.Queue[_EventJob | _CdrJob]) -> None:
        """One transaction message at a time, in the core's order. A CALLERROR is an answer
        (logged; the message is not sent again); no answer in time closes the socket, and
        everything unanswered is sent again, in order, on the next connection."""
        while True:
            job = await jobs.get()
            try:
                if isinstance(job, _CdrJob):
                    if self.dialect.cdr_settled(job.cdr):
                        self._ack_cdr(job.cdr.session_id)
                    continue
                await self.dialect.message(cp, job.event)
            except OCPPError as err:
                log.error("CSMS answered %s with CALLERROR %s", job, err)
            except TimeoutError:
                log.warning("no answer from the CSMS in time: reconnecting")
                await cp._connection.close()
                return
            except StoreError as err:
                log.error("OCPP state: %s", err)
                continue
            if isinstance(job, _EventJob) and job.ref is not None:
                self._ack_event(job.ref)

    def deauthorize(self, session_id: str, status: str) -> None:
        """The CSMS refused a running transaction's id tag (committed in ``ocpp.sqlite3``
        before this): the station stops the session, reason DeAuthorized."""
        log.warning("session %s: the CSMS answered its start with %s: stopping", session_id, status)
        self._sink(Deauthorize(session_id, status))

    def _refused_again(self) -> None:
        """Refused transactions whose stop is not answered yet (a restart came between the
        commit of the refusal and the stop): their deauthorisation goes to the station again;
        one that stopped meanwhile ignores it."""
        try:
            refused = self._state.refused_open()
        except (StoreError, sqlite3.Error) as err:
            log.error("OCPP state: %s", err)
            return
        for session_id, status in refused:
            self.deauthorize(session_id, status)

    # ---------------------------------------------------------------- authorisation
    async def _authorize(self, request: AuthRequest) -> None:
        cp = self._cp
        if cp is None:
            return  # the core's own time-out decides (offline policy)
        token = token_for_record(request.token).model_dump(mode="json")
        try:
            status, expiry = await self.dialect.authorize(cp, token)
        except (OCPPError, TimeoutError) as err:
            log.warning("Authorize for %s got no answer: %s", masked(token), err)
            return
        answer = AuthResponse.model_validate(
            {
                "v": 1,
                "request_id": request.request_id,
                "status": status,
                "expires_at": expiry,
            },
            strict=False,
        )
        self._sink(AuthAnswer(answer))

    # ---------------------------------------------------------------- status
    def _status_changed(self, status: StatusMessage) -> None:
        self._latest = status
        self._mark_status()

    def catch_up(self) -> None:
        """A session charging without an OCPP transaction gets its start now: its own
        ``started`` event may never come (a kill -9 between the commit of a start and the
        event; the session then resumes). Only while the station's event queue is empty, so
        that it cannot overtake older transaction messages; a start already answered is
        skipped by the worker. Called every few seconds by the meter-values task."""
        try:
            if self._jobs is None or self._view.queued_events():
                return
            charging = self._view.charging()
            missing = [f.session_id for f in charging if self._state.tx(f.session_id) is None]
            events = [self._view.started_event(sid) for sid in missing]
        except StoreError as err:
            log.error("OCPP: %s", err)
            return
        for started in events:
            if started is not None:
                log.warning(
                    "session %s charges without an OCPP start: sent now", started.session_id
                )
                self._enqueue(_EventJob(started, None))

    def _mark_status(self) -> None:
        if self._status_dirty is not None:
            self._status_dirty.set()

    async def _send_status(self, cp: Any, dirty: asyncio.Event) -> None:
        while True:
            await dirty.wait()
            dirty.clear()
            status = self._latest
            if status is None:
                continue
            for connector, value in sorted(self.dialect.statuses(status).items()):
                if self._sent_status.get(connector) == value:
                    continue
                await self.dialect.send_status(cp, connector, value)
                self._sent_status[connector] = value

    # ---------------------------------------------------------------- for MeterValuesTask
    @property
    def view(self) -> StationView:
        return self._view

    @property
    def state(self) -> OcppState:
        return self._state

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def ocpp(self) -> OcppConfig:
        return self._ocpp

    @property
    def station_id(self) -> str:
        return self._station_id

    @property
    def version(self) -> str:
        return _version()


def _version() -> str:
    from agent import __version__

    return str(__version__)[:50]
