"""The built wheel, installed outside the checkout, is a complete station-agent.

The wheel is built from a copy of the sources (no network: the test extra brings setuptools,
so the build needs no isolated environment), installed with ``pip install --target`` into a
scratch directory, and run from a working directory that is not the checkout: the board
profiles, udev rules, broker examples and the simulated station must come from the wheel.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import shipped
from agent.config import load_config

ROOT = Path(__file__).resolve().parent.parent
HARDWARE = ROOT / "hardware"
PIP = [sys.executable, "-m", "pip"]


def _hardware_files() -> list[str]:
    return sorted(str(p.relative_to(HARDWARE)) for p in HARDWARE.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("agent", "drivers", "hardware"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (whl,) = out.glob("station_agent-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield target


def _run(
    installed: Path, cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(installed), HOME=str(cwd))
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_package_directory_is_listed_in_pyproject() -> None:
    """The packages are listed (hardware/ is mapped in): a new sub-package, with or without an
    __init__.py, must be added to [tool.setuptools] packages or the wheel lacks it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("agent", "drivers")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk | {"agent.hardware_files"} == set(setuptools["packages"])


def test_the_wheel_holds_every_hardware_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_files = sorted(
        n.removeprefix("agent/hardware_files/")
        for n in names
        if n.startswith("agent/hardware_files/")
    )
    assert shipped_files == _hardware_files()
    assert "agent/schemas/cdr.json" in names and "agent/py.typed" in names
    assert not any(n.startswith(("hardware/", "tests/")) for n in names)


def test_profiles_are_found_by_name_in_the_checkout(tmp_path: Path) -> None:
    assert {"raspberry-pi-4", "simulated"} <= set(shipped.profile_names())
    for name in ("raspberry-pi-4", "raspberry-pi-4.toml", "hardware/raspberry-pi-4.toml"):
        assert shipped.profile_path(name) == HARDWARE / "raspberry-pi-4.toml"
    assert shipped.profile_path("../etc/passwd") is None
    assert shipped.profile_path("no-such-board") is None
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        'include = "raspberry-pi-4"\n[station]\nid = "ST-1"\noperator_id = "DE*ICE"\n'
        'location = "x"\n[[evse]]\nid = "DE*ICE*E000001*1"\n'
    )
    assert load_config(cfg).evse[0].relay.driver == "gpio"


def test_the_simulated_station_keeps_its_state_in_the_users_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    station = load_config(shipped.simulated_station()).station
    assert station.state_dir == tmp_path / ".local/state/station-agent-sim"
    assert station.control_socket.parent == station.state_dir


def test_installed_package_finds_profiles_and_runs_the_demo(
    installed: Path, tmp_path: Path
) -> None:
    """Outside the checkout: a config that includes a profile by name checks out, and the demo
    (its own Mosquitto, the shipped simulated station) acknowledges every CDR."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(installed, work, "-c", "import agent.shipped as s; print(s.hardware_dir())")
    assert where.stdout.strip() == str(installed / "agent" / "hardware_files"), where.stderr
    cfg = work / "config.toml"
    cfg.write_text(
        'include = "raspberry-pi-4"\n[station]\nid = "ST-1"\noperator_id = "DE*ICE"\n'
        'location = "x"\n[[evse]]\nid = "DE*ICE*E000001*1"\n'
    )
    check = _run(installed, work, "-m", "agent.stationctl", "config", "check", str(cfg))
    assert check.returncode == 0, check.stderr
    demo = _run(installed, work, "-m", "agent.cli", "demo", "--seconds", "0.2", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "2 session(s), 2 CDR(s) acknowledged" in demo.stdout
    assert "Traceback" not in demo.stderr
    # the story: the backend's replies, the meter while charging, no status told twice
    lines = [line.split(None, 1)[1] for line in demo.stdout.splitlines() if "s  " in line[:12]]
    assert sum("backend  auth/res  accepted" in x for x in lines) == 2
    assert sum("backend  cdr/ack" in x for x in lines) == 2
    assert sum("kWh charged" in x and "kW (register" in x for x in lines) >= 2
    status = [x for x in lines if "status    " in x]
    assert all(a != b for a, b in itertools.pairwise(status)), status


# --------------------------------------------------------- the README's install section
SKIPPED = ("apt-get ", "udevadm ", "systemctl ", "stationctl selftest")  # need the real machine


def _install_block() -> list[str]:
    """The README's install commands, one per line (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Install on a station") :]
    block = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh"))]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _for_scratch_root(line: str, wheel: Path) -> str | None:
    """One README line as it runs in the scratch root ``$ROOT``; None: left out (SKIPPED).

    Absolute paths move under ``$ROOT``, systemd-sysusers/-tmpfiles get ``--root``, and the
    venv gets the wheel built by this module (no network: its dependencies are the test
    venv's, through a .pth file) instead of ``pip install .[...]`` from PyPI."""
    if line.startswith(SKIPPED):
        return None
    if line.startswith("python3 -m venv "):
        return f"{sys.executable} -m venv --without-pip $ROOT/opt/station-agent"
    if line.startswith("/opt/station-agent/bin/pip install"):
        deps = sysconfig.get_paths()["purelib"]
        site = f"$ROOT/opt/station-agent/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
        return (
            f"{sys.executable} -m pip -q --python $ROOT/opt/station-agent/bin/python install "
            f"--no-deps {wheel} && echo {deps} > {site}/site-packages/test-deps.pth"
        )
    line = re.sub(r"(?<![\w.$/-])/(etc|opt|usr/local)/", r"$ROOT/\1/", line)
    line = re.sub(r"\bsystemd-(sysusers|tmpfiles) ", r"systemd-\1 --root=$ROOT ", line)
    return re.sub(r"^stationctl ", "$ROOT/usr/local/bin/stationctl ", line)


def test_the_readme_install_section_in_a_scratch_root(wheel: Path, tmp_path: Path) -> None:
    lines = _install_block()
    skipped = [line for line in lines if _for_scratch_root(line, wheel) is None]
    left_out = ["apt-get", "udevadm", "systemctl", "systemctl", "stationctl"]
    assert [s.split()[0] for s in skipped] == left_out
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    script = "\n".join(x for line in lines if (x := _for_scratch_root(line, wheel)))
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,  # a checkout, as the README says
        env=dict(os.environ, ROOT=str(root)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, f"{script}\n---\n{res.stdout}{res.stderr}"
    assert res.stdout.strip().endswith(
        "/etc/station-agent/config.toml: OK (station ST-0001, 1 EVSE(s))"
    )
    group = {
        line.split(":")[0]: int(line.split(":")[2])
        for line in (root / "etc/group").read_text().splitlines()
    }
    config = (root / "etc/station-agent/config.toml").stat()
    assert (stat.S_IMODE(config.st_mode), config.st_gid) == (0o640, group["station-agent"])
    etc = (root / "etc/station-agent").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_gid) == (0o750, group["station-agent"])
    assert "station-agent:" in (root / "etc/passwd").read_text()
    assert (root / "etc/udev/rules.d/99-station-agent.rules").is_file()
    assert (root / "etc/systemd/system/station-agent.service").is_file()
    assert 'include = "raspberry-pi-4"' in (root / "etc/station-agent/config.toml").read_text()
