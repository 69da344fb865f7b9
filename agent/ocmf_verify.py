"""Checking signed meter records with a verifier that is not our own: ``pyocmf`` (MIT).

:func:`check` verifies each record of a CDR's ``signed_meter_values`` against the public key
and applies pyocmf's calibration-law checks (begin and end reading, status ``G``, values not
going backwards, time sync); :func:`report` prints the readings, the time sync state and the
verdict. Used by ``stationctl cdr verify SESSION_ID`` and ``station-agent ocmf verify FILE``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError

SYNC_STATES = {"S": "synchronised", "I": "informative", "U": "not synchronised", "R": "relative"}


class VerifyError(AgentError):
    """The input cannot be checked at all (no records, no key, pyocmf missing)."""


@dataclass(kw_only=True)
class RecordCheck:
    name: str  # "start" or "stop"
    valid: bool
    readings: list[dict[str, str]] = field(default_factory=list)
    problem: str | None = None
    notes: list[str] = field(default_factory=list)  # spec warnings pyocmf tolerates


@dataclass(kw_only=True)
class Verdict:
    records: list[RecordCheck]
    issues: list[str]  # calibration-law errors
    warnings: list[str]
    error: str | None = None  # the station's own note: why a record is missing

    @property
    def ok(self) -> bool:
        return bool(self.records) and all(r.valid for r in self.records) and not self.issues


def _pyocmf() -> Any:
    try:
        import pyocmf
    except ImportError as err:
        raise VerifyError("pyocmf is not installed; install station-agent[ocmf]") from err
    return pyocmf


def _reading(r: Any) -> dict[str, str]:
    tm = r.TM
    status = str(getattr(tm.status, "value", tm.status))
    return {
        "tx": str(getattr(r.TX, "value", r.TX)),
        "value": f"{r.RV} {getattr(r.RU, 'value', r.RU)}",
        "time": tm.timestamp.isoformat(),
        "sync": f"{status} ({SYNC_STATES.get(status, 'unknown')})",
        "status": str(getattr(r.ST, "value", r.ST)),
    }


def _check_record(name: str, record: str, public_key: str) -> tuple[RecordCheck, Any]:
    pyocmf = _pyocmf()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parsed = pyocmf.OCMF.from_string(record)
            valid = bool(parsed.verify_signature(public_key))
        except pyocmf.PyOCMFError as err:
            return RecordCheck(name=name, valid=False, problem=str(err)), None
    check = RecordCheck(
        name=name,
        valid=valid,
        readings=[_reading(r) for r in parsed.payload.RD],
        problem=None if valid else "the signature does not match the payload and the key",
        notes=sorted({str(w.message) for w in caught}),
    )
    return check, parsed


def check(values: dict[str, Any]) -> Verdict:
    """Verify ``signed_meter_values`` (``start``, ``stop``, ``public_key``, ``error``)."""
    key = values.get("public_key")
    named = [(n, values[n]) for n in ("start", "stop") if isinstance(values.get(n), str)]
    if not named:
        raise VerifyError(
            f"no signed records to check ({values.get('error') or 'none were stored'})"
        )
    if not isinstance(key, str) or not key:
        raise VerifyError("no public key to check the records against")
    checks, parsed = [], []
    for name, record in named:
        result, ocmf = _check_record(name, record, key)
        checks.append(result)
        if ocmf is not None:
            parsed.append(ocmf)
    issues: list[str] = []
    notes: list[str] = []
    if len(parsed) == len(named):
        other = parsed[1] if len(parsed) == 2 else None
        for issue in parsed[0].check_eichrecht(other):
            text = f"{issue.field}: {issue.message}" if issue.field else issue.message
            is_error = str(getattr(issue.severity, "value", issue.severity)).lower() == "error"
            (issues if is_error else notes).append(text)
    return Verdict(records=checks, issues=issues, warnings=notes, error=values.get("error"))


def load_values(path: Path, public_key: str | None = None) -> dict[str, Any]:
    """A file holding a CDR (with ``signed_meter_values``), the values object itself, or one
    raw ``OCMF|...`` record (then ``public_key`` is needed)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise VerifyError(f"cannot read {path}: {err}") from err
    if text.startswith("OCMF|"):
        return {"stop": text, "public_key": public_key}
    try:
        data = json.loads(text)
    except ValueError as err:
        raise VerifyError(f"{path}: neither an OCMF record nor JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("signed_meter_values"), dict):
        data = data["signed_meter_values"]
    if not isinstance(data, dict):
        raise VerifyError(f"{path}: expected a CDR or its signed_meter_values object")
    if public_key:
        data = {**data, "public_key": public_key}
    return data


def report(verdict: Verdict) -> list[str]:
    """Human-readable lines: each record's readings, time sync and signature, the verdict."""
    lines = []
    for rec in verdict.records:
        sig = "signature valid" if rec.valid else f"INVALID: {rec.problem}"
        lines.append(f"{rec.name}: {sig}")
        lines += [
            f"  {r['tx']:>2}  {r['value']:>14}  {r['time']}  time {r['sync']}  status {r['status']}"
            for r in rec.readings
        ]
        lines += [f"  note: {n}" for n in rec.notes]
    lines += [f"calibration law: {i}" for i in verdict.issues]
    lines += [f"warning: {w}" for w in verdict.warnings]
    if verdict.error:
        lines.append(f"station: {verdict.error}")
    lines.append("verdict: OK" if verdict.ok else "verdict: FAILED")
    return lines
