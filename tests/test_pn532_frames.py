"""PN532 frame codec: exact bytes, checksums, extended frames, ACK/NACK, incremental parsing."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from drivers.rfid.pn532_frames import (
    ACK,
    CMD_DIAGNOSE,
    CMD_GET_FIRMWARE_VERSION,
    CMD_IN_COMMUNICATE_THRU,
    CMD_IN_LIST_PASSIVE_TARGET,
    CMD_POWER_DOWN,
    CMD_READ_REGISTER,
    CMD_RF_CONFIGURATION,
    CMD_SAM_CONFIGURATION,
    CMD_SET_PARAMETERS,
    CMD_SET_SERIAL_BAUDRATE,
    CMD_WRITE_REGISTER,
    ERROR_FRAME,
    NACK,
    Frame,
    FrameError,
    FrameKind,
    FrameParser,
    decode_frame,
    encode_command,
    encode_frame,
    encode_response,
)

H = bytes.fromhex

# (command, data, exact frame nfcpy writes, response data the chip returns)
COMMANDS = [
    ("GetFirmwareVersion", CMD_GET_FIRMWARE_VERSION, b"", "0000ff02fed4022a00", H("32010607")),
    ("SAMConfiguration", CMD_SAM_CONFIGURATION, H("010000"), "0000ff05fbd4140100001700", b""),
    ("SetSerialBaudrate", CMD_SET_SERIAL_BAUDRATE, H("07"), "0000ff03fdd410071500", b""),
    ("SetParameters", CMD_SET_PARAMETERS, H("00"), "0000ff03fdd412001a00", b""),
    ("RFConfiguration", CMD_RF_CONFIGURATION, H("0102"), "0000ff04fcd4320102f700", b""),
    ("ReadRegister", CMD_READ_REGISTER, H("6339"), "0000ff04fcd40663398a00", H("26")),
    ("WriteRegister", CMD_WRITE_REGISTER, H("630300"), "0000ff05fbd4086303 00be00", b""),
    (
        "InListPassiveTarget",
        CMD_IN_LIST_PASSIVE_TARGET,
        H("0100"),
        "0000ff04fcd44a0100e100",
        H("0101 0044 00 07 04a224b2c13c80"),
    ),
    ("InCommunicateThru", CMD_IN_COMMUNICATE_THRU, H("3000"), "0000ff04fcd4423000ba00", H("00")),
    ("PowerDown", CMD_POWER_DOWN, H("b000"), "0000ff04fcd416b0006600", H("00")),
]


@pytest.mark.parametrize(
    ("name", "code", "data", "wire", "_rsp"), COMMANDS, ids=[c[0] for c in COMMANDS]
)
def test_encode_command_exact_bytes(
    name: str, code: int, data: bytes, wire: str, _rsp: bytes
) -> None:
    assert encode_command(code, data) == H(wire), name


def test_known_responses_match_what_nfcpy_init_expects() -> None:
    # Literal byte strings from nfcpy 1.0.4's pn532.init() (compared with == or startswith).
    assert encode_response(CMD_GET_FIRMWARE_VERSION, H("32010607")).startswith(
        H("0000ff06fad50332")
    )
    assert encode_response(CMD_SAM_CONFIGURATION) == H("0000ff02fed5151600")
    assert encode_response(CMD_SET_SERIAL_BAUDRATE) == H("0000ff02fed5111a00")
    assert encode_response(CMD_GET_FIRMWARE_VERSION, H("32010607")) == H(
        "0000ff06fad50332010607e800"
    )


def test_ack_nack_and_error_frame_constants() -> None:
    assert H("0000ff00ff00") == ACK
    assert H("0000ffff0000") == NACK
    assert H("0000ff01ff7f8100") == ERROR_FRAME
    assert decode_frame(ACK) == Frame(FrameKind.ACK)
    assert decode_frame(NACK) == Frame(FrameKind.NACK)
    err = decode_frame(ERROR_FRAME)
    assert err.is_error and err.kind is FrameKind.NORMAL and err.code is None and err.data == b""


def test_decoded_frame_fields() -> None:
    frame = decode_frame(encode_command(CMD_READ_REGISTER, H("6339")))
    assert (frame.kind, frame.tfi, frame.code, frame.data) == (
        FrameKind.NORMAL,
        0xD4,
        0x06,
        H("6339"),
    )
    rsp = decode_frame(encode_response(CMD_READ_REGISTER, H("26")))
    assert (rsp.tfi, rsp.code, rsp.data, rsp.is_error) == (0xD5, 0x07, H("26"), False)


def test_extended_frame_for_diagnose_line_test() -> None:
    # nfcpy's communication line test: NumTst 0x00 + 262 bytes -> LEN 265 = 0x0109.
    data = b"\x00" + bytes(x & 0xFF for x in range(262))
    wire = encode_command(CMD_DIAGNOSE, data)
    assert wire[:8] == H("0000ffffff0109f6")
    assert wire[8:10] == H("d400") and wire[-1:] == b"\x00"
    assert len(wire) == 8 + 265 + 2
    assert (sum(wire[8:-1]) & 0xFF) == 0  # DCS
    frame = decode_frame(wire)
    assert frame.kind is FrameKind.EXTENDED and frame.code == CMD_DIAGNOSE and frame.data == data
    echo = encode_response(CMD_DIAGNOSE, data)
    assert echo[:8] == H("0000ffffff0109f6") and decode_frame(echo).data == data


def test_normal_extended_boundary() -> None:
    # nfcpy: normal frame while len(cmd_data) < 254, i.e. LEN <= 255.
    assert encode_command(0x00, bytes(253))[3] == 0xFF  # normal, LEN 255, LCS 01
    assert encode_command(0x00, bytes(253))[4] == 0x01
    assert encode_command(0x00, bytes(254))[3:5] == H("ffff")  # extended
    assert decode_frame(encode_command(0x00, bytes(253))).kind is FrameKind.NORMAL
    # A response body of 255 goes extended: nfcpy's reader takes LEN 0xFF as the extended marker.
    assert encode_response(0x00, bytes(253))[3:5] == H("ffff")
    assert encode_response(0x00, bytes(252))[3] == 0xFE
    with pytest.raises(ValueError, match="at most 255"):
        encode_frame(bytes(256), extended=False)
    with pytest.raises(ValueError, match="TFI"):
        encode_frame(b"")


def test_length_checksum_error() -> None:
    bad = bytearray(encode_command(CMD_GET_FIRMWARE_VERSION))
    bad[4] ^= 0x01
    with pytest.raises(FrameError, match="length checksum"):
        decode_frame(bytes(bad))


def test_data_checksum_error() -> None:
    bad = bytearray(encode_response(CMD_GET_FIRMWARE_VERSION, H("32010607")))
    bad[-2] ^= 0x80
    with pytest.raises(FrameError, match=r"data checksum.*expected E8"):
        decode_frame(bytes(bad))


def test_extended_length_checksum_error() -> None:
    bad = bytearray(encode_command(CMD_DIAGNOSE, bytes(300)))
    bad[7] ^= 0xFF
    with pytest.raises(FrameError, match="extended frame length checksum"):
        decode_frame(bytes(bad))


def test_frame_error_is_a_protocol_error() -> None:
    assert issubclass(FrameError, ProtocolError)


def test_decode_frame_rejects_incomplete_and_trailing_bytes() -> None:
    wire = encode_command(CMD_GET_FIRMWARE_VERSION)
    with pytest.raises(FrameError, match="incomplete"):
        decode_frame(wire[:-3])
    with pytest.raises(FrameError, match="unexpected bytes"):
        decode_frame(wire + b"\x12\x34")
    with pytest.raises(FrameError, match="zero length"):
        decode_frame(H("0000ff0000"))
    assert decode_frame(bytes(10) + wire).code == CMD_GET_FIRMWARE_VERSION  # long preamble


def _stream() -> tuple[bytes, list[Frame]]:
    """What a host writes when waking the chip, plus chip answers, with the expected frames."""
    parts = [
        H("5555000000"),  # HSU wake-up
        bytes(10) + encode_command(CMD_GET_FIRMWARE_VERSION),  # nfcpy's long preamble
        ACK,
        encode_response(CMD_GET_FIRMWARE_VERSION, H("32010607")),
        NACK,
        encode_command(CMD_DIAGNOSE, b"\x00" + bytes(range(256)) + bytes(6)),
        ERROR_FRAME,
    ]
    frames = [
        Frame(FrameKind.NORMAL, H("d402")),
        Frame(FrameKind.ACK),
        Frame(FrameKind.NORMAL, H("d50332010607")),
        Frame(FrameKind.NACK),
        Frame(FrameKind.EXTENDED, H("d400") + b"\x00" + bytes(range(256)) + bytes(6)),
        Frame(FrameKind.NORMAL, H("7f")),
    ]
    return b"".join(parts), frames


def test_incremental_parser_every_single_split_point() -> None:
    stream, expected = _stream()
    for cut in range(len(stream) + 1):
        parser = FrameParser()
        parser.feed(stream[:cut])
        got = parser.frames()
        parser.feed(stream[cut:])
        got += parser.frames()
        assert got == expected, f"split at {cut}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_incremental_parser_random_chunks(sizes: list[int]) -> None:
    stream, expected = _stream()
    parser = FrameParser()
    got: list[Frame] = []
    pos, i = 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        parser.feed(stream[pos : pos + size])
        got += parser.frames()
        pos, i = pos + size, i + 1
    assert got == expected


def test_partial_frame_waits_for_more_bytes() -> None:
    wire = encode_response(CMD_IN_LIST_PASSIVE_TARGET, H("0101004400070102030405060708"))
    parser = FrameParser()
    parser.feed(wire[:9])
    assert parser.next_frame() is None
    assert parser.pending() == wire[1:9]  # the first preamble zero was skipped as noise
    parser.feed(wire[9:])
    frame = parser.next_frame()
    assert frame is not None and frame.code == CMD_IN_LIST_PASSIVE_TARGET + 1
    assert parser.next_frame() is None


def test_parser_recovers_after_corrupt_frame() -> None:
    bad = bytearray(encode_command(CMD_GET_FIRMWARE_VERSION))
    bad[-2] ^= 0x01  # DCS
    bad_len = bytearray(encode_command(CMD_SAM_CONFIGURATION, H("010000")))
    bad_len[4] ^= 0x10  # LCS
    good = encode_command(CMD_READ_REGISTER, H("6339"))
    parser = FrameParser()
    parser.feed(b"\x13\x37" + bytes(bad) + bytes(bad_len) + good)
    with pytest.raises(FrameError, match="data checksum"):
        parser.next_frame()
    with pytest.raises(FrameError, match="length checksum"):
        parser.next_frame()
    frame = parser.next_frame()
    assert frame is not None and frame.data == H("6339")
    assert parser.next_frame() is None


def test_parser_discards_noise_without_start_code() -> None:
    parser = FrameParser()
    parser.feed(H("55 55 12 34 56 00"))
    assert parser.next_frame() is None
    assert parser.pending() == b"\x00"  # might be the start of 00 FF
    parser.feed(H("ff00ff00"))
    assert parser.next_frame() == Frame(FrameKind.ACK)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=700))
def test_roundtrip_any_body(body: bytes) -> None:
    frame = decode_frame(encode_frame(body))
    assert frame.body == body
    assert frame.kind is (FrameKind.NORMAL if len(body) <= 255 else FrameKind.EXTENDED)


# ---------------------------------------------------------------------- nfcpy as an oracle


class _FakeTransport:
    """Records what nfcpy's PN532 chipset writes; answers from a queue of frames."""

    TYPE = "TTY"

    def __init__(self, answers: list[bytes]) -> None:
        self.written: list[bytes] = []
        self.answers = deque(answers)

    def write(self, frame: bytes) -> None:
        self.written.append(bytes(frame))

    def read(self, timeout: int) -> bytearray:
        return bytearray(self.answers.popleft())


