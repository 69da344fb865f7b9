"""A small reference backend: answers auth requests, acks CDRs, records everything.

It is living documentation of MQTT contract v1 and the peer the tests and the demo talk to.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import BackendError
from agent.link import set_nodelay

log = logging.getLogger(__name__)


@dataclass
class Received:
    station_id: str
    suffix: str
    data: Any
    t: float  # time.monotonic() on arrival


@dataclass
class BackendSim:
    """Reference backend. ``accept`` None means every token is accepted."""

    broker_url: str
    prefix: str = "stations"
    accept: set[str] | None = None
    auto_ack: bool = True
    answer_auth: bool = True
    on_message: Callable[[Received], None] | None = None
    client_id: str = field(default_factory=lambda: f"backend-sim-{uuid.uuid4().hex[:8]}")
    tls_context: ssl.SSLContext | None = None  # mqtts:// with the backend's certificate
    # False: a persistent session, as a production backend has: what the stations publish
    # while it is away is queued for it by the broker (and survives a broker restart when the
    # broker persists its sessions)
    clean_session: bool = True
    received: list[Received] = field(default_factory=list)
    cdrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cdr_duplicates: int = 0
    _client: mqtt.Client | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _connected: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> None:
        from urllib.parse import urlsplit

        url = urlsplit(self.broker_url)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=self.clean_session
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_socket_open = lambda c, u, sock: set_nodelay(sock)
        if self.tls_context is not None:
            client.tls_set_context(self.tls_context)
        self._client = client
        try:
            client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=30)
        except OSError as err:
            raise BackendError(f"backend-sim cannot reach {self.broker_url}: {err}") from err
        client.loop_start()
        if not self._connected.wait(timeout):
            raise BackendError(f"backend-sim: no CONNACK from {self.broker_url}")

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        p = self.prefix
        client.subscribe(
            [(f"{p}/+/{s}", 1) for s in ("status", "auth/req", "session", "cdr", "cmd/res")]
        )
        self._connected.set()

    # ------------------------------------------------------------------ inbound
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/", 2)
        if len(parts) < 3:
            return
        station_id, suffix = parts[1], parts[2]
        try:
            data = json.loads(msg.payload) if msg.payload else None
        except json.JSONDecodeError:
            data = {"_raw": msg.payload.decode(errors="replace")}
        rec = Received(station_id, suffix, data, time.monotonic())
        with self._cond:
            self.received.append(rec)
            if suffix == "cdr" and isinstance(data, dict):
                sid = str(data.get("session_id"))
                if sid in self.cdrs:
                    self.cdr_duplicates += 1
                self.cdrs[sid] = data
            self._cond.notify_all()
        if suffix == "auth/req" and self.answer_auth and isinstance(data, dict):
            self._answer_auth(station_id, data)
        elif suffix == "cdr" and self.auto_ack and isinstance(data, dict):
            self.publish(station_id, "cdr/ack", {"v": 1, "session_id": data.get("session_id")})
        if self.on_message is not None:
            self.on_message(rec)

    def decide(self, token: dict[str, Any]) -> dict[str, Any]:
        ident = token.get("uid") or token.get("contract_id")
        ok = self.accept is None or ident in self.accept
        res: dict[str, Any] = {"status": "accepted" if ok else "rejected"}
        if ok and token.get("type") != "rfid" and token.get("contract_id"):
            res["contract_id"] = token["contract_id"]
        return res

    def _answer_auth(self, station_id: str, req: dict[str, Any]) -> None:
        token = req.get("token") if isinstance(req.get("token"), dict) else {}
        res = {"v": 1, "request_id": req.get("request_id"), **self.decide(token or {})}
        self.publish(station_id, "auth/res", res)

    # ------------------------------------------------------------------ outbound
    def publish(
        self,
        station_id: str,
        suffix: str,
        data: Any,
        *,
        raw: bytes | None = None,
        retain: bool = False,
    ) -> None:
        """QoS 1 publish. ``retain=True`` (a backend must not do that with commands: the
        station refuses them) waits until the broker has the message, so it is stored when
        this returns; an empty retained ``raw`` payload clears the topic's retained message."""
        if self._client is None:
            raise BackendError("backend-sim is not started")
        payload = raw if raw is not None else json.dumps(data).encode()
        info = self._client.publish(
            f"{self.prefix}/{station_id}/{suffix}", payload, qos=1, retain=retain
        )
        if retain:
            info.wait_for_publish(timeout=5.0)

    def command(self, station_id: str, command: str, **fields: Any) -> str:
        command_id = str(fields.pop("command_id", uuid.uuid4()))
        self.publish(
            station_id, "cmd/req", {"v": 1, "command_id": command_id, "command": command, **fields}
        )
        return command_id

    # ------------------------------------------------------------------ waiting (tests)
    def wait_for(
        self, pred: Callable[[Received], bool], timeout: float = 10.0, start: int = 0
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.received[start:]:
                    if pred(rec):
                        return rec
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("backend-sim: expected message did not arrive")
                self._cond.wait(remaining)

    def messages(self, suffix: str, station_id: str | None = None) -> list[Any]:
        with self._cond:
            return [
                r.data
                for r in self.received
                if r.suffix == suffix and (station_id is None or r.station_id == station_id)
            ]


def run_cli(broker: str, accept: list[str] | None, prefix: str) -> int:
    """``station-agent backend-sim``: print every message, answer auth, ack CDRs."""

    def show(rec: Received) -> None:
        print(
            f"{time.strftime('%H:%M:%S')} {rec.station_id} {rec.suffix}: {json.dumps(rec.data)}",
            flush=True,
        )

    sim = BackendSim(broker, prefix=prefix, accept=set(accept) if accept else None, on_message=show)
    sim.start()
    print(
        f"backend-sim on {broker}: accepting {accept if accept else 'all tokens'}; Ctrl-C to stop",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0
