"""USB/serial relay boards switched by short byte commands (pyserial).

The common "LCUS" CH340 boards take four bytes ``A0 <channel> <state> <sum>`` with
``sum = (0xA0 + channel + state) & 0xFF``, e.g. ``A0 01 01 A2`` closes channel 1 and
``A0 01 00 A1`` opens it. Commands are templates of hex bytes with two placeholders:

* ``{ch}``  - the channel number (one byte);
* ``{sum}`` - the sum of every other byte of the command, modulo 256.

Boards of another family take their own templates (e.g. ``"FF {ch} 01"``) or fixed hex strings.
These boards have no read-back; a feedback contact can be supplied as a callable (for example a
GPIO input line's ``get_value``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

from drivers.clock import Clock
from drivers.errors import ConfigError, DriverError
from drivers.relay.feedback import DEFAULT_FEEDBACK_TIMEOUT_MS, FeedbackRelay, Sleep

LCUS_CLOSE = "A0 {ch} 01 {sum}"
LCUS_OPEN = "A0 {ch} 00 {sum}"

_TOKEN = re.compile(r"\s*(\{ch\}|\{sum\}|[0-9A-Fa-f]{2})")


def build_command(template: str, channel: int) -> bytes:
    """Render a command template (see the module doc) for ``channel``."""
    if not 0 <= channel <= 0xFF:
        raise ConfigError(f"relay channel {channel} does not fit in one byte")
    tokens: list[str] = []
    pos = 0
    text = template.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(
                f"relay command template {template!r}: cannot parse at {text[pos:]!r} "
                "(use two-digit hex bytes, {ch} and {sum})"
            )
        tokens.append(match.group(1))
        pos = match.end()
    if not tokens:
        raise ConfigError("relay command template is empty")
    if tokens.count("{sum}") > 1:
        raise ConfigError(f"relay command template {template!r} has more than one {{sum}}")
    values = [channel if t == "{ch}" else 0 if t == "{sum}" else int(t, 16) for t in tokens]
    checksum = sum(values) & 0xFF
    return bytes(checksum if t == "{sum}" else v for t, v in zip(tokens, values, strict=True))


class SerialRelay(FeedbackRelay):
    def __init__(
        self,
        port: str,
        *,
        channel: int = 1,
        baudrate: int = 9600,
        close_command: str = LCUS_CLOSE,
        open_command: str = LCUS_OPEN,
        write_timeout_s: float = 1.0,
        feedback: Callable[[], bool] | None = None,
        feedback_timeout_ms: float = DEFAULT_FEEDBACK_TIMEOUT_MS,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        super().__init__(feedback_timeout_ms=feedback_timeout_ms, clock=clock, sleep=sleep)
        self._port = port
        self._channel = channel
        self._baudrate = baudrate
        self._write_timeout_s = write_timeout_s
        self._feedback = feedback
        # Rendered (and validated) now so a bad template fails at start-up, not at first use.
        self.close_bytes = build_command(close_command, channel)
        self.open_bytes = build_command(open_command, channel)
        self._serial: Any = None

    @property
    def simulated(self) -> bool:
        return False

    def describe(self) -> str:
        return f"serial relay {self._port} channel {self._channel}"

    def _ensure_open(self) -> Any:
        if self._serial is None:
            try:
                import serial
            except ImportError as err:
                raise DriverError(
                    "pyserial is not installed; install station-agent[power]"
                ) from err
            try:
                self._serial = serial.Serial(
                    self._port,
                    baudrate=self._baudrate,
                    timeout=0.1,
                    write_timeout=self._write_timeout_s,
                )
            except (OSError, ValueError) as err:
                raise DriverError(
                    f"{self.describe()}: cannot open {self._port}: {err} (check the USB cable, "
                    "the udev symlink and that the agent's user may open the port)"
                ) from err
        return self._serial

    def _drive(self, closed: bool) -> None:
        port = self._ensure_open()
        data = self.close_bytes if closed else self.open_bytes
        try:
            written = port.write(data)
            port.flush()
        except OSError as err:  # serial.SerialException and SerialTimeoutException are OSErrors
            self._drop_port()
            raise DriverError(f"{self.describe()}: write failed: {err}") from err
        if written != len(data):
            self._drop_port()
            raise DriverError(f"{self.describe()}: short write ({written} of {len(data)} bytes)")

    def _read_feedback(self) -> bool | None:
        if self._feedback is None:
            return None
        try:
            return bool(self._feedback())
        except OSError as err:
            raise DriverError(f"{self.describe()}: cannot read the feedback: {err}") from err

    def _release(self) -> None:
        self._drop_port()

    def _drop_port(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(OSError):
                port.close()
