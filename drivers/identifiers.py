"""Identifiers at a charging station: station id, EvseID, OperatorID, RFID UID, contract id.

Pure functions, no I/O. Patterns and check-character algorithms follow OICP 2.3,
ISO 15118 / eMI3 and DIN SPEC 91286 (see ``shared/reference/identifiers.md``).

The exported ``*_RE`` patterns are written ``^...$`` so that they can be reused verbatim in
JSON Schema / pydantic. In Python always test them with :meth:`re.Pattern.fullmatch` (as the
``is_*`` helpers do): ``$`` alone also matches before a trailing newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from drivers.privacy import mask

__all__ = [
    "EVSE_ID_RE",
    "OPERATOR_ID_RE",
    "STATION_ID_RE",
    "ContractId",
    "din_check_char",
    "is_evse_id",
    "is_operator_id",
    "is_station_id",
    "iso_check_char",
    "normalize_uid",
    "parse_contract_id",
    "try_parse_contract_id",
]

# --------------------------------------------------------------------------- patterns

STATION_ID_RE: re.Pattern[str] = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: OICP 2.3 EvseIdType (OpenAPI variant, lower case allowed).
EVSE_ID_RE: re.Pattern[str] = re.compile(
    r"^(([A-Za-z]{2}\*?[A-Za-z0-9]{3}\*?E[A-Za-z0-9\*]{1,30})"
    r"|(\+?[0-9]{1,3}\*[0-9]{3}\*[0-9\*]{1,32}))$"
)

#: OICP 2.3 OperatorIdType (OpenAPI variant, lower case allowed).
OPERATOR_ID_RE: re.Pattern[str] = re.compile(
    r"^(([A-Za-z]{2}\*?[A-Za-z0-9]{3})|(\+?[0-9]{1,3}\*[0-9]{3}))$"
)

# Contract ids. Written with explicit ASCII classes (no ``\d``, no IGNORECASE: both would let
# non-ASCII characters such as Arabic-Indic digits or the Kelvin sign through).
# The OICP originals use ``[\d|X]`` / ``[\*|\-]``, where ``|`` is a literal inside a class,
# evidently unintended; it is not accepted here.
_ISO_CONTRACT_RE = re.compile(r"[A-Za-z]{2}-?[A-Za-z0-9]{3}-?[Cc][A-Za-z0-9]{8}-?[A-Za-z0-9]")
_DIN_CONTRACT_RE = re.compile(r"[A-Za-z]{2}[*-]?[A-Za-z0-9]{3}[*-]?[A-Za-z0-9]{6}[*-]?[0-9Xx]")

_ALNUM36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM36_VALUE = {c: i for i, c in enumerate(_ALNUM36)} | {
    c.lower(): i for i, c in enumerate(_ALNUM36) if c.isalpha()
}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_UID_SEPARATORS = frozenset(":- ")
_UID_BYTE_LENGTHS = (4, 7, 10)
_ERR_SHOW_MAX = 40


def is_station_id(s: str) -> bool:
    """1..64 characters out of ``A-Z a-z 0-9 . _ -`` (safe in MQTT topics and file names)."""
    return STATION_ID_RE.fullmatch(s) is not None


def is_evse_id(s: str) -> bool:
    """OICP 2.3 EvseID, ISO style (``DE*AB7*E840*6487``) or DIN style (``+49*810*000*438``)."""
    return EVSE_ID_RE.fullmatch(s) is not None


def is_operator_id(s: str) -> bool:
    """OICP 2.3 OperatorID, e.g. ``DE*ICE`` or ``+49*810``."""
    return OPERATOR_ID_RE.fullmatch(s) is not None


# --------------------------------------------------------------------------- RFID UID


def normalize_uid(s: str) -> str:
    """Normalise an RFID UID to the OICP ``UIDType`` form: upper-case hex, 4, 7 or 10 bytes.

    Accepts any case and the separators ``:``, ``-`` and space (``"04:a2:24:b2"``), plus
    surrounding whitespace. Raises :class:`ValueError` otherwise; the message shows the input
    masked, since a UID is a personal identifier.
    """
    digits = "".join(ch for ch in s.strip() if ch not in _UID_SEPARATORS)
    shown = mask(s)
    if not digits:
        raise ValueError(f"RFID UID {shown!r} is empty")
    bad = sorted({ch for ch in digits if ch not in _HEX_DIGITS})
    if bad:
        raise ValueError(
            f"RFID UID {shown!r} contains non-hex characters "
            f"({''.join(bad)[:10]!r}); expected hex digits with optional ':', '-' or ' '"
        )
    if len(digits) % 2:
        raise ValueError(f"RFID UID {shown!r} has an odd number of hex digits ({len(digits)})")
    n_bytes = len(digits) // 2
    if n_bytes not in _UID_BYTE_LENGTHS:
        raise ValueError(f"RFID UID {shown!r} is {n_bytes} bytes long; it must be 4, 7 or 10 bytes")
    return digits.upper()


# --------------------------------------------------------------------------- check characters

_Mat = tuple[tuple[int, int], tuple[int, int]]
_Vec = tuple[int, int]


def _mat_mul(a: _Mat, b: _Mat, p: int) -> _Mat:
    return (
        ((a[0][0] * b[0][0] + a[0][1] * b[1][0]) % p, (a[0][0] * b[0][1] + a[0][1] * b[1][1]) % p),
        ((a[1][0] * b[0][0] + a[1][1] * b[1][0]) % p, (a[1][0] * b[0][1] + a[1][1] * b[1][1]) % p),
    )


def _vec_mul(v: _Vec, m: _Mat, p: int) -> _Vec:
    """Row vector times matrix, mod p."""
    return ((v[0] * m[0][0] + v[1] * m[1][0]) % p, (v[0] * m[0][1] + v[1] * m[1][1]) % p)


def _mat_inv(m: _Mat, p: int) -> _Mat:
    det_inv = pow((m[0][0] * m[1][1] - m[0][1] * m[1][0]) % p, -1, p)
    return (
        ((m[1][1] * det_inv) % p, (-m[0][1] * det_inv) % p),
        ((-m[1][0] * det_inv) % p, (m[0][0] * det_inv) % p),
    )


def _powers(m: _Mat, p: int, count: int) -> tuple[_Mat, ...]:
    """``(m^1, m^2, ..., m^count)`` mod p."""
    out = [m]
    for _ in range(count - 1):
        out.append(_mat_mul(out[-1], m, p))
    return tuple(out)


_ISO_P1: _Mat = ((0, 1), (1, 1))  # over Z2
_ISO_P2: _Mat = ((0, 1), (1, 2))  # over Z3
_ISO_P1_POW = _powers(_ISO_P1, 2, 15)
_ISO_P2_POW = _powers(_ISO_P2, 3, 15)
# The check character sits at position 15; solving for it needs the inverses of P^15.
_ISO_P1_15_INV = _mat_inv(_ISO_P1_POW[14], 2)
_ISO_P2_15_INV = _mat_inv(_ISO_P2_POW[14], 3)


def _alnum_values(s: str, length: int, what: str) -> list[int]:
    if len(s) != length:
        raise ValueError(f"{what} needs exactly {length} characters, got {len(s)}: {_shorten(s)!r}")
    try:
        return [_ALNUM36_VALUE[ch] for ch in s]
    except KeyError as err:
        raise ValueError(
            f"{what}: {s!r} contains {err.args[0]!r}; only A-Z, a-z and 0-9 are allowed"
        ) from err


def _shorten(s: str) -> str:
    return s if len(s) <= _ERR_SHOW_MAX else s[:_ERR_SHOW_MAX] + "…"


def iso_check_char(first14: str) -> str:
    """ISO 15118 / eMI3 check character over the 14 characters of an EMAID before it.

    Case-insensitive; separators are not accepted (pass the normalised form).
    """
    values = _alnum_values(first14, 14, "ISO/eMI3 check character")
    s1: _Vec = (0, 0)
    s2: _Vec = (0, 0)
    for v, p1, p2 in zip(values, _ISO_P1_POW, _ISO_P2_POW, strict=False):
        q, r = divmod(v, 9)
        t1 = _vec_mul(divmod(q, 2), p1, 2)
        t2 = _vec_mul(divmod(r, 3), p2, 3)
        s1 = ((s1[0] + t1[0]) % 2, (s1[1] + t1[1]) % 2)
        s2 = ((s2[0] + t2[0]) % 3, (s2[1] + t2[1]) % 3)
    # c * P^15 == -s  =>  c = -s * (P^15)^-1
    q1, q2 = _vec_mul(((-s1[0]) % 2, (-s1[1]) % 2), _ISO_P1_15_INV, 2)
    r1, r2 = _vec_mul(((-s2[0]) % 3, (-s2[1]) % 3), _ISO_P2_15_INV, 3)
    return _ALNUM36[9 * (2 * q1 + q2) + 3 * r1 + r2]


def din_check_char(first11: str) -> str:
    """DIN SPEC 91286 check character (``'0'``-``'9'`` or ``'X'``) over 11 characters.

    Case-insensitive; separators are not accepted (pass the normalised form).
    """
    values = _alnum_values(first11, 11, "DIN SPEC 91286 check character")
    total = 0
    k = 0
    for v in values:
        if v < 10:
            total += v << k
            k += 1
        else:
            tens, ones = divmod(v, 10)
            total += (tens << k) + (ones << (k + 1))
            k += 2
    check = total % 11
    return "X" if check == 10 else str(check)


# --------------------------------------------------------------------------- contract id


@dataclass(frozen=True)
class ContractId:
    """A parsed contract id (EMAID / EvcoID)."""

    normalized: str
    """Upper case, separators removed, e.g. ``"DE8ACC12345678X"`` or ``"DE8AC1234567"``."""
    form: Literal["iso", "din"]
    """``"iso"``: ISO 15118 / eMI3 (15 characters); ``"din"``: DIN SPEC 91286 (12 characters)."""
    check_digit_ok: bool
    """Whether the last character is the correct check character (a mismatch is only a warning)."""
    expected_check: str
    """What the check character should be."""


def parse_contract_id(s: str) -> ContractId:
    """Parse a contract id in ISO 15118 / eMI3 or DIN SPEC 91286 form.

    ISO: ``DE-8AC-C12345678-X``, ``DE8ACC12345678X`` (``-`` separators optional).
    DIN: ``DE*8AC*123456*7``, ``DE-8AC-123456-7``, ``DE8AC1234567`` (``*`` or ``-`` optional).
    Any case; surrounding whitespace is ignored. A wrong check character is not an error
    (``check_digit_ok=False``); anything that matches neither form raises :class:`ValueError`.
    """
    text = s.strip()
    if _ISO_CONTRACT_RE.fullmatch(text):
        normalized = text.replace("-", "").upper()
        expected = iso_check_char(normalized[:14])
        return ContractId(normalized, "iso", normalized[14] == expected, expected)
    if _DIN_CONTRACT_RE.fullmatch(text):
        normalized = text.replace("-", "").replace("*", "").upper()
        expected = din_check_char(normalized[:11])
        return ContractId(normalized, "din", normalized[11] == expected, expected)
    raise ValueError(
        f"not a contract id: {_shorten(s)!r} matches neither the ISO 15118/eMI3 form "
        "(e.g. DE-8AC-C12345678-X) nor the DIN SPEC 91286 form (e.g. DE*8AC*123456*7)"
    )


def try_parse_contract_id(s: str) -> ContractId | None:
    """Like :func:`parse_contract_id`, but returns ``None`` instead of raising."""
    try:
        return parse_contract_id(s)
    except ValueError:
        return None
