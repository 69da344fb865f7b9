"""The control socket: JSON lines over a Unix stream socket (mode 0660).

Request ``{"cmd": "status", ...}\\n`` -> reply ``{"ok": true, "result": ...}\\n`` or
``{"ok": false, "error": "..."}\\n``. The server thread only parses and forwards; every request is
answered by the controller's main loop, so it sees and changes state consistently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent.errors import AgentError
from agent.inputs import ControlCall

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REPLY_TIMEOUT_S = 10.0
MAX_CLIENTS = 16  # connections served at once; more are told the daemon is busy

C = TypeVar("C")


class ControlError(AgentError):
    """The daemon could not be reached or refused a control request."""


class ControlServer(Generic[C]):
    """Serves the socket; loop requests are posted as :class:`ControlCall` items and answered
    by the main loop, direct ones run in the client's thread with ``context``."""

    def __init__(self, path: Path, post: Callable[[ControlCall], None], context: C) -> None:
        self.path = path
        self._post = post
        self._context = context
        self._direct: dict[str, Callable[[C, dict[str, Any]], Any]] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def register_direct(self, name: str, handler: Callable[[C, dict[str, Any]], Any]) -> None:
        """A diagnostic that waits (for a card, a QR code): it runs in the client's thread and
        must only read thread-safe driver state, never the store or the EVSE machines."""
        self._direct[name] = handler

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise AgentError(f"{self.path} exists and is not a socket; refusing to replace it")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind and listen under a temporary name, then rename: the socket path appears only
        # once it accepts connections (clients never see "connection refused" at start-up)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        old = os.umask(0o117)  # created 0660: owner and group only
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        os.chmod(tmp, 0o660)
        sock.listen(16)
        os.replace(tmp, self.path)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if not self._stop.is_set():
                    log.error("control socket accept failed: %s", err)
                return
            self._spawn(conn)

    def _spawn(self, conn: socket.socket) -> None:
        """One thread per client, at most MAX_CLIENTS at once; the accept loop never dies."""
        if not self._slots.acquire(blocking=False):
            self._refuse(conn, "the daemon is busy with other control requests; try again")
            return
        try:
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()
        except RuntimeError as err:  # the process is out of threads
            self._slots.release()
            log.error("control socket: cannot start a client thread: %s", err)
            self._refuse(conn, "the daemon cannot serve this request now; try again")

    @staticmethod
    def _refuse(conn: socket.socket, reason: str) -> None:
        with conn:
            try:
                conn.sendall(json.dumps({"ok": False, "error": reason}).encode() + b"\n")
            except OSError as err:
                log.debug("control client went away: %s", err)

    def _client(self, conn: socket.socket) -> None:
        try:
            self._serve_client(conn)
        finally:
            self._slots.release()

    def _serve_client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(REPLY_TIMEOUT_S)
            try:
                line = _read_line(conn)
                reply = self._answer(line)
            except (OSError, ValueError) as err:
                reply = {"ok": False, "error": f"bad request: {err}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError as err:
                log.debug("control client went away: %s", err)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        direct = self._direct.get(str(request.get("cmd")))
        if direct is not None:
            try:
                return {"ok": True, "result": direct(self._context, request)}
            except (AgentError, ArithmeticError, ValueError, TypeError) as err:
                return {"ok": False, "error": str(err)}
        call = ControlCall(request)
        self._post(call)
        if not call.done.wait(REPLY_TIMEOUT_S):
            return {"ok": False, "error": "daemon did not answer in time"}
        return call.reply or {"ok": False, "error": "no reply"}


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return buf.split(b"\n", 1)[0]


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
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as err:
            raise ControlError(f"control socket {path}: {err}") from err
    try:
        reply = json.loads(data)
    except json.JSONDecodeError as err:
        raise ControlError(f"garbled reply from station-agent: {data[:100]!r}") from err
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")
