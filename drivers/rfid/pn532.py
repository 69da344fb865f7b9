"""PN532 RFID reader on a serial line (HSU/UART), through nfcpy's PN532 driver and pyserial.

Two detection modes (``mode``):

* ``"wait"`` (the default): the chip waits for the card - a pending InListPassiveTarget with
  MxRtyPassiveActivation 0xFF that the card itself answers, aborted with an ACK every
  ``liveness_s`` for a GetFirmwareVersion check and re-armed; while a card lies on the reader
  it is re-checked every ``poll_interval_s``. See :mod:`drivers.rfid.pn532_wait` (and why it
  speaks the project's own frame codec there).
* ``"poll"``: one short ``sense(RemoteTarget("106A"), iterations=1)`` every
  ``poll_interval_s`` (not ``connect()``'s 5 x 0.5 s loop), for readers or USB-serial bridges
  where the wait misbehaves.

A reader thread reports each new card once through the callback and heals itself: any
failure of the reader (no answer, garbage, the tty vanishing) closes it and reopens it with
exponential back-off (``open_backoff_initial_s`` doubling to ``open_backoff_max_s``) while
:meth:`Pn532Reader.health` reports ``reader_unavailable``. Only :meth:`Pn532Reader.stop` ends
the thread. When the chip does not answer at 115200 baud, the driver also tries to switch it
back from the high speed nfcpy leaves it at when a process dies or a close fails (otherwise
only a power cycle helps).

``path`` is either a filesystem path of the serial device (``/dev/ttyUSB0``,
``/dev/serial/by-id/usb-...``, a pty symlink from :mod:`drivers.rfid.pn532_sim`) or an nfcpy
device string (``tty:USB0:pn532``, ``tty:AMA0``, ``com:COM3:pn532``). Both are opened the same
way nfcpy's ``ContactlessFrontend.open()`` opens a tty - ``nfc.clf.transport.TTY(device)`` and
``nfc.clf.pn532.init()`` - in both modes; the poll mode then senses through a real
``ContactlessFrontend`` (opening, closing and the baud-rate rescue are in
:mod:`drivers.rfid.pn532_tty`).

Debounce (times from the injected clock): a card that stays on the reader is reported once; the
same UID coming back within ``debounce_s`` after it left is ignored; a different card is
reported at once. A card lying on the reader through a reader outage is not reported again.

nfcpy is imported lazily (in :meth:`Pn532Reader.start`), so this module imports without it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from drivers.clock import Clock, SystemClock
from drivers.errors import DriverError
from drivers.health import Health
from drivers.privacy import mask
from drivers.rfid.base import CardCallback, CardRead, CardType
from drivers.rfid.pn532_tty import (
    Nfc,
    check_path,
    close_frontend,
    describe_error,
    import_nfc,
    open_frontend,
)
from drivers.rfid.pn532_wait import Observation, Seen, WaitDetector, WaitingLink
from drivers.rfid.waiters import CardWaiters

logger = logging.getLogger(__name__)

FAULT_UNAVAILABLE = "reader_unavailable"
FAULT_STOPPED = "reader_stopped"

_MIFARE_CLASSIC_SAKS = frozenset({0x08, 0x18, 0x09, 0x88})
_PPS_WINDOW_S = 5.0
_JOIN_TIMEOUT_S = 5.0
MODES = ("wait", "poll")
#: Wait mode: an arm a card in the field would answer within milliseconds; silence this long
#: while a card was present means it has left.
PRESENCE_TIMEOUT_S = 0.1


def card_type_from_sak(sak: int) -> CardType:
    """Map an ISO 14443-3 SAK (SEL_RES) to the card family the station cares about."""
    if sak in _MIFARE_CLASSIC_SAKS:
        return CardType.MIFARE_CLASSIC
    if sak == 0x00:
        return CardType.ULTRALIGHT
    if sak & 0x20:
        return CardType.ISO_DEP
    return CardType.UNKNOWN


class Pn532Reader:
    """PN532 on a serial port; implements :class:`drivers.rfid.base.RfidReader`."""

    def __init__(  # noqa: PLR0917 - the positional signature is the configured contract
        self,
        path: str,
        poll_interval_s: float = 0.1,
        debounce_s: float = 2.0,
        clock: Clock | None = None,
        open_backoff_initial_s: float = 0.5,
        open_backoff_max_s: float = 30.0,
        mode: str = "wait",
        liveness_s: float = 2.0,
    ) -> None:
        if not path:
            raise ValueError("path must not be empty")
        if mode not in MODES or liveness_s <= 0:
            raise ValueError(f"mode must be one of {MODES} and liveness_s positive")
        if poll_interval_s <= 0 or open_backoff_initial_s <= 0:
            raise ValueError("poll_interval_s and open_backoff_initial_s must be positive")
        if debounce_s < 0 or open_backoff_max_s < open_backoff_initial_s:
            raise ValueError("debounce_s must be >= 0 and open_backoff_max_s >= the initial one")
        self._path = path
        self._poll_interval = poll_interval_s
        self._debounce = debounce_s
        self._clock: Clock = clock or SystemClock()
        self._backoff_initial = open_backoff_initial_s
        self._backoff_max = open_backoff_max_s
        self._mode = mode
        self._liveness = liveness_s
        self._wake_r = self._wake_w = -1  # a pipe that wakes the wait in stop()

        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._on_card: CardCallback = _ignore_card
        self._nfc: Nfc | None = None
        # Owned by the poll thread:
        self._clf: Any = None  # nfc.ContactlessFrontend
        self._transport: Any = None  # nfc.clf.transport.TTY
        self._detector: WaitDetector | None = None  # wait mode, while open
        self._present_uid: str | None = None
        self._left_uid: str | None = None
        self._left_at = 0.0
        self._next_poll = 0.0
        # Shared, guarded by _lock:
        self._health = Health(ok=False, fault=FAULT_STOPPED, detail=f"PN532 at {path}: not started")
        self._connected = False
        self._firmware: str | None = None
        self._last_error: str | None = None
        self._open_seconds: float | None = None
        self._poll_times: deque[float] = deque()
        self._polling_since: float | None = None
        self._waiters = CardWaiters()

    # ------------------------------------------------------------------ RfidReader

    def start(self, on_card: CardCallback) -> None:
        """Start the poll thread (returns at once; the reader is opened in the thread).

        Raises :class:`DriverError` if nfcpy/pyserial are missing or ``path`` is not a path
        this driver can open.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise DriverError(f"PN532 reader at {self._path} is already running")
        check_path(self._path)
        self._nfc = import_nfc()
        self._on_card = on_card
        self._stop_event = threading.Event()
        with self._lock:
            self._health = Health(
                ok=False, fault=FAULT_UNAVAILABLE, detail=f"PN532 at {self._path}: opening"
            )
            self._poll_times.clear()
            self._polling_since = None
        self._wake_r, self._wake_w = os.pipe()
        thread = threading.Thread(
            target=self._run, args=(self._stop_event,), name="pn532-reader", daemon=True
        )
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop polling and close the reader. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stop_event.set()
        os.write(self._wake_w, b"x")  # ends a wait for a card at once
        thread.join(timeout=_JOIN_TIMEOUT_S)
        if thread.is_alive():  # a blocked serial call; the daemon thread ends with it
            logger.error("PN532 poll thread did not stop within %.0f s", _JOIN_TIMEOUT_S)
        else:
            os.close(self._wake_r)
        os.close(self._wake_w)
        self._thread = None
        with self._lock:
            self._connected = False
            self._health = Health(
                ok=False, fault=FAULT_STOPPED, detail=f"PN532 at {self._path}: stopped"
            )

    @property
    def simulated(self) -> bool:
        return False

    def health(self) -> Health:
        with self._lock:
            return self._health

    def info(self) -> dict[str, object]:
        detector = self._detector
        with self._lock:
            info: dict[str, object] = {
                "driver": "pn532",
                "path": self._path,
                "mode": self._mode,
                "firmware": self._firmware,
                "polls_per_second": round(self._polls_per_second(time.monotonic()), 1),
                "last_error": self._last_error,
                "connected": self._connected,
                "open_seconds": self._open_seconds,
                "card_on_reader": self._present_uid is not None,
            }
        if self._mode == "wait":
            info["liveness_s"] = self._liveness
            info["liveness_checks"] = detector.checks if detector is not None else 0
        return info

    # ------------------------------------------------------------------ diagnostics

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def read_once(self, timeout_s: float) -> tuple[CardRead, float] | None:
        """Wait up to ``timeout_s`` for a card in the field; return it and the seconds it took.

        Diagnostic helper (``stationctl rfid read``): it sees every card the poll loop senses,
        including a card already lying on the reader or one the debounce would suppress, and
        it does not consume or alter the ``on_card`` events. If the reader is not running it is
        started (with no callback) for the duration of the call.
        """
        started_here = False
        if not self.running:
            self.start(_ignore_card)
            started_here = True
        try:
            return self._waiters.wait(timeout_s)
        finally:
            if started_here:
                self.stop()

    # ------------------------------------------------------------------ the poll thread

    def _run(self, stop: threading.Event) -> None:
        nfc = self._nfc
        assert nfc is not None
        failures = 0
        self._next_poll = time.monotonic()
        try:
            while not stop.is_set():
                during = "open" if self._clf is None else self._mode
                try:
                    if self._clf is None:
                        if failures and stop.wait(self._backoff(failures)):
                            break
                        self._open(nfc)
                        self._opened(failures)
                    seen = self._step(nfc, stop)
                except Exception as err:
                    if not isinstance(err, (*nfc.expected, DriverError)):
                        logger.exception("unexpected error (%s) on PN532 at %s", during, self._path)
                    failures += 1
                    self._failed(err, failures, during=during)
                    self._close()
                    continue
                failures = 0
                if seen is None:
                    continue  # stopped
                try:
                    self._polled(seen)
                except Exception:  # a bug in the debounce/reporting must not end polling
                    logger.exception("error handling a poll result from %s", self._path)
        finally:
            self._close()
            logger.info("PN532 reader thread for %s stopped", self._path)

    def _step(self, nfc: Nfc, stop: threading.Event) -> Observation | None:
        """One observation of the field (None if stopped meanwhile)."""
        if self._detector is not None:
            return self._detector.step(stop)
        delay = self._next_poll - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return None
        self._next_poll = time.monotonic() + self._poll_interval
        found = self._sense(nfc)
        if found is None:
            return Observation(None, left_at=self._clock.monotonic())
        return Observation(found)

    def _backoff(self, failures: int) -> float:
        exponent = min(failures - 1, 32)  # no float overflow after days of outage
        return min(self._backoff_initial * 2.0**exponent, self._backoff_max)

    def _open(self, nfc: Nfc) -> None:
        opened = open_frontend(nfc, self._path)
        self._clf, self._transport = opened.clf, opened.transport
        with self._lock:
            self._firmware = opened.firmware
            self._open_seconds = opened.seconds
        logger.debug("opened %s (%s) in %.3f s", self._path, opened.firmware, opened.seconds)
        self._next_poll = time.monotonic()
        if self._mode == "wait":
            link = WaitingLink(opened.transport.tty, self._wake_r)
            detector = WaitDetector(
                link,
                liveness_s=self._liveness,
                presence_interval_s=self._poll_interval,
                presence_timeout_s=PRESENCE_TIMEOUT_S,
                clock=self._clock.monotonic,
            )
            detector.start()  # a failure closes the frontend and retries like an open
            self._detector = detector

    def _sense(self, nfc: Nfc) -> Seen | None:
        target = self._clf.sense(nfc.clf.RemoteTarget("106A"), iterations=1, interval=0.0)
        if target is None:
            return None
        sdd_res, sel_res = target.sdd_res, target.sel_res
        if sdd_res is None or sel_res is None:
            logger.debug("ignoring 106A target without UID (Type 1 tag?): %s", target)
            return None
        return Seen(uid=bytes(sdd_res).hex().upper(), sak=int(sel_res[0]))

    def _polled(self, seen: Observation) -> None:
        now = time.monotonic()
        with self._lock:
            self._poll_times.append(now)
            while self._poll_times and self._poll_times[0] < now - _PPS_WINDOW_S:
                self._poll_times.popleft()
            if self._polling_since is None:
                self._polling_since = now
        card_seen = seen.seen
        if card_seen is not None and len(card_seen.uid) not in (8, 14, 20):
            logger.warning(
                "ignoring card with a %d-byte UID %s", len(card_seen.uid) // 2, mask(card_seen.uid)
            )
            card_seen = None
        if card_seen is None:
            if self._present_uid is not None:
                left_at = seen.left_at if seen.left_at is not None else self._clock.monotonic()
                self._left_uid, self._left_at = self._present_uid, left_at
                self._present_uid = None
            return
        self._report(card_seen, now)

    def _report(self, seen: Seen, now: float) -> None:
        uid, sak = seen.uid, seen.sak
        card = CardRead(uid=uid, card_type=card_type_from_sak(sak))
        self._waiters.feed(card, now)
        if uid == self._present_uid:
            return  # still on the reader
        previous, self._present_uid = self._present_uid, uid
        if previous is not None:  # swapped without a gap: the old card left now
            self._left_uid, self._left_at = previous, self._clock.monotonic()
        if uid == self._left_uid and self._clock.monotonic() - self._left_at < self._debounce:
            logger.debug("card %s back within %.1f s, not reported", mask(uid), self._debounce)
            return
        logger.info("card %s (%s, SAK 0x%02X)", mask(uid), card.card_type.value, sak)
        try:
            self._on_card(card)
        except Exception:
            logger.exception("card callback failed for %s", mask(uid))

    def _opened(self, failures: int) -> None:
        with self._lock:
            self._connected = True
            self._health = Health.healthy()
            firmware = self._firmware
        if failures:
            logger.info(
                "PN532 at %s is back (%s) after %d failed attempt(s)",
                self._path,
                firmware,
                failures,
            )
        else:
            logger.info("PN532 at %s opened (%s)", self._path, firmware)

    def _failed(self, err: BaseException, failures: int, during: str) -> None:
        delay = self._backoff(failures)
        text = describe_error(err)
        detail = f"PN532 at {self._path} failed during {during}: {text}; retrying in {delay:g} s"
        with self._lock:
            self._connected = False
            self._last_error = text
            self._health = Health(ok=False, fault=FAULT_UNAVAILABLE, detail=detail)
        if failures == 1:  # first failure of a series; the retries log at debug level
            logger.warning("%s", detail)
        else:
            logger.debug("%s", detail)

    def _close(self) -> None:
        clf, transport, detector = self._clf, self._transport, self._detector
        self._clf = self._transport = self._detector = None
        failures: tuple[type[BaseException], ...] = (
            *(self._nfc.expected if self._nfc else (OSError,)),
            DriverError,
        )
        if detector is not None:
            try:
                detector.close()
            except failures as err:
                logger.debug("aborting the wait on %s: %s", self._path, describe_error(err))
        close_frontend(self._nfc, clf, transport, self._path)
        with self._lock:
            self._connected = False

    # ------------------------------------------------------------------ helpers

    def _polls_per_second(self, now: float) -> float:
        if self._polling_since is None or not self._connected:
            return 0.0
        recent = [t for t in self._poll_times if t >= now - _PPS_WINDOW_S]
        span = min(_PPS_WINDOW_S, now - self._polling_since)
        return len(recent) / span if span > 0 else 0.0


def _ignore_card(_card: CardRead) -> None:
    return None
