"""Configuration: one TOML file, parsed with tomllib and validated by pydantic models.

Every error names the file, the key path and what is wrong; the CLI turns a
:class:`~agent.errors.ConfigError` into exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from agent.identifiers import is_evse_id, is_operator_id, is_station_id
from agent.shipped import profile_names, profile_path
from drivers.display.qrcode import DEFAULT_URL_TEMPLATE

DEFAULT_CONFIG_PATH = Path("/etc/station-agent/config.toml")
CfgPath = Annotated[Path, Field(strict=False)]  # TOML has no path type: a string is a path
EX_CONFIG = 78
# inbound backend messages per topic (token bucket in the MQTT network thread): rate per second,
# burst. Generous for one station's real traffic, small enough that a flood cannot starve taps.
INBOUND_LIMITS: dict[str, tuple[float, int]] = {
    "auth/res": (200.0, 400),
    "cdr/ack": (200.0, 400),
    "cmd/req": (50.0, 100),
}


class _Strict(BaseModel):
    """Unknown keys refused, no type coercion ("90" is not a number), no inf/nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, v: object) -> object:
        if isinstance(v, Path | str) and "\0" in str(v):
            raise ValueError("contains a NUL character")
        return v


class StationConfig(_Strict):
    id: str
    operator_id: str
    location: str = Field(min_length=1, max_length=255)
    state_dir: CfgPath = Path("/var/lib/station-agent")
    control_socket: CfgPath = Path("/run/station-agent/control.sock")
    boot_id_file: CfgPath = Path("/proc/sys/kernel/random/boot_id")
    # sessions start on a clock known to be unset (before the build date, or not yet
    # synchronised where systemd-timesyncd runs) only if this says so
    allow_unset_clock: bool = False
    # systemd-timesyncd's "synchronised" flag file; checked only where its directory exists
    clock_sync_file: CfgPath | None = Path("/run/systemd/timesync/synchronized")
    # load management (agent/limits.py): the connection's limit per phase, what each EVSE gets
    # while the grid meter is stale, the optional grid meter, how long a pause lasts at most
    grid_limit_a: float | None = Field(default=None, ge=0, le=10000)
    fallback_limit_a: float = Field(default=6.0, ge=0, le=80)
    grid_meter: MeterConfig | None = None
    pause_rotation_s: float = Field(default=300.0, ge=10, le=86400)

    @field_validator("state_dir", "control_socket", mode="after")
    @classmethod
    def _home(cls, v: Path) -> Path:
        """``~/...`` is the running user's home (the simulated station keeps its state there)."""
        try:
            return v.expanduser()
        except RuntimeError as err:  # no HOME and no passwd entry
            raise ValueError(f"{v}: cannot expand '~': {err}") from err

    @field_validator("id")
    @classmethod
    def _station_id(cls, v: str) -> str:
        if not is_station_id(v):
            raise ValueError(
                f"station id {v!r} must match ^[A-Za-z0-9._-]{{1,64}}$ "
                "(it is an MQTT topic segment: no '/', '+' or '#')"
            )
        return v

    @field_validator("operator_id")
    @classmethod
    def _operator_id(cls, v: str) -> str:
        if not is_operator_id(v):
            raise ValueError(f"{v!r} is not an OICP OperatorID (e.g. 'DE*ICE')")
        return v

    @field_validator("fallback_limit_a")
    @classmethod
    def _fallback(cls, v: float) -> float:
        if 0 < v < 6:
            raise ValueError("must be 0 (pause) or at least 6 A (IEC 61851 minimum)")
        return v

    @model_validator(mode="after")
    def _grid_meter_needs_limit(self) -> StationConfig:
        if self.grid_meter is not None and self.grid_limit_a is None:
            raise ValueError("grid_meter needs grid_limit_a (the connection's limit per phase)")
        return self


def _check_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{v!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"{v!r}: no host")
    try:
        _ = parts.port
    except ValueError as err:
        raise ValueError(f"{v!r}: bad port") from err
    return v


