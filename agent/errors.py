"""The one exception tree of station-agent.

Everything the agent raises on purpose derives from :class:`AgentError`; callers catch the
narrowest class they can handle and always chain with ``raise ... from err``.
"""


class AgentError(Exception):
    """Base of every error station-agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class DriverError(AgentError):
    """A device driver failed (reader, relay, meter, plug sensor, display, camera)."""


class BackendError(AgentError):
    """The MQTT link or the backend misbehaved."""


class StoreError(AgentError):
    """The SQLite store could not be read or written."""


class ProtocolError(AgentError):
    """An incoming message did not follow the MQTT or control-socket contract."""
