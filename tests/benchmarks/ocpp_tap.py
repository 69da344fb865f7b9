"""Tap to relay over OCPP 1.6J: the station against ocpp-csms on loopback.

Method: as the MQTT tap benchmark (tests/benchmarks/tap.py), with the central system
(``ocpp_csms.CentralSystem``, tests/ocpp_helpers.py) in this process instead of the MQTT
backend: the benchmark stamps ``t0 = time.monotonic()`` right before ``sim.tap`` goes to the
control socket; a logging handler on the CSMS's wire logger stamps every frame the moment the
CSMS reads it. "Relay closed" is the arrival of the ``StartTransaction`` frame: the adapter
sends it after the relay closed (the session's ``started`` event), so the figure is an upper
bound of tap -> relay by one loopback WebSocket hop. Every sample is a fresh session (the same
card stops it; the StopTransaction is awaited before the next tap). The agent's own share
(``tap_to_auth_req`` + ``answer_to_relay`` from its metrics) is reported beside it.
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
    return res