def _nfcpy_calls() -> dict[str, Callable[[Any], object]]:
    return {
        "GetFirmwareVersion": lambda c: c.get_firmware_version(),
        "SAMConfiguration": lambda c: c.sam_configuration("normal"),
        "SetSerialBaudrate": lambda c: c.set_serial_baudrate(921600),
        "SetParameters": lambda c: c.set_parameters(0),
        "RFConfiguration": lambda c: c.rf_configuration(0x01, b"\x02"),
        "ReadRegister": lambda c: c.read_register("CIU_FIFOData"),
        "WriteRegister": lambda c: c.write_register("CIU_RxMode", 0x00),
        "InListPassiveTarget": lambda c: c.in_list_passive_target(1, 0, b""),
        "InCommunicateThru": lambda c: c.in_communicate_thru(b"\x30\x00", 0.1),
        "PowerDown": lambda c: c.power_down(("I2C", "SPI", "HSU")),
    }


@pytest.mark.parametrize(
    ("name", "code", "data", "wire", "rsp"), COMMANDS, ids=[c[0] for c in COMMANDS]
)
def test_nfcpy_writes_our_bytes_and_accepts_our_responses(
    name: str, code: int, data: bytes, wire: str, rsp: bytes
) -> None:
    pn532 = pytest.importorskip("nfc.clf.pn532")
    transport = _FakeTransport([ACK, encode_response(code, rsp)])
    chipset = pn532.Chipset(transport, logging.getLogger("test"))
    result = _nfcpy_calls()[name](chipset)
    assert transport.written[0] == encode_command(code, data) == H(wire)
    assert not transport.answers  # nfcpy consumed the ACK and our response
    if name == "ReadRegister":
        assert result == 0x26
    if name == "InListPassiveTarget":
        assert isinstance(result, bytearray) and bytes(result) == rsp[2:]


def test_nfcpy_diagnose_line_test_accepts_our_extended_echo() -> None:
    pn532 = pytest.importorskip("nfc.clf.pn532")
    data = b"\x00" + bytes(x & 0xFF for x in range(262))
    transport = _FakeTransport([ACK, encode_response(CMD_DIAGNOSE, data)])
    chipset = pn532.Chipset(transport, logging.getLogger("test"))
    assert chipset.diagnose("line") is True
    assert transport.written == [encode_command(CMD_DIAGNOSE, data)]


def test_nfcpy_rejects_our_corrupted_response() -> None:
    pn532 = pytest.importorskip("nfc.clf.pn532")
    bad = bytearray(encode_response(CMD_GET_FIRMWARE_VERSION, H("32010607")))
    bad[-2] ^= 0x01
    transport = _FakeTransport([ACK, bytes(bad)])
    chipset = pn532.Chipset(transport, logging.getLogger("test"))
    with pytest.raises(OSError, match="Input/output"):
        chipset.get_firmware_version()
