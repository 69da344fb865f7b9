"""Privacy (issue 7): no UID, contract id (EMAID) or PIN in clear in the daemon's log or in what
``stationctl`` shows.

A daemon (debug logging) runs full sessions with several RFID UIDs (4, 7 and 10 bytes) and
contract ids (remote starts; a contract id the backend attaches to an RFID authorisation; one in
a refused command): tap-first and plug-first, stop by the same card, a refused card, a tap with
no free EVSE, remote start/stop, unplug, one CDR left unacknowledged in the outbox. Then the
daemon's log and every ``stationctl`` output (``status``, ``sessions``, ``outbox``, ``auth``, as
text and ``--json``) are scanned for every identifier used, in any case and with any
separators between its characters (``04:a2:24:...``, ``DE-8AC-...``): one unmasked occurrence
fails the test.

PINs: the daemon's QR path (issue 5) is being wired; here ``agent.privacy.mask_token``,
``agent.messages.token_for_record`` / ``dump`` and ``Store.insert_session`` are checked to drop
or refuse PINs, and ``test_qr_token_with_pin_through_the_daemon`` runs a QR
code with a PIN through a daemon and scans log, stationctl outputs, MQTT traffic other than the
``auth/req`` and the store files for it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backend_sim import BackendSim, Received
from agent.errors import StoreError
from agent.messages import QrToken, RemoteToken, RfidToken, dump, token_for_record
from agent.privacy import mask, mask_token
from agent.store import Store
from tests.helpers import EVSE1, EVSE2, Daemon, wait_until

ST = "ST-TEST"
UIDS = ["04A224B2C13C80", "E3F1A27B", "8899AABBCCDDEEFF0011", "1A2B3C4D5E6F70", "5C6D7E8F"]
UID_STOP, UID_FLOAT, UID_REFUSED, UID_NO_EVSE, UID_TYPED = UIDS
CONTRACTS = {
    "remote-1": "DE*ICE*C12345678*5",
    "remote-2": "de-8ac-c98765432-1",  # lower case with separators, as a backend might send it
    "refused": "NL-TNM-012204-5",
    "from-backend": "DE-ICE-C00000042-7",  # attached by the backend to an RFID authorisation
}
PIN = "Q7ZK3W9M"
SEPARATORS = r"[\s:\-*._/|,;+]*"


def pattern(identifier: str) -> re.Pattern[str]:
    """The identifier in any case, with any separators between its characters (and none of
    its own separators required)."""
    chars = [c for c in identifier if c.isalnum()]
    return re.compile(SEPARATORS.join(re.escape(c) for c in chars), re.IGNORECASE)


def leaks(text: str, identifiers: list[str]) -> list[str]:
    found = []
    for ident in identifiers:
        for m in pattern(ident).finditer(text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            line_end = text.find("\n", m.end())
            found.append(f"{ident!r} in: {text[line_start : line_end if line_end >= 0 else None]}")
    return found


def test_pattern_matches_separated_and_cased_forms() -> None:
    p = pattern("04A224B2C13C80")
    for form in (
        "04A224B2C13C80",
        "04a224b2c13c80",
        "04:A2:24:B2:C1:3C:80",
        "04-a2-24-b2-c1-3c-80",
        "04 A2 24 B2 C1 3C 80",
    ):
        assert p.search(f"card {form} seen"), form
    assert not p.search("card 04A2…3C80 seen")
    q = pattern("de-8ac-c98765432-1")
    assert q.search("contract DE8ACC987654321") and q.search("DE*8AC*C98765432*1")
    assert not q.search(mask("DE8ACC987654321"))


def stationctl(sock: Path) -> Callable[..., str]:
    def run(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "agent.stationctl", "--socket", str(sock), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout + r.stderr

    return run


def stationctl_outputs(d: Daemon) -> dict[str, str]:
    run = stationctl(d.socket)
    out = {}
    for cmd in ("status", "sessions", "outbox", "auth"):
        out[cmd] = run(cmd)
        out[f"{cmd} --json"] = run(cmd, "--json")
    return out


def wait_msg(backend: BackendSim, suffix: str, start: int = 0, **match: Any) -> Any:
    def pred(r: Received) -> bool:
        return (
            r.suffix == suffix
            and isinstance(r.data, dict)
            and all(r.data.get(k) == v for k, v in match.items())
        )

    return backend.wait_for(pred, 10, start).data


def test_no_uid_or_contract_id_in_logs_or_stationctl(
    make_daemon: Callable[..., Daemon], backend: BackendSim
) -> None:
    backend.accept = {u for u in UIDS if u != UID_REFUSED} | set(CONTRACTS.values())
    plain_decide = backend.decide

    def decide(token: dict[str, Any]) -> dict[str, Any]:
        res = plain_decide(token)
        if token.get("uid") == UID_STOP:
            res["contract_id"] = CONTRACTS["from-backend"]
        return res

    backend.decide = decide  # type: ignore[method-assign]
    d = make_daemon(evses=2)

    # 1. plug first, tap, the same card stops it; the backend attaches a contract id
    d.ctl("sim.plug", evse_id=EVSE1)
    d.wait_state("preparing", EVSE1)
    d.ctl("sim.tap", uid=UID_STOP)
    d.wait_state("charging", EVSE1)
    d.ctl("sim.tap", uid="04:a2:24:b2:c1:3c:80")  # the same card, as a reader might print it
    d.wait_state("finishing", EVSE1)
    d.ctl("sim.unplug", evse_id=EVSE1)
    d.wait_state("available", EVSE1)

    # 2. tap first with no car anywhere: the authorisation follows the car to EVSE 2
    d.ctl("sim.tap", uid=UID_FLOAT, card_type="mifare_classic")
    wait_until(
        lambda: any(e["state"] == "authorized" for e in d.ctl("status")["evses"]),
        10,
        "floating authorisation",
    )
    d.ctl("sim.plug", evse_id=EVSE2)
    d.wait_state("charging", EVSE2)

    # 3. a refused card
    n = len(backend.received)
    d.ctl("sim.tap", uid=UID_REFUSED)
    wait_msg(backend, "session", n, event="rejected")
    d.wait_state("available", EVSE1)

    # 4. remote start on EVSE 1, then a tap with no EVSE free
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id=CONTRACTS["remote-1"])
    assert wait_msg(backend, "cmd/res", command_id=cid)["status"] == "accepted"
    d.ctl("sim.plug", evse_id=EVSE1)
    sid = d.wait_state("charging", EVSE1)["session_id"]
    d.ctl("sim.tap", uid=UID_NO_EVSE)
    wait_until(lambda: "no EVSE free" in d.log(), 10, "no-free-EVSE log line")

    # 5. a remote start for a busy EVSE is refused (the contract id only in the command)
    cid = backend.command(ST, "remote_start", evse_id=EVSE1, contract_id=CONTRACTS["refused"])
    assert wait_msg(backend, "cmd/res", command_id=cid)["status"] == "rejected"

    # 6. remote stop, unplug; the floating session ends by unplug
    stop = backend.command(ST, "remote_stop", session_id=sid)
    assert wait_msg(backend, "cmd/res", command_id=stop)["status"] == "accepted"
    d.wait_state("finishing", EVSE1)
    d.ctl("sim.unplug", evse_id=EVSE1)
    d.ctl("sim.unplug", evse_id=EVSE2)
    d.wait_state("available", EVSE2)
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDRs acknowledged")

    # 7. a remote start whose CDR stays unacknowledged (the outbox shows its token)
    backend.auto_ack = False
    cid = backend.command(ST, "remote_start", evse_id=EVSE2, contract_id=CONTRACTS["remote-2"])
    assert wait_msg(backend, "cmd/res", command_id=cid)["status"] == "accepted"
    d.ctl("sim.plug", evse_id=EVSE2)
    d.wait_state("charging", EVSE2)
    d.ctl("sim.plug", evse_id=EVSE1)
    d.ctl("sim.tap", uid=UID_TYPED)
    d.wait_state("charging", EVSE1)
    d.ctl("sim.unplug", evse_id=EVSE2)
    wait_until(lambda: d.ctl("outbox")["pending"] == 1, 10, "one CDR pending")

    cdrs = backend.messages("cdr", ST)
    assert {c["contract_id"] for c in cdrs} >= {
        CONTRACTS["remote-1"],
        CONTRACTS["remote-2"],
        CONTRACTS["from-backend"],
    }
    assert {c["token"].get("uid") for c in cdrs} >= {UID_STOP, UID_FLOAT}

    outputs = stationctl_outputs(d)
    log = d.log()
    identifiers = UIDS + list(CONTRACTS.values())
    found = leaks(log, identifiers)
    for name, text in outputs.items():
        found += [f"stationctl {name}: {x}" for x in leaks(text, identifiers)]
    assert not found, "unmasked identifiers:\n" + "\n".join(found[:20])

    # the scan is not vacuous: the identifiers are there, masked
    assert mask(UID_STOP) in log and mask(UID_REFUSED) in log and mask(UID_NO_EVSE) in log
    sessions = json.loads(outputs["sessions --json"])
    assert {s["token"].get("uid") for s in sessions} >= {mask(UID_STOP), mask(UID_FLOAT)}
    assert mask(CONTRACTS["from-backend"]) in {s["contract_id"] for s in sessions}
    assert json.loads(outputs["outbox --json"])["entries"][0]["token"]["contract_id"] == mask(
        CONTRACTS["remote-2"]
    )
    assert "Traceback" not in log


# ------------------------------------------------------------------------- PINs, in process
contract_ids = st.one_of(
    st.sampled_from([*CONTRACTS.values(), "DE8ACC12345678X"]), st.text(min_size=1, max_size=64)
)
pins = st.one_of(st.from_regex(r"[0-9]{4,8}", fullmatch=True), st.text(min_size=1, max_size=32))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(contract=contract_ids, pin=pins)
def test_mask_token_drops_the_pin(contract: str, pin: str) -> None:
    token = {"type": "qr", "contract_id": contract, "pin": pin}
    out = mask_token(token)
    assert "pin" not in out
    assert pin not in out.values()
    assert out["contract_id"] == mask(contract)
    assert token["pin"] == pin  # the input is not modified


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(contract=contract_ids, pin=pins)
def test_token_for_record_never_keeps_a_pin(contract: str, pin: str) -> None:
    token = QrToken(contract_id=contract, pin=pin)
    assert "pin" not in repr(token)  # the PIN field is hidden from repr
    record = token_for_record(token)
    assert isinstance(record, QrToken) and record.pin is None
    assert record.contract_id == contract
    assert "pin" not in record.model_dump(exclude_none=True)
    assert "pin" not in json.loads(dump(record))
    for other in (RfidToken(uid=UIDS[0]), RemoteToken(contract_id=contract)):
        assert token_for_record(other) == other


def test_store_refuses_a_token_with_a_pin(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.open()
    try:
        with pytest.raises(StoreError, match="PIN"):
            store.insert_session(
                session_id=str(uuid.uuid4()),
                evse_id=EVSE1,
                token={"type": "qr", "contract_id": "DE8ACC12345678X", "pin": PIN},
                contract_id=None,
                start=datetime.now(UTC),
            )
    finally:
        store.close()
    assert not any(
        PIN.encode() in p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()
    )


# ------------------------------------------------------------------------- PIN through the daemon
def test_qr_token_with_pin_through_the_daemon(
    make_daemon: Callable[..., Daemon], backend: BackendSim, tmp_path: Path
) -> None:
    emaid = "DE-8AC-C12345678-X"
    d = make_daemon(qr={"driver": "sim", "debounce_s": 0.0})
    d.ctl("sim.plug")
    d.wait_state("preparing")
    d.ctl("sim.qr", payload=f"https://app.example/start?emaid={emaid}&pin={PIN}")
    req = wait_msg(backend, "auth/req")
    assert req["token"] == {"type": "qr", "contract_id": "DE8ACC12345678X", "pin": PIN}
    d.wait_state("charging")
    d.ctl("sim.unplug")
    cdr = wait_msg(backend, "cdr")
    assert "pin" not in cdr["token"]
    wait_until(lambda: d.ctl("outbox")["pending"] == 0, 10, "CDR acknowledged")
    # the PIN went into the auth request and nowhere else
    traffic = [
        json.dumps(r.data, ensure_ascii=False) for r in backend.received if r.suffix != "auth/req"
    ]
    found = leaks("\n".join(traffic), [PIN])
    found += leaks(d.log(), [PIN, emaid])
    for name, text in stationctl_outputs(d).items():
        found += [f"stationctl {name}: {x}" for x in leaks(text, [PIN, emaid])]
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file() and PIN.encode() in f.read_bytes():
            found.append(f"store file {f.name}")
    assert not found, "\n".join(found[:20])
