"""Configuration loading (agent.config) and the CLI's handling of a bad config (exit 78)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import EX_CONFIG, AgentConfig, load_config
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SIMULATED = REPO / "hardware" / "simulated.toml"

MINIMAL = """\
[station]
id = "ST-0001"
operator_id = "DE*ICE"
location = "Porschestr. 1, Stuttgart"

[[evse]]
id = "DE*ICE*E000001*1"

[[evse]]
id = "DE*ICE*E000001*2"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


def test_simulated_toml_loads() -> None:
    cfg = load_config(SIMULATED)
    assert isinstance(cfg, AgentConfig)
    assert cfg.station.id == "ST-SIM-0001"
    assert cfg.station.operator_id == "DE*ICE"
    assert cfg.evse_ids() == ["DE*ICE*E000001*1", "DE*ICE*E000001*2"]
    assert [e.meter.power_kw for e in cfg.evse] == [11.0, 22.0]
    assert cfg.evse[1].meter.initial_kwh == 1520.25
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert cfg.topic_root == "stations/ST-SIM-0001"
    assert cfg.auth.stop_with_same_token is True
    assert cfg.auth.connection_timeout_s == 60.0
    assert cfg.store.retention_days == 90
    assert cfg.rfid.driver == "sim"


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.mqtt.auth_timeout_s == 5.0
    assert cfg.mqtt.topic_prefix == "stations"
    assert cfg.auth.connection_timeout_s == 60.0
    assert cfg.store.retention_days == 90
    assert cfg.station.state_dir == Path("/var/lib/station-agent")
    assert cfg.station.control_socket == Path("/run/station-agent/control.sock")


def test_mqtts_port_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + '[mqtt]\nurl = "mqtts://broker.example"\n'))
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("broker.example", 8883, True)


def test_overrides_win(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL),
        {"mqtt": {"url": "mqtt://10.0.0.1:1999"}, "station": {"state_dir": str(tmp_path)}},
    )
    assert cfg.mqtt.port == 1999
    assert cfg.station.state_dir == tmp_path
    assert cfg.station.id == "ST-0001"  # untouched keys of the same table survive


# ------------------------------------------------------------------------------ file errors
def test_missing_file(tmp_path: Path) -> None:
    msg = config_error(tmp_path / "nope.toml")
    assert "no such file" in msg


def test_directory_instead_of_file(tmp_path: Path) -> None:
    msg = config_error(tmp_path)
    assert "directory" in msg


