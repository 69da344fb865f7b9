"""The OCPP 1.6 configuration keys this station honours (GetConfiguration/ChangeConfiguration).

Writable keys are integers kept in the adapter's state file (a change survives a restart);
the read-only ones describe what the station does (from its own configuration) and cannot be
changed over OCPP. Any other key is unknown: GetConfiguration lists it as such, and
ChangeConfiguration answers NotSupported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig
from agent.ocpp_map import ENERGY
from agent.ocpp_profiles import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL
from agent.ocpp_state import OcppState

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 86400


class OcppSettings:
    def __init__(self, config: AgentConfig, state: OcppState) -> None:
        ocpp = config.ocpp
        if ocpp is None:
            raise ValueError("OcppSettings needs an [ocpp] section")
        policy = config.auth.offline_policy
        self._defaults: dict[str, int] = {
            "HeartbeatInterval": ocpp.heartbeat_interval_s,
            "MeterValueSampleInterval": ocpp.meter_value_sample_interval_s,
            "ClockAlignedDataInterval": ocpp.clock_aligned_data_interval_s,
        }
        self._readonly: dict[str, str] = {
            "NumberOfConnectors": str(len(config.evse)),
            "AuthorizeRemoteTxRequests": "false",
            "LocalAuthListEnabled": "true",
            "LocalAuthorizeOffline": _bool(policy != "reject"),
            "AllowOfflineTxForUnknownId": _bool(policy == "accept_all"),
            "LocalPreAuthorize": _bool(config.auth.local_first),
            "StopTransactionOnEVSideDisconnect": "true",
            "StopTransactionOnInvalidId": "true",
            "ConnectionTimeOut": str(round(config.auth.connection_timeout_s)),
            "MeterValuesSampledData": ENERGY,
            "MeterValuesAlignedData": ENERGY,
            "WebSocketPingInterval": str(round(ocpp.ping_interval_s)),
            "LocalAuthListMaxLength": "10000",
            "SendLocalListMaxLength": "10000",
            "SupportedFeatureProfiles": "Core,LocalAuthListManagement,RemoteTrigger,SmartCharging",
            "ChargeProfileMaxStackLevel": str(MAX_STACK_LEVEL),
            "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
            "ChargingScheduleMaxPeriods": str(MAX_PERIODS),
            "MaxChargingProfilesInstalled": str(MAX_PROFILES),
        }
        self._state = state
        self._csms_heartbeat: int | None = None

    def _int(self, key: str) -> int:
        stored = self._state.setting(key)
        if stored is not None:
            return int(stored)
        return self._defaults[key]

    def heartbeat_interval(self) -> int:
        if self._state.setting("HeartbeatInterval") is None and self._csms_heartbeat:
            return self._csms_heartbeat
        return max(1, self._int("HeartbeatInterval"))

    def heartbeat_from_csms(self, interval: int) -> None:
        """The interval in an accepted BootNotification (until a ChangeConfiguration)."""
        self._csms_heartbeat = interval

    def meter_sample_interval(self) -> int:
        return self._int("MeterValueSampleInterval")

    def clock_aligned_interval(self) -> int:
        return self._int("ClockAlignedDataInterval")

    def _values(self) -> dict[str, tuple[str, bool]]:
        getters: dict[str, Callable[[], int]] = {
            "HeartbeatInterval": self.heartbeat_interval,
            "MeterValueSampleInterval": self.meter_sample_interval,
            "ClockAlignedDataInterval": self.clock_aligned_interval,
        }
        out = {k: (str(get()), False) for k, get in getters.items()}
        out.update({k: (v, True) for k, v in self._readonly.items()})
        return out

    def get(self, keys: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
        values = self._values()
        wanted = keys if keys else list(values)
        known = [
            {"key": k, "readonly": values[k][1], "value": values[k][0]}
            for k in wanted
            if k in values
        ]
        return known, [k for k in wanted if k not in values]

    def change(self, key: str, value: str) -> str:
        """ChangeConfigurationStatus: Accepted, Rejected (read-only or a bad value) or
        NotSupported (a key this station does not know)."""
        if key in self._readonly:
            return "Rejected"
        if key not in self._defaults:
            return "NotSupported"
        if not value.isdigit() or int(value) > MAX_INTERVAL_S:
            return "Rejected"
        number = int(value)
        if key == "HeartbeatInterval" and number == 0:
            return "Rejected"
        self._state.set_setting(key, str(number))
        log.info("OCPP configuration %s = %d (changed by the CSMS)", key, number)
        return "Accepted"


def _bool(value: bool) -> str:
    return "true" if value else "false"
