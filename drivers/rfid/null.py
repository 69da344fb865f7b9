"""No RFID reader fitted (``rfid.driver = "none"``): remote start and QR only."""

from __future__ import annotations

from drivers.errors import DriverError
from drivers.health import Health
from drivers.rfid.base import CardCallback, CardRead


class NullRfidReader:
    def start(self, on_card: CardCallback) -> None:
        """Nothing to read."""

    def stop(self) -> None:
        """Nothing to release."""

    def read_once(self, timeout_s: float) -> tuple[CardRead, float] | None:
        """Always raises: there is no reader to read from."""
        raise DriverError(
            'no RFID reader is fitted (rfid.driver = "none"): there is no card to read; '
            'configure rfid.driver = "pn532" to read cards at this station'
        )

    @property
    def simulated(self) -> bool:
        return False

    def health(self) -> Health:
        return Health.healthy()

    def info(self) -> dict[str, object]:
        return {"driver": "none", "connected": False}