def test_broken_toml(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[mqtt\nurl = 1\n")
    msg = config_error(path)
    assert "not valid TOML" in msg
    assert "line" in msg  # where


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(MINIMAL.replace("Stuttgart", "Stuttg\xe4rt").encode("latin-1"))
    msg = config_error(path)
    assert "TOML" in msg or "UTF-8" in msg


# ------------------------------------------------------------------------------ validation
BAD: list[tuple[str, str, str, str]] = [
    # (id, change applied to MINIMAL, key path, words of the reason)
    ("station-id-int", 'id = "ST-0001"=>id = 17', "station.id", "valid string"),
    ("station-id-slash", 'id = "ST-0001"=>id = "ST/0001"', "station.id", "topic"),
    ("station-id-plus", 'id = "ST-0001"=>id = "ST+0001"', "station.id", "topic"),
    ("station-id-hash", 'id = "ST-0001"=>id = "ST#0001"', "station.id", "topic"),
    ("station-id-empty", 'id = "ST-0001"=>id = ""', "station.id", "must match"),
    ("station-id-too-long", f'id = "ST-0001"=>id = "{"S" * 65}"', "station.id", "must match"),
    (
        "operator-id",
        'operator_id = "DE*ICE"=>operator_id = "D*ICE"',
        "station.operator_id",
        "OperatorID",
    ),
    (
        "operator-id-type",
        'operator_id = "DE*ICE"=>operator_id = ["DE*ICE"]',
        "station.operator_id",
        "string",
    ),
    ("station-missing", "[station]=>[stationx]", "station", "Field required"),
    (
        "location-missing",
        'location = "Porschestr. 1, Stuttgart"=>',
        "station.location",
        "Field required",
    ),
    (
        "location-empty",
        'location = "Porschestr. 1, Stuttgart"=>location = ""',
        "station.location",
        "at least 1",
    ),
    (
        "unknown-station-key",
        '[station]=>[station]\ncolour = "red"',
        "station.colour",
        "unknown key",
    ),
    ("unknown-table", '[station]=>[mqttt]\nurl = "x"\n[station]', "mqttt", "unknown key"),
    ("evse-id", 'id = "DE*ICE*E000001*2"=>id = "DE*ICE*X000001*2"', "evse[1].id", "EvseID"),
    ("evse-id-type", 'id = "DE*ICE*E000001*2"=>id = 2', "evse[1].id", "string"),
    (
        "evse-unknown-key",
        'id = "DE*ICE*E000001*2"=>id = "DE*ICE*E000001*2"\ncolour = 1',
        "evse[1].colour",
        "unknown key",
    ),
    (
        "evse-meter-unknown-key",
        'id = "DE*ICE*E000001*2"=>id = "DE*ICE*E000001*2"\nmeter = { driver = "sim", kw = 1 }',
        "evse[1].meter.kw",
        "unknown key",
    ),
    (
        "evse-meter-power-type",
        'id = "DE*ICE*E000001*2"=>id = "DE*ICE*E000001*2"\n'
        'meter = { driver = "sim", power_kw = "lots" }',
        "evse[1].meter.power_kw",
        "number",
    ),
    (
        "evse-meter-no-driver",
        'id = "DE*ICE*E000001*2"=>id = "DE*ICE*E000001*2"\nmeter = { power_kw = 7.4 }',
        "evse[1].meter",
        "driver",
    ),
    (
        "evse-relay-driver",
        'id = "DE*ICE*E000001*2"=>id = "DE*ICE*E000001*2"\nrelay = { driver = "gpio9" }',
        "evse[1].relay",
        "gpio9",
    ),
]

TAIL_BAD: list[tuple[str, str, str, str]] = [
    # (id, text appended to MINIMAL, key path, words of the reason)
    ("mqtt-http", '[mqtt]\nurl = "http://127.0.0.1:1883"\n', "mqtt.url", "mqtt://"),
    ("mqtt-no-host", '[mqtt]\nurl = "mqtt://:1883"\n', "mqtt.url", "no host"),
    ("mqtt-bad-port", '[mqtt]\nurl = "mqtt://host:99999"\n', "mqtt.url", "port"),
    ("mqtt-url-type", "[mqtt]\nurl = 1883\n", "mqtt.url", "string"),
    ("mqtt-prefix-plus", '[mqtt]\ntopic_prefix = "a/+"\n', "mqtt.topic_prefix", "'+'"),
    (
        "mqtt-timeout-negative",
        "[mqtt]\nauth_timeout_s = -1\n",
        "mqtt.auth_timeout_s",
        "greater than 0",
    ),
    ("mqtt-timeout-type", '[mqtt]\nauth_timeout_s = "soon"\n', "mqtt.auth_timeout_s", "number"),
    ("mqtt-keepalive-float", "[mqtt]\nkeepalive_s = 1.5\n", "mqtt.keepalive_s", "integer"),
    ("mqtt-unknown-key", '[mqtt]\nhost = "x"\n', "mqtt.host", "unknown key"),
    (
        "auth-bool-type",
        '[auth]\nstop_with_same_token = "perhaps"\n',
        "auth.stop_with_same_token",
        "boolean",
    ),
    (
        "auth-timeout-zero",
        "[auth]\nconnection_timeout_s = 0\n",
        "auth.connection_timeout_s",
        "greater than 0",
    ),
    (
        "store-retention",
        "[store]\nretention_days = 0\n",
        "store.retention_days",
        "greater than or equal to 1",
    ),
    ("rfid-driver", '[rfid]\ndriver = "magic"\n', "rfid.driver", "'sim'"),
    ("rfid-pn532-no-path", '[rfid]\ndriver = "pn532"\n', "rfid", "needs path"),
    ("qr-template", '[qr]\nurl_template = "http://m.example/qr"\n', "qr.url_template", "{evse_id}"),
    ("evse-defaults-not-table", "evse_defaults = 5\n", "evse_defaults", "table"),
]


def _apply(change: str) -> str:
    old, new = change.split("=>", 1)
    assert MINIMAL.count(old) >= 1, old
    # change the last occurrence (the second EVSE for evse keys)
    head, _, tail = MINIMAL.rpartition(old)
    return head + new + tail


@pytest.mark.parametrize(("change", "key", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_values(tmp_path: Path, change: str, key: str, reason: str) -> None:
    msg = config_error(write(tmp_path, _apply(change)))
    assert f"{key}:" in msg or f"{key} " in msg, msg
    assert reason in msg, msg


@pytest.mark.parametrize(
    ("tail", "key", "reason"), [b[1:] for b in TAIL_BAD], ids=[b[0] for b in TAIL_BAD]
)
def test_invalid_tables(tmp_path: Path, tail: str, key: str, reason: str) -> None:
    # top-level keys must come before the first table
    text = tail + MINIMAL if tail.startswith("evse_defaults") else MINIMAL + tail
    msg = config_error(write(tmp_path, text))
    assert f"{key}:" in msg, msg
    assert reason in msg, msg


def test_unknown_key_message_names_it(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, MINIMAL + "[auth]\nstop_with_same_card = true\n"))
    assert "auth.stop_with_same_card: unknown key" in msg


def test_all_problems_are_listed(tmp_path: Path) -> None:
    text = _apply('id = "ST-0001"=>id = "ST/1"') + '[mqtt]\nurl = "http://x"\n'
    msg = config_error(write(tmp_path, text))
    assert "2 problem(s)" in msg
    assert "station.id:" in msg and "mqtt.url:" in msg


def test_empty_evse_list(tmp_path: Path) -> None:
    text = "evse = []\n" + MINIMAL.split("[[evse]]", maxsplit=1)[0]
    msg = config_error(write(tmp_path, text))
    assert "evse:" in msg and "at least 1" in msg


def test_evse_not_a_list(tmp_path: Path) -> None:
    text = 'evse = "DE*ICE*E000001*1"\n' + MINIMAL.split("[[evse]]", maxsplit=1)[0]
    msg = config_error(write(tmp_path, text))
    assert "evse:" in msg and "list" in msg


def test_no_evse_at_all(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, MINIMAL.split("[[evse]]", maxsplit=1)[0]))
    assert "evse:" in msg and "Field required" in msg


def test_duplicate_evse_ids_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("DE*ICE*E000001*2", "DE*ICE*E000001*1")
    msg = config_error(write(tmp_path, text))
    assert "evse[1].id 'DE*ICE*E000001*1' is the same as evse[0].id" in msg


def test_duplicate_evse_ids_name_the_key_path(tmp_path: Path) -> None:
    text = MINIMAL.replace("DE*ICE*E000001*2", "DE*ICE*E000001*1")
    msg = config_error(write(tmp_path, text))
    assert "evse[1]" in msg, msg


# ------------------------------------------------------------------------------ include
BOARD = """\
[mqtt]
url = "mqtt://board.local:1883"
keepalive_s = 60
topic_prefix = "board"

[rfid]
driver = "pn532"
path = "tty:S0:pn532"

[display]
driver = "none"
"""


def test_include_board_profile_main_file_wins(tmp_path: Path) -> None:
    (tmp_path / "boards").mkdir()
    write(tmp_path / "boards", BOARD, "board.toml")
    main = (
        'include = "boards/board.toml"\n'
        + MINIMAL
        + ('[mqtt]\nurl = "mqtt://backend.example:1883"\n[display]\ndriver = "sim"\n')
    )
    cfg = load_config(write(tmp_path, main))
    assert cfg.mqtt.url == "mqtt://backend.example:1883"  # main overrides
    assert cfg.mqtt.keepalive_s == 60  # from the board, merged key by key
    assert cfg.mqtt.topic_prefix == "board"
    assert cfg.rfid.driver == "pn532" and cfg.rfid.path == "tty:S0:pn532"
    assert cfg.display.driver == "sim"
    assert len(cfg.evse) == 2


def test_include_absolute_path(tmp_path: Path) -> None:
    board = write(tmp_path, BOARD, "board.toml")
    sub = tmp_path / "etc"
    sub.mkdir()
    cfg = load_config(write(sub, f'include = "{board}"\n' + MINIMAL))
    assert cfg.rfid.driver == "pn532"


def test_include_missing(tmp_path: Path) -> None:
    path = write(tmp_path, 'include = "nope.toml"\n' + MINIMAL)
    msg = config_error(path)
    assert "include" in msg and "nope.toml" in msg and "not found" in msg


def test_include_not_a_string(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, "include = 5\n" + MINIMAL))
    assert "include" in msg and "string" in msg


def test_include_broken_profile_names_the_profile(tmp_path: Path) -> None:
    board = write(tmp_path, "[mqtt\n", "board.toml")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'include = "board.toml"\n' + MINIMAL))
    assert str(board) in str(info.value) and "not valid TOML" in str(info.value)


