"""The relay protocol. ``open()`` must be safe to call at any time, repeatedly."""

from __future__ import annotations

from typing import Protocol

from drivers.health import Health


class Relay(Protocol):
    def open(self) -> None:
        """Open the contactor (no energy flows). Raises DriverError if it cannot."""
        ...

    def close(self) -> None:
        """Close the contactor. Raises DriverError if it cannot."""
        ...

    def is_closed(self) -> bool:
        """The commanded state."""
        ...

    def feedback_closed(self) -> bool | None:
        """The mirror contact, or None where no feedback input is wired."""
        ...

    def shutdown(self) -> None:
        """Open and release the device. Idempotent."""
        ...

    def health(self) -> Health: ...
