"""A simulated PN532 (HSU/UART) on the master side of a pseudo-terminal.

The simulator answers every command nfcpy 1.0.4's ``pn532`` driver sends when it opens the
chip, senses ISO 14443-A 106 kbps targets, activates them and closes the chip, so that the real
:class:`drivers.rfid.pn532.Pn532Reader` (real ``nfc.ContactlessFrontend``, real nfcpy PN532
driver, real pyserial) can be tested without hardware and without root.

How the pty is handed to nfcpy
------------------------------
nfcpy's device strings (``tty:USB0:pn532``) cannot name a pty (``/dev/pts/5`` has a slash and
nfcpy only searches ``/dev``). The simulator therefore publishes the pty slave as a **symlink**
``<directory>/COM<n>`` (by default in a fresh temporary directory, so no root is needed and
parallel test runs do not collide):

* :attr:`SimulatedPN532.device_path` is that symlink's absolute path. ``Pn532Reader`` accepts
  plain filesystem paths (as well as nfcpy device strings) and opens them through
  ``nfc.clf.transport.TTY(path)`` + ``nfc.clf.pn532.init()`` - exactly what nfcpy's own
  ``ContactlessFrontend.open("tty:...")`` does after resolving the string - so the code path
  under test is the production one.
* :attr:`SimulatedPN532.nfcpy_path` is ``com:COM<n>:pn532``: nfcpy's own tools accept it when
  started with the symlink's directory as working directory (pyserial then opens ``COM<n>``
  relative to the cwd).

``unplug()`` closes the pty master (the slave side then reports a hang-up, like a USB serial
adapter being pulled) and removes the symlink; ``replug()`` creates a new pty and points the
same symlink name at it.

nfcpy tries to switch the UART to 921600 baud with ``stty`` and SetSerialBaudrate. A pty moves
bytes at any "baud rate", but on Linux the master can read the speed the host configured on the
slave (``tcgetattr`` on a pty master acts on the slave), so the simulator models the chip's own
UART speed: it switches after the host's ACK to a SetSerialBaudrate answer (as the chip does),
resets to 115200 on replug, and treats a command frame sent at a different speed as line noise
(no ACK). That reproduces the real trap of a PN532 left at 921600 by a process that died or by a
close that failed; :meth:`SimulatedPN532.set_chip_baud` puts the chip in that state directly.

Waiting, as the chip does it: with RFConfiguration item 5 (MxRtyPassiveActivation) at 0xFF -
its value after reset; nfcpy's open sets 0x01 - an InListPassiveTarget that finds no card is
ACKed and then not answered at all; the answer goes out the moment a matching card is placed
(:meth:`SimulatedPN532.place_card` wakes the I/O thread). An ACK from the host aborts the waiting
command (no answer follows; :attr:`SimulatedPN532.abort_times`). A new command also aborts it
(the user manual: any new command aborts the one in progress), but the project's driver always
ACKs first, so such commands are counted (:attr:`SimulatedPN532.unaborted_commands`). With any other
retry count the chip answers "no target" (``D5 4B 00``) at once. ``hang()`` loses a waiting
command. :meth:`SimulatedPN532.wait_armed` waits until a command is waiting.

CLI: ``main()`` (``station-agent pn532-sim``) starts a simulator, prints the path to configure,
and reads commands from stdin: ``tap <UID hex> [sak] [atqa]``, ``remove``, ``hang``, ``unhang``,
``garble``, ``ungarble``, ``unplug``, ``replug``, ``status``, ``quit``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import queue
import select
import shutil
import sys
import tempfile
import termios
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drivers.rfid.pn532_frames import (
    ACK,
    CMD_DIAGNOSE,
    CMD_GET_FIRMWARE_VERSION,
    CMD_GET_GENERAL_STATUS,
    CMD_IN_COMMUNICATE_THRU,
    CMD_IN_DATA_EXCHANGE,
    CMD_IN_DESELECT,
    CMD_IN_LIST_PASSIVE_TARGET,
    CMD_IN_RELEASE,
    CMD_IN_SELECT,
    CMD_POWER_DOWN,
    CMD_READ_GPIO,
    CMD_READ_REGISTER,
    CMD_RF_CONFIGURATION,
    CMD_SAM_CONFIGURATION,
    CMD_SET_PARAMETERS,
    CMD_SET_SERIAL_BAUDRATE,
    CMD_WRITE_GPIO,
    CMD_WRITE_REGISTER,
    COMMAND_NAMES,
    ERROR_FRAME,
    TFI_HOST_TO_PN532,
    Frame,
    FrameError,
    FrameKind,
    FrameParser,
    encode_response,
)

logger = logging.getLogger(__name__)

#: GetFirmwareVersion answer: IC 0x32 (PN532), version 1.6, supports ISO 14443-A/B and 18092.
FIRMWARE = bytes([0x32, 0x01, 0x06, 0x07])

REG_CIU_RX_MODE = 0x6303
REG_CIU_FIFO_DATA = 0x6339
SENS_REQ = 0x26  # REQA, left in the CIU FIFO when no card answered
RF_CFG_MAX_RETRIES = 0x05  # RFConfiguration item: MxRtyATR, MxRtyPSL, MxRtyPassiveActivation
MX_RTY_FOREVER = 0xFF  # MxRtyPassiveActivation: retry until a card answers (the reset value)

#: CIU register defaults after reset (only those nfcpy reads matter; the rest read as 0).
_REGISTER_DEFAULTS = {
    0x6301: 0x3F,  # CIU_Mode
    0x6302: 0x80,  # CIU_TxMode (CRC on)
    REG_CIU_RX_MODE: 0x80,  # CIU_RxMode (CRC on)
    0x6304: 0x80,  # CIU_TxControl
    0x6305: 0x40,  # CIU_TxAuto
    REG_CIU_FIFO_DATA: SENS_REQ,
}

#: SetSerialBaudrate's BR parameter indexes this table (PN532 user manual, 7.2.13).
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1288000)
_TERMIOS_SPEEDS = {
    getattr(termios, f"B{rate}"): rate for rate in BAUD_RATES if hasattr(termios, f"B{rate}")
}

# Frames nfcpy never sends longer than 265 bytes; a part frame older than this is line noise.
_STALE_PARTIAL_S = 0.2
_SELECT_S = 0.05


def crc_a(data: bytes) -> bytes:
    """ISO/IEC 14443-3 CRC_A, least significant byte first."""
    reg = 0x6363
    for octet in data:
        for pos in range(8):
            bit = (reg ^ (octet >> pos)) & 1
            reg >>= 1
            if bit:
                reg ^= 0x8408
    return bytes([reg & 0xFF, reg >> 8])


def _default_atqa(uid_len: int, sak: int) -> int:
    if sak & 0x20:
        return 0x0344  # DESFire
    return {4: 0x0004, 7: 0x0044, 10: 0x0084}[uid_len]


@dataclass(frozen=True)
class SimCard:
    uid: bytes
    sak: int
    atqa: int

    @property
    def is_type2_like(self) -> bool:
        """SAK bits 6 and 7 clear: Type 2 Tag or Mifare Classic (nfcpy turns CRC checking off)."""
        return self.sak & 0x60 == 0

    @property
    def is_iso_dep(self) -> bool:
        return bool(self.sak & 0x20)


@dataclass
class _State:
    card: SimCard | None = None
    hung: bool = False
    garbled: bool = False
    plugged: bool = True
    registers: dict[int, int] = field(default_factory=lambda: dict(_REGISTER_DEFAULTS))
    selected: bool = False  # a target was activated by the last InListPassiveTarget
    chip_baud: int = 115200  # the UART speed the chip listens at
    pending_baud: int | None = None  # SetSerialBaudrate answered, switching on the host's ACK
    mx_rty_passive: int = MX_RTY_FOREVER  # RFConfiguration item 5, third byte (reset value)
    waiting: bytes | None = None  # parameters of an InListPassiveTarget still waiting for a card


class SimulatedPN532:
    """A PN532 behind a pty; see the module docstring for how nfcpy is pointed at it."""

    def __init__(self, directory: str | Path | None = None, name: str = "COM0") -> None:
        if not name.startswith("COM") or not name[3:].isdigit():
            raise ValueError("name must look like COM<n> so that nfcpy's com: paths work")
        self._own_dir = directory is None
        self._dir = Path(directory) if directory is not None else None
        self._name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = _State()
        self._commands: Counter[int] = Counter()
        self._polls = 0
        self._unknown: Counter[int] = Counter()
        self._baud_mismatches = 0
        self._aborts: list[float] = []  # monotonic times of ACKs that aborted a waiting command
        self._unaborted = 0  # commands sent while a command was still waiting (host bug)
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ctl: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._wake_r, self._wake_w = -1, -1

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SimulatedPN532:
        if self._thread is not None:
            return self
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="pn532-sim-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._plug()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pn532-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        self._thread = None
        self._unplug()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r, self._wake_w = -1, -1
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SimulatedPN532:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ paths

    @property
    def device_path(self) -> str:
        """Absolute path of the ``COM<n>`` symlink to the pty slave: configure this."""
        if self._dir is None:
            raise RuntimeError("simulator not started")
        return str(self._dir / self._name)

    @property
    def nfcpy_path(self) -> str:
        """nfcpy device string; valid when the cwd is :attr:`directory`."""
        return f"com:{self._name}:pn532"

    @property
    def directory(self) -> str:
        if self._dir is None:
            raise RuntimeError("simulator not started")
        return str(self._dir)

    @property
    def pty_path(self) -> str:
        """The current ``/dev/pts/N`` (changes on every replug)."""
        return self._pty_path

    # ------------------------------------------------------------------ models

    def place_card(self, uid_hex: str, sak: int | None = None, atqa: int | None = None) -> None:
        """Put a card in the field. ``sak`` defaults to 0x08 (Classic) for a 4-byte UID and to
        0x00 (Ultralight/NTAG) otherwise; ``atqa`` defaults from UID size and SAK."""
        uid = bytes.fromhex(uid_hex)
        if len(uid) not in (4, 7, 10):
            raise ValueError(f"a UID has 4, 7 or 10 bytes, not {len(uid)}")
        if sak is None:
            sak = 0x08 if len(uid) == 4 else 0x00
        if atqa is None:
            atqa = _default_atqa(len(uid), sak)
        with self._lock:
            self._state.card = SimCard(uid, sak & 0xFF, atqa & 0xFFFF)
        self._wake()  # a waiting InListPassiveTarget answers now (from the I/O thread)

    def remove_card(self) -> None:
        with self._lock:
            self._state.card = None
            self._state.selected = False

    @property
    def card(self) -> SimCard | None:
        with self._lock:
            return self._state.card

    def hang(self) -> None:
        """Stop answering anything (ACKs included); input is read and thrown away. A command
        that was waiting for a card is lost (it never answers)."""
        with self._lock:
            self._state.hung = True
            self._state.waiting = None

    def unhang(self) -> None:
        with self._lock:
            self._state.hung = False

    def garble(self) -> None:
        """Answer with corrupt data checksums (a noisy line or a confused chip)."""
        with self._lock:
            self._state.garbled = True

    def ungarble(self) -> None:
        with self._lock:
            self._state.garbled = False

    def unplug(self) -> None:
        """Close the pty master and remove the symlink, like pulling a USB serial adapter."""
        self._control(self._unplug)

    def replug(self) -> None:
        """Create a new pty behind the same symlink name; the chip state resets."""
        self._control(self._plug)

    @property
    def chip_baud(self) -> int:
        with self._lock:
            return self._state.chip_baud

    def set_chip_baud(self, baud: int) -> None:
        """Put the chip's UART at ``baud``, e.g. 921600 as a crashed nfcpy process leaves it."""
        if baud not in BAUD_RATES:
            raise ValueError(f"the PN532 does not do {baud} baud")
        with self._lock:
            self._state.chip_baud = baud
            self._state.pending_baud = None

    @property
    def baud_mismatches(self) -> int:
        """Command frames dropped because the host sent them at the wrong speed."""
        with self._lock:
            return self._baud_mismatches

    @property
    def plugged(self) -> bool:
        with self._lock:
            return self._state.plugged

    # ------------------------------------------------------------------ counters

    @property
    def polls(self) -> int:
        """InListPassiveTarget commands received (a sense, an arm or a presence check)."""
        with self._lock:
            return self._polls

    @property
    def commands_seen(self) -> dict[str, int]:
        with self._lock:
            return {COMMAND_NAMES.get(c, f"0x{c:02X}"): n for c, n in self._commands.items()}

    @property
    def unknown_commands(self) -> dict[int, int]:
        with self._lock:
            return dict(self._unknown)

    @property
    def waiting(self) -> bool:
        """True while an InListPassiveTarget waits for a card (MxRtyPassiveActivation 0xFF)."""
        with self._lock:
            return self._state.waiting is not None

    @property
    def abort_times(self) -> list[float]:
        """``time.monotonic()`` of every ACK that aborted a waiting command, oldest first."""
        with self._lock:
            return list(self._aborts)

    @property
    def unaborted_commands(self) -> int:
        """Commands the host sent while another one was still waiting (it must ACK first)."""
        with self._lock:
            return self._unaborted

    def wait_armed(self, timeout: float = 2.0) -> bool:
        """Wait until an InListPassiveTarget is waiting for a card; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state.waiting is not None, timeout)

    def wait_polls(self, count: int = 1, timeout: float = 2.0) -> bool:
        """Wait until ``count`` more InListPassiveTarget commands came; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._polls + count
            while self._polls < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ------------------------------------------------------------------ pty plumbing

    def _control(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the I/O thread (the only one touching the master fd)."""
        if self._thread is None or not self._thread.is_alive():
            action()
            return
        done = threading.Event()
        self._ctl.put((action, done))
        self._wake()
        if not done.wait(5):
            raise RuntimeError("simulator I/O thread did not respond")

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _plug(self) -> None:
        if self._master is not None:
            return
        assert self._dir is not None
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before pyserial configures the port
        attrs = termios.tcgetattr(slave)
        attrs[4] = attrs[5] = termios.B115200  # the chip's power-on speed
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        fcntl.fcntl(master, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        fcntl.fcntl(slave, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self._master, self._slave = master, slave
        self._pty_path = os.ttyname(slave)
        link = self._dir / self._name
        tmp = self._dir / f".{self._name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self._pty_path)
        tmp.replace(link)  # atomic: a reopening reader never sees a missing link
        with self._lock:
            self._state.plugged = True
            self._state.registers = dict(_REGISTER_DEFAULTS)
            self._state.selected = False
            self._state.chip_baud, self._state.pending_baud = 115200, None
            self._state.mx_rty_passive, self._state.waiting = MX_RTY_FOREVER, None
        logger.info("PN532 simulator on %s -> %s", link, self._pty_path)

    def _unplug(self) -> None:
        if self._dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / self._name).unlink()
        # The simulator keeps a slave fd open while plugged so that the master never sees EIO
        # while nfcpy closes and reopens the port; both go now, the reader's fd gets a hang-up.
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        with self._lock:
            self._state.plugged = False
        logger.info("PN532 simulator unplugged")

    def _run(self) -> None:
        parser = FrameParser()
        last_rx = time.monotonic()
        last_master: int | None = None
        while not self._stop.is_set():
            self._run_control()
            master = self._master
            if master != last_master:  # replugged: forget bytes from the old pty
                parser.reset()
                last_master = master
            fds = [self._wake_r] if master is None else [self._wake_r, master]
            try:
                readable, _, _ = select.select(fds, [], [], _SELECT_S)
            except (OSError, ValueError) as err:  # fd closed under us by a control action
                logger.debug("select failed: %s", err)
                continue
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
            if master is not None and master == self._master:
                self._serve_waiting(master)
            if master is None or master not in readable or master != self._master:
                if parser.pending() and time.monotonic() - last_rx > _STALE_PARTIAL_S:
                    logger.warning("dropping stale partial frame %s", parser.pending().hex(" "))
                    parser.reset()
                continue
            try:
                chunk = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError as err:
                if err.errno == errno.EIO:  # no slave open right now; cannot happen while plugged
                    time.sleep(0.01)
                    continue
                raise
            last_rx = time.monotonic()
            with self._lock:
                hung = self._state.hung
            if hung:
                parser.reset()
                continue
            parser.feed(chunk)
            self._drain(parser, master)

    def _serve_waiting(self, master: int) -> None:
        """Answer a waiting InListPassiveTarget once a matching card is in the field."""
        with self._lock:
            st = self._state
            if st.waiting is None or st.hung or not self._card_matches(st.waiting):
                return
            reply = self._in_list_passive_target(st.waiting)
            st.waiting = None
            self._cond.notify_all()
            garbled = st.garbled
        out = encode_response(CMD_IN_LIST_PASSIVE_TARGET, reply)
        self._write(master, _garble(out) if garbled else out)

    def _card_matches(self, data: bytes) -> bool:
        card = self._state.card
        if card is None or (len(data) > 1 and data[1] != 0):
            return False
        wanted = _strip_cascade_tags(bytes(data[2:]))
        return not wanted or wanted == card.uid

    def _run_control(self) -> None:
        while True:
            try:
                action, done = self._ctl.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _drain(self, parser: FrameParser, master: int) -> None:
        host_baud = _host_baud(master)
        while True:
            try:
                frame = parser.next_frame()
            except FrameError as err:
                logger.warning("host frame rejected: %s", err)
                continue
            if frame is None:
                return
            for out in self._handle(frame, host_baud):
                self._write(master, out)

    def _write(self, master: int, data: bytes) -> None:
        try:
            os.write(master, data)
        except BlockingIOError:
            logger.warning("pty buffer full, dropped %d bytes", len(data))
        except OSError as err:
            logger.warning("pty write failed: %s", err)

    # ------------------------------------------------------------------ the chip

    def _handle(self, frame: Frame, host_baud: int | None) -> list[bytes]:
        """Return the bytes to send back for one host frame."""
        if frame.kind in (FrameKind.ACK, FrameKind.NACK):
            # ACK aborts the current command (ours are all answered already) and completes a
            # baud rate change. Its speed is not checked: nfcpy reopens the port at the new
            # speed right after writing it, possibly before this thread reads it.
            with self._lock:
                if frame.kind is FrameKind.ACK and self._state.waiting is not None:
                    self._state.waiting = None  # the abort: no answer follows
                    self._aborts.append(time.monotonic())
                    self._cond.notify_all()
                if frame.kind is FrameKind.ACK and self._state.pending_baud is not None:
                    self._state.chip_baud, self._state.pending_baud = self._state.pending_baud, None
                    logger.debug("chip UART now at %d baud", self._state.chip_baud)
            return []
        with self._lock:
            st = self._state
            if st.pending_baud is not None and host_baud == st.pending_baud:
                # nfcpy's port reopen flushes the tty output queue, which on a pty can drop
                # the ACK before we read it; the host talking at the new speed implies it.
                st.chip_baud, st.pending_baud = st.pending_baud, None
            chip_baud = st.chip_baud
            if host_baud is not None and host_baud != chip_baud:
                self._baud_mismatches += 1
        if host_baud is not None and host_baud != chip_baud:
            logger.debug("host at %d baud, chip at %d: frame is line noise", host_baud, chip_baud)
            return []
        if frame.tfi != TFI_HOST_TO_PN532 or frame.code is None:
            logger.warning("ignoring frame with TFI %s", frame.tfi)
            return [ACK, ERROR_FRAME]
        code, data = frame.code, frame.data
        with self._lock:
            self._commands[code] += 1
            if self._state.waiting is not None:  # the chip is busy; the host must ACK first
                self._unaborted += 1
                self._state.waiting = None
                logger.warning("command 0x%02X sent while a command was waiting", code)
            if code == CMD_IN_LIST_PASSIVE_TARGET:
                self._polls += 1
                self._cond.notify_all()
                if self._state.mx_rty_passive == MX_RTY_FOREVER and not self._card_matches(data):
                    self._state.waiting = bytes(data)  # answers when a card comes, or never
                    return [ACK]
            reply = self._respond(code, data)
            if reply is None:
                self._unknown[code] += 1
            garbled = self._state.garbled
        if reply is None:
            logger.warning(
                "unsupported command 0x%02X (%s) data=%s: answering syntax error",
                code,
                COMMAND_NAMES.get(code, "unknown"),
                data.hex(),
            )
            return [ACK, ERROR_FRAME]
        out = encode_response(code, reply)
        return [ACK, _garble(out) if garbled else out]

    def _respond(self, code: int, data: bytes) -> bytes | None:
        st = self._state
        if code == CMD_DIAGNOSE:
            if data[:1] == b"\x00":
                return data  # communication line test: echo NumTst + InParam
            return b"\x00"  # ROM/RAM/antenna tests: OK
        if code == CMD_GET_FIRMWARE_VERSION:
            return FIRMWARE
        if code == CMD_GET_GENERAL_STATUS:
            return bytes([0x00, 0x01 if st.selected else 0x00, 0x01 if st.selected else 0x00, 0x80])
        if code == CMD_READ_REGISTER:
            addrs = [(data[i] << 8) | data[i + 1] for i in range(0, len(data) - 1, 2)]
            return bytes(st.registers.get(a, 0) for a in addrs)
        if code == CMD_WRITE_REGISTER:
            for i in range(0, len(data) - 2, 3):
                st.registers[(data[i] << 8) | data[i + 1]] = data[i + 2]
            return b""
        if code == CMD_READ_GPIO:
            return b"\x3f\x07\x00"
        if code == CMD_SET_SERIAL_BAUDRATE:
            if not data or data[0] >= len(BAUD_RATES):
                return None
            st.pending_baud = BAUD_RATES[data[0]]
            return b""
        if code in (CMD_WRITE_GPIO, CMD_SET_PARAMETERS):
            return b""
        if code == CMD_SAM_CONFIGURATION:
            return b""
        if code == CMD_POWER_DOWN:
            st.selected = False
            return b"\x00"
        if code == CMD_RF_CONFIGURATION:
            if data[:1] == b"\x01":  # RF field on/off: deactivates any target
                st.selected = False
                st.registers[REG_CIU_RX_MODE] = st.registers.get(REG_CIU_RX_MODE, 0) | 0x80
            if data[:1] == bytes([RF_CFG_MAX_RETRIES]) and len(data) >= 4:
                st.mx_rty_passive = data[3]
            return b""
        if code == CMD_IN_LIST_PASSIVE_TARGET:
            return self._in_list_passive_target(data)
        if code == CMD_IN_COMMUNICATE_THRU:
            return self._in_communicate_thru(data)
        if code == CMD_IN_DATA_EXCHANGE:
            return b"\x01"  # timeout: no target answered
        if code in (CMD_IN_DESELECT, CMD_IN_RELEASE, CMD_IN_SELECT):
            if code != CMD_IN_SELECT:
                st.selected = False
            return b"\x00"
        return None

    def _in_list_passive_target(self, data: bytes) -> bytes:
        st = self._state
        card = st.card
        st.selected = False
        st.registers[REG_CIU_RX_MODE] = st.registers.get(REG_CIU_RX_MODE, 0) | 0x80
        if card is None or not self._card_matches(data):
            st.registers[REG_CIU_FIFO_DATA] = SENS_REQ
            return b"\x00"
        st.selected = True
        st.registers[REG_CIU_FIFO_DATA] = 0x00
        return (
            bytes([0x01, 0x01, card.atqa >> 8, card.atqa & 0xFF, card.sak, len(card.uid)])
            + card.uid
        )

    def _in_communicate_thru(self, data: bytes) -> bytes:
        st = self._state
        card = st.card
        if card is None or not st.selected or not data:
            return b"\x01"  # timeout
        rsp = self._card_response(card, data)
        if rsp is None:
            return b"\x01"
        if (
            card.is_type2_like
            and not st.registers.get(REG_CIU_RX_MODE, 0x80) & 0x80
            and len(rsp) > 1
        ):
            rsp += crc_a(rsp)  # CRC check off: the chip hands the card's CRC_A through
        return b"\x00" + rsp

    @staticmethod
    def _card_response(card: SimCard, cmd: bytes) -> bytes | None:
        op = cmd[0]
        if card.is_iso_dep:
            if op == 0xE0:  # RATS -> ATS: FSCI 5 (64 bytes), TA/TB/TC present, FWI 8
                return bytes.fromhex("06 75 77 81 02 80")
            if op & 0xE2 == 0x02:  # I-block: answer any APDU with "file not found"
                return bytes([op & 0x03 | 0x02]) + b"\x6a\x82"
            if op & 0xF7 == 0xC2:  # S(DESELECT)
                return cmd[:1]
            return None
        if card.sak == 0x00:  # Ultralight / NTAG213
            if op == 0x60:  # GET_VERSION
                return bytes.fromhex("0004040201000f03")
            if op == 0x30 and len(cmd) > 1:  # READ 4 pages
                mem = _ntag_memory(card.uid)
                start = (cmd[1] * 4) % len(mem)
                return (mem + mem)[start : start + 16]
            return None  # e.g. the Ultralight-C AUTHENTICATE probe: no answer
        return None  # Mifare Classic: nfcpy has no Crypto1, nothing to exchange


def _garble(frame: bytes) -> bytes:
    """The frame with a wrong data checksum."""
    return frame[:-2] + bytes([(frame[-2] + 1) & 0xFF]) + frame[-1:]


def _host_baud(master: int) -> int | None:
    """The speed the host set on the pty slave (None if unknown)."""
    try:
        return _TERMIOS_SPEEDS.get(termios.tcgetattr(master)[5])
    except termios.error:
        return None


def _strip_cascade_tags(uid: bytes) -> bytes:
    """Undo the cascade tags (0x88) nfcpy inserts into a 7- or 10-byte selection UID."""
    if len(uid) == 8 and uid[0] == 0x88:
        return uid[1:]
    if len(uid) == 12 and uid[0] == 0x88 and uid[4] == 0x88:
        return uid[1:4] + uid[5:]
    return uid


def _ntag_memory(uid: bytes) -> bytes:
    """45 pages of an empty NTAG213 with an empty NDEF message."""
    u = uid if len(uid) == 7 else (uid + bytes(7))[:7]
    bcc0 = 0x88 ^ u[0] ^ u[1] ^ u[2]
    bcc1 = u[3] ^ u[4] ^ u[5] ^ u[6]
    head = bytes([u[0], u[1], u[2], bcc0, u[3], u[4], u[5], u[6], bcc1, 0x48, 0, 0])
    cc = bytes.fromhex("e1101200")
    ndef = bytes.fromhex("0300fe00")
    mem = head + cc + ndef
    return mem + bytes(45 * 4 - len(mem))


# ---------------------------------------------------------------------- CLI

_HELP = """commands:
  tap <UID hex> [sak] [atqa]   put a card on the reader (stays until 'remove')
  remove                       take the card away
  hang | unhang                stop / resume answering (ACKs included)
  garble | ungarble            corrupt / repair response checksums
  unplug | replug              close the pty / create a new one under the same name
  status                       show state and counters
  quit                         stop the simulator"""


def _parse_int(text: str) -> int:
    return int(text, 16) if not text.lower().startswith("0x") else int(text, 0)


def _status(sim: SimulatedPN532) -> str:
    card = sim.card
    card_text = (
        "none"
        if card is None
        else f"uid={card.uid.hex().upper()} sak=0x{card.sak:02X} atqa=0x{card.atqa:04X}"
    )
    return (
        f"plugged={sim.plugged} pty={sim.pty_path} baud={sim.chip_baud} card={card_text} "
        f"polls={sim.polls} waiting={sim.waiting} aborts={len(sim.abort_times)} "
        f"commands={sim.commands_seen}"
    )


def _execute(sim: SimulatedPN532, line: str, out: Callable[[str], None]) -> bool:
    """Run one CLI command; return False to quit."""
    words = line.split()
    if not words:
        return True
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd in ("quit", "exit"):
            return False
        if cmd in ("tap", "place"):
            if not args:
                raise ValueError("tap needs a UID")
            sak = _parse_int(args[1]) if len(args) > 1 else None
            atqa = _parse_int(args[2]) if len(args) > 2 else None
            sim.place_card(args[0], sak=sak, atqa=atqa)
            out(f"card placed: {_status(sim)}")
        elif cmd == "remove":
            sim.remove_card()
            out("card removed")
        elif cmd in ("hang", "unhang", "garble", "ungarble", "unplug", "replug"):
            action: Callable[[], None] = getattr(sim, cmd)
            action()
            out(f"{cmd}: done")
        elif cmd == "status":
            out(_status(sim))
        elif cmd == "help":
            out(_HELP)
        else:
            out(f"unknown command {cmd!r}; try 'help'")
    except ValueError as err:
        out(f"error: {err}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``station-agent pn532-sim``: run a simulated PN532 controlled from stdin."""
    ap = argparse.ArgumentParser(prog="station-agent pn532-sim", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", help="directory for the COM<n> symlink (default: a temporary one)")
    ap.add_argument("--name", default="COM0", help="symlink name, COM<n> (default: COM0)")
    ap.add_argument("--card", help="UID (hex) of a card to place right away")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    args = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        sim = SimulatedPN532(args.dir, args.name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with sim:
        if args.card:
            sim.place_card(args.card)
        print(f"PN532 simulator running on {sim.pty_path}", flush=True)
        print(f"  station-agent config:  path = {sim.device_path!r}", flush=True)
        print(f"  nfcpy tools (cwd {sim.directory}):  {sim.nfcpy_path}", flush=True)
        print(_HELP, flush=True)

        def out(text: str) -> None:
            print(text, flush=True)

        for line in sys.stdin:
            if not _execute(sim, line, out):
                break
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
