"""Masking of personal identifiers (RFID UIDs, EMAIDs/contract ids) before they reach a log.

Rule of thumb: never reveal more than 8 characters of an identifier and always hide at least one.
"""

from __future__ import annotations

from collections.abc import Mapping

ELLIPSIS = "…"

#: Keys of an auth-token dict whose values are personal identifiers and get masked.
_MASKED_KEYS = frozenset({"uid", "contract_id"})
#: Keys of an auth-token dict that are secrets and are dropped altogether.
_DROPPED_KEYS = frozenset({"pin"})


def mask(value: str | None) -> str:
    """Mask a personal identifier for logging.

    * ``None`` -> ``"-"``
    * up to 4 characters -> ``"…"`` (nothing revealed)
    * 5..8 characters -> first 2 + ``"…"`` + last 2 (``"04A224B2"`` -> ``"04…B2"``)
    * 9 or more characters -> first 4 + ``"…"`` + last 4 (``"04A224B2C13C80"`` -> ``"04A2…3C80"``)
    """
    if value is None:
        return "-"
    n = len(value)
    if n <= 4:
        return ELLIPSIS
    keep = 2 if n <= 8 else 4
    return f"{value[:keep]}{ELLIPSIS}{value[-keep:]}"


def mask_token(token: Mapping[str, object]) -> dict[str, object]:
    """Return a log-safe copy of an auth token dict.

    ``uid`` and ``contract_id`` are masked, ``pin`` is removed; every other key is copied
    unchanged. The input mapping is not modified.
    """
    out: dict[str, object] = {}
    for key, value in token.items():
        if key in _DROPPED_KEYS:
            continue
        if key in _MASKED_KEYS:
            out[key] = mask(None if value is None else str(value))
        else:
            out[key] = value
    return out