def node_address(url: str) -> tuple[str, int]:
    """Host and port of one broker URL (``mqtt://`` 1883, ``mqtts://`` 8883 by default)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (8883 if parts.scheme == "mqtts" else 1883)


class MqttConfig(_Strict):
    url: str = "mqtt://127.0.0.1:1883"
    # the nodes of a clustered broker, preferred first (instead of `url`, never with it)
    urls: list[str] | None = Field(default=None, min_length=1, max_length=16)
    topic_prefix: str = "stations"
    auth_timeout_s: float = Field(default=5.0, gt=0, le=120)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # reconnect delays: full jitter between these (the upper end doubles per failed attempt)
    reconnect_min_s: float = Field(default=1.0, ge=0.1, le=3600)
    reconnect_max_s: float = Field(default=30.0, ge=0.1, le=3600)
    cdr_retry_initial_s: float = Field(default=5.0, gt=0)
    cdr_retry_max_s: float = Field(default=300.0, gt=0)
    # P/meter while charging, at most this often (0: never); readings come every
    # evse.meter.poll_interval_s, so that is the fastest rate
    meter_values_s: float = Field(default=10.0, ge=0, le=3600)
    # TLS (mqtts://) and authentication; secrets are read from files, never written here
    ca_file: CfgPath | None = None  # the backend's CA; none: the system's CA store
    cert_file: CfgPath | None = None  # the station's certificate (mutual TLS: its identity)
    key_file: CfgPath | None = None
    username: str | None = None
    password_file: CfgPath | None = None
    tls_insecure_for_testing: bool = False  # no certificate or hostname checks: tests only
    # per-topic overrides of INBOUND_LIMITS, e.g. inbound_rate_per_s = { "cmd/req" = 20 }
    inbound_rate_per_s: dict[str, Annotated[float, Field(gt=0, le=1_000_000)]] = Field(
        default_factory=dict
    )
    inbound_burst: dict[str, Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        default_factory=dict
    )

    @field_validator("inbound_rate_per_s", "inbound_burst")
    @classmethod
    def _inbound_topics(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(INBOUND_LIMITS))
        if unknown:
            raise ValueError(
                f"unknown topic(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(INBOUND_LIMITS)}"
            )
        return v

    def inbound_limits(self) -> dict[str, tuple[float, int]]:
        """Rate per second and burst of every rate-limited inbound topic, overrides applied."""
        return {
            topic: (
                self.inbound_rate_per_s.get(topic, rate),
                self.inbound_burst.get(topic, burst),
            )
            for topic, (rate, burst) in INBOUND_LIMITS.items()
        }

    @model_validator(mode="after")
    def _tls_options(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        tls_only = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if tls_only and not self.tls:
            raise ValueError(f"{', '.join(tls_only)} need an mqtts:// url")
        if self.tls_insecure_for_testing and not self.tls:
            raise ValueError("tls_insecure_for_testing needs an mqtts:// url")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for u in v:
            _check_url(u)
        if len({urlsplit(u).scheme for u in v}) > 1:
            raise ValueError("all nodes must use the same scheme (mqtt:// or mqtts://)")
        if len({node_address(u) for u in v}) < len(v):
            raise ValueError("a node is listed twice")
        return v

    @model_validator(mode="after")
    def _one_way_to_the_broker(self) -> MqttConfig:
        if self.urls is not None and "url" in self.model_fields_set:
            raise ValueError(
                "give either url (one broker) or urls (the nodes of a cluster), not both"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be smaller than reconnect_min_s")
        return self

    @property
    def nodes(self) -> list[str]:
        """The broker URLs to try, preferred first: ``urls``, or the one ``url``."""
        return list(self.urls) if self.urls is not None else [self.url]

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"{v!r}: must be non-empty, without '+', '#' or leading/trailing '/'")
        return v

    @property
    def host(self) -> str:
        return node_address(self.nodes[0])[0]

    @property
    def port(self) -> int:
        return node_address(self.nodes[0])[1]

    @property
    def tls(self) -> bool:
        return urlsplit(self.nodes[0]).scheme == "mqtts"


class BackendConfig(_Strict):
    """Which backend adapter the station speaks: MQTT contract v1 (default) or OCPP."""

    protocol: Literal["mqtt", "ocpp1.6", "ocpp2.0.1"] = "mqtt"


class OcppConfig(_Strict):
    """``[ocpp]``: the CSMS (agent/backend_ocpp.py). The charge point id (station.id) is
    appended to ``url`` as a path segment; secrets are read from files, never written here."""

    url: str
    security_profile: int = Field(default=1, ge=0, le=3)  # 0 none, 1 basic, 2 TLS+basic, 3 mTLS
    password_file: CfgPath | None = None  # profiles 1-2: the basic-auth key
    ca_file: CfgPath | None = None  # profiles 2-3; none: the system's CA store
    cert_file: CfgPath | None = None  # profile 3
    key_file: CfgPath | None = None  # profile 3
    reconnect_min_s: float = Field(default=1.0, gt=0, le=300)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    ping_interval_s: float = Field(default=30.0, gt=0, le=3600)  # WebSocket ping (liveness)
    call_timeout_s: float = Field(default=30.0, gt=0, le=600)  # a CSMS answer must come by then
    heartbeat_interval_s: int = Field(default=300, ge=1, le=86400)  # until the CSMS says
    meter_value_sample_interval_s: int = Field(default=60, ge=0, le=86400)  # 0: none
    clock_aligned_data_interval_s: int = Field(default=0, ge=0, le=86400)  # 0: none
    # CSMS calls per second (token bucket, before parsing); answers to our calls always pass
    inbound_rate_per_s: float = Field(default=50.0, gt=0, le=1_000_000)
    inbound_burst: int = Field(default=100, ge=1, le=1_000_000)
    vendor: str = Field(default="station-agent", min_length=1, max_length=20)
    model: str = Field(default="station-agent", min_length=1, max_length=20)

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"{v!r}: scheme must be ws:// or wss://")
        if not parts.hostname:
            raise ValueError(f"{v!r}: no host")
        if parts.query or parts.fragment:
            raise ValueError(f"{v!r}: no query or fragment (station.id is appended as a path)")
        return v

    @model_validator(mode="after")
    def _profile(self) -> OcppConfig:
        p = self.security_profile
        tls = urlsplit(self.url).scheme == "wss"
        if p >= 2 and not tls:
            raise ValueError(f"security_profile {p} needs a wss:// url")
        if p <= 1 and tls:
            raise ValueError(f"a wss:// url needs security_profile 2 or 3 (not {p})")
        if p in (1, 2) and self.password_file is None:
            raise ValueError(f"security_profile {p} needs password_file (the basic-auth key)")
        if p not in (1, 2) and self.password_file is not None:
            raise ValueError(f"password_file is for security_profile 1 or 2 (not {p})")
        if p == 3 and (self.cert_file is None or self.key_file is None):
            raise ValueError("security_profile 3 needs cert_file and key_file")
        if p != 3 and (self.cert_file is not None or self.key_file is not None):
            raise ValueError(f"cert_file and key_file are for security_profile 3 (not {p})")
        if p < 2 and self.ca_file is not None:
            raise ValueError(f"ca_file is for security_profile 2 or 3 (not {p})")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class AuthConfig(_Strict):
    stop_with_same_token: bool = True
    connection_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # what the station decides on its own when the backend does not answer:
    # local_list = tokens on the local list or in the auth cache; accept_all = free vend
    offline_policy: Literal["local_list", "accept_all", "reject"] = "local_list"
    local_first: bool = False  # start at once on a local accept, confirm in the background
    cache_size: int = Field(default=1000, ge=0, le=1_000_000)


class CmdConfig(_Strict):
    max_age_s: float = Field(default=300.0, gt=0)  # commands with an older `ts` are rejected


class StoreConfig(_Strict):
    retention_days: int = Field(default=90, ge=1, le=3650)
    meter_interval_s: float = Field(default=60.0, gt=0)
    # cap on the database size (KiB); reaching it is handled like a full disk. None: no cap
    max_db_kb: int | None = Field(default=None, ge=64)


class RfidConfig(_Strict):
    driver: Literal["sim", "pn532", "none"] = "sim"
    path: str | None = None
    poll_interval_s: float = Field(default=0.1, gt=0, le=10)
    debounce_s: float = Field(default=2.0, ge=0, le=60)
    # PN532: "wait" (the chip answers when a card comes) or "poll" (a sense every poll_interval_s)
    mode: Literal["wait", "poll"] = "wait"
    liveness_s: float = Field(default=2.0, ge=0.2, le=60)  # wait mode: chip check interval

    @model_validator(mode="after")
    def _path_needed(self) -> RfidConfig:
        if self.driver == "pn532" and not self.path:
            raise ValueError("driver 'pn532' needs path (e.g. 'tty:S0:pn532' or '/dev/ttyS0')")
        return self


class DisplayConfig(_Strict):
    driver: Literal["sim", "png", "terminal", "framebuffer", "none"] = "sim"
    path: CfgPath | None = None  # png: output file (written atomically)
    device: str = "/dev/fb0"  # framebuffer
    width: int | None = Field(default=None, ge=64, le=8192)  # png default 800; fb from sysfs
    height: int | None = Field(default=None, ge=64, le=8192)  # png default 480

    @model_validator(mode="after")
    def _png_path(self) -> DisplayConfig:
        if self.driver == "png" and self.path is None:
            raise ValueError("driver 'png' needs path (the PNG file to write)")
        return self


class QrConfig(_Strict):
    driver: Literal["none", "sim", "files", "camera"] = "none"
    url_template: str = DEFAULT_URL_TEMPLATE
    debounce_s: float = Field(default=5.0, ge=0)
    directory: CfgPath | None = None  # files driver
    device: str = "0"  # camera: V4L2 index or path
    width: int = 640
    height: int = 480
    scan_fps: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{evse_id}" not in v:
            raise ValueError("url_template must contain '{evse_id}'")
        return v

    @model_validator(mode="after")
    def _directory(self) -> QrConfig:
        if self.driver == "files" and self.directory is None:
            raise ValueError("driver 'files' needs directory (where images appear)")
        return self


class SimRelayConfig(_Strict):
    driver: Literal["sim"] = "sim"
    log_file: CfgPath | None = None  # one line per switch, for tests that kill the daemon


class SimMeterConfig(_Strict):
    driver: Literal["sim"] = "sim"
    power_kw: float = Field(default=11.0, ge=0, le=1000)
    initial_kwh: float = Field(default=0.0, ge=0)
    time_factor: float = Field(default=1.0, gt=0, le=3600)  # sim seconds per real second
    state_file: CfgPath | None = None  # keeps the register across restarts, like a real meter
    poll_interval_s: float = Field(default=5.0, gt=0, le=3600)  # readings while charging
    signing: bool = False  # sign OCMF records of the register (needs key_file)
    key_file: CfgPath | None = None  # PEM secp256r1 private key; created (0600) if missing

    @model_validator(mode="after")
    def _key(self) -> SimMeterConfig:
        if self.signing and self.key_file is None:
            raise ValueError("signing = true needs key_file (a PEM secp256r1 private key)")
        return self


class IskraMeterConfig(_Strict):
    """Iskra WM3M4/WM3M4C over Modbus RTU or TCP: signs each transaction (OCMF)."""

    driver: Literal["iskra"]
    transport: Literal["tcp", "rtu"] = "rtu"
    host: str | None = None
    port: int | str | None = None  # TCP port, or the serial device for RTU
    baudrate: int = 115200
    parity: Parity = "N"
    stopbits: int = 1
    device_id: int = Field(default=33, ge=0, le=247)
    timeout_s: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=3, ge=1)
    sign_timeout_s: float = Field(default=15.0, gt=0, le=120)
    poll_interval_s: float = Field(default=5.0, gt=0, le=3600)  # readings while charging


class SimPlugConfig(_Strict):
    driver: Literal["sim"] = "sim"
    plugged: bool = False
    state_file: CfgPath | None = None  # the car stays plugged across agent restarts


class SimPilotConfig(_Strict):
    driver: Literal["sim"] = "sim"
    car_max_a: float = Field(default=32.0, ge=0, le=80)  # what the simulated car takes at most


class EvseDinPilotConfig(_Strict):
    """An EVSE DIN / SimpleEVSE controller board over Modbus RTU (hardware/EVSE-DIN.md)."""

    driver: Literal["evse_din"]
    transport: Literal["tcp", "rtu"] = "rtu"
    host: str | None = None
    port: int | str | None = None  # the serial device for RTU
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    device_id: int = Field(default=1, ge=1, le=247)
    timeout_s: float = Field(default=0.5, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0, le=10)


Bias = Literal["as_is", "disabled", "pull_up", "pull_down"]
Parity = Literal["N", "E", "O"]


class GpioRelayConfig(_Strict):
    """Contactor driven by a GPIO line (libgpiod v2); optional mirror-contact feedback line."""

    driver: Literal["gpio"]
    chip: str = "/dev/gpiochip0"
    line: int = Field(ge=0)
    active_low: bool = False
    feedback_chip: str | None = None
    feedback_line: int | None = Field(default=None, ge=0)
    feedback_active_low: bool = False
    feedback_bias: Bias = "as_is"
    feedback_timeout_ms: float = Field(default=200.0, ge=0, le=5000)


class SerialRelayConfig(_Strict):
    """USB/serial relay board taking short byte commands (e.g. ``A0 <ch> <state> <sum>``)."""

    driver: Literal["serial"]
    port: str
    channel: int = Field(default=1, ge=0, le=255)
    baudrate: int = 9600
    close_command: str = "A0 {ch} 01 {sum}"
    open_command: str = "A0 {ch} 00 {sum}"
    write_timeout_s: float = Field(default=1.0, gt=0)
    feedback_timeout_ms: float = Field(default=200.0, ge=0, le=5000)


class ModbusRelayConfig(_Strict):
    """A coil on a Modbus RTU/TCP relay module; optional discrete input as feedback."""

    driver: Literal["modbus"]
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str | None = None
    port: int | str | None = None  # TCP port, or the serial device for RTU
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    device_id: int = Field(default=1, ge=0, le=247)
    coil: int = Field(default=0, ge=0)
    feedback_input: int | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=1.0, gt=0)
    feedback_timeout_ms: float = Field(default=200.0, ge=0, le=5000)


class ModbusMeterConfig(_Strict):
    """A DIN-rail meter over Modbus RTU (RS-485) or TCP; register map chosen by ``model``."""

    driver: Literal["modbus"]
    model: Literal["sdm630", "sdm72", "sdm72v1", "abb_b23"]
    transport: Literal["tcp", "rtu"] = "rtu"
    host: str | None = None
    port: int | str | None = None  # TCP port, or the serial device for RTU
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    device_id: int = Field(default=1, ge=0, le=247)
    word_order: Literal["big", "little"] | None = None
    timeout_s: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=3, ge=1)
    poll_interval_s: float = Field(default=5.0, gt=0, le=3600)  # readings while charging


class GpioPlugConfig(_Strict):
    driver: Literal["gpio"]
    chip: str = "/dev/gpiochip0"
    line: int = Field(ge=0)
    active_low: bool = False
    bias: Bias = "as_is"
    debounce_ms: float = Field(default=50.0, ge=0, le=5000)


RelayConfig = Annotated[
    SimRelayConfig | GpioRelayConfig | SerialRelayConfig | ModbusRelayConfig,
    Field(discriminator="driver"),
]
MeterConfig = Annotated[
    SimMeterConfig | ModbusMeterConfig | IskraMeterConfig, Field(discriminator="driver")
]
PlugConfig = Annotated[SimPlugConfig | GpioPlugConfig, Field(discriminator="driver")]
PilotConfig = Annotated[SimPilotConfig | EvseDinPilotConfig, Field(discriminator="driver")]


class EvseConfig(_Strict):
    id: str
    relay: RelayConfig = Field(default_factory=SimRelayConfig)
    meter: MeterConfig = Field(default_factory=SimMeterConfig)
    plug: PlugConfig = Field(default_factory=SimPlugConfig)
    # a control pilot (then it is the plug sensor too), the rating and phases (load management)
    pilot: PilotConfig | None = None
    max_current_a: float = Field(default=16.0, ge=6, le=80)
    phases: Literal[1, 3] = 3

    @field_validator("id")
    @classmethod
    def _evse_id(cls, v: str) -> str:
        if not is_evse_id(v):
            raise ValueError(f"{v!r} is not an OICP EvseID (e.g. 'DE*ICE*E000001*1')")
        return v


class WebConfig(_Strict):
    """``[web]``: the status page (``station-agent web``); absent = off."""

    listen: str = "0.0.0.0:8443"  # host:port; IPv6 as [::]:8443
    password_file: CfgPath = Path("/etc/station-agent/web.pass")
    tls: bool = True  # false only on a loopback address, behind a TLS reverse proxy
    tls_cert_file: CfgPath | None = None  # both or neither; neither: a self-signed pair
    tls_key_file: CfgPath | None = None
    cert_dir: CfgPath = Path("/var/lib/station-agent-web")  # where the self-signed pair lives
    session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, port = split_listen(v)
        if not host or not 0 <= port <= 65535:  # 0: any free port (tests)
            raise ValueError(f"{v!r}: expected host:port (e.g. '0.0.0.0:8443', '[::1]:8080')")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> WebConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        host = split_listen(self.listen)[0]
        if not self.tls and host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                f"tls = false is only allowed on a loopback address (not {host!r}): "
                "the password and the session cookie must not cross a network in clear"
            )
        return self


def split_listen(listen: str) -> tuple[str, int]:
    """``'0.0.0.0:8443'`` -> ``('0.0.0.0', 8443)``, ``'[::1]:8080'`` -> ``('::1', 8080)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return "", 0
    return host.removeprefix("[").removesuffix("]"), int(port)


