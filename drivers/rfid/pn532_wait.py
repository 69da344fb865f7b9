"""Waiting detection for the PN532: a pending InListPassiveTarget that the card itself answers.

With RFConfiguration item 5 (MxRtyPassiveActivation) at 0xFF the chip retries the 106A
activation inside itself until a card answers, so an InListPassiveTarget sent with no card in
the field stays unanswered: the host sleeps in ``select()`` until the answer frame arrives. An
ACK frame from the host aborts the pending command (no answer follows). :class:`WaitDetector`
builds the reader's detection on that:

* **armed** - RF field off (RFConfiguration item 1, which resets any card to IDLE), then
  ``InListPassiveTarget(MaxTg 1, 106A)``; the host waits for the answer.
* **liveness** - after ``liveness_s`` without a card: ACK (abort), GetFirmwareVersion (the chip
  must answer ``D5 03 32 ...`` within 100 ms) and re-arm. A hung chip is noticed here; an
  unplugged USB adapter at once (the tty reports a hang-up while the host waits).
* **card present** - an answer is a card. While it lies on the reader the detector re-arms every
  ``presence_interval_s``; a card in the field answers within milliseconds, so an arm that stays
  unanswered for ``presence_timeout_s`` means the card has left - and that arm simply stays
  pending as the wait for the next card.

Why the project's own frame codec and not nfcpy's lower layers: nfcpy's
``Chipset.command()`` reads the answer with blocking pyserial reads and cannot be woken by
anything but its own time-out, so the thread could neither stop promptly nor wait for "a card
or the liveness deadline" without slicing the wait into short reads (which is polling again).
On a time-out it writes the abort ACK and then, on the *next* command, flushes the input
buffer: a card answer that crossed the ACK on the wire is thrown away, or, when it arrives
after the flush, read in place of the next command's ACK and turned into ``EIO`` and a reopen.
The codec in :mod:`drivers.rfid.pn532_frames` (tested byte-exact against nfcpy) lets this module
``select()`` on the serial fd and a wake pipe together, take a crossing card answer as the card
it is, and check every frame it reads. Opening (wake-up, baud switch, line test, analogue RF
settings) and closing (baud back, PowerDown) stay with nfcpy in both modes, on the same
pyserial port.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.errors import DriverError
from drivers.rfid.pn532_frames import (
    ACK,
    CMD_GET_FIRMWARE_VERSION,
    CMD_IN_LIST_PASSIVE_TARGET,
    CMD_RF_CONFIGURATION,
    COMMAND_NAMES,
    TFI_PN532_TO_HOST,
    Frame,
    FrameError,
    FrameKind,
    FrameParser,
    encode_command,
)

logger = logging.getLogger(__name__)

RF_CFG_FIELD = 0x01
RF_FIELD_OFF_AUTO_ON = 0x02  # RF off; the chip switches it on for the next activation
RF_CFG_MAX_RETRIES = 0x05
#: MxRtyATR and MxRtyPSL as nfcpy sets them; MxRtyPassiveActivation 0xFF: retry forever.
MAX_RETRIES_WAIT = bytes([RF_CFG_MAX_RETRIES, 0x01, 0x00, 0xFF])
ARM_106A = bytes([0x01, 0x00])  # MaxTg 1, BrTy 0 (106 kbps type A)
PN532_IC = 0x32

ACK_TIMEOUT_S = 0.1  # the chip ACKs within 15 ms; nfcpy allows 100 ms
RESPONSE_TIMEOUT_S = 0.1
ABORT_SETTLE_S = 0.01  # nfcpy gives the chip 10 ms after an abort ACK as well


class LinkError(DriverError):
    """The chip did not answer as it must: nothing in time, a corrupt or unexpected frame."""


@dataclass(frozen=True)
class Seen:
    """A card the chip activated: UID (upper-case hex, as read) and SAK."""

    uid: str
    sak: int


@dataclass(frozen=True)
class Observation:
    """What one detection step established: a card in the field, or an empty field.

    ``left_at`` (injected clock) is when the arm that found the field empty was sent - the
    earliest the card can have left - or None when the field was empty before.
    """

    seen: Seen | None
    left_at: float | None = None


class WaitingLink:
    """PN532 command channel on an open pyserial port; ``wake_fd`` interrupts a wait."""

    def __init__(self, port: Any, wake_fd: int) -> None:
        self._port = port
        self._fd: int = port.fileno()
        self._wake_fd = wake_fd
        self._parser = FrameParser()
        self._late: Seen | None = None  # a card answer that crossed an abort ACK
        self.armed = False
        self.armed_at = 0.0  # time.monotonic() when the chip ACKed the last arm

    def configure(self) -> None:
        """MxRtyPassiveActivation = 0xFF: InListPassiveTarget waits for a card."""
        self.command(CMD_RF_CONFIGURATION, MAX_RETRIES_WAIT)

    def arm(self) -> None:
        """RF off, then InListPassiveTarget; returns once the chip has ACKed it."""
        self.command(CMD_RF_CONFIGURATION, bytes([RF_CFG_FIELD, RF_FIELD_OFF_AUTO_ON]))
        self._write(encode_command(CMD_IN_LIST_PASSIVE_TARGET, ARM_106A))
        self._expect_ack(CMD_IN_LIST_PASSIVE_TARGET)
        self.armed, self.armed_at = True, time.monotonic()

    def wait(self, timeout_s: float) -> Seen | None:
        """The card answering the armed command within ``timeout_s``; None on time-out or wake."""
        if self._late is not None:
            late, self._late = self._late, None
            self.armed = False
            return late
        frame = self._read_frame(time.monotonic() + timeout_s, wakeable=True)
        if frame is None:
            return None
        self.armed = False
        return self._card(frame)

    def abort(self) -> None:
        """ACK: the pending command ends without an answer (a card answer may still cross)."""
        self._write(ACK)
        self.armed = False
        time.sleep(ABORT_SETTLE_S)  # the chip's turnaround, as nfcpy allows it

    def check(self) -> str:
        """GetFirmwareVersion; return e.g. ``PN532 v1.6``, raise :class:`LinkError` if wrong."""
        data = self.command(CMD_GET_FIRMWARE_VERSION, b"")
        if len(data) < 3 or data[0] != PN532_IC:
            raise LinkError(f"GetFirmwareVersion answered {data.hex()}, not a PN532")
        return f"PN5{data[0]:02x} v{data[1]}.{data[2]}"

    def take_late(self) -> Seen | None:
        """A card answer that arrived after its command was aborted (then cleared)."""
        late, self._late = self._late, None
        return late

    def command(self, code: int, data: bytes) -> bytes:
        """Send one command; return the answer's data (after the response code)."""
        self._write(encode_command(code, data))
        self._expect_ack(code)
        frame = self._expect(code, time.monotonic() + RESPONSE_TIMEOUT_S, "answer")
        return frame.data

    # ------------------------------------------------------------------ frames

    def _expect_ack(self, code: int) -> None:
        self._expect(code, time.monotonic() + ACK_TIMEOUT_S, "ACK")

    def _expect(self, code: int, deadline: float, what: str) -> Frame:
        name = COMMAND_NAMES.get(code, f"0x{code:02X}")
        while True:
            frame = self._read_frame(deadline, wakeable=False)
            if frame is None:
                ms = round((ACK_TIMEOUT_S if what == "ACK" else RESPONSE_TIMEOUT_S) * 1000)
                raise LinkError(f"no {what} to {name} within {ms} ms (timed out)")
            if frame.kind is FrameKind.ACK:
                if what == "ACK":
                    return frame
                continue  # a stray ACK does no harm
            if frame.kind is FrameKind.NACK or frame.is_error:
                kind = "a NACK" if frame.kind is FrameKind.NACK else "an error frame"
                raise LinkError(f"{name} answered with {kind}")
            if frame.code == CMD_IN_LIST_PASSIVE_TARGET + 1 and code != CMD_IN_LIST_PASSIVE_TARGET:
                self._late = self._card(frame)  # crossed the abort ACK: still a card
                continue
            if what == "answer" and frame.tfi == TFI_PN532_TO_HOST and frame.code == code + 1:
                return frame
            raise LinkError(f"unexpected frame {frame.body.hex()} awaiting {name}'s {what}")

    def _card(self, frame: Frame) -> Seen:
        if frame.tfi != TFI_PN532_TO_HOST or frame.code != CMD_IN_LIST_PASSIVE_TARGET + 1:
            raise LinkError(f"unexpected frame {frame.body.hex()} while armed")
        data = frame.data
        if not data or data[0] == 0:  # "no target": this chip gave up instead of waiting
            raise LinkError(
                "InListPassiveTarget answered without a card although MxRtyPassiveActivation "
                "is 0xFF: this reader does not wait; configure rfid.mode = 'poll'"
            )
        if len(data) < 6 or len(data) < 6 + data[5]:
            raise LinkError(f"short InListPassiveTarget answer {data.hex()}")
        return Seen(uid=data[6 : 6 + data[5]].hex().upper(), sak=data[4])

    def _read_frame(self, deadline: float, *, wakeable: bool) -> Frame | None:
        """The next frame before ``deadline``; None on time-out (or a wake, if ``wakeable``)."""
        fds = [self._fd, self._wake_fd] if wakeable else [self._fd]
        while True:
            try:
                frame = self._parser.next_frame()
            except FrameError as err:
                raise LinkError(f"corrupt frame from the chip: {err}") from err
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select(fds, [], [], left)
            if self._wake_fd in readable and wakeable:
                return None
            if self._fd in readable:
                self._parser.feed(self._read_some())

    def _read_some(self) -> bytes:
        try:
            chunk = os.read(self._fd, 512)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return b""
            raise
        if not chunk:
            raise OSError(errno.EIO, "the serial device hung up (unplugged?)")
        return chunk

    def _write(self, frame: bytes) -> None:
        self._port.write(frame)


