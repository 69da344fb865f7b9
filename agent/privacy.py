"""Masking of personal identifiers (RFID UIDs, EMAIDs/contract ids) before they reach a log.

Defined in :mod:`drivers.privacy` (the drivers import nothing from the agent); re-exported here.
"""

from __future__ import annotations

from drivers.privacy import ELLIPSIS, mask, mask_token

__all__ = ["ELLIPSIS", "mask", "mask_token"]
