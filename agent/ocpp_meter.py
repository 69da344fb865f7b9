"""MeterValues during OCPP transactions: periodic (``MeterValueSampleInterval``) and
clock-aligned (``ClockAlignedDataInterval``, on the wall clock's multiples of the interval).

The value is the energy register in Wh as the station last stored it for the session (the core
reads the meter every ``store.meter_interval_s`` and commits the reading; keep that interval at
or below the sample interval). MeterValues are not transaction-critical here: they are sent
while the link is up and not queued through an outage (StartTransaction/StopTransaction are).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.backend_ocpp import OcppBackend

log = logging.getLogger(__name__)

TICK_S = 0.5
CATCH_UP_S = 2.0  # how often a charging session without an OCPP start is looked for


class MeterValuesTask:
    def __init__(self, backend: OcppBackend) -> None:
        self._backend = backend

    async def run(self, cp: Any) -> None:
        clock = self._backend.clock
        settings = self._backend.settings
        last_periodic = clock.monotonic()
        last_slot: int | None = None
        last_catch_up = clock.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            if clock.monotonic() - last_catch_up >= CATCH_UP_S:
                last_catch_up = clock.monotonic()
                self._backend.catch_up()
            sample = settings.meter_sample_interval()
            mono = clock.monotonic()
            if sample and mono - last_periodic >= sample:
                last_periodic = mono
                await self.send_now(cp, None, "Sample.Periodic")
            aligned = settings.clock_aligned_interval()
            if not aligned:
                last_slot = None
                continue
            slot = int(clock.now().timestamp()) // aligned
            if last_slot is not None and slot != last_slot:
                await self.send_now(cp, None, "Sample.Clock")
            last_slot = slot

    async def send_now(self, cp: Any, connector: int | None, context: str = "Trigger") -> int:
        """One MeterValues per running OCPP transaction (on ``connector`` only, if given)."""
        backend = self._backend
        sent = 0
        for facts in backend.view.charging():
            tx = backend.state.tx(facts.session_id)
            if tx is None or tx.stopped:
                continue  # no transaction id yet: its StartTransaction goes first
            if connector not in (None, 0, tx.connector):
                continue
            kwh = facts.meter_last_kwh if facts.meter_last_kwh is not None else 0.0
            if facts.meter_last_kwh is None and facts.meter_start_kwh is not None:
                kwh = facts.meter_start_kwh
            at = facts.meter_last_at or backend.clock.now()
            await backend.dialect.meter_values(cp, tx, kwh, at, context)
            sent += 1
        return sent
