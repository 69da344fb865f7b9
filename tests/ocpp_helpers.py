"""A real OCPP 1.6J central system for the tests (helper module, not tests).

:class:`Csms` runs ``ocpp_csms.CentralSystem`` (PyPI ``ocpp-csms``, AGPL-3.0: a test-only
dependency) on a loopback port in its own asyncio thread. It records every frame on the wire
(through the package's debug wire logger), so that tests can check order and content, and
:func:`check_frames` validates every frame the station sent against the official OCPP 1.6 JSON
schemas shipped in the ``ocpp`` package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import ocpp
import ocpp_csms
import ocpp_csms.charge_point
from ocpp_csms import CentralSystem, RegistrationStatus

from agent.broker import free_port

T = TypeVar("T")
SCHEMAS_16 = Path(ocpp.__file__).parent / "v16" / "schemas"
CALL, RESULT, ERROR = 2, 3, 4
ERROR_CODES = {
    "NotImplemented",
    "NotSupported",
    "InternalError",
    "ProtocolError",
    "SecurityError",
    "FormationViolation",
    "FormatViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
    "OccurrenceConstraintViolation",
    "TypeConstraintViolation",
    "GenericError",
}
KEY = "0123456789abcdef-station-key"


class Wire(logging.Handler):
    """Frames as the CSMS saw them: ('in' | 'out', charge point id, parsed JSON)."""

    def __init__(self, frames: list[tuple[str, str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.frames = frames

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if not isinstance(record.args, tuple) or len(record.args) != 2:
            return
        if "receive message" in msg:
            direction = "in"
        elif "send" in msg:
            direction = "out"
        else:
            return
        try:
            self.frames.append((direction, str(record.args[0]), json.loads(str(record.args[1]))))
        except json.JSONDecodeError:
            self.frames.append((direction, str(record.args[0]), str(record.args[1])))


class Csms:
    def __init__(
        self,
        *,
        key: str | None = KEY,
        heartbeat_interval: int = 60,
        registration: Callable[[Any, Any], Awaitable[RegistrationStatus]] | None = None,
        authorize: Callable[[Any, str], Awaitable[Any]] | None = None,
    ) -> None:
        self.port = free_port()
        self.authorize = authorize
        self.key = key
        self.heartbeat_interval = heartbeat_interval
        self.registration = registration
        self.frames: list[tuple[str, str, Any]] = []
        self.events: list[Any] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: CentralSystem | None = None
        self._wire = Wire(self.frames)
        wire = logging.getLogger("ocpp_csms.wire")
        wire.setLevel(logging.DEBUG)
        wire.addHandler(self._wire)
        wire.propagate = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _auth(self, cp_id: str, password: str | None) -> bool:
        return self.key is None or password == self.key

    def start(self) -> Csms:
        async def go() -> CentralSystem:
            server = CentralSystem(
                host="127.0.0.1",
                port=self.port,
                heartbeat_interval=self.heartbeat_interval,
                ping_interval=5.0,
                call_timeout=10.0,
                authenticate=self._auth,
                registration=self.registration,
                authorize=self.authorize,
            )
            server.add_listener(self.events.append)
            await server.async_start()
            return server

        self._server = self.run(go())
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self.run(server.async_stop())

    def close(self) -> None:
        self.stop()
        logging.getLogger("ocpp_csms.wire").removeHandler(self._wire)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cp(self, station_id: str) -> ocpp_csms.ChargePoint:
        assert self._server is not None
        return self._server.charge_points[station_id]

    def calls(self, action: str | None = None) -> list[dict[str, Any]]:
        """Payloads of the station's CALLs (of ``action``), in arrival order."""
        return [
            f[3]
            for d, _, f in list(self.frames)
            if d == "in" and isinstance(f, list) and f[0] == CALL and action in (None, f[2])
        ]

    def results(self, action: str) -> list[dict[str, Any]]:
        """The CSMS's answers to the station's CALLs of ``action``, in order."""
        ids = {
            f[1]
            for d, _, f in list(self.frames)
            if d == "in" and isinstance(f, list) and f[0] == CALL and f[2] == action
        }
        return [
            f[2]
            for d, _, f in list(self.frames)
            if d == "out" and isinstance(f, list) and f[0] == RESULT and f[1] in ids
        ]

    def tx_ids(self) -> list[int]:
        return [int(r["transactionId"]) for r in self.results("StartTransaction")]

    def actions(self) -> list[str]:
        return [
            f[2]
            for d, _, f in list(self.frames)
            if d == "in" and isinstance(f, list) and f[0] == CALL
        ]

    def answer_to(self, unique_id: str) -> list[Any] | None:
        """The station's CALLRESULT or CALLERROR frame for a CSMS call."""
        for d, _, f in list(self.frames):
            if d == "in" and isinstance(f, list) and f[0] in (RESULT, ERROR) and f[1] == unique_id:
                return f
        return None

    def raw_send(self, station_id: str, text: str) -> None:
        """Send a hand-made text frame (one the ocpp package would refuse to build)."""
        session = self.cp(station_id)._session
        assert session is not None
        self.run(session.handler._send(text))

    def flood(self, station_id: str, frames: list[str]) -> None:
        """Send many hand-made frames as fast as the socket takes them."""
        session = self.cp(station_id)._session
        assert session is not None

        async def go() -> None:
            for text in frames:
                await session.handler._send(text)

        self.run(go())

    def raw_call(self, station_id: str, frame: list[Any], timeout: float = 10.0) -> list[Any]:
        """Send a hand-made CALL frame and return the station's answer frame."""
        self.raw_send(station_id, json.dumps(frame))
        return wait_for(lambda: self.answer_to(frame[1]), timeout, f"answer to {frame[2]}")


