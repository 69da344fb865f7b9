"""A tiny OCPP 1.6J central system for ``station-agent demo --backend ocpp1.6``.

Built on the ``ocpp`` package's central-system role and a ``websockets`` server (both MIT, the
``ocpp`` extra): it accepts every charge point, every boot and every id tag, numbers
transactions from 1, and reports each message it receives to a callback. For demonstrations
only: no authentication, no persistence.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from typing import Any

from ocpp.v16 import ChargePoint, call_result
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from agent.broker import free_port
from agent.ocpp16_cp import handles

Report = Callable[[str, dict[str, Any]], None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Ledger:
    """What the CSMS saw: transactions started and stopped, by id."""

    started: dict[int, dict[str, Any]] = field(default_factory=dict)
    stopped: dict[int, dict[str, Any]] = field(default_factory=dict)
    ids: Any = field(default_factory=lambda: count(1))


class _Cp(ChargePoint):  # type: ignore[misc]
    def __init__(self, cp_id: str, ws: ServerConnection, report: Report, ledger: Ledger):
        super().__init__(cp_id, ws)
        self._report, self._ledger = report, ledger

    @handles("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self._report("BootNotification", kw)
        return call_result.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @handles("Heartbeat")
    def heartbeat(self) -> Any:
        return call_result.Heartbeat(current_time=_now())

    @handles("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self._report("StatusNotification", kw)
        return call_result.StatusNotification()

    @handles("Authorize")
    def authorize(self, id_tag: str) -> Any:
        self._report("Authorize", {"id_tag": id_tag})
        return call_result.Authorize(id_tag_info={"status": "Accepted"})

    @handles("StartTransaction")
    def start_transaction(self, **kw: Any) -> Any:
        txid = next(self._ledger.ids)
        self._ledger.started[txid] = kw
        self._report("StartTransaction", {**kw, "transaction_id": txid})
        return call_result.StartTransaction(transaction_id=txid, id_tag_info={"status": "Accepted"})

    @handles("StopTransaction")
    def stop_transaction(self, **kw: Any) -> Any:
        self._ledger.stopped[int(kw["transaction_id"])] = kw
        self._report("StopTransaction", kw)
        return call_result.StopTransaction()

    @handles("MeterValues")
    def meter_values(self, **kw: Any) -> Any:
        self._report("MeterValues", kw)
        return call_result.MeterValues()


class DemoCsms:
    def __init__(self, report: Report) -> None:
        self.port = free_port()
        self.ledger = Ledger()
        self._report = report
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def _serve(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        cp = _Cp(path.rstrip("/").rpartition("/")[2], ws, self._report, self.ledger)
        try:
            await cp.start()
        except ConnectionClosed:
            return

    def start(self) -> None:
        self._thread.start()

        async def go() -> Server:
            return await serve(
                self._serve, "127.0.0.1", self.port, subprotocols=[Subprotocol("ocpp1.6")]
            )

        self._server = asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            asyncio.run_coroutine_threadsafe(server.wait_closed(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
