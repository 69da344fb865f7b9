"""OCPP 1.6J as a dialect of the OCPP adapter (:class:`agent.backend_ocpp.OcppBackend`):
the messages the station sends, built from the station's words (mappings: :mod:`ocpp_map`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.clock import rfc3339
from agent.messages import Cdr, SessionEvent, StatusMessage
from agent.ocpp16_cp import StationCp16
from agent.ocpp_map import auth_status, connector_status_16, id_tag, sampled_energy
from agent.ocpp_tx import Transactions16

if TYPE_CHECKING:
    from agent.backend_ocpp import OcppBackend

StatusValue = tuple[str, ...]


class Dialect16:
    subprotocol = "ocpp1.6"
    triggers = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues")

    def __init__(self, backend: OcppBackend) -> None:
        self._b = backend
        self._tx = Transactions16(
            backend.state, backend.view, backend.clock, backend.connector_of, backend.deauthorize
        )

    def make_cp(self, ws: Any) -> Any:
        return StationCp16(self._b.station_id, ws, self._b, self._b.ocpp.call_timeout_s)

    async def boot(self, cp: Any) -> tuple[str, int]:
        ocpp = self._b.ocpp
        res = await cp.call(
            call.BootNotification(
                charge_point_model=ocpp.model,
                charge_point_vendor=ocpp.vendor,
                charge_point_serial_number=self._b.station_id[:25],
                firmware_version=self._b.version,
            ),
            suppress=False,
        )
        return str(res.status), int(res.interval)

    async def heartbeat(self, cp: Any) -> None:
        await cp.call(call.Heartbeat(), suppress=False)

    def statuses(self, status: StatusMessage) -> dict[int, StatusValue]:
        """Connector -> (status, errorCode, info); connector 0 is the station itself."""
        station = (
            ("Faulted", "InternalError", status.faults[0][:50])
            if status.faults
            else ("Available", "NoError", "")
        )
        wanted: dict[int, StatusValue] = {0: station}
        for evse in status.evses:
            connector = self._b.connector_or_none(evse.evse_id)
            if connector is not None:
                state, code, info = connector_status_16(evse)
                wanted[connector] = (state, code, info or "")
        return wanted

    async def send_status(self, cp: Any, connector: int, value: StatusValue) -> None:
        state, code, info = value
        await cp.call(
            call.StatusNotification(
                connector_id=connector,
                error_code=code,
                status=state,
                info=info or None,
                timestamp=rfc3339(self._b.clock.now()),
            ),
            suppress=False,
        )

    async def authorize(self, cp: Any, token: dict[str, Any]) -> tuple[str, str | None]:
        res = await cp.call(call.Authorize(id_tag=id_tag(token)), suppress=False)
        info = res.id_tag_info or {}
        return auth_status(str(info.get("status"))).value, info.get("expiry_date")

    async def message(self, cp: Any, event: SessionEvent) -> None:
        await self._tx.message(cp, event)

    def cdr_settled(self, cdr: Cdr) -> bool:
        return self._tx.cdr_settled(cdr)

    async def meter_values(self, cp: Any, tx: Any, kwh: float, at: Any, context: str) -> None:
        await cp.call(
            call.MeterValues(
                connector_id=tx.connector,
                transaction_id=int(tx.transaction_id),
                meter_value=[sampled_energy(kwh, at, context)],
            ),
            suppress=False,
        )