def test_include_loop_is_refused(tmp_path: Path) -> None:
    write(tmp_path, 'include = "b.toml"\n', "a.toml")
    write(tmp_path, 'include = "a.toml"\n', "b.toml")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(write(tmp_path, 'include = "a.toml"\n' + MINIMAL))


# ------------------------------------------------------------------------------ evse_defaults
def test_evse_defaults_apply_to_each_evse(tmp_path: Path) -> None:
    text = (
        '[evse_defaults]\nmeter = { driver = "sim", power_kw = 7.4, initial_kwh = 3.0 }\n'
        'plug = { driver = "sim", plugged = true }\n'
        + MINIMAL
        + 'meter = { driver = "sim", power_kw = 22.0 }\n'  # belongs to the second EVSE
    )
    cfg = load_config(write(tmp_path, text))
    assert [e.meter.power_kw for e in cfg.evse] == [7.4, 22.0]
    assert [e.meter.initial_kwh for e in cfg.evse] == [3.0, 3.0]  # merged key by key
    assert [e.plug.plugged for e in cfg.evse] == [True, True]


def test_evse_defaults_from_board_profile(tmp_path: Path) -> None:
    write(tmp_path, '[evse_defaults]\nmeter = { driver = "sim", power_kw = 3.7 }\n', "board.toml")
    cfg = load_config(write(tmp_path, 'include = "board.toml"\n' + MINIMAL))
    assert [e.meter.power_kw for e in cfg.evse] == [3.7, 3.7]


