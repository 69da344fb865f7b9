"""The real reader and camera stacks inside the running daemon, through a real broker.

PN532: the daemon runs nfcpy + pyserial against a simulated PN532 on a pseudo-terminal.
QR: contract codes rendered to PNG files are picked up by the ``files`` driver (pyzbar/OpenCV).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.backend_sim import Received
from drivers.display.qrcode import intercharge_payload
from drivers.rfid.pn532_sim import SimulatedPN532
from tests.helpers import EVSE1, EVSE2, wait_until

ST = "ST-TEST"
NTAG_UID = "04A224B2C13C80"
EMAID = "DE8ACC12345678A"  # check digit A is right


def wait_msg(backend, suffix: str, timeout: float = 10.0, **match):
    def pred(r: Received) -> bool:
        return (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        )

    return backend.wait_for(pred, timeout).data


@pytest.fixture
def pn532():
    sim = SimulatedPN532().start()
    yield sim
    sim.stop()


def test_pn532_tap_starts_a_session_through_the_daemon(make_daemon, backend, pn532):
    d = make_daemon(rfid={"driver": "pn532", "path": pn532.device_path, "debounce_s": 0.3})
    wait_until(lambda: d.ctl("rfid.info").get("connected"), 10, "reader open")
    info = d.ctl("rfid.info")
    assert info["driver"] == "pn532" and "PN532" in str(info["firmware"])
    d.ctl("sim.plug")
    t0 = time.monotonic()
    pn532.place_card(NTAG_UID, sak=0x00)
    req = wait_msg(backend, "auth/req")
    latency = time.monotonic() - t0
    assert req["token"] == {"type": "rfid", "uid": NTAG_UID, "card_type": "ultralight"}
    d.wait_state("charging")
    # the card stays on the reader while it is sensed again and again: still one tap
    assert pn532.wait_polls(10, timeout=30), "the reader stopped polling"
    assert len(backend.messages("auth/req", ST)) == 1
    assert d.evse()["state"] == "charging"
    pn532.remove_card()
    wait_until(lambda: d.ctl("rfid.info")["card_on_reader"] is False, 10, "the reader saw it leave")
    time.sleep(0.5)  # the debounce (0.3 s) is a real duration: wait it out after the leave
    pn532.place_card(NTAG_UID, sak=0x00)  # the same card again after the debounce: stop
    d.wait_state("finishing")
    assert wait_msg(backend, "cdr")["stop_reason"] == "local"
    print(f"PN532 place -> auth/req through the daemon: {latency * 1000:.0f} ms")
    assert "04A2…3C80" in d.log() and NTAG_UID not in d.log()


def test_reader_unplugged_daemon_survives_and_reports(make_daemon, backend, pn532):
    d = make_daemon(rfid={"driver": "pn532", "path": pn532.device_path, "debounce_s": 0.3})
    wait_until(lambda: d.ctl("rfid.info").get("connected"), 10, "reader open")
    pn532.unplug()
    wait_until(
        lambda: any(f.startswith("rfid:") for f in d.ctl("status")["faults"]),
        10,
        "reader fault in status",
    )
    st = wait_msg(backend, "status", online=True, faults=["rfid:reader_unavailable"])
    assert st["evses"][0]["state"] == "available"
    # remote start still works while the reader is gone
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id=EMAID)
    assert wait_msg(backend, "cmd/res", command_id=cid)["status"] == "accepted"
    pn532.replug()
    wait_until(lambda: not d.ctl("status")["faults"], 15, "reader back")
    assert d.proc is not None and d.proc.poll() is None


def test_stationctl_rfid_read_shows_the_uid(make_daemon, backend, pn532):
    d = make_daemon(rfid={"driver": "pn532", "path": pn532.device_path, "debounce_s": 0.3})
    wait_until(lambda: d.ctl("rfid.info").get("connected"), 10, "reader open")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.stationctl",
            "--socket",
            str(d.socket),
            "rfid",
            "read",
            "--timeout",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # no wait for the command to be listening: a card already lying on the reader is reported
    # to ``rfid read`` too (Pn532Reader.read_once), so it may be placed right away
    pn532.place_card("E3F1A27B", sak=0x08)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "UID E3F1A27B" in out and "mifare_classic" in out


def contract_png(tmp: Path, payload: str, name: str) -> Path:
    import segno

    out = tmp / f".{name}.tmp.png"
    segno.make(payload, error="m").save(out, scale=8, border=4)
    final = tmp / name
    out.rename(final)  # appear atomically in the watched directory
    return final


def test_contract_qr_from_the_camera_directory_charges(make_daemon, backend, tmp_path):
    inbox = tmp_path / "camera"
    inbox.mkdir()
    png = tmp_path / "screen.png"
    d = make_daemon(
        qr={"driver": "files", "directory": str(inbox), "debounce_s": 5.0},
        display={"driver": "png", "path": str(png)},
    )
    d.ctl("sim.plug")
    contract_png(inbox, f"https://app.example/charge?emaid={EMAID}&pin=4711", "code1.png")
    req = wait_msg(backend, "auth/req")
    assert req["token"] == {"type": "qr", "contract_id": EMAID, "pin": "4711"}
    d.wait_state("charging")
    cdr_session = d.evse()["session_id"]
    d.ctl("sim.unplug")
    cdr = wait_msg(backend, "cdr", session_id=cdr_session)
    assert cdr["token"] == {"type": "qr", "contract_id": EMAID}  # no PIN in the CDR
    assert cdr["contract_id"] == EMAID
    log = d.log()
    assert "4711" not in log and EMAID not in log  # PIN never logged, EMAID masked
    # the screen the PNG driver wrote carries this EVSE's Intercharge code
    wait_until(png.exists, 5, "screen written")
    r = subprocess.run(
        [sys.executable, "-m", "agent.stationctl", "qr", "decode", str(png), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    codes = json.loads(r.stdout)["codes"]
    assert {c["kind"] for c in codes} == {"evse"}
    assert codes[0]["evse_id"] == EVSE1
    assert codes[0]["payload"] == intercharge_payload(EVSE1)


def test_unknown_and_station_codes_do_not_authorise(make_daemon, backend):
    d = make_daemon(qr={"driver": "sim", "debounce_s": 5.0})
    d.ctl("sim.plug")
    assert d.ctl("sim.qr", payload="hello world")["delivered"]
    wait_until(lambda: "QR code refused" in d.log(), 5, "refusal logged")
    assert d.ctl("sim.qr", payload=intercharge_payload(EVSE1))["delivered"]
    wait_until(lambda: "station code" in d.log(), 5, "station code logged")
    assert backend.messages("auth/req", ST) == []
    assert d.evse()["state"] == "preparing"
    assert d.ctl("sim.qr", payload=EMAID)["delivered"]
    assert not d.ctl("sim.qr", payload=EMAID)["delivered"]  # debounced: counts once
    assert wait_msg(backend, "auth/req")["token"] == {"type": "qr", "contract_id": EMAID}
    d.wait_state("charging")
    assert len(backend.messages("auth/req", ST)) == 1


def test_qr_verify_matches_the_sticker(make_daemon, backend):
    d = make_daemon(evses=2, qr={"driver": "sim"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.stationctl",
            "--socket",
            str(d.socket),
            "qr",
            "verify",
            EVSE2,
            "--timeout",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # the sticker is held up only once the daemon says it is looking for one
    wait_until(lambda: "qr verify: waiting" in d.log(), 30, "qr verify started")
    d.ctl("sim.qr", payload=intercharge_payload(EVSE1))  # the sticker of the other EVSE
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "DOES NOT MATCH" in out
