"""station-agent: the daemon that runs inside an EV charging station."""

from datetime import UTC, datetime

__version__ = "0.1.0"

# No clock that reads earlier than this is set: the station was built after it (a Raspberry Pi
# without an RTC boots at 1970, or at the last time fake-hwclock saved). Move it forward with
# releases; it must stay before the clocks the in-process tests use (FakeClock: 2026-01-01).
BUILD_DATE = datetime(2026, 1, 1, tzinfo=UTC)