def test_evse_defaults_errors_name_the_evse(tmp_path: Path) -> None:
    text = '[evse_defaults]\nmeter = { driver = "sim", power_kw = -1 }\n' + MINIMAL
    msg = config_error(write(tmp_path, text))
    assert "evse[0].meter.power_kw:" in msg and "evse[1].meter.power_kw:" in msg


# ------------------------------------------------------------------------------ CLI
def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_cli_run_with_broken_config_exits_78(tmp_path: Path) -> None:
    path = write(tmp_path, _apply('id = "DE*ICE*E000001*2"=>id = "nonsense"'))
    proc = _run("agent.cli", "run", "--config", str(path), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == EX_CONFIG == 78
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("station-agent: ")
    assert proc.stderr.count("station-agent: ") == 1  # one message
    assert str(path) in proc.stderr and "evse[1].id" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "s").exists()  # nothing was started


def test_cli_run_with_missing_config_exits_78(tmp_path: Path) -> None:
    proc = _run("agent.cli", "run", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 78
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"station-agent: {tmp_path / 'missing.toml'}: no such file"


def test_stationctl_config_check_ok() -> None:
    proc = _run("agent.stationctl", "config", "check", str(SIMULATED))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "2 EVSE" in proc.stdout


def test_stationctl_config_check_broken(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[mqtt]\nurl = "http://x"\n')
    proc = _run("agent.stationctl", "config", "check", str(path))
    assert proc.returncode == 78
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("stationctl: ")
    assert str(path) in proc.stderr and "mqtt.url" in proc.stderr
