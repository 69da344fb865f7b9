"""station-agent: the daemon that runs inside an EV charging station."""

__version__ = "0.1.0"