class AgentConfig(_Strict):
    station: StationConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cmd: CmdConfig = Field(default_factory=CmdConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    rfid: RfidConfig = Field(default_factory=RfidConfig)
    display: DisplayConfig = Field(default_factory=DisplayConfig)
    qr: QrConfig = Field(default_factory=QrConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    ocpp: OcppConfig | None = None
    evse: list[EvseConfig] = Field(min_length=1, max_length=64)
    web: WebConfig | None = None  # the status page (agent/web/): off unless configured

    @model_validator(mode="after")
    def _ocpp_section(self) -> AgentConfig:
        if self.backend.protocol != "mqtt" and self.ocpp is None:
            raise ValueError(f"backend.protocol {self.backend.protocol!r} needs an [ocpp] section")
        return self

    @field_validator("evse")
    @classmethod
    def _unique_evses(cls, evses: list[EvseConfig]) -> list[EvseConfig]:
        seen: dict[str, int] = {}
        for i, e in enumerate(evses):
            if e.id in seen:
                raise ValueError(f"evse[{i}].id {e.id!r} is the same as evse[{seen[e.id]}].id")
            seen[e.id] = i
        return evses

    @property
    def topic_root(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.station.id}"

    def evse_ids(self) -> list[str]:
        return [e.id for e in self.evse]


StationConfig.model_rebuild()  # grid_meter refers to MeterConfig, defined after it


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # a quoted TOML key may hold anything: never let it split or forge a log line
            shown = part if part.isprintable() and part.strip() == part and part else repr(part)
            out += ("." if out else "") + shown
    return out or "(top level)"


def format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("sim",)))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {_loc(loc)}: {msg}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such file") from err
    except PermissionError as err:
        raise ConfigError(f"{path}: permission denied") from err
    except IsADirectoryError as err:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err}") from err
    except (RecursionError, ValueError) as err:  # absurd nesting, 5000-digit integers
        raise ConfigError(f"{path}: not usable TOML: {str(err)[:120]}") from err
    except OSError as err:  # not a directory, name too long, symlink loop, I/O error
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err


