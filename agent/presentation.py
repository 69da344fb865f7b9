"""Presentation: the status message and the station's screens, built from the EVSEs' state.

Pure builders (:func:`build_status`, :func:`screen_for`) plus :class:`StatusPublisher`, which
sends the status only when something other than its time stamp changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from agent import __version__
from agent.backend import Backend
from agent.clock import Clock, ClockCheck
from agent.errors import DriverError, StoreError
from agent.evse import EvseRuntime, StationDrivers
from agent.failover import ReportsBrokerLink
from agent.messages import BrokerStatus, EvseState, EvseStatus, OutboxStatus, StatusMessage
from agent.store import Store
from drivers.display.base import EvseScreen
from drivers.health import Health

log = logging.getLogger(__name__)

DEFAULT_MESSAGES = {
    EvseState.AVAILABLE: "Tap your card or scan the QR code",
    EvseState.PREPARING: "Tap your card",
    EvseState.AUTHORIZING: "Authorising...",
    EvseState.AUTHORIZED: "Plug in your car",
    EvseState.CHARGING: "Charging",
    EvseState.FINISHING: "Unplug your car",
    EvseState.UNAVAILABLE: "Out of service",
    EvseState.FAULTED: "Fault - out of service",
}


def evse_status(rt: EvseRuntime) -> EvseStatus:
    st = rt.state
    status = EvseStatus(
        evse_id=rt.evse_id,
        state=st.phase,
        session_id=st.session.session_id if st.session else None,
        plugged=st.plugged,
        relay_closed=rt.relay.is_closed(),
        fault=st.fault,
    )
    if rt.pilot is None:
        return status
    alloc = rt.allocation
    return status.model_copy(
        update={
            "pilot": st.pilot.value if st.pilot else None,
            "offered_a": alloc.offered_a if alloc else 0.0,
            "limit_a": alloc.limit_a if alloc else None,
            "limit_source": alloc.source.value if alloc else None,
        }
    )


def station_faults(
    own: dict[str, str], devices: Iterable[tuple[str, Health]], backend: dict[str, str]
) -> list[str]:
    """Station-wide faults: the station's own, the backend's, then unhealthy devices."""
    faults = sorted({*own, *backend})
    faults.extend(f"{kind}:{health.fault}" for kind, health in devices if not health.ok)
    return faults


def broker_status(backend: object) -> BrokerStatus | None:
    """The broker node in use, for backends that have one (the MQTT adapter)."""
    if not isinstance(backend, ReportsBrokerLink):
        return None
    link = backend.broker_link()
    return BrokerStatus(
        url=link.url,
        node=link.node,
        nodes=link.nodes,
        reconnect_delay_s=link.reconnect_delay_s,
        failovers=link.failovers,
    )


def build_status(
    *,
    station_id: str,
    now: datetime,
    evses: Sequence[EvseRuntime],
    faults: list[str],
    outbox: tuple[int, datetime | None],
    local_list_version: int,
    inbound_dropped: dict[str, int] | None = None,
    broker: BrokerStatus | None = None,
) -> StatusMessage:
    pending, oldest = outbox
    return StatusMessage(
        station_id=station_id,
        ts=now,
        version=__version__,
        evses=[evse_status(rt) for rt in evses],
        faults=faults,
        outbox=OutboxStatus(pending=pending, oldest=oldest),
        local_list_version=local_list_version,
        inbound_dropped=inbound_dropped or None,  # left out while nothing was dropped
        broker=broker,
    )


def charging_text(energy_kwh: float, power_w: float | None, elapsed_s: float | None) -> str:
    """``Charging 3.21 kWh  11.0 kW  0:12:34``: what a driver wants to see while charging."""
    parts = [f"Charging {energy_kwh:.2f} kWh"]
    if power_w is not None:
        parts.append(f"{power_w / 1000:.1f} kW")
    if elapsed_s is not None:
        minutes, seconds = divmod(int(max(0.0, elapsed_s)), 60)
        parts.append(f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}")
    return "  ".join(parts)


def screen_for(
    rt: EvseRuntime,
    energy_kwh: float | None,
    *,
    elapsed_s: float | None = None,
) -> EvseScreen:
    """What the display shows for one EVSE (``energy_kwh``: charged so far, ``elapsed_s``:
    since charging started, if known; the power is the meter's last reading)."""
    st = rt.state
    message = rt.message or DEFAULT_MESSAGES[st.phase]
    if st.phase is EvseState.CHARGING and rt.message is None and energy_kwh is not None:
        message = charging_text(energy_kwh, rt.last_power_w, elapsed_s)
    if st.phase is EvseState.FAULTED and st.fault:
        message = f"Fault: {st.fault}"
    return EvseScreen(evse_id=rt.evse_id, state=st.phase.value, message=message)


class StatusPublisher:
    """Publishes the status when it changed (time stamp aside), and again on every reconnect."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._last: str | None = None

    def publish(self, status: StatusMessage) -> None:
        key = json.dumps(status.model_dump(mode="json", exclude={"ts"}), sort_keys=True)
        if key == self._last:
            return
        if self._backend.status(status):
            self._last = key

    def forget(self) -> None:
        """The next status goes out whatever it says (a reconnect)."""
        self._last = None


class Presenter:
    """The station as others see it: the status message (published when it changed) and the
    screen of every EVSE."""

    def __init__(
        self,
        *,
        station_id: str,
        drivers: StationDrivers,
        store: Store,
        backend: Backend,
        clock: Clock,
        evses: Sequence[EvseRuntime],
        station_faults: dict[str, str],
        clock_check: ClockCheck | None = None,
    ) -> None:
        self._station_id = station_id
        self._drivers = drivers
        self._store = store
        self._backend = backend
        self._clock = clock
        self._evses = evses
        self._faults = station_faults  # shared with the controller, which sets them
        self._clock_check = clock_check
        self.publisher = StatusPublisher(backend)

    def status(self) -> StatusMessage:
        drivers = self._drivers
        devices = [("rfid", drivers.rfid.health()), ("display", drivers.display.health())]
        if drivers.qr is not None:
            devices.append(("qr", drivers.qr.health()))
        devices.extend(("pilot", rt.pilot.health()) for rt in self._evses if rt.pilot)
        return build_status(
            station_id=self._station_id,
            now=self._clock.now(),
            evses=self._evses,
            faults=station_faults(self._faults, devices, self._station_own_faults()),
            outbox=self._store.outbox_stats(),
            local_list_version=self._store.local_list_version(),
            inbound_dropped=self._backend.inbound_dropped(),
            broker=broker_status(self._backend),
        )

    def _station_own_faults(self) -> dict[str, str]:
        """The backend's faults plus ``clock:unset`` while the wall clock is known to be unset
        (asked every time: an NTP step clears it)."""
        faults = dict(self._backend.faults())
        problem = self._clock_check.problem() if self._clock_check else None
        if problem is not None:
            faults["clock:unset"] = problem
        return faults

    def publish(self) -> None:
        try:
            self.publisher.publish(self.status())
        except StoreError as err:
            log.error("status not published: %s", err)

    def refresh(self) -> None:
        for rt in self._evses:
            try:
                energy, elapsed = self._session_energy(rt)
                self._drivers.display.show(screen_for(rt, energy, elapsed_s=elapsed))
            except (DriverError, StoreError) as err:
                log.error("display failed: %s", err)

    def _session_energy(self, rt: EvseRuntime) -> tuple[float | None, float | None]:
        """Energy charged so far and seconds since charging started (None: not known)."""
        session = rt.state.session
        if session is None or rt.last_energy_kwh is None:
            return None, None
        row = self._store.get_session(session.session_id)
        if row is None or row.meter_start_kwh is None:
            return None, None
        elapsed = None
        if row.charging_start is not None:
            elapsed = (self._clock.now() - row.charging_start).total_seconds()
        return max(0.0, rt.last_energy_kwh - row.meter_start_kwh), elapsed
