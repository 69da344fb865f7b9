"""The plug sensor protocol: reports debounced changes through a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from drivers.health import Health

PlugCallback = Callable[[bool], None]


class PlugSensor(Protocol):
    def start(self, on_change: PlugCallback) -> None:
        """Begin watching; ``on_change(plugged)`` is called on every debounced change."""
        ...

    def is_plugged(self) -> bool: ...

    def stop(self) -> None: ...

    def health(self) -> Health: ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...
