"""OCMF records (Open Charge Metering Format, S.A.F.E. e.V., ``OCMF-en.md`` rev 1.2): building
and signing them as a signing meter does, reading their transaction values back.

A record is ``OCMF|{payload JSON}|{signature JSON}``. The signature (``SA``
``ECDSA-secp256r1-SHA256``, ``SD`` the DER signature in hex) covers the payload's exact bytes,
so a record is stored and passed on as the string it is, never re-serialised. The public key
travels separately (hex of its DER SubjectPublicKeyInfo).

``cryptography`` is imported only when a key is loaded or a record signed (extra ``ocmf``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.errors import ConfigError, DriverError
from drivers.meter.base import SignedRecord, TransactionIdent

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

SIGNATURE_ALGORITHM = "ECDSA-secp256r1-SHA256"
OBIS_IMPORT_TOTAL = "01-00:01.08.00"  # active energy import, total (law-relevant)
END_REASONS = frozenset("ELRAP")  # TX values that end a transaction
KWH_PLACES = Decimal("0.001")


@dataclass(frozen=True, kw_only=True)
class MeterIdentity:
    """``MV`` vendor, ``MM`` model, ``MS`` serial, ``MF`` firmware of the signing meter."""

    vendor: str
    model: str
    serial: str
    firmware: str


def ocmf_time(ts: datetime, synced: bool) -> str:
    """``TM``: ``2026-12-03T11:22:04,123+0000 S`` (``S`` synchronised, ``U`` unknown)."""
    utc = ts.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S},{utc.microsecond // 1000:03d}+0000 {'S' if synced else 'U'}"


def register_kwh(value_kwh: float) -> Decimal:
    """The register as a meter shows it: kWh with 3 places, cut (never rounded up)."""
    return Decimal(repr(value_kwh)).quantize(KWH_PLACES, rounding=ROUND_FLOOR)


def build_payload(
    *,
    meter: MeterIdentity,
    ident: TransactionIdent,
    pagination: int,
    tx: str,
    value_kwh: Decimal,
    ts: datetime,
) -> str:
    """One transaction reading (``TX`` B or E) as an OCMF payload, compact JSON."""
    reading = {
        "TM": ocmf_time(ts, ident.time_synced),
        "TX": tx,
        "RV": "__RV__",
        "RI": OBIS_IMPORT_TOTAL,
        "RU": "kWh",
        "RT": "AC",
        "ST": "G",
    }
    payload: dict[str, Any] = {
        "FV": "1.0",
        "GI": "station-agent",
        "GS": meter.serial,
        "GV": meter.firmware,
        "PG": f"T{pagination}",
        "MV": meter.vendor,
        "MM": meter.model,
        "MS": meter.serial,
        "MF": meter.firmware,
        "IS": True,
        "IT": ident.id_type,
        "ID": ident.id_masked,
        "CT": "EVSEID",
        "CI": ident.evse_id,
        "RD": [reading],
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    # RV is a JSON number with exactly the meter's places (a float would lose trailing zeros)
    return text.replace('"__RV__"', format(value_kwh, "f"), 1)


def sign(payload: str, key: EllipticCurvePrivateKey) -> str:
    """The record: the payload's UTF-8 bytes signed with ECDSA over SHA-256 (DER, hex)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signature = key.sign(payload.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    sig = json.dumps({"SA": SIGNATURE_ALGORITHM, "SD": signature.hex().upper()})
    return f"OCMF|{payload}|{sig.replace(' ', '')}"


def assemble(payload: str, signature_hex: str) -> str:
    """A record from a meter that hands out its payload and its signature separately."""
    sig = json.dumps({"SA": SIGNATURE_ALGORITHM, "SD": signature_hex.upper()})
    return f"OCMF|{payload}|{sig.replace(' ', '')}"


def split(record: str) -> tuple[str, str]:
    """(payload JSON text, signature JSON text); DriverError when it is not a record."""
    if not record.startswith("OCMF|") or record.count("|") < 2:
        raise DriverError("not an OCMF record (expected 'OCMF|{payload}|{signature}')")
    head, _, sig = record.rpartition("|")
    return head[len("OCMF|") :], sig


def _kwh(reading: dict[str, Any]) -> float:
    value = reading.get("RV")
    unit = reading.get("RU", "kWh")
    if not isinstance(value, Decimal | int) or unit not in ("kWh", "Wh"):
        raise DriverError(f"OCMF reading without a kWh/Wh value: RV={value!r} RU={unit!r}")
    kwh = Decimal(value) / 1000 if unit == "Wh" else Decimal(value)
    return float(kwh)


def parse(record: str) -> SignedRecord:
    """The record with the kWh values of its begin and end readings (DriverError if unusable)."""
    payload_text, _ = split(record)
    try:
        payload = json.loads(payload_text, parse_float=Decimal)
    except (ValueError, InvalidOperation) as err:
        raise DriverError(f"OCMF payload is not JSON: {err}") from err
    readings = payload.get("RD") if isinstance(payload, dict) else None
    if not isinstance(readings, list) or not readings:
        raise DriverError("OCMF payload has no readings (RD)")
    begin = end = None
    unit = "kWh"
    for reading in readings:
        if not isinstance(reading, dict):
            raise DriverError("OCMF reading is not an object")
        unit = reading.setdefault("RU", unit)  # inherited from the previous reading
        if reading.get("TX") == "B" and begin is None:
            begin = _kwh(reading)
        elif reading.get("TX") in END_REASONS:
            end = _kwh(reading)
    return SignedRecord(record=record, begin_kwh=begin, end_kwh=end)


# ---------------------------------------------------------------- keys
def load_or_create_key(path: Path) -> EllipticCurvePrivateKey:
    """The secp256r1 private key in ``path`` (PEM); created with mode 0600 if missing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        except OSError as err:
            raise ConfigError(f"cannot create the meter key {path}: {err}") from err
        return key
    except OSError as err:
        raise ConfigError(f"cannot read the meter key {path}: {err}") from err
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {err}") from err
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise ConfigError(f"{path}: the meter key must be an EC key on secp256r1")
    return loaded


def public_key_hex(key: EllipticCurvePrivateKey) -> str:
    """The public key as OCMF verifiers take it: hex of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.hex().upper()


# DER header of a secp256r1 SubjectPublicKeyInfo before the uncompressed point's X and Y
# (id-ecPublicKey, prime256v1, BIT STRING, 0x04): a meter that hands out X||Y gets it prepended
SECP256R1_SPKI_PREFIX = "3059301306072A8648CE3D020106082A8648CE3D03010703420004"
