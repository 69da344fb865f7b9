"""A small GPIO line interface shared by the relay and plug drivers, plus its libgpiod v2 adapter.

Drivers talk to :class:`GpioLine` objects obtained from a :class:`LineFactory`; tests pass a fake
factory, production uses :class:`GpiodLineFactory`, which imports ``gpiod`` only when a line is
actually requested (the agent runs without the package where no GPIO driver is configured).

Values are *logical*: ``True`` means active. Active-low wiring is handled by the kernel through
``LineSettings.active_low``, so drivers never invert values themselves.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from drivers.errors import DriverError

CONSUMER = "station-agent"

Bias = Literal["as_is", "disabled", "pull_up", "pull_down"]


class GpioLine(Protocol):
    def set_value(self, value: bool) -> None:
        """Drive an output line (logical value)."""
        ...

    def get_value(self) -> bool:
        """The logical value of the line."""
        ...

    def release(self) -> None:
        """Give the line back to the kernel. Idempotent."""
        ...


class LineFactory(Protocol):
    def output(self, chip_path: str, offset: int, *, active_low: bool) -> GpioLine:
        """Request ``offset`` as an output, initially inactive."""
        ...

    def input(self, chip_path: str, offset: int, *, active_low: bool, bias: Bias) -> GpioLine:
        """Request ``offset`` as an input."""
        ...


class GpiodLine:
    """One requested line of a ``gpiod.LineRequest``."""

    def __init__(self, request: Any, offset: int, value_type: Any) -> None:
        self._request = request
        self._offset = offset
        self._value = value_type  # gpiod.line.Value
        self._released = False

    def set_value(self, value: bool) -> None:
        self._request.set_value(self._offset, self._value.ACTIVE if value else self._value.INACTIVE)

    def get_value(self) -> bool:
        return bool(self._request.get_value(self._offset) == self._value.ACTIVE)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._request.release()


def _import_gpiod() -> Any:
    try:
        import gpiod
    except ImportError as err:
        raise DriverError(
            "the gpiod package (libgpiod v2 bindings) is not installed; "
            "install station-agent[power]"
        ) from err
    return gpiod


class GpiodLineFactory:
    """Requests lines through ``gpiod.request_lines`` (one request per line)."""

    def __init__(self, consumer: str = CONSUMER) -> None:
        self._consumer = consumer

    def output(self, chip_path: str, offset: int, *, active_low: bool) -> GpioLine:
        gpiod = _import_gpiod()
        settings = gpiod.LineSettings(
            direction=gpiod.line.Direction.OUTPUT,
            active_low=active_low,
            output_value=gpiod.line.Value.INACTIVE,
        )
        return self._request(gpiod, chip_path, offset, settings, "output")

    def input(self, chip_path: str, offset: int, *, active_low: bool, bias: Bias) -> GpioLine:
        gpiod = _import_gpiod()
        biases = {
            "as_is": gpiod.line.Bias.AS_IS,
            "disabled": gpiod.line.Bias.DISABLED,
            "pull_up": gpiod.line.Bias.PULL_UP,
            "pull_down": gpiod.line.Bias.PULL_DOWN,
        }
        if bias not in biases:
            raise DriverError(f"unknown GPIO bias {bias!r} (use one of {sorted(biases)})")
        settings = gpiod.LineSettings(
            direction=gpiod.line.Direction.INPUT,
            active_low=active_low,
            bias=biases[bias],
        )
        return self._request(gpiod, chip_path, offset, settings, "input")

    def _request(
        self, gpiod: Any, chip_path: str, offset: int, settings: Any, kind: str
    ) -> GpioLine:
        try:
            request = gpiod.request_lines(
                chip_path, consumer=self._consumer, config={offset: settings}
            )
        except (OSError, ValueError) as err:
            raise DriverError(
                f"cannot request GPIO line {offset} on {chip_path} as {kind}: {err} "
                "(check that the chip exists, the line is not used by another program or "
                "device-tree overlay, and the agent's user may open the chip)"
            ) from err
        return GpiodLine(request, offset, gpiod.line.Value)
