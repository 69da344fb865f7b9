"""The client side of the control socket (``stationctl``, the demo, the tests).

Kept apart from :mod:`agent.control` (the server, which imports the controller's inputs) so that
``stationctl`` imports only the standard library and this: it answers in well under 150 ms.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from agent.errors import AgentError

# the daemon's default (agent.config.StationConfig.control_socket; a test keeps them equal)
DEFAULT_SOCKET = Path("/run/station-agent/control.sock")


class ControlError(AgentError):
    """The daemon could not be reached or refused a control request."""


def call(path: Path, request: dict[str, Any], timeout: float = 15.0) -> Any:
    """Send one request to a running daemon; returns ``result`` or raises ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as err:
        sock.close()
        raise ControlError(f"station-agent is not running (no control socket at {path})") from err
    except PermissionError as err:
        sock.close()
        raise ControlError(
            f"permission denied on {path} (are you in the station-agent group?)"
        ) from err
    except OSError as err:
        sock.close()
        raise ControlError(f"cannot reach station-agent at {path}: {err}") from err
    with sock:
        try:
            try:
                sock.sendall(json.dumps(request).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError) as err:
                # a busy daemon answers at once and closes, perhaps before the request was
                # sent: its reply still waits in our receive buffer
                data = _read_reply(sock)
                if not data:
                    raise ControlError(f"control socket {path}: {err}") from err
            else:
                data = _read_reply(sock)
        except OSError as err:
            raise ControlError(f"control socket {path}: {err}") from err
    try:
        reply = json.loads(data)
    except json.JSONDecodeError as err:
        raise ControlError(f"garbled reply from station-agent: {data[:100]!r}") from err
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
