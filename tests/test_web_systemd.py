"""The status page's systemd unit: verified and scored by systemd's own tools, and held to the
daemon's hardening (same values), with no device access and no access to the state directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.test_systemd_unit import (
    EXEC_START,
    MDWE_CHILD,
    SYSTEMD,
    UNIT,
    exposure,
    unit_settings,
    verify_problems,
)

WEB_UNIT = SYSTEMD / "station-agent-web.service"
# Measured with systemd 252 (Debian 12); any lost hardening setting costs at least 0.1.
WEB_EXPOSURE_MAX = 1.3
SAME_AS_DAEMON = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "RestrictSUIDSGID",
    "RemoveIPC",
    "LockPersonality",
    "RestrictRealtime",
    "RestrictNamespaces",
    "MemoryDenyWriteExecute",
    "KeyringMode",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "SystemCallArchitectures",
    "DevicePolicy",
)


def web_unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    text = WEB_UNIT.read_text() if text is None else text
    exe = shutil.which("station-agent") or str(Path(sys.executable).parent / "station-agent")
    if not Path(exe).exists():
        exe = sys.executable
    assert EXEC_START in text
    copy = tmp_path / WEB_UNIT.name
    copy.write_text(text.replace(EXEC_START, exe))
    return copy


def test_web_unit_verifies_and_scores(tmp_path: Path) -> None:
    unit = web_unit_copy(tmp_path)
    assert verify_problems(unit) == []
    score, report = exposure(unit)
    print(f"station-agent-web exposure: {score}")
    assert score <= WEB_EXPOSURE_MAX, report


def test_web_unit_has_the_daemons_hardening_and_no_devices_or_state() -> None:
    web = unit_settings(WEB_UNIT.read_text())
    daemon = unit_settings(UNIT.read_text())
    for key in SAME_AS_DAEMON:
        assert web.get(("Service", key)) == daemon.get(("Service", key)), key

    def one(key: str) -> str:
        values = web.get(("Service", key))
        assert values is not None and len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("ExecStart") == f"{EXEC_START} web --config /etc/station-agent/config.toml"
    assert one("RestartPreventExitStatus") == "78"
    # no device access
    assert one("PrivateDevices") == "yes" and ("Service", "DeviceAllow") not in web
    assert one("SupplementaryGroups") == "station-agent"  # not dialout, gpio, video
    # the daemon's state: not its user, hidden, never writable
    assert one("DynamicUser") == "yes" and ("Service", "User") not in web
    hidden = {p.lstrip("-") for v in web[("Service", "InaccessiblePaths")] for p in v.split()}
    # the store, and the daemon's broker key and password
    assert {"/var/lib/station-agent", "/etc/station-agent/tls"} <= hidden
    assert "/etc/station-agent/mqtt-password" in hidden
    assert one("StateDirectory") == "station-agent-web"
    assert ("Service", "ReadWritePaths") not in web


MDWE_WEB_WORKLOAD = """
import ctypes, ssl, tempfile
from pathlib import Path
assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1, "MDWE not inherited across exec"
import uvicorn, starlette.applications, anyio
import agent.web.app, agent.web.server
from agent.web.certs import make_self_signed
from agent.web.passwd import hash_password
d = Path(tempfile.mkdtemp())
make_self_signed(d / "c.pem", d / "k.pem", "ST-1", "127.0.0.1")
ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(d / "c.pem", d / "k.pem")
assert hash_password("long enough").verify("long enough")
print("ok")
"""


def test_memory_deny_write_execute_is_fine_for_the_web_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_CHILD, MDWE_WEB_WORKLOAD],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if proc.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
