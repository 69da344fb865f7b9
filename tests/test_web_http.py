"""The status page over HTTPS: every route against the real ``station-agent web`` process and a
running daemon (real Mosquitto, the reference backend, sim drivers).

One daemon (two EVSEs, one finished session) and one web process serve the whole module; tests
that must not share state (the login back-off, a dead daemon) use their own client address or
their own process.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backend_sim import BackendSim
from agent.broker import Mosquitto
from tests.helpers import UID_A, Daemon, station_config, wait_until
from tests.web_support import (
    Client,
    EventStream,
    WebProc,
    card_state,
    start_web,
    web_section,
    write_password,
)

EVSE1, EVSE2 = "DE*ICE*E000001*1", "DE*ICE*E000001*2"
PAGES = ["/", "/log", "/log.csv", "/diagnostics"]
APIS = ["/api/status", "/api/sessions", "/events"]
ACTIONS = ["/diagnostics/selftest", "/diagnostics/resend", "/logout"]


@pytest.fixture(scope="module")
def station(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("web")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    backend = BackendSim(broker.url, prefix=prefix)
    backend.start()
    cfg = station_config(
        tmp, broker.url, prefix, evses=2, web=web_section(tmp), store={"meter_interval_s": 0.2}
    )
    daemon = Daemon(tmp, cfg, log_level="info").start()
    web = start_web(daemon, tmp)
    try:
        # one finished session on EVSE 2, so that the log, the CSV and the plot have data
        daemon.ctl("sim.plug", evse_id=EVSE2)
        daemon.ctl("sim.tap", uid=UID_A)
        daemon.wait_state("charging", EVSE2)
        wait_until(lambda: len(_readings(daemon)) >= 3, 20, "three stored meter readings")
        daemon.ctl("sim.tap", uid=UID_A)
        daemon.wait_state("finishing", EVSE2)
        daemon.ctl("sim.unplug", evse_id=EVSE2)
        daemon.wait_state("available", EVSE2)
        yield {"daemon": daemon, "web": web, "tmp": tmp}
    finally:
        web.stop()
        daemon.stop()
        backend.stop()


def _readings(daemon: Daemon) -> list[Any]:
    sessions = daemon.ctl("web.sessions", limit=1)["sessions"]
    if not sessions:
        return []
    return list(daemon.ctl("web.session", session_id=sessions[0]["session_id"])["readings"])


@pytest.fixture(scope="module")
def user(station: dict[str, Any]) -> Client:
    client = station["web"].client()
    assert client.login().status == 303
    return client


def test_unauthorised_requests_get_the_login_or_401(station: dict[str, Any]) -> None:
    anon = station["web"].client()
    for path in [*PAGES, "/session/whatever"]:
        r = anon.get(path)
        assert (r.status, r.header("location")) == (303, "/login"), path
    for path in APIS:
        r = anon.get(path)
        assert r.status == 401 and r.json() == {"error": "login required"}, path
    for path in ACTIONS:
        r = anon.post(path, {"csrf": "x"})
        assert (r.status, r.header("location")) == (303, "/login"), path
    forged = station["web"].client()
    forged.cookie = "sa_session=" + "A" * 43  # a well-formed but unknown token
    assert forged.get("/api/status").status == 401
    assert anon.get("/login").status == 200
    for name in ("style.css", "live.js"):
        assert anon.get(f"/static/{name}").status == 200
    assert anon.get("/static/").status == 404  # no directory listing
    assert anon.get("/static/..%2Fpasswd.py").status == 404


def test_login_cookie_and_security_headers(station: dict[str, Any]) -> None:
    client = station["web"].client()
    r = client.login()
    assert r.status == 303 and r.header("location") == "/"
    (cookie,) = [c for c in r.cookies() if c.startswith("sa_session=")]
    attrs = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= set(attrs)
    assert attrs["samesite"].split("=")[1].lower() == "strict"
    assert int(attrs["max-age"].split("=")[1]) == 480 * 60
    for path in ["/", "/login", "/api/status", "/nowhere"]:
        h = client.get(path)
        csp = h.header("content-security-policy")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert h.header("x-frame-options") == "DENY"
        assert h.header("referrer-policy") == "same-origin"
        assert h.header("x-content-type-options") == "nosniff"
        assert h.header("strict-transport-security")
        assert h.header("server") == ""
    page = client.get("/").text
    assert "<script>" not in page and " style=" not in page  # no inline script or style
    assert re.search(r"https?://(?!www\.w3\.org)", page) is None  # no external requests


def test_login_rate_limit_backs_off_per_client(station: dict[str, Any]) -> None:
    guesser = station["web"].client(source="127.0.0.2")
    r = guesser.login("wrong password 1")
    assert r.status == 401 and "Wrong password" in r.text and not r.cookies()
    r = guesser.login()  # even the right password waits out the back-off
    assert r.status == 429 and r.header("retry-after") == "1" and not r.cookies()
    wait_until(lambda: guesser.login("wrong password 2").status == 401, 5, "the 1 s back-off")
    r = guesser.login("wrong password 3")
    assert r.status == 429 and r.header("retry-after") == "2"
    # another client is not held back by this one
    assert station["web"].client(source="127.0.0.3").login().status == 303
    assert "failed login from 127.0.0.2" in station["web"].log()


def test_pages_as_a_logged_in_user(station: dict[str, Any], user: Client) -> None:
    page = user.get("/")
    assert page.status == 200
    assert page.text.count('class="card ') == 2 and "Backend" in page.text
    assert 'data-events="/events"' in page.text and "/static/live.js" in page.text
    log = user.get("/log")
    assert log.status == 200 and "page 1 of 1 (1 sessions)" in log.text
    assert "04A2…3C80" in log.text and UID_A not in log.text  # tokens masked
    assert "acknowledged" in log.text
    sid = re.search(r'href="/session/([^"]+)"', log.text).group(1)
    sess = user.get(f"/session/{sid}")
    assert sess.status == 200 and '<polyline class="energy"' in sess.text
    assert '<polyline class="power"' in sess.text and "CDR as queued" in sess.text
    assert UID_A not in sess.text
    assert user.get("/session/no-such-session").status == 404
    assert user.get("/diagnostics").status == 200
    assert user.get("/log?page=abc").status == 400
    assert user.get("/log?page=2").status == 200


def test_csv_download(station: dict[str, Any], user: Client) -> None:
    r = user.get("/log.csv")
    assert r.status == 200 and r.header("content-type").startswith("text/csv")
    assert "attachment" in r.header("content-disposition")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1 and rows[0]["evse_id"] == EVSE2
    assert rows[0]["token"].endswith("04A2…3C80") and float(rows[0]["energy_kwh"]) > 0


def test_api_routes(station: dict[str, Any], user: Client) -> None:
    status = user.get("/api/status")
    assert status.status == 200 and status.header("content-type") == "application/json"
    mine = station["daemon"].ctl("status")
    assert set(status.json()) == set(mine)  # the `stationctl status --json` object
    assert [e["evse_id"] for e in status.json()["evses"]] == [EVSE1, EVSE2]
    sessions = user.get("/api/sessions?limit=5").json()
    assert sessions["total"] == 1 and sessions["sessions"][0]["token"]["uid"] == "04A2…3C80"
    assert user.get("/api/sessions?limit=100000").status == 400


def test_actions_need_the_csrf_token(station: dict[str, Any], user: Client) -> None:
    assert user.get("/diagnostics").status == 200
    good = user.csrf
    assert good
    for path in ACTIONS:
        assert user.post(path, {"csrf": "wrong"}).status == 403, path
        assert user.post(path, {}).status == 403, path
    r = user.post(
        "/diagnostics/selftest", {"csrf": good}, headers={"Origin": "https://evil.example"}
    )
    assert r.status == 403
    r = user.post("/diagnostics/selftest", {"csrf": good})
    assert r.status == 200 and "Self-test:" in r.text and "relay DE*ICE*E000001*1" in r.text
    r = user.post("/diagnostics/resend", {"csrf": good})
    assert r.status == 200 and "Re-sent 0 CDR(s)." in r.text
    r = user.request(
        "POST", "/diagnostics/resend", b"{}", headers={"Content-Type": "application/json"}
    )
    assert r.status == 415
    big = user.post("/diagnostics/resend", {"csrf": good, "pad": "x" * 10_000})
    assert big.status == 413 and "Traceback" not in big.text


def test_events_stream_follows_the_station_and_ends_at_logout(station: dict[str, Any]) -> None:
    daemon = station["daemon"]
    client = station["web"].client()
    client.login()
    assert client.get("/").status == 200  # for the CSRF token
    stream = EventStream(client)
    try:
        stream.wait_for(lambda e, d: card_state(d["cards"], EVSE1) == "available")
        daemon.ctl("sim.plug", evse_id=EVSE1)
        data = stream.wait_for(lambda e, d: card_state(d["cards"], EVSE1) == "preparing")
        assert card_state(data["cards"], EVSE2) == "available" and "Backend" in data["summary"]
        daemon.ctl("sim.unplug", evse_id=EVSE1)
        stream.wait_for(lambda e, d: card_state(d["cards"], EVSE1) == "available")
        assert client.post("/logout", {"csrf": client.csrf or ""}).status == 303
        stream.wait_for(lambda e, d: e == "logout")
    finally:
        stream.close()
    assert client.get("/api/status").status == 401  # the session is gone on the server


def test_without_a_daemon_pages_say_so(tmp_path: Path) -> None:
    """A web process whose daemon is not running: a sentence, never a traceback."""
    cfg_path = tmp_path / "config.toml"
    from tests.helpers import to_toml

    cfg = station_config(tmp_path, "mqtt://127.0.0.1:1", "none", web=web_section(tmp_path))
    cfg_path.write_text(to_toml(cfg))
    write_password(tmp_path / "web.pass")
    web = WebProc(cfg_path, tmp_path).start()
    try:
        client = web.client()
        assert client.login().status == 303
        r = client.get("/")
        assert r.status == 503 and "station-agent is not running" in r.text
        assert "Traceback" not in r.text
        assert client.get("/api/status").status == 503
    finally:
        web.stop()


def test_misconfiguration_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.web.server import main as web_main
    from tests.helpers import to_toml

    cfg = station_config(tmp_path, "mqtt://127.0.0.1:1", "none")
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert web_main(path) == 78
    assert "no [web] section" in capsys.readouterr().err
    path.write_text(to_toml({**cfg, "web": web_section(tmp_path)}))
    assert web_main(path) == 78
    assert "stationctl web passwd" in capsys.readouterr().err
    (tmp_path / "web.pass").write_text("plain text password\n")
    assert web_main(path) == 78
    assert "not a password file" in capsys.readouterr().err
