"""Plug (vehicle connected) sensor on a GPIO input line, debounced by polling.

A poll thread samples the line every ``poll_interval_ms``; a new level is accepted once it has
been seen unchanged for ``debounce_ms`` (by the injected clock), and ``on_change(plugged)`` is
called for every accepted change. ``start()`` takes the current level as the initial state
without calling back: read :meth:`GpioPlug.is_plugged` after starting.

Tests can pass ``threaded=False`` and drive :meth:`GpioPlug.poll_once` with a fake clock.
"""

from __future__ import annotations

import logging
import threading

from drivers.clock import Clock, SystemClock
from drivers.errors import DriverError
from drivers.gpio_lines import Bias, GpiodLineFactory, GpioLine, LineFactory
from drivers.health import Health
from drivers.plug.base import PlugCallback

log = logging.getLogger(__name__)

_EPSILON_S = 1e-9  # sums of float poll intervals may fall a hair short of debounce_s


class Debouncer:
    """Accepts a new level once it has been stable for ``debounce_s`` seconds."""

    def __init__(self, initial: bool, debounce_s: float) -> None:
        self.stable = initial
        self._debounce_s = max(debounce_s, 0.0)
        self._candidate_since: float | None = None

    def update(self, raw: bool, now: float) -> bool | None:
        """Feed one sample; returns the new stable level when it changes, else None."""
        if raw == self.stable:
            self._candidate_since = None
            return None
        if self._candidate_since is None:
            self._candidate_since = now
        if now - self._candidate_since >= self._debounce_s - _EPSILON_S:
            self.stable = raw
            self._candidate_since = None
            return raw
        return None


class GpioPlug:
    """Implements :class:`drivers.plug.base.PlugSensor`."""

    def __init__(
        self,
        chip: str,
        line: int,
        *,
        active_low: bool = False,
        bias: Bias = "as_is",
        debounce_ms: float = 50.0,
        poll_interval_ms: float = 10.0,
        clock: Clock | None = None,
        line_factory: LineFactory | None = None,
        threaded: bool = True,
    ) -> None:
        if line < 0 or debounce_ms < 0 or poll_interval_ms <= 0:
            raise ValueError("line and debounce_ms must be >= 0, poll_interval_ms > 0")
        self._chip = chip
        self._line_offset = line
        self._active_low = active_low
        self._bias: Bias = bias
        self._debounce_s = debounce_ms / 1000.0
        self._poll_s = poll_interval_ms / 1000.0
        self._clock: Clock = clock or SystemClock()
        self._factory: LineFactory = line_factory or GpiodLineFactory()
        self._threaded = threaded
        self._lock = threading.Lock()
        self._line: GpioLine | None = None
        self._debouncer: Debouncer | None = None
        self._callback: PlugCallback | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._read_errors = 0
        self._last_error: str | None = None

    def describe(self) -> str:
        return f"GPIO plug sensor {self._chip} line {self._line_offset}"

    def start(self, on_change: PlugCallback) -> None:
        with self._lock:
            if self._line is not None:
                raise DriverError(f"{self.describe()}: already started")
            try:
                line = self._factory.input(
                    self._chip, self._line_offset, active_low=self._active_low, bias=self._bias
                )
            except DriverError as err:
                self._last_error = str(err)
                raise
            try:
                initial = line.get_value()
            except OSError as err:
                line.release()
                self._last_error = f"{self.describe()}: cannot read the line: {err}"
                raise DriverError(self._last_error) from err
            self._line = line
            self._debouncer = Debouncer(initial, self._debounce_s)
            self._callback = on_change
            self._last_error = None
            self._stop.clear()
            if self._threaded:
                self._thread = threading.Thread(
                    target=self._run, name=f"plug-gpio-{self._line_offset}", daemon=True
                )
                self._thread.start()

    def poll_once(self) -> bool | None:
        """Sample the line once; returns (and reports) the new level on a debounced change."""
        with self._lock:
            line, debouncer = self._line, self._debouncer
            if line is None or debouncer is None:
                return None
            try:
                raw = line.get_value()
            except OSError as err:
                self._read_errors += 1
                if self._last_error is None:
                    log.error("%s: cannot read the line: %s", self.describe(), err)
                self._last_error = f"{self.describe()}: cannot read the line: {err}"
                return None
            if self._last_error is not None:
                log.warning("%s: line readable again", self.describe())
                self._last_error = None
            changed = debouncer.update(raw, self._clock.monotonic())
            callback = self._callback
        if changed is not None and callback is not None:
            try:
                callback(changed)
            except Exception:
                log.exception("%s: plug callback failed", self.describe())
        return changed

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.poll_once()

    def is_plugged(self) -> bool:
        with self._lock:
            return self._debouncer.stable if self._debouncer is not None else False

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._lock:
            line, self._line = self._line, None
            self._callback = None
            if line is not None:
                try:
                    line.release()
                except OSError as err:
                    log.warning("%s: release failed: %s", self.describe(), err)

    @property
    def simulated(self) -> bool:
        return False

    def health(self) -> Health:
        with self._lock:
            if self._last_error is not None:
                return Health(ok=False, fault="plug_unavailable", detail=self._last_error)
            return Health.healthy()
