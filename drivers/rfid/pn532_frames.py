"""PN532 host-interface frame codec (pure functions, no I/O).

Frame layouts (PN532 user manual, section 6.2; byte values as nfcpy 1.0.4 sends and expects)::

    normal    00 00 FF LEN LCS TFI PD0..PDn DCS 00          LEN = len(TFI..PDn) <= 255
    extended  00 00 FF FF FF LENh LENl LCS TFI PD0..PDn DCS 00
    ACK       00 00 FF 00 FF 00
    NACK      00 00 FF FF 00 00
    error     00 00 FF 01 FF 7F 81 00                         (application-level syntax error)

``LCS`` makes ``LEN + LCS`` (``LENh + LENl + LCS`` for extended frames) zero modulo 256 and ``DCS``
makes ``TFI + PD0 + ... + PDn + DCS`` zero modulo 256. Host-to-chip frames carry ``TFI = 0xD4``
and the command code in ``PD0``; chip-to-host frames carry ``TFI = 0xD5`` and ``command + 1``.

The module has two decoders: :func:`decode_frame` for one complete frame in a buffer and
:class:`FrameParser`, an incremental parser for a byte stream (it skips preamble zeros, the
``55 55 00 ..`` HSU wake-up sequence and any other noise before a start code, and waits for the
rest of a frame that arrived only in part). Checksum and length errors raise :class:`FrameError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from drivers.errors import ProtocolError

PREAMBLE = b"\x00"
START_CODE = b"\x00\xff"
SOF = b"\x00\x00\xff"  # preamble + start code, as every frame on the wire begins
POSTAMBLE = b"\x00"

ACK = b"\x00\x00\xff\x00\xff\x00"
NACK = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME = b"\x00\x00\xff\x01\xff\x7f\x81\x00"

TFI_HOST_TO_PN532 = 0xD4
TFI_PN532_TO_HOST = 0xD5
TFI_ERROR = 0x7F

#: Largest body (TFI + data) a normal frame can carry; longer bodies need an extended frame.
NORMAL_MAX_LEN = 255
#: Largest body the extended format can describe (the PN532 itself accepts at most 265).
EXTENDED_MAX_LEN = 0xFFFF

# Command codes used by nfcpy's PN532 driver (and answered by the simulator).
CMD_DIAGNOSE = 0x00
CMD_GET_FIRMWARE_VERSION = 0x02
CMD_GET_GENERAL_STATUS = 0x04
CMD_READ_REGISTER = 0x06
CMD_WRITE_REGISTER = 0x08
CMD_READ_GPIO = 0x0C
CMD_WRITE_GPIO = 0x0E
CMD_SET_SERIAL_BAUDRATE = 0x10
CMD_SET_PARAMETERS = 0x12
CMD_SAM_CONFIGURATION = 0x14
CMD_POWER_DOWN = 0x16
CMD_RF_CONFIGURATION = 0x32
CMD_IN_DATA_EXCHANGE = 0x40
CMD_IN_COMMUNICATE_THRU = 0x42
CMD_IN_DESELECT = 0x44
CMD_IN_LIST_PASSIVE_TARGET = 0x4A
CMD_IN_RELEASE = 0x52
CMD_IN_SELECT = 0x54

COMMAND_NAMES: dict[int, str] = {
    CMD_DIAGNOSE: "Diagnose",
    CMD_GET_FIRMWARE_VERSION: "GetFirmwareVersion",
    CMD_GET_GENERAL_STATUS: "GetGeneralStatus",
    CMD_READ_REGISTER: "ReadRegister",
    CMD_WRITE_REGISTER: "WriteRegister",
    CMD_READ_GPIO: "ReadGPIO",
    CMD_WRITE_GPIO: "WriteGPIO",
    CMD_SET_SERIAL_BAUDRATE: "SetSerialBaudrate",
    CMD_SET_PARAMETERS: "SetParameters",
    CMD_SAM_CONFIGURATION: "SAMConfiguration",
    CMD_POWER_DOWN: "PowerDown",
    CMD_RF_CONFIGURATION: "RFConfiguration",
    CMD_IN_DATA_EXCHANGE: "InDataExchange",
    CMD_IN_COMMUNICATE_THRU: "InCommunicateThru",
    CMD_IN_DESELECT: "InDeselect",
    CMD_IN_LIST_PASSIVE_TARGET: "InListPassiveTarget",
    CMD_IN_RELEASE: "InRelease",
    CMD_IN_SELECT: "InSelect",
}


class FrameError(ProtocolError):
    """A PN532 frame is malformed: bad LCS/DCS checksum, bad length or missing bytes."""


class FrameKind(StrEnum):
    ACK = "ack"
    NACK = "nack"
    NORMAL = "normal"
    EXTENDED = "extended"


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``body`` is TFI + data (the bytes covered by DCS); empty for ACK/NACK."""

    kind: FrameKind
    body: bytes = b""

    @property
    def tfi(self) -> int | None:
        return self.body[0] if self.body else None

    @property
    def code(self) -> int | None:
        """Command code (host frames) or response code (chip frames); None if absent."""
        return self.body[1] if len(self.body) >= 2 and self.tfi != TFI_ERROR else None

    @property
    def data(self) -> bytes:
        """The parameters after TFI and command/response code."""
        return self.body[2:] if self.code is not None else b""

    @property
    def is_error(self) -> bool:
        """True for the PN532 application-level error frame (TFI 0x7F)."""
        return self.tfi == TFI_ERROR


def lcs(length: int) -> int:
    """Length checksum for a normal frame: ``(LEN + LCS) & 0xFF == 0``."""
    return (-length) & 0xFF


