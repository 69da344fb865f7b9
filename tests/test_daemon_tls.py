"""The daemon against a Mosquitto that requires mutual TLS and per-station ACLs."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backend_sim import BackendSim
from agent.tls import build_ssl_context
from tests.helpers import EVSE1, UID_A, Daemon, station_config, wait_until
from tests.tls_fixtures import (
    BACKEND,
    STATION_A,
    STATION_B,
    Pki,
    TlsBroker,
    make_pki,
    start_tls_broker,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    broker = start_tls_broker(pki, tmp_path_factory.mktemp("tls-broker"))
    yield broker
    broker.stop()


@pytest.fixture
def tls_backend(pki: Pki, tls_broker: TlsBroker) -> Iterator[BackendSim]:
    files = pki.clients[BACKEND]
    ctx = build_ssl_context(pki.ca, files.cert, files.key)
    sim = BackendSim(f"mqtt://localhost:{tls_broker.tls_port}", tls_context=ctx, client_id=BACKEND)
    sim.start()
    yield sim
    sim.stop()


def tls_daemon(
    tmp: Path, broker: TlsBroker, *, ca: Path, cert: Path, key: Path, station: str = STATION_A
) -> Daemon:
    cfg = station_config(
        tmp, f"mqtts://localhost:{broker.tls_port}", "stations", station_id=station
    )
    cfg["mqtt"].update(
        {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key), "keepalive_s": 5}
    )
    return Daemon(tmp, cfg)


def test_station_charges_over_mutual_tls(tmp_path, pki, tls_broker, tls_backend):
    files = pki.clients[STATION_A]
    d = tls_daemon(tmp_path, tls_broker, ca=pki.ca, cert=files.cert, key=files.key)
    try:
        d.start()
        d.ctl("sim.plug")
        d.ctl("sim.tap", uid=UID_A)
        d.wait_state("charging")
        d.ctl("sim.unplug")
        wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR acknowledged over TLS")
        cdrs = tls_backend.messages("cdr", STATION_A)
        assert len(cdrs) == 1 and cdrs[0]["evse_id"] == EVSE1
        assert files.key.read_text().splitlines()[1] not in d.log()  # never the key
    finally:
        d.stop()


def test_wrong_ca_is_reported_and_the_daemon_keeps_running(tmp_path, pki, tls_broker):
    files = pki.clients[STATION_A]
    d = tls_daemon(tmp_path, tls_broker, ca=pki.other_ca, cert=files.cert, key=files.key)
    try:
        d.start(wait_connected=False)
        wait_until(lambda: "TLS connection to" in d.log(), 15, "a clear TLS error")
        assert "certificate" in d.log().lower()
        assert not d.ctl("status")["link"]["connected"]
        d.ctl("sim.plug")  # the station still works locally
        assert d.evse()["state"] == "preparing"
    finally:
        assert d.stop(signal.SIGTERM) == 0


def test_expired_certificate_is_reported(tmp_path, pki, tls_broker):
    assert pki.expired is not None
    d = tls_daemon(tmp_path, tls_broker, ca=pki.ca, cert=pki.expired.cert, key=pki.expired.key)
    try:
        d.start(wait_connected=False)
        wait_until(lambda: "TLS connection to" in d.log(), 15, "a clear TLS error")
        assert "expired" in d.log().lower()
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.stop()


def test_certificate_of_another_station_gets_nothing_through(
    tmp_path, pki, tls_broker, tls_backend
):
    other = pki.clients[STATION_B]  # ST-A configured with ST-B's certificate
    d = tls_daemon(tmp_path, tls_broker, ca=pki.ca, cert=other.cert, key=other.key)
    d.config["mqtt"]["auth_timeout_s"] = 1.0
    try:
        d.start(wait_connected=False)
        wait_until(lambda: "does not deliver this station" in d.log(), 30, "ACL problem reported")
        d.ctl("sim.plug")
        d.ctl("sim.tap", uid=UID_A)
        # the auth request went out and stayed unanswered for auth_timeout_s: had the ACL let
        # it through, the backend would have had it long before
        wait_until(lambda: "no auth answer within" in d.log(), 30, "the auth request timed out")
        assert tls_backend.messages("auth/req", STATION_A) == []  # the ACL dropped it
        assert [m for m in tls_backend.messages("status", STATION_A) if m.get("online")] == []
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.stop()


def test_secrets_are_not_accepted_in_the_config_file(tmp_path):
    import subprocess
    import sys

    from tests.helpers import to_toml

    cfg = station_config(tmp_path, "mqtts://localhost:8883", "stations")
    cfg["mqtt"]["password"] = "hunter2"
    cfg["mqtt"]["username"] = "st"
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 78
    assert "mqtt.password: unknown key" in r.stderr and "hunter2" not in r.stderr
