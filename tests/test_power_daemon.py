"""The power path inside the running daemon: welding detection, Modbus meter, diagnostics."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from agent.backend_sim import Received
from agent.control import ControlError
from drivers.meter.registers import register_map
from tests.helpers import EVSE1, UID_A, wait_until
from tests.test_meter_drivers import GOOD, MeterServer

ST = "ST-TEST"


def wait_msg(backend, suffix: str, timeout: float = 10.0, **match):
    def pred(r: Received) -> bool:
        return (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        )

    return backend.wait_for(pred, timeout).data


def stationctl(d, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.stationctl", "--socket", str(d.socket), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_welded_contact_faults_the_evse_until_reset(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    d.ctl("sim.relay", mode="welded")  # the contacts weld while current flows
    d.ctl("sim.tap", uid=UID_A)  # stop: the relay is commanded open, feedback stays closed
    e = d.wait_state("faulted")
    assert e["fault"] == "relay_welded"
    st = wait_msg(backend, "status", online=True)
    assert wait_msg(backend, "cdr")["stop_reason"] == "local"
    assert "relay_welded" in d.log()
    # no new session on a welded contactor
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id="DE8ACC12345678A")
    assert wait_msg(backend, "cmd/res", command_id=cid)["reason"] == "EVSE is faulted"
    # reset is refused while the feedback still reads closed
    r = stationctl(d, "relay", "reset")
    assert r.returncode == 1 and "not reset" in r.stderr
    d.ctl("sim.relay", mode="normal")  # the technician replaced the contactor
    r = stationctl(d, "relay", "reset")
    assert r.returncode == 0, r.stderr
    d.wait_state("preparing")
    assert st["station_id"] == ST


def test_stuck_open_contact_is_a_fault(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.relay", mode="stuck_open")
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    e = d.wait_state("faulted")
    assert e["fault"] == "relay_stuck_open" and not e["relay_closed"]


def test_relay_cycle_only_when_idle(make_daemon, backend):
    d = make_daemon()
    r = stationctl(d, "relay", "cycle")
    assert r.returncode == 0, r.stderr
    assert "close" in r.stdout and "open" in r.stdout and ": ok" in r.stdout
    assert d.relay_log()[-2:] == ["close", "open"][-2:] or d.relay_log()[1::2][-2:] == [
        "close",
        "open",
    ]
    d.ctl("sim.plug")
    r = stationctl(d, "relay", "cycle")
    assert r.returncode == 1 and "idle EVSE" in r.stderr


def test_selftest_passes_on_the_simulated_station(make_daemon, backend):
    d = make_daemon(evses=2)
    r = stationctl(d, "selftest")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert all(line.startswith("PASS") for line in lines)
    names = {c["check"] for c in json.loads(stationctl(d, "selftest", "--json").stdout)}
    assert {"rfid reader", "display", "broker", "store"} <= names
    assert sum(n.startswith(("relay ", "meter ")) for n in names) == 4


def test_selftest_counts_failures(make_daemon, backend):
    d = make_daemon()
    d.ctl("sim.relay", mode="welded")
    r = stationctl(d, "selftest")
    assert r.returncode >= 1
    assert any(line.startswith("FAIL") and "relay" in line for line in r.stdout.splitlines())


@pytest.fixture
def sdm630():
    srv = MeterServer(register_map("sdm630"), "big", GOOD)
    yield srv
    srv.stop()


def test_cdr_meter_values_come_from_the_modbus_meter(make_daemon, backend, sdm630):
    d = make_daemon(
        evse=[
            {
                "id": EVSE1,
                "relay": {"driver": "sim"},
                "plug": {"driver": "sim"},
                "meter": {
                    "driver": "modbus",
                    "model": "sdm630",
                    "transport": "tcp",
                    "host": "127.0.0.1",
                    "port": sdm630.port,
                    "poll_interval_s": 0.2,
                },
            }
        ]
    )
    res = d.ctl("meter.read")
    assert res["energy_kwh"] == pytest.approx(1234.5) and res["voltage_v"] == pytest.approx(231.5)
    out = stationctl(d, "meter", "read")
    assert "1234.500 kWh" in out.stdout
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    sdm630.set("energy_kwh", 1241.75)  # the car drew 7.25 kWh
    wait_until(lambda: d.ctl("sessions")[0]["energy_kwh"] == pytest.approx(7.25), 5, "reading")
    d.ctl("sim.tap", uid=UID_A)
    cdr = wait_msg(backend, "cdr")
    assert cdr["meter_start_kwh"] == pytest.approx(1234.5)
    assert cdr["meter_stop_kwh"] == pytest.approx(1241.75)
    assert cdr["energy_kwh"] == pytest.approx(7.25)


def test_meter_that_stops_answering_faults_the_evse(make_daemon, backend, sdm630):
    d = make_daemon(
        evse=[
            {
                "id": EVSE1,
                "relay": {"driver": "sim"},
                "plug": {"driver": "sim"},
                "meter": {
                    "driver": "modbus",
                    "model": "sdm630",
                    "transport": "tcp",
                    "timeout_s": 0.3,
                    "host": "127.0.0.1",
                    "port": sdm630.port,
                    "poll_interval_s": 0.2,
                    "max_failures": 2,
                },
            }
        ]
    )
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    d.wait_state("charging")
    sdm630.set_words("voltage_v", [0x7FC0, 0x0000])  # NaN: implausible readings
    e = d.wait_state("faulted", timeout=15)
    assert e["fault"] == "meter_failed" and not e["relay_closed"]
    assert wait_msg(backend, "cdr")["stop_reason"] == "fault"
    sdm630.set("voltage_v", 230.0)
    d.wait_state("preparing", timeout=15)  # a meter fault heals by itself


def test_sim_relay_command_refused_for_real_relays(make_daemon, backend):
    d = make_daemon()
    with pytest.raises(ControlError, match="unknown EVSE"):
        d.ctl("sim.relay", evse_id="nope", mode="welded")


class BlackHoleProxy:
    """TCP proxy to the meter that can go silent: connections stay open, nothing comes back
    (a hung RS-485 gateway), so every read waits for its whole time-out."""

    def __init__(self, target_port: int) -> None:
        self.silent = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # the meter server is gone (test teardown)
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(4096)
            except OSError:
                return
            if not data:
                return
            if not self.silent.is_set():
                dst.sendall(data)

    def close(self) -> None:
        self.server.close()


def test_a_dead_meter_never_stalls_the_station(make_daemon, backend, sdm630):
    proxy = BlackHoleProxy(sdm630.port)
    d = make_daemon(
        evse=[
            {
                "id": EVSE1,
                "relay": {"driver": "sim"},
                "plug": {"driver": "sim"},
                "meter": {
                    "driver": "modbus",
                    "model": "sdm630",
                    "transport": "tcp",
                    "timeout_s": 1.0,
                    "host": "127.0.0.1",
                    "port": proxy.port,
                    "poll_interval_s": 0.2,
                    "max_failures": 3,
                },
            }
        ]
    )
    d.ctl("sim.plug")
    d.ctl("sim.tap", uid=UID_A)
    sid = d.wait_state("charging")["session_id"]
    proxy.silent.set()  # the meter goes silent: every read now waits for its time-out
    # time the control socket all the while: meter reads timing out, the fault, the session
    # ended by it (its CDR at the backend)
    slowest = 0.0
    deadline = time.monotonic() + 60.0
    while not any(c["session_id"] == sid for c in backend.messages("cdr", ST)):
        assert time.monotonic() < deadline, "the dead meter never ended the session"
        t0 = time.monotonic()
        d.ctl("status")
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)  # the sampling interval of the measurement, not a readiness wait
    assert slowest < 0.5, f"the control socket waited {slowest:.2f} s behind the meter"
    assert d.evse()["state"] == "faulted"
    proxy.close()
