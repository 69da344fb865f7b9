"""Tap to relay over OCPP 1.6J, and the drain after an outage: the station against ocpp-csms
on loopback.

Method: as the MQTT tap benchmark (tests/benchmarks/tap.py), with the central system
(``ocpp_csms.CentralSystem``, tests/ocpp_helpers.py) in this process instead of the MQTT
backend: the benchmark stamps ``t0 = time.monotonic()`` right before ``sim.tap`` goes to the
control socket; a logging handler on the CSMS's wire logger stamps every frame the moment the
CSMS reads it. "Relay closed" is the arrival of the ``StartTransaction`` frame: the adapter
sends it after the relay closed (the session's ``started`` event), so the figure is an upper
bound of tap -> relay by one loopback WebSocket hop. Every sample is a fresh session (the same
card stops it; the StopTransaction is awaited before the next tap). The agent's own share
(``tap_to_auth_req`` + ``answer_to_relay`` from its metrics) is reported beside it.

Drain: N sessions are charged while the CSMS is stopped (the card is on the local list the
CSMS sent), then the CSMS starts again on the same port; measured from the arrival of the
BootNotification to the arrival of the last StopTransaction; checked: every StartTransaction
before its StopTransaction, every stop with the id the CSMS assigned, none twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tests.benchmarks.common import (
    UID_A,
    Result,
    Station,
    dist,
    fmt_dist,
    wait_until,
    workdir,
)
from tests.benchmarks.tap import TARGET_P95_MS, _agent_share, evse_config
from tests.ocpp_helpers import Csms, ocpp_config


class Stamps(logging.Handler):
    """(monotonic time, action) of every CALL the CSMS reads."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        t = time.monotonic()
        if "receive message" in str(record.msg) and isinstance(record.args, tuple):
            frame = str(record.args[1])
            if frame.startswith("[2,"):
                self.seen.append((t, frame.split(",", 3)[2].strip('"')))


def _next(stamps: Stamps, action: str, mark: int, timeout: float = 10.0) -> float:
    def find() -> float | None:
        for t, a in stamps.seen[mark:]:
            if a == action:
                return t
        return None

    return float(wait_until(find, timeout, action))


def tap_over_ocpp(n: int, warmup: int = 3) -> dict[str, Any]:
    e2e: list[float] = []
    to_authorize: list[float] = []
    stamps = Stamps()
    csms = Csms().start()
    logging.getLogger("ocpp_csms.wire").addHandler(stamps)
    try:
        with workdir("ocpp-tap") as tmp:
            over = ocpp_config(csms, tmp, meter_value_sample_interval_s=0)
            st = Station(tmp, "mqtt://127.0.0.1:9", "bench", evse=evse_config(), **over).start()
            try:
                st.ctl("sim.plug")
                wait_until(lambda: st.evse()["state"] == "preparing", 5, "preparing")
                for i in range(n + warmup):
                    mark = len(stamps.seen)
                    t0 = time.monotonic()
                    st.ctl("sim.tap", uid=UID_A)
                    started = _next(stamps, "StartTransaction", mark)
                    auth = _next(stamps, "Authorize", mark)
                    if i >= warmup:
                        e2e.append((started - t0) * 1000)
                        to_authorize.append((auth - t0) * 1000)
                    mark = len(stamps.seen)
                    st.ctl("sim.tap", uid=UID_A)  # same card: stop
                    _next(stamps, "StopTransaction", mark)
                    wait_until(lambda: st.ctl("outbox")["pending"] == 0, 10, "CDR settled")
                metrics = st.ctl("metrics")
            finally:
                st.stop()
    finally:
        logging.getLogger("ocpp_csms.wire").removeHandler(stamps)
        csms.close()
    return {"e2e": dist(e2e), "tap_to_authorize": dist(to_authorize), "agent_metrics": metrics}


