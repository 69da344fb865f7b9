"""Fixtures: a real Mosquitto on loopback, the reference backend, daemons as child processes."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backend_sim import BackendSim
from agent.broker import INSTALL_HINT, Mosquitto
from tests.helpers import Daemon, station_config


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail(f"the tests need a real Mosquitto broker: {INSTALL_HINT}", pytrace=False)
    mosq = Mosquitto()
    mosq.start()
    yield mosq
    mosq.close()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of its own per test, so retained messages never leak between tests."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def backend(broker: Mosquitto, prefix: str) -> Iterator[BackendSim]:
    sim = BackendSim(broker.url, prefix=prefix)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def make_daemon(tmp_path: Path, broker: Mosquitto, prefix: str) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(start: bool = True, evses: int = 1, **overrides: Any) -> Daemon:
        d = Daemon(tmp_path, station_config(tmp_path, broker.url, prefix, evses=evses, **overrides))
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()
