"""Tests for agent.identifiers: published vectors from identifiers.md plus edge cases."""

from __future__ import annotations

import contextlib
import dataclasses
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identifiers import (
    EVSE_ID_RE,
    OPERATOR_ID_RE,
    STATION_ID_RE,
    ContractId,
    din_check_char,
    is_evse_id,
    is_operator_id,
    is_station_id,
    iso_check_char,
    normalize_uid,
    parse_contract_id,
    try_parse_contract_id,
)

# --------------------------------------------------------------------------- station id


@pytest.mark.parametrize(
    "sid",
    ["a", "station-01", "DE.AB7_cp-2", "0", "x" * 64, "A.b_C-9"],
)
def test_station_id_valid(sid: str) -> None:
    assert is_station_id(sid)


@pytest.mark.parametrize(
    "sid",
    [
        "",
        "x" * 65,
        "a/b",
        "a+b",
        "a#b",
        "+",
        "#",
        "station 1",
        "station\n",
        "stätion",
        "a*b",
        "a:b",
        "a\x00b",
    ],
)
def test_station_id_invalid(sid: str) -> None:
    assert not is_station_id(sid)


def test_station_id_pattern_is_the_documented_one() -> None:
    assert STATION_ID_RE.pattern == r"^[A-Za-z0-9._-]{1,64}$"


# --------------------------------------------------------------------------- EvseID / OperatorID


@pytest.mark.parametrize(
    "evse",
    [
        "DE*AB7*E840*6487",
        "DEAB7E8406487",
        "+49*810*000*438",
        "49*810*000*438",
        "CH*ION*E213604",
        "de*ab7*E840*6487",  # OpenAPI variant allows lower case (but not in the "E" marker)
        "de*ab7*Ea40*6487",
        "DE*AB7*E1",
        "DE*AB7*E" + "1" * 30,
    ],
)
def test_evse_id_valid(evse: str) -> None:
    assert is_evse_id(evse)


@pytest.mark.parametrize(
    "evse",
    [
        "",
        "DE*AB7",  # operator id only
        "DE*AB7*E",  # nothing after E
        "DE*AB7*X840*6487",  # missing E
        "de*ab7*e840*6487",  # the published pattern has an upper-case literal "E"
        "DE*AB7*E" + "1" * 31,  # too long
        "D*AB7*E840",  # one-letter country
        "DE*AB*E840",  # two-character operator
        "DE-AB7-E840-6487",  # '-' is not an EvseID separator
        "DE*AB7*E840 6487",
        "DE*AB7*E840*6487\n",
        "+49*81*000*438",
        "+4912*810*000*438",  # country code too long
        "++49*810*000*438",
        "+49*810*",  # nothing after second '*'
        "+49*810*000*43A",  # DIN style is digits only
        "12*AB7*E840",
    ],
)
def test_evse_id_invalid(evse: str) -> None:
    assert not is_evse_id(evse)


@pytest.mark.parametrize("op", ["DE*ICE", "DEICE", "de*ice", "DE*AB7", "+49*810", "49*810"])
def test_operator_id_valid(op: str) -> None:
    assert is_operator_id(op)


@pytest.mark.parametrize(
    "op",
    [
        "",
        "DE",
        "DE*IC",
        "DE*ICEE",
        "DE**ICE",
        "DE-ICE",
        "D1*ICE",
        "+49*81",
        "+49*8100",
        "+1234*810",
        "DE*ICE\n",
        "DE*AB7*E840*6487",  # an EvseID is not an OperatorID
    ],
)
def test_operator_id_invalid(op: str) -> None:
    assert not is_operator_id(op)


def test_patterns_are_anchored_and_fullmatch_rejects_trailing_newline() -> None:
    for pattern in (STATION_ID_RE, EVSE_ID_RE, OPERATOR_ID_RE):
        assert pattern.pattern.startswith("^")
        assert pattern.pattern.endswith("$")
    assert not is_station_id("abc\n")
    assert not is_evse_id("DE*AB7*E840\n")
    assert not is_operator_id("DE*ICE\n")


