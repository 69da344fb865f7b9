"""A small OCPP 2.0.1 CSMS for the tests (helper module, not tests), built on the ``ocpp``
package's central-system role and a ``websockets`` server: basic auth (security profiles 1-2),
TLS (profile 2) and mutual TLS (profile 3: the client certificate's CN must be the charging
station's id). It accepts every boot and every token and records every frame."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import threading
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.broker import free_port
from tests.ocpp_helpers import CALL, KEY, RESULT, Wire, wait_for
from tests.tls_fixtures import Pki


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CsmsCp(ChargePoint):  # type: ignore[misc]
    started_status = "Accepted"  # idTokenInfo of the answer to a TransactionEvent Started

    @on("BootNotification")
    def boot(self, charging_station: dict[str, Any], reason: str) -> Any:
        return call_result.BootNotification(current_time=_now(), interval=60, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self) -> Any:
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **_: Any) -> Any:
        return call_result.StatusNotification()

    @on("Authorize")
    def authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return call_result.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    def transaction_event(self, **kw: Any) -> Any:
        if kw.get("id_token"):
            status = self.started_status if kw.get("event_type") == "Started" else "Accepted"
            return call_result.TransactionEvent(id_token_info={"status": status})
        return call_result.TransactionEvent()


class Csms201:
    def __init__(self, *, key: str | None = KEY, pki: Pki | None = None, mtls: bool = False):
        self.port = free_port()
        self.key, self.pki, self.mtls = key, pki, mtls
        self.started_status = "Accepted"
        self.frames: list[tuple[str, str, Any]] = []
        self.cps: dict[str, CsmsCp] = {}
        self.peer_cns: list[str] = []
        self._log = logging.getLogger(f"tests.csms201.{self.port}")
        self._log.setLevel(logging.DEBUG)
        self._log.propagate = False
        self._log.addHandler(Wire(self.frames))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.pki else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ocpp"

    def run(self, coro: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _ssl(self) -> ssl.SSLContext | None:
        if self.pki is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.pki.server.cert, self.pki.server.key)
        if self.mtls:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.pki.ca)
        return ctx

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.key is None:
            return None
        cp_id = request.path.rstrip("/").rpartition("/")[2]
        expected = "Basic " + base64.b64encode(f"{cp_id}:{self.key}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong credentials\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        cp_id = ws.request.path.rstrip("/").rpartition("/")[2] if ws.request else "?"
        peer = ws.transport.get_extra_info("peercert")
        if peer:
            cn = next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")
            self.peer_cns.append(cn)
            if cn != cp_id:
                await ws.close(1008, "certificate CN is not the charging station id")
                return
        cp = CsmsCp(cp_id, ws, response_timeout=10, logger=self._log)
        cp.started_status = self.started_status
        self.cps[cp_id] = cp
        with contextlib.suppress(ConnectionClosed):
            await cp.start()

    def start(self) -> Csms201:
        async def go() -> Server:
            return await serve(
                self._serve,
                "127.0.0.1",
                self.port,
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                process_request=self._check,
                ssl=self._ssl(),
            )

        self._server = self.run(go())
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.run(server.wait_closed())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def calls(self, action: str | None = None) -> list[dict[str, Any]]:
        return [
            f[3]
            for d, _, f in list(self.frames)
            if d == "in" and isinstance(f, list) and f[0] == CALL and action in (None, f[2])
        ]

    def actions(self) -> list[str]:
        return [f[2] for d, _, f in list(self.frames) if d == "in" and f[0] == CALL]

    def call(self, station_id: str, payload: Any) -> Any:
        return self.run(self.cps[station_id].call(payload, suppress=False))

    def answer_to(self, unique_id: str) -> list[Any] | None:
        for d, _, f in list(self.frames):
            if d == "in" and isinstance(f, list) and f[0] != CALL and f[1] == unique_id:
                return f
        return None

    def raw_call(self, station_id: str, frame: list[Any]) -> list[Any]:
        import json

        self.run(self.cps[station_id]._send(json.dumps(frame)))
        return wait_for(lambda: self.answer_to(frame[1]), 10, f"answer to {frame[2]}")


__all__ = ["RESULT", "Csms201"]
