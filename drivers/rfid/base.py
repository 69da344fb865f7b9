"""The RFID reader protocol: a reader thread reports each card once through a callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from drivers.health import Health


class CardType(StrEnum):
    MIFARE_CLASSIC = "mifare_classic"
    ULTRALIGHT = "ultralight"  # Ultralight / NTAG (NFC Forum Type 2)
    ISO_DEP = "iso_dep"  # DESFire and other ISO 14443-4 cards
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CardRead:
    uid: str  # upper-case hex, first byte first: 8, 14 or 20 characters
    card_type: CardType = CardType.UNKNOWN


CardCallback = Callable[[CardRead], None]


class RfidReader(Protocol):
    def start(self, on_card: CardCallback) -> None:
        """Begin reading (may start a thread); each new card is passed to ``on_card`` once."""
        ...

    def stop(self) -> None:
        """Stop reading and release the device. Idempotent."""
        ...

    def health(self) -> Health: ...

    def info(self) -> dict[str, object]:
        """Technician facts: driver, path, firmware, polls per second, last error."""
        ...

    def read_once(self, timeout_s: float) -> tuple[CardRead, float] | None:
        """Wait up to ``timeout_s`` for one card; return it and the seconds it took, or None.

        Diagnostic helper (``stationctl rfid read``): it does not consume or alter the
        ``on_card`` events, and it also sees a card the debounce would suppress. Blocks the
        calling thread. A reader that cannot be read directly (no reader fitted) raises
        DriverError saying so.
        """
        ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...
