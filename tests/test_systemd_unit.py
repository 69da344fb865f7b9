"""The systemd unit, sysusers.d and tmpfiles.d files: verified and scored by systemd's own tools.

Needs ``systemd-analyze`` (Debian package ``systemd``; systemd need not be PID 1: ``verify`` and
``security --offline=true`` only read files).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "station-agent.service"
EXEC_START = "/opt/station-agent/bin/station-agent"
INSTALL_HINT = "install it with: apt-get install -y --no-install-recommends systemd"

# Measured with systemd 252 (Debian 12): 1.5 ("OK"). The threshold leaves room for nothing more
# than rounding: any lost hardening setting costs at least 0.1 and fails the test.
EXPOSURE_MAX = 1.5

# The Raspberry Pi 4 station's devices (hardware/raspberry-pi-4.toml, hardware/udev/).
EXPECTED_DEVICES = {
    "/dev/ttyAMA0 rw",
    "/dev/station-rfid rw",
    "/dev/station-meter rw",
    "/dev/gpiochip0 rw",
    "/dev/fb0 rw",
    "/dev/station-camera rw",
}

ENV = dict(
    os.environ,
    SYSTEMD_LOG_LEVEL="info",
    SYSTEMD_LOG_COLOR="0",
    SYSTEMD_PAGER="",
    SYSTEMD_LOG_LOCATION="0",
    LC_ALL="C.UTF-8",
)


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if Path(p).exists()), None
    )
    if path is None:
        pytest.fail(
            f"{name} is missing: these tests need systemd's tools; {INSTALL_HINT}", pytrace=False
        )
    return path


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> values`` of a unit file (keys may repeat; comments skipped)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart= pointing at an executable that exists here (verify checks it)."""
    text = UNIT.read_text() if text is None else text
    exe = shutil.which("station-agent") or str(Path(sys.executable).parent / "station-agent")
    if not Path(exe).exists():
        exe = sys.executable
    assert EXEC_START in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(EXEC_START, exe))
    return copy


def verify_problems(unit: Path) -> list[str]:
    """Every complaint of ``systemd-analyze verify``; [] means the unit is clean.

    verify exits 0 even for unknown keys or unparsable values (it logs "..., ignoring."), so
    every line it prints counts as a problem, except the ones that only say this test machine
    lacks the station's user or groups (sysusers.d creates them on a station).
    """
    proc = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=unit.parent,
        timeout=60,
        check=False,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    absent_identity = re.compile(
        r"(user|group) .*(not found|does not exist|no such)|"
        r"failed to resolve (user|group)",
        re.IGNORECASE,
    )
    problems = [ln for ln in lines if not absent_identity.search(ln)]
    if proc.returncode != 0:
        problems.append(f"systemd-analyze verify exited with {proc.returncode}")
    return problems


def exposure(unit: Path) -> tuple[float, str]:
    proc = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=unit.parent,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", proc.stdout)
    assert proc.returncode == 0 and m, f"unexpected output:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(1)), proc.stdout


def test_unit_verifies(tmp_path: Path) -> None:
    assert verify_problems(unit_copy(tmp_path)) == []


def test_verify_check_catches_mistakes(tmp_path: Path) -> None:
    """The check above must be able to fail: typos and bad values are reported, not ignored."""
    text = UNIT.read_text()
    bad = (
        text.replace("WatchdogSec=30", "WatchdogSex=30")
        .replace("UMask=0007", "UMask=0o007")
        .replace("DeviceAllow=/dev/fb0 rw", "DeviceAllow=/dev/fb0 rwx")
    )
    problems = verify_problems(unit_copy(tmp_path, bad))
    joined = "\n".join(problems)
    assert "WatchdogSex" in joined
    assert "mode" in joined.lower()  # UMask
    assert "rwx" in joined
    assert verify_problems(tmp_path / "no-such.service")  # a missing unit is an error too


def test_exposure_score(tmp_path: Path) -> None:
    score, report = exposure(unit_copy(tmp_path))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= EXPOSURE_MAX, report
    # the score must react to hardening: dropping it all has to show
    weak = "\n".join(
        ln
        for ln in UNIT.read_text().splitlines()
        if not ln.startswith(
            ("Protect", "Private", "SystemCall", "Restrict", "CapabilityBoundingSet", "MemoryDeny")
        )
    )
    weak_score, _ = exposure(unit_copy(tmp_path, weak))
    assert weak_score > score + 3


