"""The QR reader protocol: decoded payloads are passed to a callback (already debounced)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from drivers.health import Health

PayloadCallback = Callable[[str], None]


class QrReader(Protocol):
    def start(self, on_payload: PayloadCallback) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> Health: ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...
