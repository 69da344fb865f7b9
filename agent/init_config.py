"""``station-agent init``: a station's first config.toml, from a board profile and its identity.

    station-agent init --profile raspberry-pi-4 --station-id ST-0001 --operator-id 'DE*ICE' \\
        --broker mqtts://broker.example.com:8883 > config.toml

The text is validated exactly as the daemon will read it (the profile merged underneath) before
it is printed: a wrong station id, operator id, EVSE id or broker URL is a configuration error
(exit 78) naming the option, and nothing is printed.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import _deep_merge, load_raw, parse_config
from agent.errors import ConfigError
from agent.shipped import profile_names, profile_path

TLS_FILES = """\
# mutual TLS (the station's certificate, CN = its station id); the files' modes are set by
# systemd/tmpfiles.d/station-agent.conf
ca_file = "/etc/station-agent/tls/ca.pem"
cert_file = "/etc/station-agent/tls/station.pem"
key_file = "/etc/station-agent/tls/station.key"
"""


@dataclass(frozen=True, kw_only=True)
class InitRequest:
    profile: str
    station_id: str
    operator_id: str
    broker: str
    location: str | None = None
    evse_ids: list[str] = field(default_factory=list)

    def evses(self) -> list[str]:
        """The EVSE ids asked for, or one derived from the operator and station id."""
        if self.evse_ids:
            return self.evse_ids
        return [f"{self.operator_id}*E{re.sub('[^A-Za-z0-9]', '', self.station_id).upper()}*1"]


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def render(req: InitRequest) -> str:
    """The config text (not yet validated)."""
    tls = req.broker.startswith("mqtts://")
    lines = [
        f"# station-agent configuration for station {req.station_id} (station-agent init).",
        "# Check: stationctl config check /etc/station-agent/config.toml",
        f"include = {_q(req.profile)}  # board profile: devices, pins, meter (shipped by name)",
        "",
        "[station]",
        f"id = {_q(req.station_id)}",
        f"operator_id = {_q(req.operator_id)}",
        f"location = {_q(req.location or req.station_id)}",
        "",
        "[mqtt]",
        f"url = {_q(req.broker)}",
        *([TLS_FILES.rstrip("\n")] if tls else []),
        "",
    ]
    if not req.evse_ids:
        lines.append("# the EVSE id printed on the charge point (its QR sticker): check it")
    for evse_id in req.evses():
        lines += ["[[evse]]", f"id = {_q(evse_id)}", ""]
    return "\n".join(lines)


def _profile(name: str) -> Path:
    path = Path(name)
    found = path if path.is_file() else profile_path(name)
    if found is None:
        raise ConfigError(
            f"--profile: {name!r} is neither a file nor a shipped profile "
            f"({', '.join(profile_names())})"
        )
    return found.resolve()


def build(req: InitRequest) -> str:
    """The config text, validated as the daemon will read it; ConfigError if it is invalid.

    TLS files named in it need not exist yet (they are installed after the config)."""
    profile = _profile(req.profile)
    text = render(InitRequest(**{**req.__dict__, "profile": _include_name(req.profile, profile)}))
    data: dict[str, Any] = tomllib.loads(text)
    data.pop("include")
    parse_config(_deep_merge(load_raw(profile), data), Path("the generated config"))
    return text


def _include_name(asked: str, found: Path) -> str:
    """A shipped profile by its name (it then survives upgrades); a file by its full path."""
    shipped = profile_path(asked)
    return found.stem if shipped is not None and shipped.resolve() == found else str(found)
