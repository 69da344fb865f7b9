"""Which adapter serves the backend port: ``backend.protocol`` in the configuration."""

from __future__ import annotations

from agent.backend import Backend
from agent.clock import Clock
from agent.config import AgentConfig
from agent.errors import ConfigError


def make_backend(config: AgentConfig, clock: Clock) -> Backend:
    protocol = config.backend.protocol
    if protocol == "mqtt":
        from agent.backend_mqtt import MqttBackend

        return MqttBackend(config, clock)
    if protocol in ("ocpp1.6", "ocpp2.0.1"):
        try:
            from agent.backend_ocpp import OcppBackend
        except ImportError as err:
            raise ConfigError(
                f"backend.protocol {protocol!r} needs the OCPP extra"
                f" (pip install 'station-agent[ocpp]'): {err}"
            ) from err
        return OcppBackend(config, clock, subprotocol=protocol)
    raise ConfigError(f"backend.protocol {protocol!r} is not available in this build")
