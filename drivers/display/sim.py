"""A display that only records what it was asked to show (tests, headless simulation)."""

from __future__ import annotations

import threading
from collections import deque

from drivers.display.base import EvseScreen
from drivers.health import Health

__all__ = ["SimDisplay"]


class SimDisplay:
    """:class:`~drivers.display.base.Display` keeping the last screen per EVSE and a history.

    ``history`` holds the last ``history_size`` calls as ``("screen", EvseScreen)`` or
    ``("message", str)``; ``messages`` the last ``history_size`` station messages. Unlike the
    real drivers it records every call, changed or not. Thread-safe.
    """

    def __init__(self, history_size: int = 200) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        self._lock = threading.Lock()
        self._screens: dict[str, EvseScreen] = {}
        self._message = ""
        self.messages: deque[str] = deque(maxlen=history_size)
        self.history: deque[tuple[str, EvseScreen | str]] = deque(maxlen=history_size)
        self._health = Health.healthy()
        self.is_shut_down = False

    def show(self, screen: EvseScreen) -> None:
        with self._lock:
            self._screens[screen.evse_id] = screen
            self.history.append(("screen", screen))

    def show_message(self, text: str) -> None:
        with self._lock:
            self._message = text
            self.messages.append(text)
            self.history.append(("message", text))

    def shutdown(self) -> None:
        with self._lock:
            self.is_shut_down = True

    @property
    def simulated(self) -> bool:
        return True

    def health(self) -> Health:
        with self._lock:
            return self._health

    # ---------------------------------------------------------------- for tests

    def set_health(self, health: Health) -> None:
        with self._lock:
            self._health = health

    def screen(self, evse_id: str) -> EvseScreen | None:
        """The last screen shown for ``evse_id``."""
        with self._lock:
            return self._screens.get(evse_id)

    @property
    def screens(self) -> dict[str, EvseScreen]:
        """A copy of the last screen per EVSE."""
        with self._lock:
            return dict(self._screens)

    @property
    def message(self) -> str:
        """The current station message ("" when none)."""
        with self._lock:
            return self._message

    def screens_of(self, evse_id: str) -> list[EvseScreen]:
        """The screens in the history for ``evse_id``, oldest first."""
        with self._lock:
            return [
                item
                for kind, item in self.history
                if kind == "screen" and isinstance(item, EvseScreen) and item.evse_id == evse_id
            ]