def dcs(body: bytes) -> int:
    """Data checksum: ``(sum(body) + DCS) & 0xFF == 0``."""
    return (-sum(body)) & 0xFF


def encode_frame(body: bytes, *, extended: bool | None = None) -> bytes:
    """Encode ``body`` (TFI + data) as an information frame.

    ``extended=None`` picks the normal format when ``len(body) <= 255`` (as nfcpy does for host
    commands) and the extended format otherwise.
    """
    n = len(body)
    if n == 0:
        raise ValueError("an information frame needs at least the TFI byte")
    if n > EXTENDED_MAX_LEN:
        raise ValueError(f"frame body of {n} bytes is too long")
    if extended is None:
        extended = n > NORMAL_MAX_LEN
    if extended:
        hi, lo = n >> 8, n & 0xFF
        head = SOF + bytes([0xFF, 0xFF, hi, lo, (-(hi + lo)) & 0xFF])
    else:
        if n > NORMAL_MAX_LEN:
            raise ValueError(f"a normal frame carries at most {NORMAL_MAX_LEN} bytes, not {n}")
        head = SOF + bytes([n, lcs(n)])
    return head + body + bytes([dcs(body)]) + POSTAMBLE


def encode_command(code: int, data: bytes = b"") -> bytes:
    """Host-to-PN532 command frame (TFI 0xD4), byte-for-byte what nfcpy writes (minus preamble)."""
    return encode_frame(bytes([TFI_HOST_TO_PN532, code & 0xFF]) + bytes(data))


def encode_response(command_code: int, data: bytes = b"") -> bytes:
    """PN532-to-host response frame (TFI 0xD5, response code ``command_code + 1``).

    A body of exactly 255 bytes is sent as an extended frame: nfcpy's serial reader treats a
    length byte of 0xFF as the extended-frame marker and would misread a normal frame.
    """
    body = bytes([TFI_PN532_TO_HOST, (command_code + 1) & 0xFF]) + bytes(data)
    return encode_frame(body, extended=len(body) >= NORMAL_MAX_LEN)


def decode_frame(buf: bytes) -> Frame:
    """Decode exactly one frame from ``buf``.

    Leading preamble zeros are allowed; the frame must be complete, and at most the postamble
    may follow it. Raises :class:`FrameError` for anything else.
    """
    parser = FrameParser()
    parser.feed(buf)
    frame = parser.next_frame()  # FrameError propagates
    if frame is None:
        raise FrameError(f"incomplete or missing frame in {bytes(buf).hex(' ')}")
    rest = parser.pending()
    if rest not in (b"", POSTAMBLE):
        raise FrameError(f"{len(rest)} unexpected bytes after the frame: {rest.hex(' ')}")
    return frame


class FrameParser:
    """Incremental decoder for a PN532 byte stream (either direction).

    ``feed()`` appends received bytes; ``next_frame()`` returns the next complete frame, None
    when more bytes are needed, or raises :class:`FrameError` for a corrupt frame, which it has
    then already discarded (so the caller can log it and call ``next_frame()`` again).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> bytes:
        """Bytes received but not yet consumed by a frame."""
        return bytes(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def frames(self) -> list[Frame]:
        """All complete frames now available; raises on the first corrupt one (see class doc)."""
        out: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def next_frame(self) -> Frame | None:
        buf = self._buf
        start = buf.find(START_CODE)
        if start < 0:
            # Keep a trailing 0x00: it may be the first half of a start code.
            keep = 1 if buf.endswith(PREAMBLE) else 0
            del buf[: len(buf) - keep]
            return None
        del buf[:start]  # drop preamble zeros, wake-up bytes and noise
        # buf now begins with 00 FF
        if len(buf) < 4:
            return None
        b2, b3 = buf[2], buf[3]
        if b2 == 0x00 and b3 == 0xFF:
            del buf[:4]
            self._drop_postamble()
            return Frame(FrameKind.ACK)
        if b2 == 0xFF and b3 == 0x00:
            del buf[:4]
            self._drop_postamble()
            return Frame(FrameKind.NACK)
        if b2 == 0xFF and b3 == 0xFF:
            # extended: 00 FF FF FF LENh LENl LCS body DCS
            if len(buf) < 7:
                return None
            hi, lo, lcs_byte = buf[4], buf[5], buf[6]
            if (hi + lo + lcs_byte) & 0xFF:
                del buf[:2]
                raise FrameError(
                    f"extended frame length checksum error: LEN={hi:02X}{lo:02X} LCS={lcs_byte:02X}"
                )
            length, head, kind = (hi << 8) | lo, 7, FrameKind.EXTENDED
        else:
            length, lcs_byte = b2, b3
            if (length + lcs_byte) & 0xFF:
                del buf[:2]
                raise FrameError(
                    f"frame length checksum error: LEN={length:02X} LCS={lcs_byte:02X}"
                )
            head, kind = 4, FrameKind.NORMAL
        if length == 0:
            del buf[:head]
            raise FrameError("information frame with zero length")
        end = head + length + 1  # body + DCS
        if len(buf) < end:
            return None
        body = bytes(buf[head : head + length])
        dcs_byte = buf[head + length]
        del buf[:end]
        self._drop_postamble()
        if (sum(body) + dcs_byte) & 0xFF:
            raise FrameError(
                f"frame data checksum error: DCS={dcs_byte:02X}, expected {dcs(body):02X}"
            )
        return Frame(kind, body)

    def _drop_postamble(self) -> None:
        if self._buf[:1] == POSTAMBLE and self._buf[1:2] != b"\xff":
            del self._buf[:1]
