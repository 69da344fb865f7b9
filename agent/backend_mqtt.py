"""MQTT contract v1 as an adapter on the backend port (:mod:`agent.backend`).

Transport is :class:`agent.link.MqttLink`; this adapter maps port calls to topics below
``{prefix}/{station_id}`` and validates every inbound payload in the network thread, so junk is
dropped before it reaches the station's queue. A command that cannot be read is answered
``rejected`` with the reason, in order with the other commands (not stored: it was never
accepted or refused as a command). The station's own retained status coming back proves that
the broker's ACL lets this identity use its topics; when it does not come back the adapter
reports ``broker_acl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from agent.backend import (
    AuthAnswer,
    BackendSink,
    CdrAcked,
    CommandIn,
    CommandUnreadable,
    LinkDown,
    LinkUp,
)
from agent.clock import Clock
from agent.config import AgentConfig
from agent.errors import ProtocolError
from agent.link import Inbound, LinkChange, MqttLink
from agent.messages import (
    AuthRequest,
    Cdr,
    CommandResponse,
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

log = logging.getLogger(__name__)

ECHO_WAIT_S = 5.0  # after connecting: our own retained status must be back by then


def command_digest(data: dict[str, Any]) -> str:
    """What identifies a command for replay detection (its send time aside)."""
    body = {k: v for k, v in data.items() if k != "ts"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


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

    # ---------------------------------------------------------------- port
    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def endpoint(self) -> str:
        return self._config.mqtt.url

    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        self._link.start(self._on_link)

    def stop(self) -> None:
        self._link.stop(self._offline_payload())

    def authorize(self, request: AuthRequest) -> bool:
        return self._link.publish("auth/req", dump(request))

    def session_event(self, event: SessionEvent) -> bool:
        return self._link.publish("session", dump(event))

    def cdr(self, cdr: Cdr) -> bool:
        return self._link.publish("cdr", dump(cdr))

    def command_result(self, result: CommandResponse) -> bool:
        return self._link.publish("cmd/res", dump(result))

    def status(self, status: StatusMessage) -> bool:
        return self._link.publish("status", dump(status), retain=True)

    def faults(self) -> dict[str, str]:
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

    # ---------------------------------------------------------------- inbound (network thread)
    def _offline_payload(self) -> bytes:
        return dump(OfflineStatus(station_id=self._config.station.id))

    def _on_link(self, item: Inbound | LinkChange) -> None:
        if isinstance(item, LinkChange):
            if item.connected:
                self._connected_at = self._clock.monotonic()
                self._echo_seen = False
                self._sink(LinkUp())
            else:
                self._sink(LinkDown(item.reason))
            return
        if item.suffix == "status":
            self._echo_seen = True
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
            self._sink(CdrAcked(parse_cdr_ack(data).session_id))
        elif item.suffix == "cmd/req":
            self._sink(CommandIn(parse_command(data), command_digest(data), item.t))
        else:
            log.warning("message on unexpected topic %s ignored", item.suffix)

    def _reject_unreadable(self, data: dict[str, Any], reason: str) -> None:
        cid = data.get("command_id")
        if isinstance(cid, str) and 0 < len(cid) <= 64:
            self._sink(CommandUnreadable(cid, reason))
