"""The one exception tree of station-agent.

Everything the agent raises on purpose derives from :class:`AgentError`; callers catch the
narrowest class they can handle and always chain with ``raise ... from err``.

The base of the tree (:class:`AgentError`, :class:`ConfigError`, :class:`DriverError`,
:class:`ProtocolError`) lives in :mod:`drivers.errors` so that the drivers import nothing from
the agent; it is re-exported here, so ``agent.errors.DriverError is drivers.errors.DriverError``.
"""

from __future__ import annotations

from drivers.errors import AgentError, ConfigError, DriverError, ProtocolError

__all__ = [
    "AgentError",
    "BackendError",
    "ConfigError",
    "DriverError",
    "ProtocolError",
    "StoreError",
]


class BackendError(AgentError):
    """The MQTT link or the backend misbehaved."""


class StoreError(AgentError):
    """The SQLite store could not be read or written."""
