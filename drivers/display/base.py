"""The display protocol: one screen area per EVSE plus short station-wide messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from drivers.health import Health


@dataclass(frozen=True)
class EvseScreen:
    evse_id: str
    state: str  # the EVSE state name as in P/status
    message: str  # short human text: "Tap your card", "Charging 3.2 kWh", ...
    qr_payload: str | None = None  # the Intercharge QR code content for this EVSE


class Display(Protocol):
    def show(self, screen: EvseScreen) -> None:
        """Redraw the area of one EVSE."""
        ...

    def show_message(self, text: str) -> None:
        """A short station-wide message ("Reading card...", "Card accepted")."""
        ...

    def shutdown(self) -> None: ...

    def health(self) -> Health: ...

    @property
    def simulated(self) -> bool:
        """True only for the in-memory sim driver (the ``sim`` commands may drive it)."""
        ...
