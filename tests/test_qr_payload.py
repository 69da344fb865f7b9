"""Classification of scanned QR payloads (drivers/qr/payload.py): shapes, normalisation, PINs."""

from __future__ import annotations

import json
import random
import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import drivers.qr.payload as payload_module
from agent.identifiers import din_check_char, iso_check_char
from drivers.display.qrcode import intercharge_payload
from drivers.qr.payload import MAX_PAYLOAD_CHARS, QrCode, classify, redact_pin
from drivers.qr.synth import random_evse_id

UPPER = string.ascii_uppercase
ALNUM = string.ascii_uppercase + string.digits

# --------------------------------------------------------------------------- strategies


@st.composite
def iso_emaids(draw: st.DrawFn) -> tuple[str, str, bool]:
    """(text as printed, expected normalised form, check character correct?)"""
    country = draw(st.text(UPPER, min_size=2, max_size=2))
    provider = draw(st.text(ALNUM, min_size=3, max_size=3))
    instance = draw(st.text(ALNUM, min_size=8, max_size=8))
    head = f"{country}{provider}C{instance}"
    good = iso_check_char(head)
    check = draw(st.sampled_from([good, good, *ALNUM]))
    sep = draw(st.sampled_from(["", "-"]))
    text = f"{country}{sep}{provider}{sep}C{instance}{sep}{check}"
    text = draw(st.sampled_from([text, text.lower(), text.swapcase()]))
    return text, head + check, check == good


@st.composite
def din_emaids(draw: st.DrawFn) -> tuple[str, str, bool]:
    country = draw(st.text(UPPER, min_size=2, max_size=2))
    provider = draw(st.text(ALNUM, min_size=3, max_size=3))
    instance = draw(st.text(ALNUM, min_size=6, max_size=6))
    head = f"{country}{provider}{instance}"
    good = din_check_char(head)
    check = draw(st.sampled_from([good, good, *"0123456789X"]))
    sep = draw(st.sampled_from(["", "*", "-"]))
    text = f"{country}{sep}{provider}{sep}{instance}{sep}{check}"
    return text, head + check, check == good


any_emaid = st.one_of(iso_emaids(), din_emaids())
pins = st.text("0123456789", min_size=4, max_size=8)


def _url(key: str, emaid: str, pin: str | None, pin_key: str = "pin") -> str:
    query = f"{key}={quote(emaid, safe='*')}"
    if pin is not None:
        query += f"&{pin_key}={pin}"
    return f"https://APP.EXAMPLE/START?{query}"


# --------------------------------------------------------------------------- contract codes


@given(any_emaid)
def test_bare_emaid_is_recognised_and_normalised(case: tuple[str, str, bool]) -> None:
    text, normalized, ok = case
    code = classify(text)
    assert code.kind == "contract", code.reason
    assert code.emaid == normalized
    assert code.check_digit_ok is ok
    assert code.pin is None
    # surrounding whitespace (a scanner may add a newline) changes nothing
    assert classify(f"  {text}\n").emaid == normalized


@given(any_emaid, st.sampled_from(["emaid", "EMAID", "evcoid", "EvcoID", "evcoId"]), pins)
def test_url_with_emaid_and_pin(case: tuple[str, str, bool], key: str, pin: str) -> None:
    text, normalized, ok = case
    code = classify(_url(key, text, pin))
    assert code.kind == "contract", code.reason
    assert code.emaid == normalized
    assert code.check_digit_ok is ok
    assert code.pin == pin


@given(any_emaid)
def test_url_without_pin(case: tuple[str, str, bool]) -> None:
    text, normalized, _ok = case
    code = classify(_url("evcoid", text, None))
    assert (code.kind, code.emaid, code.pin) == ("contract", normalized, None)


@given(
    any_emaid,
    pins,
    st.sampled_from([("EvcoID", "PIN"), ("evcoId", "pin"), ("EVCO_ID", "Pin"), ("emaid", "pin")]),
    st.booleans(),
)
def test_json_oicp_names(
    case: tuple[str, str, bool], pin: str, keys: tuple[str, str], wrapped: bool
) -> None:
    text, normalized, ok = case
    obj: dict[str, object] = {keys[0]: text, keys[1]: pin}
    if wrapped:
        obj = {"QRCodeIdentification": obj}
    code = classify(json.dumps(obj))
    assert code.kind == "contract", code.reason
    assert (code.emaid, code.pin, code.check_digit_ok) == (normalized, pin, ok)


def test_known_check_characters() -> None:
    assert classify("DE-8AA-CA2B3C4D5-L").check_digit_ok is True  # the eMI3 example
    wrong = classify("DE-8AA-CA2B3C4D5-M")
    assert (wrong.kind, wrong.check_digit_ok) == ("contract", False)  # a warning, not a reject
    assert classify("IN-TNM-000071-9").check_digit_ok is True  # DIN SPEC 91286 vector
    assert classify("IN*TNM*000110*X").emaid == "INTNM000110X"
    assert classify("IN*TNM*000110*X").check_digit_ok is True


