"""Injectable clocks: production uses :class:`SystemClock`, tests step a :class:`FakeClock`.

Defined in :mod:`drivers.clock` (the drivers import nothing from the agent); re-exported here.
"""

from __future__ import annotations

from drivers.clock import Clock, FakeClock, SystemClock, parse_rfc3339, rfc3339

__all__ = ["Clock", "FakeClock", "SystemClock", "parse_rfc3339", "rfc3339"]