def load_raw(path: Path, _depth: int = 0) -> dict[str, Any]:
    """Read a TOML file and resolve ``include`` (a board profile) underneath it."""
    data = _read_toml(path)
    include = data.pop("include", None)
    if include is None:
        return data
    if _depth >= 3:
        raise ConfigError(f"{path}: include: nested too deeply")
    if not isinstance(include, str):
        raise ConfigError(f"{path}: include: must be a file path string")
    inc = Path(include)
    candidates = [inc] if inc.is_absolute() else [path.parent / inc, Path.cwd() / inc]
    shipped = None if inc.is_absolute() else profile_path(include)  # by name: "raspberry-pi-4"
    for cand in [*candidates, *([shipped] if shipped else [])]:
        if cand.is_file():
            return _deep_merge(load_raw(cand, _depth + 1), data)
    raise ConfigError(
        f"{path}: include: {include!r} not found (looked in {path.parent}, the working directory "
        f"and the shipped profiles: {', '.join(profile_names())})"
    )


def _apply_evse_defaults(data: dict[str, Any], path: Path) -> dict[str, Any]:
    defaults = data.pop("evse_defaults", None)
    if defaults is None:
        return data
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: evse_defaults: must be a table")
    evses = data.get("evse")
    if isinstance(evses, list):
        data["evse"] = [_deep_merge(defaults, e) if isinstance(e, dict) else e for e in evses]
    return data


def parse_config(data: dict[str, Any], path: Path) -> AgentConfig:
    try:
        return AgentConfig.model_validate(_apply_evse_defaults(dict(data), path))
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err)) from err


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> AgentConfig:
    data = load_raw(path)
    if overrides:
        data = _deep_merge(data, overrides)
    return parse_config(data, path)
