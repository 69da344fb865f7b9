"""OCPP 1.6 transaction messages from the station's session events (one at a time).

``started`` -> StartTransaction, ``stopped`` -> StopTransaction; the other events have no OCPP
message. A signing meter's records (:mod:`agent.ocpp_signed`): the start record follows the
answered StartTransaction as a MeterValues (``Transaction.Begin``), and the StopTransaction's
``transactionData`` carries both (``Transaction.Begin`` and ``Transaction.End``), so the CSMS
has the pair in the message that closes the transaction even if that MeterValues was lost.

The transaction id the CSMS assigns is committed the moment it arrives; an event whose answer
is already on disk is not sent again (an acknowledgement lost in a crash or an outage repeats
the event, never the OCPP message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ocpp.v16 import call

from agent.clock import Clock, rfc3339
from agent.messages import Cdr, SessionEvent, SessionEventKind
from agent.ocpp_map import energy_wh, id_tag, stop_reason_16
from agent.ocpp_signed import signed_meter_value_16
from agent.ocpp_state import OcppState, SessionFacts, StationView
from agent.privacy import mask

log = logging.getLogger(__name__)


def masked(token: dict[str, Any]) -> str:
    return mask(str(token.get("uid") or token.get("contract_id") or ""))


class Transactions16:
    def __init__(
        self,
        store: OcppState,
        view: StationView,
        clock: Clock,
        connector_of: Callable[[str], int],
        refuse: Callable[[str, str], None],
    ) -> None:
        self._store = store
        self._view = view
        self._clock = clock
        self._connector_of = connector_of
        self._refuse = refuse

    async def message(self, cp: Any, event: SessionEvent) -> None:
        if event.event is SessionEventKind.STARTED:
            await self._start(cp, event)
        elif event.event is SessionEventKind.STOPPED:
            await self._stop(cp, event)

    async def _start(self, cp: Any, event: SessionEvent) -> None:
        if self._store.tx(event.session_id) is not None:
            return  # answered before (the ack was lost in a restart): not sent twice
        facts = self._view.session(event.session_id)
        if facts is None:
            log.error("session %s is not in the store: no StartTransaction", event.session_id)
            return
        connector = self._connector_of(event.evse_id)
        tag = id_tag(facts.token)
        res = await cp.call(
            call.StartTransaction(
                connector_id=connector,
                id_tag=tag,
                meter_start=energy_wh(facts.meter_start_kwh),
                timestamp=rfc3339(event.ts),
            ),
            suppress=False,
        )
        txid = str(res.transaction_id)
        status = str((res.id_tag_info or {}).get("status"))
        refused = None if status == "Accepted" else status
        self._store.started(event.session_id, txid, connector, self._clock.now(), refused)
        log.info(
            "session %s is OCPP transaction %s (idTag %s: %s)",
            event.session_id,
            txid,
            masked(facts.token),
            status,
        )
        if refused is not None:  # StopTransactionOnInvalidId (true): the station stops it
            self._refuse(event.session_id, refused)
        signed = self._view.signed(event.session_id)
        if signed is not None and signed.start is not None:
            begin = signed_meter_value_16(signed.start, event.ts, "Transaction.Begin")
            await cp.call(
                call.MeterValues(
                    connector_id=connector, transaction_id=int(txid), meter_value=[begin]
                ),
                suppress=False,
            )

    async def _stop(self, cp: Any, event: SessionEvent) -> None:
        tx = self._store.tx(event.session_id)
        if tx is None and (started := self._view.started_event(event.session_id)) is not None:
            await self._start(cp, started)  # it charged, but OCPP never heard: start first
            tx = self._store.tx(event.session_id)
        if tx is None or tx.stopped:
            return  # never a transaction in OCPP, or its stop was answered before
        facts = self._view.session(event.session_id)
        meter = None if facts is None else (facts.meter_last_kwh or facts.meter_start_kwh)
        await cp.call(
            call.StopTransaction(
                meter_stop=energy_wh(meter),
                timestamp=rfc3339(event.ts),
                transaction_id=int(tx.transaction_id),
                reason=stop_reason_16(event.reason),
                id_tag=None if facts is None else id_tag(facts.token),
                transaction_data=self._signed_data(event, facts),
            ),
            suppress=False,
        )
        self._store.stopped(event.session_id)
        log.info("OCPP transaction %s (session %s) stopped", tx.transaction_id, event.session_id)

    def _signed_data(
        self, event: SessionEvent, facts: SessionFacts | None
    ) -> list[dict[str, Any]] | None:
        """The signed records for StopTransaction's ``transactionData`` (None: unsigned). The
        end record was committed with the CDR and this ``stopped`` event, so it is here."""
        signed = self._view.signed(event.session_id)
        if signed is None:
            return None
        data = []
        if signed.start is not None:
            begin_at = facts.charging_start if facts and facts.charging_start else event.ts
            data.append(signed_meter_value_16(signed.start, begin_at, "Transaction.Begin"))
        if signed.stop is not None:
            data.append(signed_meter_value_16(signed.stop, event.ts, "Transaction.End"))
        elif signed.error:
            log.warning("session %s: no signed end record (%s)", event.session_id, signed.error)
        return data or None

    def cdr_settled(self, cdr: Cdr) -> bool:
        return settled(self._store, cdr)


def settled(store: OcppState, cdr: Cdr) -> bool:
    """True once OCPP has all of the session (its stop answered, or it never was an OCPP
    transaction): the CDR is then acknowledged on our side."""
    tx = store.tx(cdr.session_id)
    if tx is not None and not tx.stopped:
        return False  # its stop is not answered yet: the CDR is offered again later
    log.info(
        "CDR %s settled (OCPP transaction %s)",
        cdr.session_id,
        "none" if tx is None else tx.transaction_id,
    )
    return True
