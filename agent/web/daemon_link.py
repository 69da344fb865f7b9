"""The status page's only way to the daemon: control-socket requests, off the event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from agent.control import call

READ_TIMEOUT_S = 5.0
ACTION_TIMEOUT_S = 60.0  # a self-test probes every device


class DaemonLink:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def call(self, cmd: str, timeout: float = READ_TIMEOUT_S, **args: Any) -> Any:
        """The command's result; :class:`~agent.control.ControlError` when the daemon cannot
        be reached or refuses."""
        request = {"cmd": cmd, **args}
        return await anyio.to_thread.run_sync(lambda: call(self.socket, request, timeout))
