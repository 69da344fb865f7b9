"""Classify the text of a scanned QR code: a contract (EMAID [+ PIN]), a station code, or unknown.

Pure functions, no I/O; :func:`classify` never raises.

Accepted contract codes (the EMAID in ISO 15118/eMI3 or DIN SPEC 91286 form, any case, with or
without separators; normalised to upper case without separators):

* the bare id: ``DE-8AC-C12345678-X``, ``DE8ACC12345678X``, ``DE*8AC*123456*7``
* a URL whose query has ``emaid=`` or ``evcoid=`` (key in any case) and optionally ``pin=``:
  ``https://app.example/start?emaid=DE8ACC12345678X&pin=1234``
* JSON with OICP ``QRCodeIdentification`` names, ``{"EvcoID": "...", "PIN": "..."}``, either
  at the top level or under a ``"QRCodeIdentification"`` key. Keys match case-insensitively and
  ignoring ``_``/``-`` (``evcoId``, ``evco_id``, ``EMAID``, ``pin``).

Station codes (kind ``"evse"``): a URL with an ``evseid=`` query parameter holding a valid
EvseID (the Intercharge code on a station). When a URL has both a contract id and an EvseID,
it is a contract code (``evse_id`` is then filled in too).

A wrong check character does not make a code unknown: ``check_digit_ok`` reports it (several
ids in the OICP spec itself carry wrong ones).

PINs are secrets: :class:`QrCode` keeps the PIN in ``pin`` but hides it from ``repr`` and
:meth:`QrCode.to_dict`, and ``QrCode.payload`` is the scanned text with every PIN value replaced
by ``***``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from drivers.identifiers import is_evse_id, try_parse_contract_id
from drivers.privacy import mask

__all__ = ["MAX_PAYLOAD_CHARS", "QrCode", "QrKind", "classify", "redact_pin"]

QrKind = Literal["contract", "evse", "unknown"]

MAX_PAYLOAD_CHARS: Final = 4096
MAX_PIN_CHARS: Final = 64
_SHOWN_CHARS: Final = 256  # how much of an unknown/too long payload QrCode.payload keeps
_REDACTED: Final = "***"
_MAX_QUERY_FIELDS: Final = 64

_CONTRACT_KEYS: Final = frozenset({"evcoid", "emaid"})
_PIN_KEYS: Final = frozenset({"pin"})
_EVSE_KEYS: Final = frozenset({"evseid"})
_WRAPPER_KEYS: Final = frozenset({"qrcodeidentification"})

# PIN values in a query (pin=...) or JSON ("pin": "..." / "pin": 1234), for redaction only.
_PIN_QUERY_RE: Final = re.compile(r"(?i)(?<![A-Za-z0-9_])(pin=)([^&#\s]*)")
_PIN_JSON_RE: Final = re.compile(
    r"""(?ix)
    (["']?(?<![A-Za-z0-9_])pin["']?\s*:\s*)   # key and colon
    ("(?:[^"\\]|\\.)*"?|'[^']*'?|[^,}\]\s]*)  # a (possibly unterminated) string or a bare token
    """
)


@dataclass(frozen=True)
class QrCode:
    """The meaning of one scanned QR code."""

    payload: str
    """The scanned text, PIN values replaced by ``***``; for unknown codes cut at 256 chars."""
    kind: QrKind
    emaid: str | None = None
    """The contract id, normalised (upper case, no separators)."""
    pin: str | None = field(default=None, repr=False)
    """The PIN of a contract code; never logged, never in :meth:`to_dict`."""
    evse_id: str | None = None
    check_digit_ok: bool | None = None
    """For contract codes: whether the EMAID's check character is right (a warning only)."""
    reason: str | None = None
    """For unknown codes: why."""

    def to_dict(self, *, masked: bool = False) -> dict[str, object]:
        """``payload``, ``kind`` and the fields that are set (never the PIN).

        ``masked=True`` masks the EMAID (and drops the payload, which contains it) for logs.
        """
        out: dict[str, object] = {"kind": self.kind}
        if masked:
            if self.kind != "contract":
                out["payload"] = self.payload
        else:
            out["payload"] = self.payload
        if self.emaid is not None:
            out["emaid"] = mask(self.emaid) if masked else self.emaid
        if self.evse_id is not None:
            out["evse_id"] = self.evse_id
        if self.check_digit_ok is not None:
            out["check_digit_ok"] = self.check_digit_ok
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def redact_pin(text: str) -> str:
    """``text`` with every PIN value replaced by ``***`` (for logs and stored payloads).

    JSON that parses is re-serialised with the value of every key whose name contains "pin"
    (``PIN``, ``HashedPIN``, any case, any depth) replaced; otherwise the values of query
    parameters named ``pin`` (also percent-encoded names) and anything that looks like a
    ``pin=...`` or ``"pin": ...`` pair are replaced.
    """
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            doc = json.loads(stripped)
        except (ValueError, RecursionError):
            pass
        else:
            redacted, changed = _redact_json(doc, 0)
            if changed:
                return json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
            return text
    text = _redact_query(text)
    text = _PIN_QUERY_RE.sub(lambda m: m.group(1) + _REDACTED, text)
    return _PIN_JSON_RE.sub(lambda m: m.group(1) + _json_redacted(m.group(2)), text)


def _redact_json(doc: object, depth: int) -> tuple[object, bool]:
    if depth > 50:
        return _REDACTED, True
    if isinstance(doc, dict):
        out: dict[object, object] = {}
        changed = False
        for key, value in doc.items():
            if isinstance(key, str) and "pin" in _norm_key(key):
                out[key] = _REDACTED
                changed = True
            else:
                out[key], sub = _redact_json(value, depth + 1)
                changed = changed or sub
        return out, changed
    if isinstance(doc, list):
        items = [_redact_json(v, depth + 1) for v in doc]
        return [v for v, _ in items], any(c for _, c in items)
    return doc, False


def _redact_query(text: str) -> str:
    start = text.find("?")
    if start < 0:
        return text
    end = text.find("#", start)
    end = len(text) if end < 0 else end
    segments = text[start + 1 : end].split("&")
    for i, seg in enumerate(segments):
        raw_key, sep, _value = seg.partition("=")
        if sep and _norm_key(unquote_plus(raw_key)) in _PIN_KEYS:
            segments[i] = f"{raw_key}={_REDACTED}"
    return text[: start + 1] + "&".join(segments) + text[end:]


def _json_redacted(value: str) -> str:
    if value.startswith('"'):
        return f'"{_REDACTED}"'
    if value.startswith("'"):
        return f"'{_REDACTED}'"
    return _REDACTED


def classify(payload: str) -> QrCode:
    """What a scanned QR code means. Never raises (anything odd is ``kind="unknown"``)."""
    try:
        return _classify(payload)
    except Exception as err:  # noqa: BLE001 - contract: classify() never raises
        # Not even the redaction is trusted here: the payload is dropped.
        return QrCode("", "unknown", reason=f"could not parse ({type(err).__name__})")


def _shown(text: str) -> str:
    text = redact_pin(text[: MAX_PAYLOAD_CHARS + 1])
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def _unknown(text: str, reason: str) -> QrCode:
    return QrCode(_shown(text), "unknown", reason=reason)


def _classify(payload: str) -> QrCode:
    if not isinstance(payload, str):
        return QrCode(repr(type(payload)), "unknown", reason="not text")
    if len(payload) > MAX_PAYLOAD_CHARS:
        return _unknown(payload, f"too long ({len(payload)} > {MAX_PAYLOAD_CHARS} characters)")
    text = payload.strip()
    if not text:
        return _unknown(payload, "empty")
    if text[0] in "{[":
        return _from_json(payload, text)
    if "?" in text or "://" in text:
        return _from_url(payload, text)
    cid = try_parse_contract_id(text)
    if cid is not None:
        return QrCode(payload, "contract", emaid=cid.normalized, check_digit_ok=cid.check_digit_ok)
    if is_evse_id(text):
        return _unknown(payload, "a bare EvseID, not a station URL with an evseid parameter")
    return _unknown(payload, "neither a contract id (EMAID) nor a URL or JSON code")


def _norm_key(key: str) -> str:
    return "".join(key.lower().split()).replace("_", "").replace("-", "")


def _from_url(payload: str, text: str) -> QrCode:
    try:
        query = urlsplit(text).query
    except ValueError as err:
        return _unknown(payload, f"malformed URL ({err})")
    if not query:
        return _unknown(payload, "URL without a query (no evseid, emaid or evcoid parameter)")
    contract_vals: list[str] = []
    pins: list[str] = []
    evse_vals: list[str] = []
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        return _unknown(payload, f"URL query has more than {_MAX_QUERY_FIELDS} parameters")
    for key, value in fields:
        k = _norm_key(key)
        if k in _CONTRACT_KEYS:
            contract_vals.append(value.strip())
        elif k in _PIN_KEYS:
            pins.append(value.strip())
        elif k in _EVSE_KEYS:
            evse_vals.append(value.strip())
    return _build(payload, contract_vals, pins, evse_vals, "URL")


def _from_json(payload: str, text: str) -> QrCode:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return _unknown(payload, "malformed JSON")
    if not isinstance(doc, dict):
        return _unknown(payload, "JSON but not an object")
    obj: dict[str, Any] = doc
    for key, value in doc.items():
        if _norm_key(key) in _WRAPPER_KEYS and isinstance(value, dict):
            obj = value
            break
    contract_vals: list[str] = []
    pins: list[str] = []
    evse_vals: list[str] = []
    for key, value in obj.items():
        k = _norm_key(key)
        if isinstance(value, bool) or not isinstance(value, str | int):
            if k in _CONTRACT_KEYS | _PIN_KEYS | _EVSE_KEYS and value is not None:
                return _unknown(payload, f"JSON key {key!r} is not a string")
            continue
        sval = str(value).strip()
        if k in _CONTRACT_KEYS:
            contract_vals.append(sval)
        elif k in _PIN_KEYS:
            pins.append(sval)
        elif k in _EVSE_KEYS:
            evse_vals.append(sval)
    return _build(payload, contract_vals, pins, evse_vals, "JSON")


def _build(
    payload: str, contract_vals: list[str], pins: list[str], evse_vals: list[str], what: str
) -> QrCode:
    redacted = redact_pin(payload)
    evse_id: str | None = None
    if evse_vals:
        if len(set(evse_vals)) > 1:
            return _unknown(payload, f"{what} has conflicting evseid values")
        if is_evse_id(evse_vals[0]):
            evse_id = evse_vals[0]
        elif not contract_vals:
            return _unknown(payload, f"evseid in the {what} is not a valid EvseID")

    if contract_vals:
        if len(set(contract_vals)) > 1:
            return _unknown(payload, f"{what} has conflicting contract id values")
        if not contract_vals[0]:
            return _unknown(payload, f"empty contract id in the {what}")
        cid = try_parse_contract_id(contract_vals[0])
        if cid is None:
            return _unknown(payload, f"contract id in the {what} is not a valid EMAID")
        pin: str | None = None
        if pins:
            if len(set(pins)) > 1:
                return _unknown(payload, f"{what} has conflicting PIN values")
            if len(pins[0]) > MAX_PIN_CHARS:
                return _unknown(payload, f"PIN in the {what} is too long")
            pin = pins[0] or None
        return QrCode(
            redacted,
            "contract",
            emaid=cid.normalized,
            pin=pin,
            evse_id=evse_id,
            check_digit_ok=cid.check_digit_ok,
        )
    if evse_id is not None:
        return QrCode(redacted, "evse", evse_id=evse_id)
    if pins:
        return _unknown(payload, f"{what} has a PIN but no contract id (emaid/evcoid)")
    return _unknown(payload, f"{what} has no evseid, emaid or evcoid")
