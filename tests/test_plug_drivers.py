"""Plug sensors: the debouncer, GpioPlug on a fake line (fake clock and a real poll thread), the
libgpiod adapter at its boundary, and the simulated plug."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.errors import DriverError
from drivers.plug.gpio import Debouncer, GpioPlug
from drivers.plug.sim import SimPlug


@dataclass
class FakeInput:
    value: bool = False
    error: OSError | None = None
    released: bool = False
    reads: int = 0

    def set_value(self, value: bool) -> None:
        raise AssertionError("a plug sensor never drives its line")

    def get_value(self) -> bool:
        assert not self.released
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.value

    def release(self) -> None:
        self.released = True


@dataclass
class FakeFactory:
    line: FakeInput = field(default_factory=FakeInput)
    requests: list[tuple[str, int, bool, str]] = field(default_factory=list)
    fail: bool = False

    def output(self, chip_path: str, offset: int, *, active_low: bool) -> FakeInput:
        raise AssertionError("a plug sensor never requests an output")

    def input(self, chip_path: str, offset: int, *, active_low: bool, bias: str) -> FakeInput:
        if self.fail:
            raise DriverError(f"cannot request GPIO line {offset} on {chip_path}")
        self.requests.append((chip_path, offset, active_low, bias))
        return self.line


# --------------------------------------------------------------------------- Debouncer


def test_debouncer_needs_a_stable_level() -> None:
    d = Debouncer(False, 0.05)
    assert d.update(True, 0.000) is None
    assert d.update(False, 0.020) is None  # bounce: back to the stable level
    assert d.update(True, 0.030) is None  # a new candidate starts at 30 ms
    assert d.update(True, 0.079) is None
    assert d.update(True, 0.080) is True
    assert d.stable is True
    assert d.update(True, 0.500) is None  # no change, no report
    assert d.update(False, 0.600) is None
    assert d.update(False, 0.650) is False
    assert Debouncer(False, 0).update(True, 0.0) is True


# --------------------------------------------------------------------------- GpioPlug, fake clock


def make_plug(**kwargs: Any) -> tuple[GpioPlug, FakeFactory, FakeClock, list[bool]]:
    factory = FakeFactory()
    clock = FakeClock()
    plug = GpioPlug(
        "/dev/gpiochip0",
        22,
        active_low=True,
        bias="pull_up",
        clock=clock,
        line_factory=factory,
        threaded=False,
        **kwargs,
    )
    return plug, factory, clock, []


def test_gpio_plug_debounces_and_reports_every_change() -> None:
    plug, factory, clock, seen = make_plug()
    assert factory.requests == []  # nothing requested before start
    factory.line.value = True
    plug.start(seen.append)
    assert factory.requests == [("/dev/gpiochip0", 22, True, "pull_up")]
    assert plug.is_plugged() and seen == []  # initial level, no callback

    # contact bounce while unplugging: 10 ms pulses never last 50 ms
    for level in (False, True, False, True, False, True):
        factory.line.value = level
        plug.poll_once()
        clock.advance(0.010)
    assert seen == [] and plug.is_plugged()

    factory.line.value = False
    for _ in range(5):
        plug.poll_once()
        clock.advance(0.010)
    assert seen == []  # 40 ms so far
    assert plug.poll_once() is False  # 50 ms stable
    assert seen == [False] and not plug.is_plugged()

    factory.line.value = True
    plug.poll_once()
    clock.advance(0.050)
    plug.poll_once()
    assert seen == [False, True]
    plug.stop()
    assert factory.line.released
    assert plug.poll_once() is None  # stopped: no more reads


def test_gpio_plug_custom_debounce() -> None:
    plug, factory, clock, seen = make_plug(debounce_ms=200)
    plug.start(seen.append)
    factory.line.value = True
    plug.poll_once()
    clock.advance(0.150)
    plug.poll_once()
    assert seen == []
    clock.advance(0.050)
    plug.poll_once()
    assert seen == [True]


def test_gpio_plug_read_errors_make_it_unhealthy_until_readable() -> None:
    plug, factory, _clock, seen = make_plug()
    plug.start(seen.append)
    assert plug.health().ok
    factory.line.error = OSError(5, "Input/output error")
    assert plug.poll_once() is None
    health = plug.health()
    assert not health.ok and health.fault == "plug_unavailable"
    assert health.detail is not None and "line 22" in health.detail
    factory.line.error = None
    plug.poll_once()
    assert plug.health().ok


def test_gpio_plug_request_failure_and_callback_errors() -> None:
    plug, factory, clock, _ = make_plug()
    factory.fail = True
    with pytest.raises(DriverError):
        plug.start(lambda plugged: None)
    assert plug.health().fault == "plug_unavailable"
    factory.fail = False

    def broken(plugged: bool) -> None:
        raise RuntimeError("listener bug")

    plug.start(broken)
    factory.line.value = True
    plug.poll_once()
    clock.advance(0.05)
    assert plug.poll_once() is True  # the exception is logged, polling goes on
    assert plug.is_plugged()
    with pytest.raises(DriverError):
        plug.start(broken)  # already started
    plug.stop()
    plug.stop()  # idempotent


def test_gpio_plug_poll_thread_with_real_clock() -> None:
    factory = FakeFactory()
    plug = GpioPlug("/dev/gpiochip0", 22, debounce_ms=20, poll_interval_ms=2, line_factory=factory)
    changes: list[bool] = []
    got = threading.Event()

    def on_change(plugged: bool) -> None:
        changes.append(plugged)
        got.set()

    plug.start(on_change)
    try:
        factory.line.value = True
        assert got.wait(2.0), "no debounced change reported"
        assert changes == [True] and plug.is_plugged()
        got.clear()
        factory.line.value = False
        assert got.wait(2.0)
        assert changes == [True, False]
    finally:
        plug.stop()
    assert factory.line.released
    reads = factory.line.reads
    threading.Event().wait(0.02)
    assert factory.line.reads == reads  # the thread has stopped
    # a stopped sensor can be started again
    factory.line = FakeInput(value=False)
    got.clear()
    plug.start(on_change)
    try:
        factory.line.value = True
        assert got.wait(2.0)
        assert changes == [True, False, True]
    finally:
        plug.stop()


def test_gpio_plug_through_the_real_gpiod_module(monkeypatch: pytest.MonkeyPatch) -> None:
    gpiod = pytest.importorskip("gpiod")
    seen_config: dict[Any, Any] = {}

    class Request:
        released = False

        def get_value(self, offset: int) -> Any:
            assert offset == 22
            return gpiod.line.Value.ACTIVE

        def release(self) -> None:
            Request.released = True

    def fake_request_lines(
        path: str, config: dict[Any, Any], consumer: str | None = None, **kwargs: Any
    ) -> Request:
        assert (path, consumer) == ("/dev/gpiochip0", "station-agent")
        seen_config.update(config)
        return Request()

    monkeypatch.setattr(gpiod, "request_lines", fake_request_lines)
    plug = GpioPlug("/dev/gpiochip0", 22, active_low=True, bias="pull_down", threaded=False)
    plug.start(lambda plugged: None)
    settings = seen_config[22]
    assert settings.direction == gpiod.line.Direction.INPUT
    assert settings.active_low is True
    assert settings.bias == gpiod.line.Bias.PULL_DOWN
    assert plug.is_plugged()
    plug.stop()
    assert Request.released


# --------------------------------------------------------------------------- SimPlug


def test_sim_plug_reports_changes_to_callback_and_listeners() -> None:
    plug = SimPlug()
    callback: list[bool] = []
    listener: list[bool] = []
    plug.on_change(listener.append)
    plug.set(True)  # not started: listeners only
    assert listener == [True] and callback == []
    plug.start(callback.append)
    plug.set(True)  # no change
    plug.set(False)
    assert callback == [False] and listener == [True, False]
    assert not plug.is_plugged() and plug.health().ok
    plug.stop()
    plug.set(True)
    assert callback == [False] and listener == [True, False, True]
    assert SimPlug(plugged=True).is_plugged()