# --------------------------------------------------------------------------- RFID UID


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("04A224B2", "04A224B2"),
        ("04a224b2", "04A224B2"),
        ("04:a2:24:b2", "04A224B2"),
        ("04-A2-24-B2", "04A224B2"),
        ("04 A2 24 B2", "04A224B2"),
        ("  04a224b2\n", "04A224B2"),
        ("04A224B2C13C80", "04A224B2C13C80"),
        ("04:A2:24:B2:C1:3C:80", "04A224B2C13C80"),
        ("0102030405060708090a", "0102030405060708090A"),
        ("01-02-03-04-05-06-07-08-09-0A", "0102030405060708090A"),
        ("04:A2-24 B2", "04A224B2"),  # mixed separators
    ],
)
def test_normalize_uid_ok(raw: str, expected: str) -> None:
    assert normalize_uid(raw) == expected


@pytest.mark.parametrize("n_bytes", [4, 7, 10])
def test_normalize_uid_allowed_lengths(n_bytes: int) -> None:
    assert normalize_uid("ab" * n_bytes) == "AB" * n_bytes


@pytest.mark.parametrize("n_bytes", [0, 1, 3, 5, 6, 8, 9, 11, 16])
def test_normalize_uid_rejects_other_lengths(n_bytes: int) -> None:
    with pytest.raises(ValueError):
        normalize_uid("AB" * n_bytes)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "::::",
        "04A224B",  # odd number of digits
        "04A224B2C",
        "04A224G2",  # not hex
        "0x04A224B2",
        "04_A2_24_B2",  # '_' is not an accepted separator
        "04.A2.24.B2",
        "04A224B２",  # full-width digit
        "٠٤A224B2",  # Arabic-Indic digits
    ],
)
def test_normalize_uid_rejects_garbage(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_uid(raw)


def test_normalize_uid_error_message_is_clear_and_masked() -> None:
    with pytest.raises(ValueError, match="5 bytes") as exc_info:
        normalize_uid("04A224B2C1")
    assert "04A224B2C1" not in str(exc_info.value)
    assert "4, 7 or 10" in str(exc_info.value)
    with pytest.raises(ValueError, match="non-hex"):
        normalize_uid("04A224ZZ")
    with pytest.raises(ValueError, match="odd"):
        normalize_uid("04A224B")


# --------------------------------------------------------------------------- ISO / eMI3 check

ISO_VECTORS = [
    ("NN123ABCDEFGHI", "T"),
    ("FRXYZ123456789", "2"),
    ("ITA1B2C3E4F5G6", "4"),
    ("ESZU8WOX834H1D", "R"),
    ("PT73902837ABCZ", "Z"),
    ("DE83DUIEN83QGZ", "D"),
    ("DE83DUIEN83ZGQ", "M"),
    ("DE8AA001234567", "0"),
]


@pytest.mark.parametrize(("first14", "check"), ISO_VECTORS)
def test_iso_check_char_published_vectors(first14: str, check: str) -> None:
    assert iso_check_char(first14) == check


@pytest.mark.parametrize(("first14", "check"), ISO_VECTORS)
def test_iso_check_char_is_case_insensitive(first14: str, check: str) -> None:
    assert iso_check_char(first14.lower()) == check


def test_emi3_example_is_valid() -> None:
    cid = parse_contract_id("DE-8AA-CA2B3C4D5-L")
    assert cid == ContractId("DE8AACA2B3C4D5L", "iso", True, "L")
    assert iso_check_char("DE8AACA2B3C4D5") == "L"


@pytest.mark.parametrize(
    "bad",
    ["", "DE8AA00123456", "DE8AA0012345678", "DE-8AA-0012345", "DE8AA00123456ä", "DE8AA0012345 7"],
)
def test_iso_check_char_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError):
        iso_check_char(bad)


# --------------------------------------------------------------------------- DIN check

DIN_VECTORS = [
    ("INTNM000071", "9"),
    ("INTNM000110", "X"),
    ("INTNM000124", "0"),
    ("INTNM000114", "6"),
    ("INTNM000191", "5"),
]


@pytest.mark.parametrize(("first11", "check"), DIN_VECTORS)
def test_din_check_char_published_vectors(first11: str, check: str) -> None:
    assert din_check_char(first11) == check
    assert din_check_char(first11.lower()) == check


