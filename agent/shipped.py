"""Files that ship with the package: board profiles, udev rules, broker examples, the simulated
station (the repository's top-level ``hardware/``, the source of truth).

In a checkout (and an editable install) they are read from ``hardware/`` beside ``agent/``; in a
built wheel ``hardware/`` is mapped to the package ``agent.hardware_files`` (see
``[tool.setuptools.package-dir]`` in pyproject.toml), so an installed station finds them by
name without the checkout: ``include = "raspberry-pi-4"``.
"""

from __future__ import annotations

from pathlib import Path

_AGENT = Path(__file__).resolve().parent
INSTALLED_DIR = _AGENT / "hardware_files"  # a built wheel
CHECKOUT_DIR = _AGENT.parent / "hardware"  # the repository (and editable installs)


def hardware_dir() -> Path:
    """The directory of the shipped hardware files (the wheel's copy first)."""
    return INSTALLED_DIR if INSTALLED_DIR.is_dir() else CHECKOUT_DIR


def profile_names() -> list[str]:
    """Every shipped station profile, by name (``raspberry-pi-4``, ``simulated``)."""
    return sorted(p.stem for p in hardware_dir().glob("*.toml"))


def profile_path(name: str) -> Path | None:
    """A shipped profile by name (``raspberry-pi-4``, ``raspberry-pi-4.toml`` or the
    repository-relative ``hardware/raspberry-pi-4.toml``); None if there is no such profile."""
    stem = Path(name).name.removesuffix(".toml")
    if not stem or Path(name).parent not in (Path("."), Path("hardware")):
        return None
    path = hardware_dir() / f"{stem}.toml"
    return path if path.is_file() else None


def simulated_station() -> Path:
    """The simulated station's config (two EVSEs, every device simulated)."""
    return hardware_dir() / "simulated.toml"
