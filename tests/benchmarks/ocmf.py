"""Signed metering (OCMF): what signing and checking a record costs.

* sign: ``SigningSimMeter.end_transaction`` (a reading, the payload, the ECDSA-P256/SHA-256
  signature, the pagination counter written to its file) and the signature alone
  (``drivers.meter.ocmf.sign`` on a fixed payload);
* verify: ``pyocmf`` parsing one record and checking its signature against the public key,
  and ``agent.ocmf_verify.check`` on a CDR's ``signed_meter_values`` (start and end record and
  pyocmf's calibration-law checks), as ``stationctl cdr verify`` runs it;
* Iskra: one whole transaction of ``IskraMeter`` (begin, end, read-back of the record and its
  signature) against the simulated meter of the tests (a pymodbus TCP server on loopback whose
  register hook signs with a test key).

All in this process with ``time.perf_counter``; n = 500 (``--quick``: 50), Iskra n = 20 (5).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from tests.benchmarks.common import Result

TARGET_VERIFY_MS = 5.0  # per record, so that checking a day's CDRs takes seconds


def _times(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return sorted(out)


def _pct(data: list[float], p: float) -> float:
    return data[min(len(data) - 1, int(p * len(data)))]


def _fmt(data: list[float]) -> str:
    return f"p50 {statistics.median(data):.3f} / p95 {_pct(data, 0.95):.3f} ms"


def run_ocmf(quick: bool) -> Result:
    from cryptography.hazmat.primitives.asymmetric import ec
    from pyocmf import OCMF

    from agent.ocmf_verify import check
    from drivers.meter.base import TransactionIdent
    from drivers.meter.iskra import IskraMeter
    from drivers.meter.ocmf import sign, split
    from drivers.meter.sim_signing import SigningSimMeter
    from tests.iskra_server import IskraServer

    res = Result("10. Signed metering (OCMF)")
    t_start = time.monotonic()
    n = 50 if quick else 500
    ident = TransactionIdent(
        evse_id="DE*ICE*E000001*1", id_type="ISO14443", id_masked="04A2...3C80"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ocmf-") as tmp:
        meter = SigningSimMeter(key_file=Path(tmp) / "key.pem")
        meter.prepare()
        start = meter.begin_transaction(ident).record
        stop = meter.end_transaction(ident).record
        key = meter.public_key()
        sign_meter = _times(lambda: meter.end_transaction(ident), n)
        payload = split(stop)[0]
        pkey = ec.generate_private_key(ec.SECP256R1())
        sign_only = _times(lambda: sign(payload, pkey), n)
    values = {"start": start, "stop": stop, "public_key": key}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyocmf's note on the masked ID
        verify = _times(lambda: OCMF.from_string(stop).verify_signature(key), n)
        full = _times(lambda: check(values), n)
    srv = IskraServer(ec.generate_private_key(ec.SECP256R1()))
    iskra = IskraMeter("tcp", host="127.0.0.1", port=srv.port, timeout_s=1.0)
    try:
        iskra.read()

        def transaction() -> None:
            iskra.begin_transaction(ident)
            iskra.end_transaction(ident)

        tx = _times(transaction, 5 if quick else 20)
    finally:
        iskra.shutdown()
        srv.stop()
    res.data.update(
        sign_meter_ms=sign_meter,
        sign_only_ms=sign_only,
        verify_ms=verify,
        check_ms=full,
        iskra_tx_ms=tx,
        record_bytes=len(stop),
    )
    res.row("sim meter signs a record (reading, payload, ECDSA, counter file)", _fmt(sign_meter))
    res.row("ECDSA-secp256r1-SHA256 signature alone", _fmt(sign_only))
    res.row(
        "pyocmf parse + verify, per record",
        _fmt(verify),
        f"p95 < {TARGET_VERIFY_MS:g} ms",
        _pct(verify, 0.95) < TARGET_VERIFY_MS,
    )
    res.row("check of a CDR's signed_meter_values (2 records + Eichrecht)", _fmt(full))
    res.row("Iskra transaction over Modbus TCP (begin, end, read-back)", _fmt(tx))
    res.row("record size", f"{len(stop)} bytes")
    res.seconds = time.monotonic() - t_start
    return res
