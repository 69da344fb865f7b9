"""Status page: the web process's RSS, the pages' sizes, and how fast a card follows the station.

One daemon (two sim EVSEs, info logging) and one ``station-agent web`` process (TLS with its
self-signed certificate), a private Mosquitto and the reference backend in this process:

* **Card latency**: an ``/events`` stream is open (``tests.web_support.EventStream``, HTTPS in
  this process); ``sim.plug`` (then ``sim.unplug``) is sent over the control socket and the time
  from just before that request to the arrival of the first event whose EVSE 1 card shows the
  new state is taken. It covers the daemon's state change, the web process's poll of
  ``web.station`` (every 0.2 s), rendering and the event's trip over TLS; a browser adds its
  ``innerHTML`` swap (a few ms; the browser test prints its own figure). 20 changes (quick: 6).
* **Page sizes**: bytes of each page's body as served (no compression), and a first visit of the
  station page (HTML + CSS + JS).
* **RSS**: ``VmRSS`` of the web process after start-up (its second start: the first one made
  the certificate) before any request, and after every page 200 times (quick: 40) with one
  event stream open; page time p50/p95 from those requests (a new TLS connection each).
* **Daemon CPU** with one page open (the 0.2 s polls) against none, 10 s each (quick: 4 s).
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from pathlib import Path

from tests.benchmarks.common import (
    CLK_TCK,
    Result,
    Station,
    broker_and_backend,
    cpu_ticks,
    dist,
    fmt_dist,
    rss_kb,
    workdir,
)
from tests.helpers import UID_A
from tests.web_support import Client, EventStream, WebProc, card_state, web_section, write_password

EVSE1, EVSE2 = "DE*ICE*E000001*1", "DE*ICE*E000001*2"
TARGET_CARD_S = 1.0  # the issue: "see, within a second, what the station is doing"
TARGET_RSS_MB = 50.0


def _session(st: Station) -> str:
    st.ctl("sim.plug", evse_id=EVSE2)
    st.ctl("sim.tap", uid=UID_A)
    st.wait_state("charging", EVSE2)
    sid = str(st.evse(EVSE2)["session_id"])
    deadline = time.monotonic() + 20
    while len(st.ctl("web.session", session_id=sid)["readings"]) < 5:
        if time.monotonic() > deadline:
            raise RuntimeError("no meter readings stored")
        time.sleep(0.05)
    st.ctl("sim.tap", uid=UID_A)
    st.wait_state("finishing", EVSE2)
    st.ctl("sim.unplug", evse_id=EVSE2)
    st.wait_state("available", EVSE2)
    return sid


def _card_latency(st: Station, client: Client, changes: int) -> list[float]:
    stream = EventStream(client)
    out = []
    rng = random.Random(16)
    try:
        stream.wait_for(lambda e, d: card_state(d["cards"], EVSE1) == "available")
        for i in range(changes):
            cmd, state = ("sim.plug", "preparing") if i % 2 == 0 else ("sim.unplug", "available")
            # pacing at a random phase: right after an event the next poll is a full period
            # away, so changes sent back to back would all measure the worst case
            time.sleep(rng.uniform(0.0, 0.3))
            t0 = time.monotonic()
            st.ctl(cmd, evse_id=EVSE1)
            stream.wait_for(lambda e, d, s=state: card_state(d["cards"], EVSE1) == s)
            out.append(time.monotonic() - t0)
    finally:
        stream.close()
    if len(out) % 2:
        st.ctl("sim.unplug", evse_id=EVSE1)
    return out


def _sizes(client: Client, sid: str) -> dict[str, int]:
    paths = {
        "login": "/login",
        "station": "/",
        "log": "/log",
        "session": f"/session/{sid}",
        "diagnostics": "/diagnostics",
        "csv": "/log.csv",
        "api_status": "/api/status",
        "style.css": "/static/style.css",
        "live.js": "/static/live.js",
    }
    out = {}
    for name, path in paths.items():
        r = client.get(path, cookie=name != "login")
        assert r.status == 200, (path, r.status)
        out[name] = len(r.body)
    return out


def _cpu(pid: int, seconds: float) -> float:
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    time.sleep(seconds)  # the measuring window itself
    return 100.0 * (cpu_ticks(pid) - c0) / CLK_TCK / (time.monotonic() - t0)


def run_web(quick: bool) -> Result:
    res = Result("10. Status page (station-agent web)")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    with workdir("web") as tmp, broker_and_backend(prefix) as (mosq, _backend):
        st = Station(
            tmp, mosq.url, prefix, evses=2, web=web_section(tmp), store={"meter_interval_s": 0.5}
        )
        web = WebProc(st.config_path, tmp)
        try:
            st.start()
            write_password(Path(st.config["web"]["password_file"]))
            web.start()  # the first start makes the self-signed certificate (cryptography)
            web.stop()
            web.start()  # a normal start: the certificate is read, cryptography not loaded
            rss_start = rss_kb(web.pid)
            client = web.client()
            assert client.login().status == 303
            sid = _session(st)
            latency = _card_latency(st, client, 6 if quick else 20)
            sizes = _sizes(client, sid)
            page_ms, rss_end = _load(client, web, sid, 40 if quick else 200)
            window = 4.0 if quick else 10.0
            idle_cpu = _cpu(st.pid, window)
            stream = EventStream(client)
            try:
                stream.next_event()
                open_cpu = _cpu(st.pid, window)
            finally:
                stream.close()
        finally:
            web.stop()
            st.stop()
    _rows(res, latency, sizes, page_ms, rss=(rss_start, rss_end), cpu=(idle_cpu, open_cpu))
    return res


def _load(client: Client, web: WebProc, sid: str, rounds: int) -> tuple[list[float], int]:
    stream = EventStream(client)
    times = []
    try:
        for _ in range(rounds):
            for path in ("/", "/log", f"/session/{sid}", "/diagnostics", "/api/status"):
                t0 = time.monotonic()
                assert client.get(path).status == 200
                times.append((time.monotonic() - t0) * 1000)
        return times, rss_kb(web.pid)
    finally:
        stream.close()


def _rows(
    res: Result,
    latency: list[float],
    sizes: dict[str, int],
    page_ms: list[float],
    *,
    rss: tuple[int, int],
    cpu: tuple[float, float],
) -> None:
    lat = dist([x * 1000 for x in latency])
    res.data.update(latency_ms=lat, sizes=sizes, page_ms=dist(page_ms), rss_kb=rss, cpu=cpu)
    res.row(
        "state change -> card event (HTTPS, SSE)",
        fmt_dist(lat),
        f"< {TARGET_CARD_S * 1000:.0f} ms",
        lat["max"] < TARGET_CARD_S * 1000,
    )
    first = sizes["station"] + sizes["style.css"] + sizes["live.js"]
    res.row(
        "page bytes (uncompressed)",
        ", ".join(f"{k} {v}" for k, v in sizes.items()) + f"; first visit of / {first}",
    )
    res.row("page time, 5 pages (HTTPS, keep-alive off)", fmt_dist(dist(page_ms)))
    res.row(
        "web process RSS",
        f"{rss[0] / 1024:.1f} MB after start, {rss[1] / 1024:.1f} MB after {len(page_ms)} requests",
        f"< {TARGET_RSS_MB:.0f} MB",
        rss[1] / 1024 < TARGET_RSS_MB,
    )
    res.row(
        "daemon CPU, no page / one page open",
        f"{cpu[0]:.2f} % / {cpu[1]:.2f} % of one core",
    )


if __name__ == "__main__":
    quick_run = "--quick" in sys.argv
    result = run_web(quick_run)
    for row in result.rows:
        print(f"| {row.bench} | {row.measure} | {row.result} | {row.target} | {row.status} |")
