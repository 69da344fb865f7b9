"""The status page in a real browser: headless Chromium (Debian ``chromium`` and
``chromium-driver``, driven by Selenium) against the real web process and a running daemon.

One journey: log in, watch two EVSE cards change state live (server-sent events, no reload)
while a simulated session runs, open the session's plot, download the CSV, run the self-test.
Screenshots of every page at 360 px (a phone) and 1280 px are written as test artefacts to
``$STATION_AGENT_ARTEFACTS`` (default: the test's temporary directory); with
``STATION_AGENT_UPDATE_SCREENSHOTS=1`` the README's set in ``tests/screenshots/`` is refreshed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backend_sim import BackendSim
from agent.broker import Mosquitto
from tests.helpers import REPO, UID_A, Daemon, station_config, wait_until
from tests.web_support import PASSWORD, start_web, web_section

EVSE1, EVSE2 = "DE*ICE*E000001*1", "DE*ICE*E000001*2"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
README_SHOTS = REPO / "tests" / "screenshots"
README_SET = {"station-1280.png", "station-360.png", "session-1280.png"}
WIDTHS = (1280, 360)

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "headless Chromium is not installed (Debian packages chromium and chromium-driver; "
        ".ci/run installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skip: a clear reason, not an ImportError)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("STATION_AGENT_ARTEFACTS", tmp_path / "artefacts")) / "web"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1280,900")
    opts.add_argument("--hide-scrollbars")
    opts.accept_insecure_certs = True  # the web process's own self-signed certificate
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=opts)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def station(tmp_path: Path, broker: Mosquitto) -> Iterator[dict[str, Any]]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    backend = BackendSim(broker.url, prefix=prefix)
    backend.start()
    cfg = station_config(
        tmp_path,
        broker.url,
        prefix,
        evses=2,
        web=web_section(tmp_path),
        store={"meter_interval_s": 0.25},
    )
    for evse in cfg["evse"]:  # about 11 kW in wall-clock time (the sim meter runs 60x)
        evse["meter"]["power_kw"] = 0.185
    daemon = Daemon(tmp_path, cfg, log_level="info")
    daemon.spawn()
    web = start_web(daemon, tmp_path)
    daemon.wait_ready()
    try:
        yield {"daemon": daemon, "web": web}
    finally:
        web.stop()
        daemon.stop()
        backend.stop()


def card_state(driver: WebDriver, evse_id: str) -> str:
    """Read in one script: the live script may swap the cards between two WebDriver calls."""
    sel = f'section.card[data-evse="{evse_id}"] p.state'
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", sel
    )
    return str(text).strip().lower()


def main_text(driver: WebDriver) -> str:
    """The page's text, read in one script (a page being replaced has none yet)."""
    text = driver.execute_script(
        "const m = document.querySelector('main'); return m ? m.textContent : '';"
    )
    return str(text)


def wait_card(driver: WebDriver, evse_id: str, state: str, timeout: float = 15.0) -> float:
    """Seconds until the card shows ``state`` (polled every 10 ms through WebDriver)."""
    t0 = time.monotonic()
    WebDriverWait(driver, timeout, poll_frequency=0.01).until(
        lambda d: card_state(d, evse_id) == state,
        f"{evse_id} card to show {state} (shows {card_state(driver, evse_id)!r})",
    )
    return time.monotonic() - t0


def shoot(driver: WebDriver, out: Path, name: str) -> None:
    """The page at both widths (the full page height), back to 1280 afterwards."""
    for width in WIDTHS:
        driver.set_window_size(width, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(int(height), 500), 2400))
        path = out / f"{name}-{width}.png"
        driver.save_screenshot(str(path))
        if os.environ.get("STATION_AGENT_UPDATE_SCREENSHOTS") and path.name in README_SET:
            shutil.copyfile(path, README_SHOTS / path.name)
    driver.set_window_size(1280, 900)


def test_technician_journey(
    station: dict[str, Any], browser: WebDriver, artefacts: Path, tmp_path: Path
) -> None:
    daemon, web = station["daemon"], station["web"]
    d = browser
    d.get(f"{web.url}/")
    assert d.current_url.endswith("/login")  # the page needs a login
    shoot(d, artefacts, "login")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(d, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "section.card"),
        f"the station page after the login (at {d.current_url}: {d.page_source[:300]})",
    )
    assert wait_card(d, EVSE1, "available") < 15 and card_state(d, EVSE2) == "available"
    d.execute_script("window.notReloaded = true;")

    latencies = {}
    daemon.ctl("sim.plug", evse_id=EVSE2)
    latencies["plug"] = wait_card(d, EVSE2, "preparing")
    daemon.ctl("sim.tap", uid=UID_A)
    latencies["tap"] = wait_card(d, EVSE2, "charging")
    daemon.ctl("sim.plug", evse_id=EVSE1)
    latencies["plug2"] = wait_card(d, EVSE1, "preparing")
    assert d.execute_script("return window.notReloaded === true;")  # live, not reloaded
    energy = d.execute_script(
        "return document.querySelector(arguments[0]).textContent;",
        f'section.card[data-evse="{EVSE2}"]',
    )
    assert "kWh" in energy
    sid = daemon.evse(EVSE2)["session_id"]
    wait_until(
        lambda: len(daemon.ctl("web.session", session_id=sid)["readings"]) >= 6,
        20,
        "six stored meter readings",
    )
    shoot(d, artefacts, "station")
    daemon.ctl("sim.tap", uid=UID_A)
    latencies["stop"] = wait_card(d, EVSE2, "finishing")
    daemon.ctl("sim.unplug", evse_id=EVSE2)
    daemon.ctl("sim.unplug", evse_id=EVSE1)
    wait_card(d, EVSE2, "available")
    wait_card(d, EVSE1, "available")
    (artefacts / "card-latency.json").write_text(json.dumps(latencies, indent=2))
    print(f"state change -> card updated (s, incl. WebDriver polling): {latencies}")

    d.find_element(By.LINK_TEXT, "Charge log").click()
    WebDriverWait(d, 10).until(lambda d: "Charge log" in d.title)
    shoot(d, artefacts, "log")
    d.find_element(By.CSS_SELECTOR, f'a[href="/session/{sid}"]').click()
    plot = WebDriverWait(d, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "svg.plot polyline.energy")
    )
    assert len(plot[0].get_attribute("points").split()) >= 6
    shoot(d, artefacts, "session")

    d.back()
    d.find_element(By.LINK_TEXT, "Download CSV").click()
    csv_path = tmp_path / "downloads" / "charge-log.csv"
    wait_until(csv_path.exists, 10, "the CSV download")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    assert [r["session_id"] for r in rows] == [sid] and rows[0]["delivery"] in (
        "pending",
        "acknowledged",
    )

    d.find_element(By.LINK_TEXT, "Diagnostics").click()
    d.find_element(By.XPATH, "//button[text()='Run self-test']").click()
    WebDriverWait(d, 30).until(lambda d: "Self-test:" in main_text(d))
    shoot(d, artefacts, "diagnostics")
    console = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    assert console == [], console  # no CSP violation, no failed request