@pytest.mark.parametrize(("first11", "check"), DIN_VECTORS)
def test_din_vectors_parse_as_contract_ids(first11: str, check: str) -> None:
    cid = parse_contract_id(first11 + check)
    assert cid == ContractId(first11 + check, "din", True, check)
    dashed = f"{first11[:2]}*{first11[2:5]}*{first11[5:]}*{check}"
    assert parse_contract_id(dashed) == cid


@pytest.mark.parametrize("bad", ["", "INTNM00007", "INTNM0000711", "INTNM*00007", "INTNM00007é"])
def test_din_check_char_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError):
        din_check_char(bad)


# --------------------------------------------------------------------------- parse_contract_id


@pytest.mark.parametrize(
    "raw",
    [
        "DE-8AC-C12345678-X",
        "DE8ACC12345678X",
        "de-8ac-c12345678-x",
        "de8acc12345678x",
        "DE8AC-C12345678X",  # separators are individually optional
        " DE8ACC12345678X\n",
    ],
)
def test_parse_iso_forms_normalise(raw: str) -> None:
    cid = parse_contract_id(raw)
    assert cid.normalized == "DE8ACC12345678X"
    assert cid.form == "iso"
    # The example from the brief carries a wrong check character (like several OICP examples).
    assert cid.expected_check == "A"
    assert cid.check_digit_ok is False


@pytest.mark.parametrize(
    "raw",
    [
        "DE*8AC*123456*7",
        "DE-8AC-123456-7",
        "DE8AC1234567",
        "de*8ac*123456*7",
        "DE*8AC-123456*7",
        "DE8AC*1234567",
    ],
)
def test_parse_din_forms_normalise(raw: str) -> None:
    cid = parse_contract_id(raw)
    assert cid.normalized == "DE8AC1234567"
    assert cid.form == "din"
    assert cid.expected_check == "8"
    assert cid.check_digit_ok is False


def test_correct_check_characters_are_reported_ok() -> None:
    assert parse_contract_id("DE-8AC-C12345678-A").check_digit_ok
    assert parse_contract_id("de-8ac-c12345678-a").check_digit_ok
    assert parse_contract_id("DE*8AC*123456*8").check_digit_ok
    assert parse_contract_id("INTNM000110x") == ContractId("INTNM000110X", "din", True, "X")


def test_wrong_check_digit_is_not_an_error() -> None:
    cid = parse_contract_id("DE-8AA-CA2B3C4D5-M")
    assert cid == ContractId("DE8AACA2B3C4D5M", "iso", False, "L")
    assert try_parse_contract_id("DE-8AA-CA2B3C4D5-M") == cid


def test_contract_id_is_frozen() -> None:
    cid = parse_contract_id("DE8AACA2B3C4D5L")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cid.normalized = "X"  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "DE",
        "DE-8AC-X12345678-X",  # ISO needs 'C' after the provider
        "DE-8AC-C1234567-X",  # instance too short
        "DE-8AC-C123456789-X",  # instance too long
        "DE*8AC*C12345678*X",  # '*' is not an ISO separator
        "DE--8AC-C12345678-X",
        "DE_8AC_C12345678_X",
        "D1-8AC-C12345678-X",  # country must be letters
        "DE*8AC*123456*A",  # DIN check must be a digit or X
        "DE*8AC*12345*7",
        "DE*8AC*1234567*7",
        "DE|8AC|123456|7",  # '|' from the OICP regex's character class is not a separator
        "DE8AC12345|7",
        "DE-8AC-C12345678-",
        "DE8ACC12345678X\nDE8ACC12345678X",
        "DE8ACC1234567８X",  # full-width digit
        "DE8ACC1234567٣X",  # Arabic-Indic digit
        "DE8A\u212aC12345678X",  # Kelvin sign would match [a-z] under IGNORECASE
        "\u017fE8ACC12345678X",  # long s, same trap
        "https://m.intercharge.eu/qr?evseid=CH*ION*E213604",
        "DE*AB7*E840*6487",
    ],
)
def test_parse_rejects_garbage(raw: str) -> None:
    with pytest.raises(ValueError, match="not a contract id"):
        parse_contract_id(raw)
    assert try_parse_contract_id(raw) is None


