"""A simulated plug sensor: tests and the simulator flip it with :meth:`SimPlug.set`."""

from __future__ import annotations

import threading

from drivers.health import Health
from drivers.plug.base import PlugCallback


class SimPlug:
    """Implements :class:`drivers.plug.base.PlugSensor`.

    ``set(plugged)`` reports a change to the ``start()`` callback (while started) and to every
    ``on_change`` listener; setting the current value again reports nothing.
    """

    def __init__(self, plugged: bool = False) -> None:
        self._lock = threading.Lock()
        self._plugged = plugged
        self._callback: PlugCallback | None = None
        self._listeners: list[PlugCallback] = []

    def start(self, on_change: PlugCallback) -> None:
        with self._lock:
            self._callback = on_change

    def stop(self) -> None:
        with self._lock:
            self._callback = None

    def on_change(self, listener: PlugCallback) -> None:
        with self._lock:
            self._listeners.append(listener)

    def set(self, plugged: bool) -> None:
        with self._lock:
            if plugged == self._plugged:
                return
            self._plugged = plugged
            targets = ([self._callback] if self._callback else []) + list(self._listeners)
        for target in targets:
            target(plugged)

    def is_plugged(self) -> bool:
        with self._lock:
            return self._plugged

    @property
    def simulated(self) -> bool:
        return True

    def health(self) -> Health:
        return Health.healthy()
