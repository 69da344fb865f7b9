"""The MQTT link to the backend (paho-mqtt 2.x, callback API version 2).

Transport only: it connects, keeps reconnecting, sets TCP_NODELAY on every socket, subscribes
to the station's inbound topics, and hands every inbound message and every connection change to
a callback. Interpreting messages is the controller's job.

Reconnecting follows :class:`agent.failover.FailoverPolicy` (the nodes of a clustered broker in
``mqtt.urls``, full-jitter delays); paho's own back-off has no jitter, so it is overruled: before
paho waits, the link sets paho's delay to the policy's and points it at the policy's node.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig, node_address
from agent.errors import BackendError
from agent.failover import Attempt, BrokerLink, FailoverPolicy, Uniform
from agent.tls import build_ssl_context, probe_tls, read_secret

log = logging.getLogger(__name__)

# `status` is our own retained message coming back: proof that the broker's ACL lets this
# station's identity use its topics (a refused subscription is not reported in MQTT 3.1.1)
INBOUND = ("auth/res", "cdr/ack", "cmd/req", "status")


@dataclass(frozen=True)
class Inbound:
    suffix: str  # topic below the station root, e.g. "cmd/req"
    payload: bytes
    # the broker's RETAIN flag: set when a stored (retained) message is delivered because the
    # station (re)subscribed, not because someone published it just now (MQTT 3.1.1, 3.3.1.3)
    retain: bool = False
    t: float = field(default_factory=time.perf_counter)  # arrival, for latency metrics


@dataclass(frozen=True)
class LinkChange:
    connected: bool
    reason: str = ""


LinkCallback = Callable[[Inbound | LinkChange], None]


def set_nodelay(sock: Any) -> None:
    """Disable Nagle: without it every request/response pays 40-90 ms of delayed-ACK stalls."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as err:  # TLS-wrapped or non-TCP sockets
        raw = getattr(sock, "_sock", None)
        if raw is None:
            log.debug("could not set TCP_NODELAY: %s", err)
            return
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttLink:
    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        root: str,
        will_payload: bytes,
        uniform: Uniform = random.uniform,
    ) -> None:
        self._config = config
        self._nodes = config.nodes
        self._policy = FailoverPolicy(
            len(self._nodes),
            min_s=config.reconnect_min_s,
            max_s=config.reconnect_max_s,
            uniform=uniform,
        )
        self._policy_lock = threading.Lock()
        self._retry_at: float | None = None  # monotonic time of the next attempt
        self._stopping = False
        self._attempt_open = False  # an attempt is under way: its failure is not yet handled
        self._root = root
        self._on_event: LinkCallback = lambda item: None
        self._client_id = client_id
        self._will = will_payload
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._acks = _AckTracker()
        self._ssl_context: ssl.SSLContext | None = None
        self._failures = 0
        self._subscribed: list[str] = []

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def topic(self, suffix: str) -> str:
        return f"{self._root}/{suffix}"

    def start(self, on_event: LinkCallback) -> None:
        """Connect in the background; ``on_event`` receives messages and connection changes."""
        self._on_event = on_event
        cfg = self._config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.will_set(self.topic("status"), self._will, qos=1, retain=True)
        client.max_queued_messages_set(0)  # unbounded in memory; the durable queue is SQLite
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_pre_connect = self._on_pre_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        ctx: ssl.SSLContext | None = None
        if cfg.tls:
            ctx = build_ssl_context(
                cfg.ca_file, cfg.cert_file, cfg.key_file, cfg.tls_insecure_for_testing
            )
            client.tls_set_context(ctx)
            if cfg.tls_insecure_for_testing:
                log.warning("TLS certificate and hostname checks are OFF (testing only)")
                client.tls_insecure_set(True)
        if cfg.username is not None:
            password = read_secret(cfg.password_file) if cfg.password_file else None
            client.username_pw_set(cfg.username, password)
        self._ssl_context = ctx
        self._client = client
        try:
            self._aim(client, Attempt(node=0, delay_s=0.0))
        except (OSError, ValueError) as err:
            raise BackendError(f"cannot connect to {self.url}: {err}") from err
        client.loop_start()

    @property
    def url(self) -> str:
        """The node in use, or being tried."""
        return self._nodes[self._policy.node]

    def broker_link(self) -> BrokerLink:
        with self._policy_lock:
            p = self._policy
            retry_at = self._retry_at
            return BrokerLink(
                url=self._nodes[p.node],
                node=p.node + 1,
                nodes=p.nodes,
                connected=self.connected,
                reconnect_delay_s=None if p.last_delay_s is None else round(p.last_delay_s, 3),
                next_attempt_in_s=None
                if retry_at is None or self.connected
                else round(max(0.0, retry_at - time.monotonic()), 3),
                failovers=p.failovers,
            )

    def _aim(self, client: mqtt.Client, attempt: Attempt) -> None:
        """Point paho at the attempt's node and make its next wait the attempt's delay (called
        in paho's network thread, before it waits; paho doubles the delay only when it is
        not set again, which this link always does)."""
        host, port = node_address(self._nodes[attempt.node])
        client.reconnect_delay_set(min_delay=attempt.delay_s, max_delay=attempt.delay_s)  # type: ignore[arg-type]
        # paho pings after `keepalive` idle seconds and gives up `keepalive` later: pinging
        # at 0.75 x keepalive_s notices a dead link within 1.5 x keepalive_s
        client.connect_async(host, port, keepalive=max(2, int(self._config.keepalive_s * 0.75)))
        self._retry_at = time.monotonic() + attempt.delay_s

    def _reconnect(self, client: mqtt.Client, *, lost: bool, answered: bool = False) -> bool:
        """Choose the next node and delay (the connection was lost, or an attempt failed);
        False when there is nothing to do."""
        if self._stopping or not self._attempt_open:
            return False  # stopping, or this attempt's end was handled (paho may report twice)
        self._attempt_open = False
        with self._policy_lock:
            attempt = self._policy.lost() if lost else self._policy.failed(answered=answered)
        log.info(
            "next attempt: %s in %.1f s",
            self._nodes[attempt.node],
            attempt.delay_s,
        )
        self._aim(client, attempt)
        return True

    def stop(self, final_payload: bytes | None = None) -> None:
        client = self._client
        if client is None:
            return
        self._stopping = True
        if final_payload is not None and self.connected:
            info = client.publish(self.topic("status"), final_payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as err:
                log.warning("offline status not confirmed: %s", err)
        client.disconnect()
        client.loop_stop()
        self._client = None
        self._connected.clear()

    def publish(
        self,
        suffix: str,
        payload: bytes,
        *,
        retain: bool = False,
        on_ack: Callable[[], None] | None = None,
    ) -> bool:
        """Queue a QoS 1 publish; False when the link is down (the caller keeps it durable).
        ``on_ack`` is called (from the network thread) when the broker's PUBACK arrives: only
        then has the message really left the station."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(self.topic(suffix), payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s failed: %s", suffix, mqtt.error_string(info.rc))
            return False
        self._acks.sent(info.mid, on_ack)
        return True

    def resubscribe(self, suffix: str) -> None:
        """Subscribe to ``suffix`` again: the broker sends its retained message once more."""
        client = self._client
        if client is not None and self.connected:
            client.subscribe(self.topic(suffix), qos=1)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._acks.acked(mid)

    # ---------------------------------------------------------------- paho callbacks
    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._attempt_open = True

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        set_nodelay(sock)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("broker %s refused the connection: %s", self.url, reason_code)
            return
        self._failures = 0
        self._subscribed = [self.topic(s) for s in INBOUND]
        # the link counts as up once the broker has the subscription (SUBACK): a command sent
        # to a station that says it is connected is never lost for want of a subscription
        client.subscribe([(t, 1) for t in self._subscribed])

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._acks.clear()  # unacknowledged messages are re-sent from the store
        if was:
            log.warning("disconnected from broker %s: %s", self.url, reason_code)
            self._on_event(LinkChange(False, str(reason_code)))
            self._reconnect(client, lost=True)
        else:  # dropped before CONNACK or SUBACK (e.g. a TLS 1.3 certificate refusal)
            self._attempt_failed(client, answered=True)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        if self._connected.is_set():
            return  # a re-subscription (reading a retained message back): granted at connect
        refused = [
            t
            for t, rc in zip(self._subscribed, reason_codes, strict=False)
            if getattr(rc, "is_failure", False)
        ]
        if refused:
            # without its subscriptions the station would miss answers and commands: this
            # attempt failed (a cluster node still electing its stream leaders refuses them)
            log.error(
                "broker %s refused the subscription to %s (not authorised, or the broker "
                "could not create it); trying again. If it is not authorised: the station's "
                "identity (certificate CN or username) must be station.id %r",
                self.url,
                ", ".join(refused),
                self._client_id,
            )
            self._acks.clear()
            if self._reconnect(client, lost=False, answered=True):  # closes it, waits, retries
                self._failures += 1
            return
        with self._policy_lock:
            self._policy.connected()
        self._connected.set()
        log.info("connected to %s", self.url)
        self._on_event(LinkChange(True))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho could not open the connection (refused, unreachable, TLS handshake failed)."""
        self._attempt_failed(client, answered=False)

    def _attempt_failed(self, client: mqtt.Client, *, answered: bool) -> None:
        """paho reports TLS refusals only as a lost socket: ask the broker why, once in a while."""
        url = self.url
        if not self._reconnect(client, lost=False, answered=answered):
            return
        self._failures += 1
        if self._ssl_context is None or (self._failures not in (1, 10) and self._failures % 60):
            log.warning("cannot connect to %s (attempt %d)", url, self._failures)
            return
        ctx = self._ssl_context
        host, port = node_address(url)

        def probe() -> None:
            try:
                probe_tls(host, port, ctx)
            except BackendError as err:
                log.error("%s", err)

        threading.Thread(target=probe, name="tls-probe", daemon=True).start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        prefix = self._root + "/"
        if not msg.topic.startswith(prefix):
            log.warning("message on foreign topic %s ignored", msg.topic)
            return
        self._on_event(Inbound(msg.topic[len(prefix) :], bytes(msg.payload), bool(msg.retain)))


class _AckTracker:
    """Matches PUBACKs to the publishes that wait for them. paho calls ``on_publish`` from its
    network thread, possibly before ``publish()`` has returned the message id (it holds its
    own lock meanwhile, so this one is never held across a paho call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None]] = {}
        self._untracked: set[int] = set()
        self._early: set[int] = set()  # acked before publish() returned

    def sent(self, mid: int, on_ack: Callable[[], None] | None) -> None:
        with self._lock:
            early = mid in self._early
            self._early.discard(mid)
            if not early:
                if on_ack is None:
                    self._untracked.add(mid)
                else:
                    self._waiting[mid] = on_ack
        if early and on_ack is not None:
            on_ack()

    def acked(self, mid: int) -> None:
        with self._lock:
            on_ack = self._waiting.pop(mid, None)
            if on_ack is None:
                if mid in self._untracked:
                    self._untracked.discard(mid)
                else:
                    self._early.add(mid)
                return
        on_ack()

    def clear(self) -> None:
        """The connection is gone: what was not acknowledged is re-sent from the store."""
        with self._lock:
            self._waiting.clear()
            self._untracked.clear()
            self._early.clear()
