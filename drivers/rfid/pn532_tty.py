"""Opening and closing a PN532 on a serial line the way nfcpy does, plus the baud-rate rescue.

Used by :class:`drivers.rfid.pn532.Pn532Reader` from its poll thread. nfcpy and pyserial are
imported lazily by :func:`import_nfc`, so this module imports without them.

``path`` is either a filesystem path of the serial device or an nfcpy device string
(``tty:USB0:pn532``); both are opened as nfcpy's ``ContactlessFrontend.open()`` opens a tty -
``nfc.clf.transport.TTY(device)`` and ``nfc.clf.pn532.init()`` - and the device is then driven by
a real ``ContactlessFrontend``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import re
import struct
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

from drivers.errors import DriverError
from drivers.rfid.pn532_frames import (
    ACK,
    CMD_SET_SERIAL_BAUDRATE,
    FrameError,
    FrameParser,
    encode_command,
    encode_response,
)

logger = logging.getLogger(__name__)

# Speeds nfcpy may have left the chip at (it takes the highest one stty accepts).
_RESCUE_BAUDS = (921600, 460800, 230400)
_BR_115200 = 4  # SetSerialBaudrate parameter for 115200 baud
_BAUD_RESPONSE_LEN = len(encode_response(CMD_SET_SERIAL_BAUDRATE))
# nfcpy's device-string syntax (nfc/clf/transport.py); a string with a slash is a plain path.
_NFCPY_PATH = re.compile(r"^(tty|com)(?::|)([a-zA-Z0-9-]+|)(?::|)([a-zA-Z0-9]+|)$")


@dataclass
class Nfc:
    """The lazily imported nfcpy pieces."""

    nfc: ModuleType
    clf: ModuleType
    transport: ModuleType
    pn532: ModuleType
    serial: ModuleType
    expected: tuple[type[BaseException], ...]
    """Everything a failing reader raises through nfcpy/pyserial (not bugs)."""


@dataclass(frozen=True)
class Opened:
    """A PN532 opened by :func:`open_frontend`."""

    clf: Any  # nfc.ContactlessFrontend
    transport: Any  # nfc.clf.transport.TTY
    firmware: str  # e.g. "PN532 v1.6"
    seconds: float  # how long the open took


def describe_error(err: BaseException) -> str:
    """E.g. ``OSError: [Errno 5] ...`` or ``termios.error: (5, ...)``."""
    cls = type(err)
    module = cls.__module__.rsplit(".", 1)[-1]
    name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    return f"{name}: {err or repr(err)}"


def check_path(path: str) -> None:
    """Raise :class:`DriverError` unless ``path`` is a device path or an nfcpy pn532 string."""
    if "/" in path:
        return
    match = _NFCPY_PATH.match(path)
    if match is None or not match.group(2):
        raise DriverError(
            f"PN532 path {path!r} is neither a device path (/dev/ttyUSB0) nor an nfcpy "
            "serial device string (tty:USB0:pn532)"
        )
    if match.group(3) not in ("", "pn532"):
        raise DriverError(
            f"PN532 path {path!r} names the nfcpy driver {match.group(3)!r}, not pn532"
        )


def import_nfc() -> Nfc:
    """Import nfcpy and pyserial; raise :class:`DriverError` saying what to install."""
    try:
        import termios

        nfc = importlib.import_module("nfc")
        clf = importlib.import_module("nfc.clf")
        transport = importlib.import_module("nfc.clf.transport")
        pn532 = importlib.import_module("nfc.clf.pn532")
        pn53x = importlib.import_module("nfc.clf.pn53x")
        serial = importlib.import_module("serial")
    except (ImportError, OSError) as err:
        raise DriverError(
            "the PN532 driver needs nfcpy and pyserial: pip install 'station-agent[rfid]' "
            f"({describe_error(err)})"
        ) from err
    expected: tuple[type[BaseException], ...] = (
        OSError,  # IOError from nfcpy (EIO, ETIMEDOUT, ENODEV), pyserial's SerialException
        termios.error,  # pyserial on a vanished tty; not an OSError
        cast("type[BaseException]", clf.Error),  # nfc.clf.Error and its subclasses
        cast("type[BaseException]", pn53x.Chipset.Error),  # error status or 0x7F frame
        # nfcpy indexing/unpacking a short or malformed chip response:
        IndexError,
        ValueError,
        struct.error,
    )
    return Nfc(nfc=nfc, clf=clf, transport=transport, pn532=pn532, serial=serial, expected=expected)


def resolve_device(nfc: Nfc, path: str) -> str:
    """Resolve ``path`` to the device pyserial opens (nfcpy strings via nfcpy's own search)."""
    if "/" in path:
        return path
    found = nfc.transport.TTY.find(path)
    devices = cast("list[str]", found[0]) if found else []
    if not devices:
        raise FileNotFoundError(f"no serial device matches {path!r}")
    return devices[0]


def open_frontend(nfc: Nfc, path: str) -> Opened:
    """Open the PN532 at ``path``; errors of ``nfc.expected`` propagate."""
    t0 = time.monotonic()
    device_path = resolve_device(nfc, path)
    try:
        device, transport = _init(nfc, device_path, path)
    except OSError as err:
        # No (valid) answer at 115200: the chip may still be at the high speed nfcpy
        # switched it to (the owning process died, or its close failed on a hung chip).
        if err.errno not in (errno.ETIMEDOUT, errno.ENODEV) or not reset_baud(
            nfc, device_path, path
        ):
            raise
        device, transport = _init(nfc, device_path, path)
    clf = nfc.nfc.ContactlessFrontend()
    clf.device = device  # what ContactlessFrontend.open() does after its search
    firmware = re.sub(r"^(PN5\w\w)v", r"\1 v", str(device.chipset_name))
    return Opened(clf=clf, transport=transport, firmware=firmware, seconds=time.monotonic() - t0)


def _init(nfc: Nfc, device_path: str, label: str) -> tuple[Any, Any]:
    """nfcpy's tty open: TTY transport at 115200, then pn532.init (may go to 921600)."""
    transport = nfc.transport.TTY(device_path)
    ok = False
    try:
        device = nfc.pn532.init(transport)
        device._path = device_path
        ok = True
    finally:
        if not ok:
            close_transport(transport, nfc.expected, label)
    return device, transport


def reset_baud(nfc: Nfc, device_path: str, label: str) -> bool:
    """Try to bring a PN532 stranded at a high UART speed back to 115200.

    nfcpy only switches the chip back to 115200 in a clean close; after a crash, a kill or
    a close that failed, nfcpy's 115200 wake-up is noise to the chip and every later open
    fails until a power cycle. Send SetSerialBaudrate(115200) at each speed nfcpy uses.
    """
    command = bytes(10) + encode_command(CMD_SET_SERIAL_BAUDRATE, bytes([_BR_115200]))
    failures: tuple[type[BaseException], ...] = (*nfc.expected, FrameError)
    for baud in _RESCUE_BAUDS:
        try:
            port = nfc.serial.Serial(device_path, baud, timeout=0.1)
        except nfc.expected as err:
            logger.debug("baud reset: cannot open %s: %s", label, describe_error(err))
            return False
        try:
            if _try_baud_reset(port, command):
                logger.warning(
                    "PN532 at %s was stuck at %d baud; set it back to 115200", label, baud
                )
                return True
        except failures as err:
            logger.debug("baud reset at %d on %s: %s", baud, label, describe_error(err))
        finally:
            with contextlib.suppress(*nfc.expected):
                port.close()
    return False


def _try_baud_reset(port: Any, command: bytes) -> bool:
    port.reset_input_buffer()
    port.write(command)
    parser = FrameParser()
    parser.feed(port.read(len(ACK) + _BAUD_RESPONSE_LEN))
    if not any(f.code == CMD_SET_SERIAL_BAUDRATE + 1 for f in parser.frames()):
        return False
    port.write(ACK)  # the chip switches on this ACK
    port.flush()
    time.sleep(0.005)
    return True


def close_frontend(nfc: Nfc | None, clf: Any, transport: Any, label: str) -> None:
    """Close an opened frontend and its transport; never raises the reader's failures."""
    if clf is not None and nfc is not None:
        try:
            clf.close()  # ACK, back to 115200 baud, PowerDown; nfcpy swallows IOError only
        except nfc.expected as err:
            logger.debug("closing PN532 at %s: %s", label, describe_error(err))
    if transport is not None:
        close_transport(transport, nfc.expected if nfc else (OSError,), label)


def close_transport(transport: Any, expected: tuple[type[BaseException], ...], label: str) -> None:
    """Close nfcpy's TTY transport even when the tty is dead (its flush raises then)."""
    try:
        transport.close()
    except expected as err:
        logger.debug("closing %s: %s", label, describe_error(err))
    serial_port = getattr(transport, "tty", None)
    if serial_port is not None:
        try:
            serial_port.close()
        except expected as err:
            logger.debug("closing serial port %s: %s", label, describe_error(err))
        transport.tty = None