def test_json_pin_as_number_and_nulls() -> None:
    code = classify('{"EvcoID": "DE8AACA2B3C4D5L", "PIN": 1234}')
    assert (code.kind, code.pin) == ("contract", "1234")
    code = classify('{"EvcoID": "DE8AACA2B3C4D5L", "PIN": null}')
    assert (code.kind, code.pin) == ("contract", None)
    assert classify('{"EvcoID": 42}').kind == "unknown"
    assert classify('{"EvcoID": ["DE8AACA2B3C4D5L"]}').kind == "unknown"


# --------------------------------------------------------------------------- station codes


def test_intercharge_station_codes() -> None:
    rnd = random.Random(7)
    ids = [random_evse_id(rnd) for _ in range(30)] + ["+49*810*000*438", "DE*AB7*E840*6487"]
    for evse_id in ids:
        code = classify(intercharge_payload(evse_id))
        assert (code.kind, code.evse_id, code.emaid) == ("evse", evse_id, None), evse_id
    field = classify("http://m.intercharge.eu/qr?evseid=CH*ION*E213604")
    assert (field.kind, field.evse_id) == ("evse", "CH*ION*E213604")
    app = classify("https://m.intercharge.eu/evse/show?evseid=DE%2AAB7%2AE840%2A6487")
    assert (app.kind, app.evse_id) == ("evse", "DE*AB7*E840*6487")


def test_url_with_contract_and_evse_is_a_contract() -> None:
    code = classify("https://x.example/?evseid=DE*AB7*E840*6487&emaid=DE8AACA2B3C4D5L&pin=99")
    assert (code.kind, code.emaid, code.evse_id, code.pin) == (
        "contract",
        "DE8AACA2B3C4D5L",
        "DE*AB7*E840*6487",
        "99",
    )


@pytest.mark.parametrize(
    ("payload", "reason_part"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hello world", "neither"),
        ("DE*AB7*E840*6487", "bare EvseID"),
        ("http://m.intercharge.eu/qr?evseid=NOT-AN-ID", "not a valid EvseID"),
        ("http://m.intercharge.eu/qr", "without a query"),
        ("https://x.example/?foo=bar", "no evseid"),
        ("https://x.example/?emaid=DE8ACC1234", "not a valid EMAID"),
        ("https://x.example/?emaid=", "empty contract id"),
        ("https://x.example/?pin=1234", "PIN but no contract"),
        ("https://x.example/?emaid=DE8AACA2B3C4D5L&emaid=DE8ACC12345678X", "conflicting"),
        ("https://x.example/?evseid=DE*AB7*E1&evseid=DE*AB7*E2", "conflicting"),
        ("http://[::1/?evseid=DE*AB7*E840*6487", "malformed URL"),
        ("{not json", "malformed JSON"),
        ("[1, 2]", "not an object"),
        ('{"EvcoID": "DE8AACA2B3C4D5L", "PIN": "' + "9" * 70 + '"}', "too long"),
        ("x" * (MAX_PAYLOAD_CHARS + 1), "too long"),
        ("https://x.example/?" + "&".join(f"k{i}=v" for i in range(100)), "parameters"),
    ],
)
def test_unknown_codes_have_a_reason(payload: str, reason_part: str) -> None:
    code = classify(payload)
    assert code.kind == "unknown"
    assert code.reason is not None and reason_part in code.reason, code.reason
    assert len(code.payload) <= 260


def test_non_text_input_does_not_raise() -> None:
    code = classify(b"DE8AACA2B3C4D5L")  # type: ignore[arg-type]
    assert (code.kind, code.reason) == ("unknown", "not text")
    assert classify(None).kind == "unknown"  # type: ignore[arg-type]


def test_deeply_nested_json_does_not_raise() -> None:
    assert classify("[" * 3000 + "]" * 3000).kind == "unknown"
    assert classify('{"a":' * 1000 + "1" + "}" * 1000).kind == "unknown"


# --------------------------------------------------------------------------- never crashes


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_never_raises(text: str) -> None:
    code = classify(text)
    assert isinstance(code, QrCode)
    assert code.kind in ("contract", "evse", "unknown")
    if code.kind == "unknown":
        assert code.reason
    json.dumps(code.to_dict())  # always serialisable