def wait_for(pred: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # polling interval of this wait


SCHEMAS_201 = Path(ocpp.__file__).parent / "v201" / "schemas"


def _schema(name: str, version: str = "1.6") -> dict[str, Any]:
    if version == "1.6":
        path = SCHEMAS_16 / f"{name}.json"
    else:  # 2.0.1 names its request schemas FooRequest.json
        path = SCHEMAS_201 / (name if name.endswith("Response") else f"{name}Request")
        path = path.with_suffix(".json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def check_frames(frames: list[tuple[str, str, Any]], version: str = "1.6") -> int:
    """Validate every frame the station sent against the OCPP 1.6 JSON schemas; returns how
    many were checked. CALLs by their action; CALLRESULTs by the action of the CSMS call they
    answer; CALLERRORs by the OCPP-J error codes."""
    csms_calls = {
        f[1]: f[2]
        for d, _, f in frames
        if d == "out" and isinstance(f, list) and len(f) > 2 and f[0] == CALL
    }
    checked = 0
    for direction, _, frame in frames:
        if direction != "in":
            continue
        assert isinstance(frame, list), f"not an OCPP-J frame: {frame!r}"
        kind = frame[0]
        if kind == CALL:
            jsonschema.validate(frame[3], _schema(frame[2], version))
        elif kind == RESULT and frame[1] in csms_calls:
            jsonschema.validate(frame[2], _schema(csms_calls[frame[1]] + "Response", version))
        elif kind == ERROR:
            assert frame[2] in ERROR_CODES, frame
            assert isinstance(frame[3], str) and isinstance(frame[4], dict), frame
        else:
            continue
        checked += 1
    return checked


def boot_retry_interval(seconds: int) -> None:
    """The interval ocpp-csms gives a charge point it answers Pending or Rejected."""
    ocpp_csms.charge_point.DEFAULT_BOOT_RETRY_INTERVAL = seconds  # type: ignore[attr-defined]


def ocpp_config(
    csms: Any, tmp: Path, key: str | None = KEY, protocol: str = "ocpp1.6", **ocpp: Any
) -> dict[str, Any]:
    """Overrides for tests.helpers.station_config: the station speaks OCPP to ``csms``."""
    section: dict[str, Any] = {
        "url": csms.url,
        "security_profile": 0,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "call_timeout_s": 5.0,
        "meter_value_sample_interval_s": 1,
    }
    if key is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        secret = tmp / "ocpp.key"
        secret.write_text(key + "\n")
        secret.chmod(0o600)
        section.update(security_profile=1, password_file=str(secret))
    if csms.url.startswith("wss"):
        section["security_profile"] = 2 if key is not None else 3
    section.update(ocpp)
    return {
        "backend": {"protocol": protocol},
        "ocpp": section,
        "store": {"meter_interval_s": 0.5},
    }


def signing_meter(tmp: Path) -> dict[str, Any]:
    """A signing sim meter's settings (OCMF records signed with a key in ``tmp``)."""
    return {"signing": True, "key_file": str(tmp / "meter-key.pem"), "time_factor": 600.0}


def meter_public_key(tmp: Path) -> str:
    """The signing sim meter's public key, read from its key file (not asked of the station):
    hex of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((tmp / "meter-key.pem").read_bytes(), None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.hex().upper()


def ocmf_verifies(record: str, public_key_hex: str) -> bool:
    """pyocmf (not our code) checks the record's signature against the key."""
    import warnings

    from pyocmf import OCMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the masked ID is not an ISO14443 UID: a spec note
        return bool(OCMF.from_string(record).verify_signature(public_key_hex))
