"""No RFID reader fitted (``rfid.driver = "none"``): remote start and QR only."""

from __future__ import annotations

from drivers.health import Health
from drivers.rfid.base import CardCallback


class NullRfidReader:
    def start(self, on_card: CardCallback) -> None:
        """Nothing to read."""

    def stop(self) -> None:
        """Nothing to release."""

    def health(self) -> Health:
        return Health.healthy()

    def info(self) -> dict[str, object]:
        return {"driver": "none", "connected": False}
