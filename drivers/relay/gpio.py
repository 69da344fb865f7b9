"""A contactor driven by a GPIO output line (libgpiod v2), with an optional feedback input line.

The output line is requested lazily (on the first ``open()``/``close()``) with
``output_value=INACTIVE``, so requesting it never closes the contactor; ``shutdown()`` drives it
inactive and releases it. The wiring must make an inactive or released line mean *open* (see
``hardware/WIRING-raspberry-pi-4.md``).
"""

from __future__ import annotations

from drivers.clock import Clock
from drivers.errors import DriverError
from drivers.gpio_lines import Bias, GpiodLineFactory, GpioLine, LineFactory
from drivers.relay.feedback import DEFAULT_FEEDBACK_TIMEOUT_MS, FeedbackRelay, Sleep


class GpioRelay(FeedbackRelay):
    def __init__(
        self,
        chip: str,
        line: int,
        *,
        active_low: bool = False,
        feedback_chip: str | None = None,
        feedback_line: int | None = None,
        feedback_active_low: bool = False,
        feedback_bias: Bias = "as_is",
        feedback_timeout_ms: float = DEFAULT_FEEDBACK_TIMEOUT_MS,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        line_factory: LineFactory | None = None,
    ) -> None:
        super().__init__(feedback_timeout_ms=feedback_timeout_ms, clock=clock, sleep=sleep)
        if line < 0 or (feedback_line is not None and feedback_line < 0):
            raise ValueError("GPIO line offsets must not be negative")
        self._chip = chip
        self._line = line
        self._active_low = active_low
        self._fb_chip = feedback_chip or chip
        self._fb_line = feedback_line
        self._fb_active_low = feedback_active_low
        self._fb_bias: Bias = feedback_bias
        self._factory: LineFactory = line_factory or GpiodLineFactory()
        self._out: GpioLine | None = None
        self._in: GpioLine | None = None

    @property
    def simulated(self) -> bool:
        return False

    def describe(self) -> str:
        text = f"GPIO relay {self._chip} line {self._line}"
        if self._active_low:
            text += " (active low)"
        if self._fb_line is not None:
            text += f", feedback {self._fb_chip} line {self._fb_line}"
        return text

    def _output(self) -> GpioLine:
        if self._out is None:
            self._out = self._factory.output(self._chip, self._line, active_low=self._active_low)
        return self._out

    def _input(self) -> GpioLine | None:
        if self._fb_line is None:
            return None
        if self._in is None:
            self._in = self._factory.input(
                self._fb_chip, self._fb_line, active_low=self._fb_active_low, bias=self._fb_bias
            )
        return self._in

    def _drive(self, closed: bool) -> None:
        line = self._output()
        try:
            line.set_value(closed)
        except OSError as err:
            raise DriverError(f"{self.describe()}: cannot set the line: {err}") from err

    def _read_feedback(self) -> bool | None:
        line = self._input()
        if line is None:
            return None
        try:
            return line.get_value()
        except OSError as err:
            raise DriverError(f"{self.describe()}: cannot read the feedback line: {err}") from err

    def _release(self) -> None:
        errors: list[str] = []
        for line in (self._out, self._in):
            if line is None:
                continue
            try:
                line.release()
            except OSError as err:
                errors.append(str(err))
        self._out = None
        self._in = None
        if errors:
            raise DriverError(f"{self.describe()}: releasing lines failed: {'; '.join(errors)}")
