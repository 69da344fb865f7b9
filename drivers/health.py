"""Health report shared by every driver kind (shown in ``P/status`` and ``stationctl``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    ok: bool
    fault: str | None = None  # short machine-readable reason, e.g. "reader_unplugged"
    detail: str | None = None  # human text for technicians: device, path, what to check

    @classmethod
    def healthy(cls) -> Health:
        return cls(ok=True)
