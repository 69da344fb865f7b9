"""MQTT contract v1 as an adapter on the backend port (:mod:`agent.backend`).

Transport is :class:`agent.link.MqttLink`; this adapter maps port calls to topics below
``{prefix}/{station_id}`` and validates every inbound payload in the network thread, so junk is
dropped before it reaches the station's queue. A command that cannot be read is answered
``rejected`` with the reason, in order with the other commands (not stored: it was never
accepted or refused as a command). The station's own retained status coming back proves that
the broker's ACL lets this identity use its topics; when it does not come back the adapter
reports ``broker_acl``.

Two guards run first, in the network thread, before anything is parsed or queued: a per-topic
rate limit (:class:`InboundLimiter`), so that a flood cannot fill the station's queue or its
CPU, and the refusal of retained commands: a command the broker stored and hands out again on
every (re)subscription would otherwise run again whenever its stored answer is gone (a purge
after a clock step), starting a second session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.backend import (
    AckBatches,
    AuthAnswer,
    BackendSink,
    CdrAcked,
    CommandIn,
    CommandUnreadable,
    Delivered,
    LinkDown,
    LinkUp,
)
from agent.backend_watch import BackendWatch
from agent.clock import Clock
from agent.config import AgentConfig
from agent.errors import ProtocolError
from agent.failover import BrokerLink
from agent.link import Inbound, LinkChange, MqttLink
from agent.messages import (
    AuthRequest,
    Cdr,
    CommandResponse,
    MeterValues,
    OfflineStatus,
    SessionEvent,
    StatusMessage,
    check_version,
    dump,
    load_json_object,
    parse_auth_response,
    parse_cdr_ack,
    parse_command,
)
from agent.retained import RetainedStatusGuard

log = logging.getLogger(__name__)

ECHO_WAIT_S = 5.0  # after connecting: our own retained status must be back by then
RETAINED_REASON = "retained commands are refused: publish commands without the retain flag"
DROP_LOG_EVERY_S = 10.0  # at most one "dropped" warning per topic per this interval
DROPPED_STATUS_EVERY_S = 1.0  # the counts in the status change at most this often
EXPECTED_MAX = 4096  # ids of answers the station waits for, per topic (oldest forgotten)
PEEK_MAX_BYTES = 2048  # a real auth/res or cdr/ack is far smaller
# the id an expected answer carries, found without parsing the payload (the answer is still
# validated in full afterwards; a payload that hides its id behind escapes just takes its turn)
EXPECTED_ID = {
    "auth/res": re.compile(rb'"request_id"\s*:\s*"([^"\\]{1,64})"'),
    "cdr/ack": re.compile(rb'"session_id"\s*:\s*"([^"\\]{1,64})"'),
}


def command_digest(data: dict[str, Any]) -> str:
    """What identifies a command for replay detection (its send time aside)."""
    body = {k: v for k, v in data.items() if k != "ts"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per message."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class InboundLimiter:
    """Per-topic token buckets for inbound backend messages (``mqtt.inbound_rate_per_s``,
    ``mqtt.inbound_burst``), applied in the network thread before any parsing or queueing.

    A message over its topic's limit is dropped and counted (:meth:`dropped`, shown in the
    status); a warning with the count is logged at most once per ``DROP_LOG_EVERY_S`` per
    topic. A dropped command is not answered, even when its ``command_id`` could be read:
    answering a flood is amplifying it (one ``cmd/res`` out for every message in, and the
    parsing the limit exists to avoid); a backend that gets no answer sends the command again.

    Answers the station is waiting for pass whatever the bucket says (:meth:`expect`): the
    ``request_id`` of an ``auth/req`` it sent, the ``session_id`` of a CDR it sent. Without
    that, a flood of random ``auth/res`` would use up the tokens and the real answer to a tap
    would be dropped with it. The id is found with one bounded byte search, not by parsing;
    each expected id lets one message through.
    """

    def __init__(
        self, limits: dict[str, tuple[float, int]], monotonic: Callable[[], float]
    ) -> None:
        self._now = monotonic
        now = monotonic()
        self._buckets = {t: TokenBucket(rate, burst, now) for t, (rate, burst) in limits.items()}
        self._expected: dict[str, OrderedDict[bytes, None]] = {t: OrderedDict() for t in limits}
        self._dropped: dict[str, int] = {}
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        self._shown: dict[str, int] = {}
        self._shown_at = 0.0
        self._lock = threading.Lock()

    def expect(self, suffix: str, ident: str) -> None:
        """An answer carrying ``ident`` on ``suffix`` is due (called by the loop thread)."""
        expected = self._expected.get(suffix)
        if expected is None:
            return
        key = ident.encode()
        with self._lock:
            expected[key] = None
            expected.move_to_end(key)
            while len(expected) > EXPECTED_MAX:
                expected.popitem(last=False)

    def admit(self, suffix: str, payload: bytes) -> bool:
        """True: handle the message; False: it was over the limit, dropped and counted."""
        bucket = self._buckets.get(suffix)
        if bucket is None:
            return True
        now = self._now()
        if bucket.take(now) or self._was_expected(suffix, payload):
            return True
        with self._lock:
            self._dropped[suffix] = self._dropped.get(suffix, 0) + 1
            self._unlogged[suffix] = self._unlogged.get(suffix, 0) + 1
            if now - self._logged_at.get(suffix, -DROP_LOG_EVERY_S) < DROP_LOG_EVERY_S:
                return False
            self._logged_at[suffix] = now
            count, self._unlogged[suffix] = self._unlogged[suffix], 0
            total = self._dropped[suffix]
        log.warning(
            "inbound %s over its limit (%g/s, burst %d): %d message(s) dropped unread "
            "(%d since start)",
            suffix,
            bucket.rate,
            bucket.burst,
            count,
            total,
        )
        return False

    def _was_expected(self, suffix: str, payload: bytes) -> bool:
        pattern = EXPECTED_ID.get(suffix)
        if pattern is None or len(payload) > PEEK_MAX_BYTES:
            return False
        found = pattern.search(payload)
        if found is None:
            return False
        with self._lock:
            return self._expected[suffix].pop(found.group(1), False) is None

    def dropped(self) -> dict[str, int]:
        """Counts since start for the status: the first drops at once, then at most every
        ``DROPPED_STATUS_EVERY_S`` (the status is published whenever it changes; a flood must
        not turn into a stream of status messages)."""
        now = self._now()
        with self._lock:
            due = not self._shown or now - self._shown_at >= DROPPED_STATUS_EVERY_S
            if due and self._dropped != self._shown:
                self._shown, self._shown_at = dict(self._dropped), now
            return dict(self._shown)


class MqttBackend:
    def __init__(self, config: AgentConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._link = MqttLink(
            config.mqtt,
            client_id=config.station.id,
            root=config.topic_root,
            will_payload=self._offline_payload(),
        )
        self._sink: BackendSink = lambda item: None
        self._connected_at: float | None = None
        self._echo_seen = True
        self._acl_reported = False
        self._acks = AckBatches()  # acknowledged events and CDRs, taken in batches
        self._limiter = InboundLimiter(config.mqtt.inbound_limits(), clock.monotonic)
        self._watch = BackendWatch(  # backend answering? our station id used twice?
            station_id=config.station.id,
            auth_timeout_s=config.mqtt.auth_timeout_s,
            started=clock.now(),
            monotonic=clock.monotonic,
        )
        self._retained = RetainedStatusGuard(
            republish=self._publish_status, read_back=lambda: self._link.resubscribe("status")
        )

    # ---------------------------------------------------------------- port
    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def endpoint(self) -> str:
        return self._link.url

    def broker_link(self) -> BrokerLink:
        """The broker node in use and the reconnect policy's state (status, ``stationctl``)."""
        return self._link.broker_link()

    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        self._link.start(self._on_link)

    def stop(self) -> None:
        self._link.stop(self._offline_payload())

    def authorize(self, request: AuthRequest) -> bool:
        self._limiter.expect("auth/res", request.request_id)
        self._watch.asked()
        return self._link.publish("auth/req", dump(request))

    def session_event(self, event: SessionEvent, ref: int) -> bool:
        return self._link.publish("session", dump(event), on_ack=lambda: self._acked(ref))

    def delivered(self) -> list[int]:
        return self._acks.take_events()

    def acknowledged_cdrs(self) -> list[str]:
        return self._acks.take_cdrs()

    def _cdr_acked(self, session_id: str) -> None:
        """A CDR acknowledgement (network thread): one CdrAcked input announces a batch."""
        if self._acks.cdr_acked(session_id):
            self._sink(CdrAcked())

    def _acked(self, ref: int) -> None:
        """A PUBACK (network thread): one Delivered input announces a batch of them."""
        if self._acks.event_acked(ref):
            self._sink(Delivered())

    def cdr(self, cdr: Cdr) -> bool:
        self._limiter.expect("cdr/ack", cdr.session_id)
        return self._link.publish("cdr", dump(cdr))

    def command_result(self, result: CommandResponse) -> bool:
        return self._link.publish("cmd/res", dump(result))

    def meter_values(self, values: MeterValues) -> bool:
        return self._link.publish("meter", dump(values))

    def status(self, status: StatusMessage) -> bool:
        payload = dump(status)
        self._watch.published(payload)
        self._retained.published(payload)
        return self._publish_status(payload)

    def _publish_status(self, payload: bytes) -> bool:
        """Retained; once acknowledged, the broker's copy is read back (:mod:`agent.retained`)."""
        return self._link.publish("status", payload, retain=True, on_ack=self._retained.acked)

    def faults(self) -> dict[str, str]:
        return {**self._acl_faults(), **self._watch.faults()}

    def _acl_faults(self) -> dict[str, str]:
        if self._echo_seen or self._connected_at is None or not self.connected:
            return {"broker_acl": "own topics not delivered"} if self._acl_reported else {}
        if self._clock.monotonic() - self._connected_at > ECHO_WAIT_S:
            if not self._acl_reported:
                log.error(
                    "the broker does not deliver this station's own messages back: its ACL does "
                    "not let this identity use %s/#; the certificate CN or username must be %r",
                    self._config.topic_root,
                    self._config.station.id,
                )
            self._acl_reported = True
            return {"broker_acl": "own topics not delivered"}
        return {}

    def inbound_dropped(self) -> dict[str, int]:
        return self._limiter.dropped()

    # ---------------------------------------------------------------- inbound (network thread)
    def _offline_payload(self) -> bytes:
        return dump(OfflineStatus(station_id=self._config.station.id))

    def _on_link(self, item: Inbound | LinkChange) -> None:
        if isinstance(item, LinkChange):
            if item.connected:
                self._connected_at = self._clock.monotonic()
                self._watch.link_up()
                self._echo_seen = False
                self._retained.reconnected()
                self._sink(LinkUp())
            else:
                self._watch.link_down()
                self._sink(LinkDown(item.reason))
            return
        if not self._limiter.admit(item.suffix, item.payload):
            return
        if item.suffix == "status":
            self._echo_seen = True
            self._watch.status_seen(item.payload)
            if item.retain:
                self._retained.retained_copy(item.payload)
            return
        self._watch.heard()  # anything from the backend: it answers
        if item.retain and item.suffix == "cmd/req":
            self._refuse_retained(item.payload)
            return
        try:
            data = load_json_object(item.payload)
        except ProtocolError as err:
            log.warning("rejected %s payload: %s", item.suffix, err)
            return
        try:
            check_version(data)
            self._decode(item, data)
        except ProtocolError as err:
            log.warning("rejected %s payload: %s", item.suffix, err)
            if item.suffix == "cmd/req":
                self._reject_unreadable(data, str(err))

    def _decode(self, item: Inbound, data: dict[str, Any]) -> None:
        if item.suffix == "auth/res":
            self._sink(AuthAnswer(parse_auth_response(data), item.t))
        elif item.suffix == "cdr/ack":
            self._cdr_acked(parse_cdr_ack(data).session_id)
        elif item.suffix == "cmd/req":
            self._sink(CommandIn(parse_command(data), command_digest(data), item.t))
        else:
            log.warning("message on unexpected topic %s ignored", item.suffix)

    def _refuse_retained(self, payload: bytes) -> None:
        """A retained command is never run: it is read only for its id, to answer it."""
        try:
            data = load_json_object(payload)
        except ProtocolError as err:
            log.warning(
                "retained command refused: unreadable payload on %s/cmd/req (%s); no "
                "command_id to answer; commands must be published without the retain flag",
                self._config.topic_root,
                err,
            )
            return
        cid = data.get("command_id")
        log.warning(
            "retained command refused: command_id %r on %s/cmd/req; commands must be "
            "published without the retain flag (clear it: an empty retained message)",
            cid,
            self._config.topic_root,
        )
        self._reject_unreadable(data, RETAINED_REASON)

    def _reject_unreadable(self, data: dict[str, Any], reason: str) -> None:
        cid = data.get("command_id")
        if isinstance(cid, str) and 0 < len(cid) <= 64:
            self._sink(CommandUnreadable(cid, reason))
