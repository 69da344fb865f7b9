"""Outage drain: N sessions completed while the station's broker link is down, then it comes back.

Set-up: one daemon, ``auth.offline_policy = "accept_all"`` (free vend while the backend is out
of reach), sim meter ``time_factor = 3600`` (an hour of charging per second, so every session
has energy), ``mqtt.reconnect_max_s = 1`` (paho's reconnect back-off capped at 1 s, so the
moment the link is back does not depend on how far the back-off had grown).

The outage is cut between the station and Mosquitto: the station connects through a TCP relay
in the benchmark process (``common.TcpRelay``) which closes every connection and stops
listening ("connection refused", as with a stopped broker); the backend (``BackendSim``, this
process) stays connected and subscribed to the broker, as a backend on a broker cluster would.
(Stopping Mosquitto itself would also drop the backend's non-persistent subscription; its own
reconnect back-off would then decide when CDRs can be received, not the station.)

While cut, each session is ``sim.plug``, ``sim.tap``, ``sim.unplug`` over the control socket
(the controller handles them in order, so no polling is needed; the session ids are read back
from the daemon's store). The outbox then holds N CDRs and 3N queued session events.

Then the relay listens again and four moments are stamped: ``t_up`` relay listening,
``t_tcp`` the station's TCP connection accepted, ``t_link`` the station's first ``status``
(published first thing after CONNACK) received by the backend, ``t_acked`` the first poll of
the control socket (every 20 ms) that shows an empty outbox. Rate = N / (t_acked - t_link).
The backend acks every CDR the moment it arrives and counts duplicates (``cdr_duplicates``: a
CDR received again for a session id it had already seen). Finally: were all 3N queued session
events delivered, and does a new session's ``started`` event reach the backend afterwards?
"""

from __future__ import annotations

import time

from tests.benchmarks.common import (
    UID_A,
    Result,
    Station,
    TcpRelay,
    broker_and_backend,
    wait_event,
    wait_suffix,
    wait_until,
    workdir,
)
from tests.benchmarks.tap import evse_config

TARGET_RATE = 200.0


def run_drain(quick: bool) -> Result:
    res = Result("6. Outage drain")
    n = 100 if quick else 1000
    with workdir("drain") as tmp, broker_and_backend() as (mosq, backend):
        relay = TcpRelay(mosq.port)
        st = Station(
            tmp,
            relay.url,
            "bench",
            evse=evse_config(time_factor=3600.0),
            auth={"offline_policy": "accept_all"},
            mqtt={"reconnect_max_s": 1.0},
        ).start()
        try:
            relay.cut()
            wait_until(lambda: not st.ctl("status")["link"]["connected"], 10, "link down")
            t0 = time.monotonic()
            for _ in range(n):
                st.ctl("sim.plug")
                st.ctl("sim.tap", uid=UID_A)
                st.ctl("sim.unplug")
            pending = wait_until(
                lambda: st.ctl("outbox")["pending"] >= n and st.ctl("outbox")["pending"],
                30,
                "all CDRs in the outbox",
            )
            t_made = time.monotonic() - t0
            sessions = st.ctl("sessions", limit=n + 10)
            ids = {s["session_id"] for s in sessions if s["state"] != "charging"}
            mark = len(backend.received)
            n_accepted = len(relay.accepted)
            relay.restore()
            t_up = time.monotonic()
            link = wait_suffix(backend, "status", mark, timeout=30, online=True)
            t_tcp = relay.accepted[n_accepted] if len(relay.accepted) > n_accepted else link.t
            while st.ctl("outbox")["pending"] > 0:
                if time.monotonic() - t_up > 120:
                    raise TimeoutError("outbox not drained within 120 s")
                time.sleep(0.02)
            t_acked = time.monotonic()
            time.sleep(1.0)  # late duplicates, if any
            # a live session after the drain: does its 'started' event reach the backend?
            mark2 = len(backend.received)
            st.ctl("sim.plug")
            st.ctl("sim.tap", uid=UID_A)
            wait_until(lambda: st.evse()["state"] == "charging", 5, "live session charging")
            try:
                wait_event(backend, "started", mark2, timeout=3.0)
                live_event = True
            except TimeoutError:
                live_event = False
            st.ctl("sim.unplug")
            with backend._cond:
                cdrs = dict(backend.cdrs)
                dups = backend.cdr_duplicates
                cdr_times = [r.t for r in backend.received[mark:] if r.suffix == "cdr"]
                events = sum(1 for r in backend.received[mark:mark2] if r.suffix == "session")
        finally:
            st.stop()
            relay.close()
    lost = sorted(ids - set(cdrs))
    drain_s = t_acked - link.t
    rate = n / drain_s if drain_s > 0 else float("inf")
    first_last = (max(cdr_times) - min(cdr_times)) if cdr_times else 0.0
    res.data = {
        "sessions": n,
        "sessions_in_store": len(ids),
        "outbox_before": pending,
        "make_sessions_s": round(t_made, 2),
        "link_up_to_tcp_s": round(t_tcp - t_up, 3),
        "link_up_to_status_s": round(link.t - t_up, 3),
        "link_to_all_acked_s": round(drain_s, 3),
        "cdrs_per_s": round(rate, 1),
        "first_to_last_cdr_at_backend_s": round(first_last, 3),
        "cdrs_received": len(cdr_times),
        "duplicates": dups,
        "lost": len(lost),
        "lost_ids": lost[:10],
        "session_events_received": events,
        "session_events_expected": 3 * n,
        "live_session_event_after_drain": live_event,
    }
    res.row(
        f"{n} offline sessions made (plug, tap, unplug over the control socket)",
        f"{t_made:.1f} s ({n / t_made:.0f} sessions/s)",
    )
    res.row(
        "link back -> station reconnected (TCP accepted / first status at backend)",
        f"{t_tcp - t_up:.2f} s / {link.t - t_up:.2f} s (paho retry every <= 1 s)",
    )
    res.row(
        "reconnected -> every CDR acknowledged (outbox empty)",
        f"{drain_s:.2f} s = {rate:.0f} CDRs/s",
        f">= {TARGET_RATE:.0f} CDRs/s",
        rate >= TARGET_RATE,
    )
    res.row(
        "lost / duplicates seen by the backend",
        f"{len(lost)} lost of {len(ids)} / {dups} duplicates ({len(cdr_times)} CDR messages)",
        "0 lost",
        not lost and len(ids) == n,
    )
    res.row(
        "queued session events delivered after the outage",
        f"{events} of {3 * n}; a new session's 'started' event after the drain: "
        + ("delivered" if live_event else "NOT delivered (queued behind the backlog)"),
        "all delivered",
        events >= 3 * n and live_event,
    )
    return res