def test_parse_error_names_the_input() -> None:
    with pytest.raises(ValueError, match=r"'hello'"):
        parse_contract_id("hello")


def test_parse_error_message_is_bounded_for_huge_input() -> None:
    with pytest.raises(ValueError) as exc_info:
        parse_contract_id("A" * 100_000)
    assert len(str(exc_info.value)) < 500


# --------------------------------------------------------------------------- properties

_ALNUM = string.ascii_letters + string.digits
_alnum = st.text(alphabet=_ALNUM, min_size=1, max_size=1)
_upper_alnum = string.ascii_uppercase + string.digits


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_garbage_only_ever_raises_value_error(s: str) -> None:
    for fn in (parse_contract_id, normalize_uid, iso_check_char, din_check_char):
        with contextlib.suppress(ValueError):
            fn(s)
    result = try_parse_contract_id(s)
    assert result is None or isinstance(result, ContractId)
    assert isinstance(is_station_id(s), bool)
    assert isinstance(is_evse_id(s), bool)
    assert isinstance(is_operator_id(s), bool)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="DEde8AaCc*-0123456789Xx |:", max_size=20))
def test_near_miss_garbage_only_ever_raises_value_error(s: str) -> None:
    try:
        cid = parse_contract_id(s)
    except ValueError:
        return
    assert cid.form in ("iso", "din")
    assert cid.normalized.isalnum()
    assert cid.normalized == cid.normalized.upper()
    assert len(cid.normalized) == (15 if cid.form == "iso" else 12)


@settings(max_examples=200, deadline=None)
@given(
    country=st.text(alphabet=string.ascii_letters, min_size=2, max_size=2),
    provider=st.text(alphabet=_ALNUM, min_size=3, max_size=3),
    instance=st.text(alphabet=_ALNUM, min_size=8, max_size=8),
    sep=st.sampled_from(["", "-"]),
)
def test_iso_roundtrip_with_computed_check(
    country: str, provider: str, instance: str, sep: str
) -> None:
    body = f"{country}{provider}C{instance}"
    check = iso_check_char(body)
    assert check in _upper_alnum and len(check) == 1
    cid = parse_contract_id(f"{country}{sep}{provider}{sep}C{instance}{sep}{check.lower()}")
    assert cid == ContractId((body + check).upper(), "iso", True, check)
    # Any other check character is reported as wrong, never raised.
    other = "0" if check != "0" else "1"
    assert parse_contract_id(body + other).check_digit_ok is False


@settings(max_examples=200, deadline=None)
@given(
    country=st.text(alphabet=string.ascii_letters, min_size=2, max_size=2),
    provider=st.text(alphabet=_ALNUM, min_size=3, max_size=3),
    instance=st.text(alphabet=_ALNUM, min_size=6, max_size=6),
    sep=st.sampled_from(["", "-", "*"]),
)
def test_din_roundtrip_with_computed_check(
    country: str, provider: str, instance: str, sep: str
) -> None:
    body = f"{country}{provider}{instance}"
    check = din_check_char(body)
    assert check in "0123456789X" and len(check) == 1
    cid = parse_contract_id(f"{country}{sep}{provider}{sep}{instance}{sep}{check}")
    assert cid == ContractId((body + check).upper(), "din", True, check)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=_upper_alnum, min_size=14, max_size=14), st.integers(0, 13))
def test_iso_check_detects_any_single_substitution(body: str, pos: int) -> None:
    check = iso_check_char(body)
    replacement = _upper_alnum[(_upper_alnum.index(body[pos]) + 1) % 36]
    changed = body[:pos] + replacement + body[pos + 1 :]
    assert iso_check_char(changed) != check


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([4, 7, 10]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.sampled_from(["", ":", "-", " "]),
    st.booleans(),
)
def test_uid_roundtrip(uid: bytes, sep: str, lower: bool) -> None:
    text = sep.join(f"{b:02x}" if lower else f"{b:02X}" for b in uid)
    assert normalize_uid(text) == uid.hex().upper()