def run_ocpp_tap(quick: bool) -> Result:
    res = Result("10. Tap to relay over OCPP 1.6J (ocpp-csms on loopback)")
    data = tap_over_ocpp(20 if quick else 300)
    res.data.update(data)
    res.row(
        "end-to-end: sim.tap sent -> StartTransaction at the CSMS",
        fmt_dist(data["e2e"]),
        f"p95 < {TARGET_P95_MS:.0f} ms",
        data["e2e"]["p95"] < TARGET_P95_MS,
    )
    res.row("of which: sim.tap sent -> Authorize at the CSMS", fmt_dist(data["tap_to_authorize"]))
    agent = _agent_share(data["agent_metrics"], ("tap_to_auth_req", "answer_to_relay"))
    res.row(
        "agent share: tap_to_auth_req + answer_to_relay (per percentile)",
        f"p50 {agent['p50']:.2f} / p95 {agent['p95']:.2f} / p99 {agent['p99']:.2f} ms",
    )
    drain = drain_over_ocpp(10 if quick else 200)
    res.data["drain"] = drain
    ok = drain["in_order"] and drain["stops_with_assigned_ids"]
    res.row(
        f"outage drain: {drain['sessions']} offline sessions, CSMS back -> every"
        " StopTransaction (from the BootNotification)",
        f"{drain['seconds']:.2f} s, {drain['messages_per_s']} transaction messages/s;"
        f" {drain['starts']} starts, {drain['stops']} stops",
        "in order, stops carry the assigned ids",
        ok,
    )
    return res


def drain_over_ocpp(n: int) -> dict[str, Any]:
    """``n`` sessions charged while the CSMS is down (local list), then the CSMS comes back:
    how fast the 2n transaction messages arrive, in order, with the assigned ids."""
    stamps = Stamps()
    csms = Csms().start()
    logging.getLogger("ocpp_csms.wire").addHandler(stamps)
    try:
        with workdir("ocpp-drain") as tmp:
            over = ocpp_config(csms, tmp, meter_value_sample_interval_s=0)
            st = Station(tmp, "mqtt://127.0.0.1:9", "bench", evse=evse_config(), **over).start()
            try:
                from ocpp.v16 import call

                entry = {"idTag": UID_A, "idTagInfo": {"status": "Accepted"}}
                csms.run(csms.cp(st.station_id).async_call(call.SendLocalList(1, "Full", [entry])))
                st.ctl("sim.plug")
                csms.stop()
                wait_until(lambda: not st.ctl("status")["link"]["connected"], 10, "link down")
                for _ in range(n):
                    st.ctl("sim.tap", uid=UID_A)
                    wait_until(lambda: st.evse()["relay_closed"], 5, "relay closed")
                    st.ctl("sim.tap", uid=UID_A)
                    wait_until(lambda: not st.evse()["relay_closed"], 5, "relay open")
                mark = len(stamps.seen)
                csms.start()
                boot = _next(stamps, "BootNotification", mark, 30)
                wait_until(lambda: len(csms.calls("StopTransaction")) >= n, 120, "every stop")
                last = max(t for t, a in stamps.seen if a == "StopTransaction")
                wait_until(lambda: st.ctl("outbox")["pending"] == 0, 30, "every CDR settled")
            finally:
                st.stop()
        actions = [a for a in csms.actions() if a in ("StartTransaction", "StopTransaction")]
        ids = csms.tx_ids()
        stops = [s["transactionId"] for s in csms.calls("StopTransaction")]
    finally:
        logging.getLogger("ocpp_csms.wire").removeHandler(stamps)
        csms.close()
    seconds = last - boot
    return {
        "sessions": n,
        "seconds": round(seconds, 3),
        "messages_per_s": round(2 * n / seconds, 1) if seconds > 0 else None,
        "in_order": actions == ["StartTransaction", "StopTransaction"] * n,
        "stops_with_assigned_ids": stops == ids and -1 not in stops,
        "starts": len(ids),
        "stops": len(stops),
    }
