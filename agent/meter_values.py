"""``P/meter``: a charging session's energy and power, at most every ``mqtt.meter_values_s``.

Built from the reading that just came in (the loop's background meter poll) and the session's
start register (the store); nothing is queued: a value that could not be sent is simply
followed by the next one.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agent.clock import Clock
from agent.config import AgentConfig
from agent.evse import EvseRuntime
from agent.messages import EvseState, MeterValues
from agent.store import Store
from drivers.meter.base import MeterReading


@runtime_checkable
class MeterValuesPort(Protocol):
    """A backend adapter that can send live meter values (the MQTT one: ``P/meter``). Not part
    of the :class:`~agent.backend.Backend` port: an adapter without it sends none."""

    def meter_values(self, values: MeterValues) -> bool:
        """A charging session's meter now; not queued: the next one follows."""
        ...


def note_reading(
    rt: EvseRuntime,
    reading: MeterReading,
    *,
    store: Store,
    backend: object,
    clock: Clock,
    config: AgentConfig,
) -> None:
    """A reading from the background poll: kept on the runtime (arbiter, display, status),
    stored for a charging session every ``store.meter_interval_s`` (the plot, the CDR), and
    sent as live values when due."""
    mono = clock.monotonic()
    rt.last_energy_kwh = reading.energy_kwh
    rt.last_power_w, rt.last_power_mono = reading.power_w, mono
    session = rt.state.session
    if (
        rt.state.phase is EvseState.CHARGING
        and session is not None
        and mono - rt.last_meter_store >= config.store.meter_interval_s
    ):
        store.record_meter(session.session_id, clock.now(), reading.energy_kwh)
        rt.last_meter_store = mono
    send_meter_values(backend, rt, store, clock, config.mqtt.meter_values_s)  # P/meter


def send_meter_values(
    backend: object, rt: EvseRuntime, store: Store, clock: Clock, interval_s: float
) -> None:
    """After a reading: the values, if due and if the backend can send them."""
    if isinstance(backend, MeterValuesPort):
        values = meter_values_due(rt, store, clock, interval_s)
        if values is not None:
            backend.meter_values(values)


def meter_values_due(
    rt: EvseRuntime, store: Store, clock: Clock, interval_s: float
) -> MeterValues | None:
    """The values to publish now for ``rt``, or None (not charging, off, or not yet due)."""
    session = rt.state.session
    if (
        interval_s <= 0
        or session is None
        or rt.state.phase is not EvseState.CHARGING
        or rt.last_energy_kwh is None
    ):
        return None
    mono = clock.monotonic()
    if rt.last_meter_publish and mono - rt.last_meter_publish < interval_s:
        return None
    row = store.get_session(session.session_id)
    if row is None or row.meter_start_kwh is None:
        return None
    rt.last_meter_publish = mono
    return MeterValues(
        session_id=session.session_id,
        evse_id=rt.evse_id,
        ts=clock.now(),
        energy_kwh=max(0.0, rt.last_energy_kwh - row.meter_start_kwh),
        meter_kwh=rt.last_energy_kwh,
        power_w=rt.last_power_w,
    )