class WaitDetector:
    """The waiting detection cycle on a :class:`WaitingLink`; one :meth:`step` per observation."""

    def __init__(
        self,
        link: WaitingLink,
        *,
        liveness_s: float,
        presence_interval_s: float,
        presence_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._link = link
        self._liveness = liveness_s
        self._interval = presence_interval_s
        self._presence_timeout = presence_timeout_s
        self._clock = clock
        self._present = False
        self._opened_at: float | None = None  # until the first arm after opening is judged
        self.checks = 0  # liveness checks passed

    def start(self) -> None:
        """Configure the retries and arm (errors propagate: the reader is not usable)."""
        self._link.configure()
        self._opened_at = self._clock()
        self._link.arm()

    def step(self, stop: threading.Event) -> Observation | None:
        """Block until something is known; None when ``stop`` was set meanwhile."""
        if self._present:
            return self._presence(stop)
        if self._opened_at is not None:  # (re)opened: is the card seen before still there?
            return self._first(stop, self._opened_at)
        # the chip is checked liveness_s after the arm (not after a presence time-out)
        seen = self._link.wait(self._link.armed_at + self._liveness - time.monotonic())
        if stop.is_set():
            return None
        if seen is None:
            self._link.abort()
            self._link.check()
            self.checks += 1
            seen = self._link.take_late()
            if seen is None:
                self._link.arm()
                return Observation(None)
        self._present = True
        return Observation(seen)

    def _first(self, stop: threading.Event, opened_at: float) -> Observation | None:
        self._opened_at = None
        seen = self._link.wait(self._presence_timeout)
        if stop.is_set():
            return None
        if seen is None:  # an empty field, reported as such: a card lying there before left
            return Observation(None, left_at=opened_at)
        self._present = True
        return Observation(seen)

    def _presence(self, stop: threading.Event) -> Observation | None:
        if stop.wait(self._interval):
            return None
        at = self._clock()
        self._link.arm()
        seen = self._link.wait(self._presence_timeout)
        if stop.is_set():
            return None
        if seen is not None:
            return Observation(seen)
        self._present = False  # the arm stays pending: it is the wait for the next card
        return Observation(None, left_at=at)

    def close(self) -> None:
        """Abort a pending wait so that nfcpy's close finds an idle chip."""
        if self._link.armed:
            self._link.abort()