def test_unit_settings() -> None:
    s = unit_settings(UNIT.read_text())

    def one(key: str, section: str = "Service") -> str:
        values = s.get((section, key))
        assert values is not None and len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("ExecStart") == f"{EXEC_START} run --config /etc/station-agent/config.toml"
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec") == "30"
    assert one("Restart") == "always"
    assert one("RestartPreventExitStatus") == "78"  # agent.config.EX_CONFIG
    assert int(one("StartLimitBurst", "Unit")) >= 3
    assert one("StartLimitIntervalSec", "Unit")
    assert one("User") == one("Group") == "station-agent"
    assert one("SupplementaryGroups").split() == ["dialout", "gpio", "video"]
    assert one("StateDirectory") == one("RuntimeDirectory") == "station-agent"
    assert one("RuntimeDirectoryMode") == "0750"
    assert one("UMask") == "0007"
    assert one("CapabilityBoundingSet") == "" and one("AmbientCapabilities") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one("DevicePolicy") == "closed"
    assert set(s[("Service", "DeviceAllow")]) == EXPECTED_DEVICES
    assert s[("Service", "SystemCallFilter")][0] == "@system-service"
    for key, value in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
    ]:
        assert one(key) == value
    assert ("Service", "PrivateDevices") not in s  # would hide the station's devices
    assert ("Service", "ProcSubset") not in s  # would hide /proc/sys/kernel/random/boot_id


def test_config_paths_match_the_unit() -> None:
    from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, StationConfig

    fields = StationConfig.model_fields
    assert str(DEFAULT_CONFIG_PATH) == "/etc/station-agent/config.toml"
    assert EX_CONFIG == 78
    assert str(fields["state_dir"].default) == "/var/lib/station-agent"  # StateDirectory=
    assert str(fields["control_socket"].default).startswith("/run/station-agent/")


def test_sysusers_and_tmpfiles(tmp_path: Path) -> None:
    """Apply both files to an empty root: the user, its groups and /etc/station-agent appear."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\nvideo:x:44:\n")
    for cmd in (
        [
            tool("systemd-sysusers"),
            f"--root={root}",
            str(SYSTEMD / "sysusers.d/station-agent.conf"),
        ],
        [
            tool("systemd-tmpfiles"),
            f"--root={root}",
            "--create",
            str(SYSTEMD / "tmpfiles.d/station-agent.conf"),
        ],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60, check=False)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
        noise = [
            ln
            for ln in proc.stderr.splitlines()
            if ln.strip() and not ln.startswith(("Creating group", "Creating user"))
        ]
        assert noise == [], noise
    passwd = (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    user = next(ln.split(":") for ln in passwd.splitlines() if ln.startswith("station-agent:"))
    assert user[6] == "/usr/sbin/nologin"
    gid = next(ln.split(":")[2] for ln in group.splitlines() if ln.startswith("station-agent:"))
    assert user[3] == gid
    for name in ("dialout", "gpio", "video"):
        members = next(ln.split(":")[3] for ln in group.splitlines() if ln.startswith(f"{name}:"))
        assert "station-agent" in members.split(","), name
    for d in (root / "etc/station-agent", root / "etc/station-agent/tls"):
        st = d.stat()
        assert oct(st.st_mode & 0o7777) == "0o750", d
        if os.geteuid() == 0:
            assert (st.st_uid, str(st.st_gid)) == (0, gid), d


# PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1, PR_GET_MDWE = 66
MDWE_CHILD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)  # kernel older than 6.3: no PR_SET_MDWE
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""
MDWE_WORKLOAD = """
import ctypes, importlib, sqlite3, ssl
assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1, "MDWE not inherited across exec"
import agent.daemon, agent.hardware, agent.link, agent.store, agent.sdnotify, agent.tls
import paho.mqtt.client
for optional in ("numpy", "cv2", "pyzbar.pyzbar", "gpiod", "serial", "pymodbus.client", "nfc"):
    try:
        importlib.import_module(optional)
    except ImportError:
        pass
sqlite3.connect(":memory:").execute("create table t (x)")
ssl.create_default_context()
print("ok")
"""


def test_memory_deny_write_execute_is_fine_for_the_agent() -> None:
    """MemoryDenyWriteExecute=yes: the interpreter and the agent's native modules still load.

    The kernel's own W^X switch (PR_SET_MDWE, Linux >= 6.3) stands in for systemd's seccomp
    filter; both refuse writable+executable mappings.
    """
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_CHILD, MDWE_WORKLOAD],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if proc.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
