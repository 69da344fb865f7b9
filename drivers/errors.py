"""The base of the one exception tree of station-agent.

Everything the agent and its drivers raise on purpose derives from :class:`AgentError`; callers
catch the narrowest class they can handle and always chain with ``raise ... from err``. The
classes live here, at the bottom of the import graph, so that ``drivers/`` needs nothing from
``agent/``; :mod:`agent.errors` re-exports them and adds the agent-only classes.
"""

from __future__ import annotations

__all__ = ["AgentError", "ConfigError", "DriverError", "ProtocolError"]


class AgentError(Exception):
    """Base of every error station-agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class DriverError(AgentError):
    """A device driver failed (reader, relay, meter, plug sensor, display, camera).

    ``kind`` is the machine-readable fault string the driver knows for this failure (for
    example ``"relay_welded"`` or ``"relay_stuck_open"`` from
    :class:`drivers.relay.feedback.RelayFault`), or ``None`` where the driver cannot name one.
    It is a declared attribute of every ``DriverError``, so callers read it directly and fall
    back to their own default: ``FaultRaised(err.kind or "relay_failed")``. Subclasses with a
    fixed set of kinds narrow its type.
    """

    def __init__(self, *args: object, kind: str | None = None) -> None:
        super().__init__(*args)
        self.kind: str | None = kind


class ProtocolError(AgentError):
    """An incoming message did not follow the MQTT or control-socket contract."""
