"""Technician diagnostics run by the daemon: relay cycle/reset, meter read, self-test.

Each check reports pass/fail, how long it took, and on failure which device, which path and
what to check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.clock import rfc3339
from agent.control_args import EvseArgs, NoArgs, resolve_evse
from agent.errors import AgentError, DriverError
from agent.messages import EvseState
from agent.session import FaultCleared
from drivers.meter.base import signing

if TYPE_CHECKING:
    from agent.controller import Controller

log = logging.getLogger(__name__)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 1)


def relay_cycle(ctl: Controller, args: EvseArgs) -> dict[str, Any]:
    """Close, read feedback, open, read feedback: only on an idle EVSE with no car."""
    evse_id = resolve_evse(ctl, args.evse_id)
    rt = ctl.evses[evse_id]
    st = rt.state
    if (
        st.session is not None
        or st.plugged
        or st.phase not in (EvseState.AVAILABLE, EvseState.UNAVAILABLE)
    ):
        raise ValueError(
            f"{evse_id} is {st.phase.value}"
            f"{' with a car plugged' if st.plugged else ''}: relay cycle needs an "
            "idle EVSE with no session and no car"
        )
    steps: list[dict[str, Any]] = []
    verdict = "ok"
    for action, switch in (("close", rt.relay.close), ("open", rt.relay.open)):
        t0 = time.perf_counter()
        try:
            switch()
            feedback = rt.relay.feedback_closed()
            steps.append({"step": action, "ms": _ms(t0), "feedback_closed": feedback})
        except DriverError as err:
            steps.append({"step": action, "ms": _ms(t0), "error": str(err)})
            verdict = err.kind or "relay_failed"
            break
    try:
        rt.relay.open()  # whatever happened: leave it open
    except DriverError as err:
        verdict = err.kind or "relay_failed"
        steps.append({"step": "final open", "error": str(err)})
    if verdict == "ok" and all(s.get("feedback_closed") is None for s in steps):
        verdict = "ok (no feedback wired: switching not verified)"
    return {"evse_id": evse_id, "verdict": verdict, "steps": steps}


def relay_reset(ctl: Controller, args: EvseArgs) -> dict[str, Any]:
    """Clear a latched relay fault, only once the feedback reads open."""
    evse_id = resolve_evse(ctl, args.evse_id)
    rt = ctl.evses[evse_id]
    try:
        rt.relay.reset()
    except DriverError as err:
        raise ValueError(f"{evse_id}: not reset, {err}") from err
    if rt.state.fault is not None and rt.state.fault.is_relay:
        ctl.dispatch(evse_id, FaultCleared())
    log.warning("%s: relay fault reset by a technician", evse_id)
    return {"evse_id": evse_id, "state": rt.state.phase.value}


def meter_read(ctl: Controller, args: EvseArgs) -> dict[str, Any]:
    evse_id = resolve_evse(ctl, args.evse_id)
    rt = ctl.evses[evse_id]
    t0 = time.perf_counter()
    reading = rt.meter.read()
    return {
        "evse_id": evse_id,
        "energy_kwh": reading.energy_kwh,
        "power_w": reading.power_w,
        "voltage_v": reading.voltage_v,
        "driver": rt.config.meter.driver,
        "model": getattr(rt.config.meter, "model", "sim"),
        "read_ms": _ms(t0),
        "signed": signing(rt.meter) is not None,  # a meter that does not sign says so
    }


def _check(name: str, fn: Callable[[], str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        detail = fn()
        return {"check": name, "ok": True, "ms": _ms(t0), "detail": detail}
    except (AgentError, OSError, ValueError) as err:
        return {"check": name, "ok": False, "ms": _ms(t0), "detail": str(err)}


def _health(kind: str, device: Any, what: str) -> Callable[[], str]:
    def probe() -> str:
        health = device.health()
        if not health.ok:
            raise DriverError(f"{kind} {what}: {health.fault}: {health.detail or 'no detail'}")
        return what

    return probe


def _clock_probe(ctl: Controller) -> str:
    """Fails while the wall clock is known to be unset (asked anew: NTP may have set it)."""
    problem = ctl.clock_check.problem()
    if problem is not None:
        sessions = (
            "start anyway (station.allow_unset_clock)"
            if ctl.clock_check.allow_unset
            else "are refused"
        )
        raise AgentError(
            f"{problem}; sessions {sessions} until NTP sets it: check the network and"
            " the time servers"
        )
    return rfc3339(ctl.clock.now())


def _backend_probe(ctl: Controller) -> str:
    """The broker may be up while the backend behind it does not answer."""
    if not ctl.backend.connected:
        raise AgentError("unknown: not connected to the broker")
    silent = ctl.backend.faults().get("backend:not_answering")
    if silent:
        raise AgentError(f"the broker is connected but the backend does not answer: {silent}")
    return "answering (no auth/req left unanswered)"


def selftest(ctl: Controller, args: NoArgs) -> list[dict[str, Any]]:
    """One line per device: reader, relays, meters, camera, display, broker, clock, store."""
    checks: list[dict[str, Any]] = []
    rfid = ctl.drivers.rfid
    info = rfid.info()
    reader = f"{info.get('driver')} {info.get('path', '')} {info.get('firmware', '')}".strip()
    checks.append(_check("rfid reader", _health("reader", rfid, reader)))
    for evse_id, rt in ctl.evses.items():

        def relay_probe(rt: Any = rt, evse_id: str = evse_id) -> str:
            health = rt.relay.check_feedback()
            if not health.ok:
                raise DriverError(f"{evse_id} relay: {health.fault}: {health.detail}")
            fb = rt.relay.feedback_closed()
            if fb is not None and fb != rt.relay.is_closed():
                commanded = "closed" if rt.relay.is_closed() else "open"
                raise DriverError(
                    f"{evse_id} relay feedback reads {'closed' if fb else 'open'}"
                    f" while commanded {commanded}"
                )
            return f"{rt.config.relay.driver}, feedback {'not wired' if fb is None else 'ok'}"

        def meter_probe(rt: Any = rt) -> str:
            r = rt.meter.read()
            return f"{rt.config.meter.driver} {r.energy_kwh:.3f} kWh"

        checks.append(_check(f"relay {evse_id}", relay_probe))
        checks.append(_check(f"meter {evse_id}", meter_probe))
    if ctl.drivers.qr is not None:
        checks.append(_check("camera", _health("QR reader", ctl.drivers.qr, ctl.config.qr.driver)))
    display = ctl.drivers.display

    def display_probe() -> str:
        display.show_message("Self-test")
        return _health("display", display, ctl.config.display.driver)()

    checks.append(_check("display", display_probe))

    def broker_probe() -> str:
        if not ctl.backend.connected:
            raise AgentError(
                f"not connected to {ctl.backend.endpoint}: check the network, the "
                "broker address and the credentials"
            )
        return ctl.backend.endpoint

    checks.append(_check("broker", broker_probe))
    checks.append(_check("backend", lambda: _backend_probe(ctl)))
    checks.append(_check("clock", lambda: _clock_probe(ctl)))

    def store_probe() -> str:
        if not ctl.store.integrity_ok():
            raise AgentError(f"{ctl.store.path}: integrity check failed")
        pending, _ = ctl.store.outbox_stats()
        return f"{ctl.store.path} ok, {pending} CDR(s) pending"

    checks.append(_check("store", store_probe))
    return checks
