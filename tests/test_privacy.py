"""Tests for agent.privacy: masking of personal identifiers in logs."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy import mask, mask_token


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "-"),
        ("", "…"),
        ("0", "…"),
        ("04A2", "…"),
        ("04A22", "04…22"),
        ("04A224B2", "04…B2"),
        ("04A224B2C", "04A2…4B2C"),
        ("04A224B2C1", "04A2…B2C1"),
        ("04A224B2C13C", "04A2…C13C"),
        ("04A224B2C13C80", "04A2…3C80"),
        ("0102030405060708090A", "0102…090A"),
        ("DE8ACC12345678X", "DE8A…678X"),
    ],
)
def test_mask_examples(value: str | None, expected: str) -> None:
    assert mask(value) == expected


def test_mask_published_examples() -> None:
    assert mask("04A224B2C13C80") == "04A2…3C80"
    assert mask("04A224B2") == "04…B2"
    assert mask(None) == "-"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_mask_never_reveals_too_much(value: str) -> None:
    masked = mask(value)
    if len(value) <= 4:
        assert masked == "…"
        return
    keep = 2 if len(value) <= 8 else 4
    assert masked == value[:keep] + "…" + value[-keep:]
    revealed = 2 * keep
    assert revealed <= 8
    assert revealed <= len(value) - 1  # at least one character hidden


def test_mask_token_rfid() -> None:
    token = {"type": "rfid", "uid": "04A224B2C13C80"}
    assert mask_token(token) == {"type": "rfid", "uid": "04A2…3C80"}
    assert token == {"type": "rfid", "uid": "04A224B2C13C80"}  # input untouched


def test_mask_token_qr_drops_pin() -> None:
    token = {"type": "qr", "contract_id": "DE8ACC12345678X", "pin": "1234"}
    out = mask_token(token)
    assert out == {"type": "qr", "contract_id": "DE8A…678X"}
    assert "pin" not in out
    assert "1234" not in repr(out)
    assert token["pin"] == "1234"  # input untouched


def test_mask_token_remote() -> None:
    token = {"type": "remote", "contract_id": "DE-8AC-C12345678-X"}
    assert mask_token(token) == {"type": "remote", "contract_id": "DE-8…78-X"}


def test_mask_token_returns_a_new_dict_from_any_mapping() -> None:
    token = MappingProxyType({"type": "rfid", "uid": "04A224B2", "extra": 5})
    out = mask_token(token)
    assert isinstance(out, dict)
    assert out == {"type": "rfid", "uid": "04…B2", "extra": 5}
    out["type"] = "changed"
    assert token["type"] == "rfid"


def test_mask_token_handles_none_and_odd_values() -> None:
    assert mask_token({"type": "rfid", "uid": None}) == {"type": "rfid", "uid": "-"}
    assert mask_token({"type": "rfid", "uid": 12345678901}) == {"type": "rfid", "uid": "1234…8901"}
    assert mask_token({"pin": None}) == {}
    assert mask_token({}) == {}