@settings(max_examples=200)
@given(st.binary(max_size=300), st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_random_bytes_never_raise(data: bytes, encoding: str) -> None:
    code = classify(data.decode(encoding, errors="replace"))
    assert code.kind in ("contract", "evse", "unknown")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["EvcoID", "PIN", "evseid", "emaid", "x", "QRCodeIdentification"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(_json_values)
def test_random_json_never_raises(doc: object) -> None:
    code = classify(json.dumps(doc))
    assert code.kind in ("contract", "evse", "unknown")


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["emaid", "evcoid", "pin", "evseid", "PIN", "x", "p%69n", ""]),
            st.text(max_size=20),
        ),
        max_size=6,
    ),
    st.sampled_from(["http://h.example/p?", "https://m.intercharge.eu/qr?", "?", "x://"]),
)
def test_random_urls_never_raise(params: list[tuple[str, str]], base: str) -> None:
    url = base + "&".join(f"{k}={v}" for k, v in params)
    code = classify(url)
    assert code.kind in ("contract", "evse", "unknown")


def test_huge_input_is_capped() -> None:
    code = classify("DE8AACA2B3C4D5L" * 100_000)
    assert code.kind == "unknown" and code.reason and "too long" in code.reason
    assert len(code.payload) < 300


# --------------------------------------------------------------------------- PIN secrecy


def _exposed(code: QrCode) -> str:
    return " ".join(
        [repr(code), str(code), json.dumps(code.to_dict()), json.dumps(code.to_dict(masked=True))]
    )


@given(any_emaid, pins, st.sampled_from(["url", "json", "json_wrapped", "url_upper"]))
def test_pin_never_in_repr_or_dict(case: tuple[str, str, bool], pin: str, shape: str) -> None:
    text, normalized, _ok = case
    assume(pin not in text.upper() and pin not in normalized)
    if shape == "url":
        payload = _url("emaid", text, pin)
    elif shape == "url_upper":
        payload = _url("EvcoID", text, pin, pin_key="PIN")
    elif shape == "json":
        payload = json.dumps({"EvcoID": text, "PIN": pin})
    else:
        payload = json.dumps({"QRCodeIdentification": {"EvcoID": text, "PIN": pin}})
    code = classify(payload)
    assert code.pin == pin
    exposed = _exposed(code)
    assert pin not in exposed
    assert "pin" not in code.to_dict()


@pytest.mark.parametrize(
    "payload",
    [
        "https://x.example/?emaid=DE8AACA2B3C4D5L&p%69n=73519",  # percent-encoded key
        "https://x.example/?emaid=DE8AACA2B3C4D5L&Pin=73519#frag",
        '{"EvcoID": "DE8AACA2B3C4D5L", "\\u0070in": "73519"}',  # escaped key
        '{"EvcoID": "DE8AACA2B3C4D5L", "PIN": 73519}',
        '{"EvcoID": "not an id", "PIN": "73519"}',  # unknown, still redacted
        '{"EvcoID": "DE8AACA2B3C4D5L", "PIN": "73519"',  # broken JSON
        "https://x.example/?emaid=bad&pin=73519",
        "https://x.example/?pin=73519",
        "{'EvcoID': 'DE8AACA2B3C4D5L', 'PIN': '73519'}",  # not JSON (single quotes)
        "emaid=DE8AACA2B3C4D5L&pin=73519",
    ],
)
def test_pin_is_redacted_in_odd_shapes(payload: str) -> None:
    code = classify(payload)
    assert "73519" not in _exposed(code), code.payload


def test_redact_pin_keeps_the_rest() -> None:
    url = "https://x.example/?emaid=DE8AACA2B3C4D5L&pin=1234&lang=de"
    assert redact_pin(url) == "https://x.example/?emaid=DE8AACA2B3C4D5L&pin=***&lang=de"
    assert redact_pin("no secrets here") == "no secrets here"
    assert json.loads(redact_pin('{"EvcoID": "X", "HashedPIN": {"Value": "abc"}}')) == {
        "EvcoID": "X",
        "HashedPIN": "***",
    }


def test_to_dict_shapes() -> None:
    contract = classify("https://x.example/?emaid=DE-8AA-CA2B3C4D5-L&pin=4711")
    assert contract.to_dict() == {
        "payload": "https://x.example/?emaid=DE-8AA-CA2B3C4D5-L&pin=***",
        "kind": "contract",
        "emaid": "DE8AACA2B3C4D5L",
        "check_digit_ok": True,
    }
    masked = contract.to_dict(masked=True)
    assert masked == {"kind": "contract", "emaid": "DE8A…4D5L", "check_digit_ok": True}
    evse = classify(intercharge_payload("DE*AB7*E840*6487"))
    assert evse.to_dict() == {
        "payload": "http://m.intercharge.eu/qr?evseid=DE*AB7*E840*6487",
        "kind": "evse",
        "evse_id": "DE*AB7*E840*6487",
    }
    unknown = classify("hello")
    assert set(unknown.to_dict()) == {"payload", "kind", "reason"}


def test_internal_errors_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object) -> QrCode:
        raise RuntimeError("bug")

    monkeypatch.setattr(payload_module, "_from_url", boom)
    code = classify("https://x.example/?emaid=DE8AACA2B3C4D5L&pin=73519")
    assert (code.kind, code.reason, code.payload) == (
        "unknown",
        "could not parse (RuntimeError)",
        "",
    )
