"""The control socket: JSON lines over a Unix stream socket (mode 0660).

Request ``{"cmd": "status", ...}\\n`` -> reply ``{"ok": true, "result": ...}\\n`` or
``{"ok": false, "error": "..."}\\n``. The server thread only parses and forwards; every request is
answered by the controller's main loop, so it sees and changes state consistently.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from agent.control_client import ControlError, call
from agent.errors import AgentError, StoreError

if TYPE_CHECKING:  # the server's side only: clients (stationctl, agent.web) never load the loop
    from agent.inputs import ControlCall

log = logging.getLogger(__name__)
# the client (call, ControlError) lives in agent.control_client; re-exported here
__all__ = ["ControlError", "ControlServer", "answer", "call"]

MAX_REQUEST_BYTES = 64 * 1024
REPLY_TIMEOUT_S = 10.0
# the whole request line must arrive within this time: a client that trickles bytes without
# ever sending a newline cannot hold one of the MAX_CLIENTS slots for longer
READ_DEADLINE_S = 5.0
MAX_CLIENTS = 16  # connections served at once; more are told the daemon is busy
ACCEPT_BACKOFF_S = (0.05, 1.0)  # after a failed accept (EMFILE, ENOBUFS, ...): first, longest

C = TypeVar("C")
Handler = Callable[[C, dict[str, Any]], Any]


def answer(
    handlers: Mapping[str, Handler[C]], context: C, request: dict[str, Any]
) -> dict[str, Any]:
    """The reply to one request ``{"cmd": name, ...}``, by the handler registered for ``name``.

    It raises nothing but :class:`StoreError` (the main loop faults the station on it): an
    AgentError or a bad argument is a refusal, anything else a bug, answered and logged with
    its traceback. The main loop and the client threads run every request through it, so no
    request, however hostile, ends either of them.
    """
    name = request.get("cmd")
    if not isinstance(name, str):  # any JSON value: never echo it (a list 980 deep, 60 kB)
        kind = "missing" if name is None else f"a {type(name).__name__}"
        return {"ok": False, "error": f"cmd must be a command name, not {kind}"}
    handler = handlers.get(name)
    if handler is None:
        return {"ok": False, "error": f"unknown control command {name[:100]!r}"}
    try:
        return {"ok": True, "result": handler(context, request)}
    except StoreError:
        raise
    except AgentError as err:
        log.info("control %s refused: %s", name, err)
        return {"ok": False, "error": str(err)}
    except (ArithmeticError, LookupError, TypeError, ValueError) as err:
        log.info("control %s refused: %s", name, err)
        return {"ok": False, "error": f"bad request: {err}"}
    # the last line of defence of the loop or thread that runs the handler: a bug in one
    # command must not end it (ruff's BLE001 accepts this: log.exception keeps the traceback)
    except Exception as err:
        log.exception("control %s failed", name)
        return {
            "ok": False,
            "error": f"internal error ({type(err).__name__}: {err}); see the daemon log",
        }


class ControlServer(Generic[C]):
    """Serves the socket; loop requests are posted as :class:`ControlCall` items and answered
    by the main loop, direct ones run in the client's thread with ``context``."""

    def __init__(self, path: Path, post: Callable[[ControlCall], None], context: C) -> None:
        self.path = path
        self._post = post
        self._context = context
        self._direct: dict[str, Handler[C]] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._accept_failing: int | None = None  # errno of the current run of accept failures

    @property
    def alive(self) -> bool:
        """True while the accept thread runs: without it no ``stationctl`` request is served."""
        return self._thread is not None and self._thread.is_alive()

    def register_direct(self, name: str, handler: Handler[C]) -> None:
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
        """The accept loop: it ends only when stopped. A failed accept (out of file
        descriptors: EMFILE/ENFILE, out of memory: ENOBUFS/ENOMEM, ...) is logged and retried
        after a growing back-off; a dead accept thread stops the watchdog (``alive``)."""
        assert self._sock is not None
        backoff = ACCEPT_BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    return
                self._accept_failed(err, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_S[1])
                continue
            if self._accept_failing is not None:
                self._accept_failing = None
                log.info("control socket accepts connections again")
            backoff = ACCEPT_BACKOFF_S[0]
            self._spawn(conn)

    def _accept_failed(self, err: OSError, backoff: float) -> None:
        """The first failure of a run (or a new errno) at ERROR, repeats at DEBUG."""
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        if self._accept_failing != err.errno:
            self._accept_failing = err.errno
            log.error(
                "control socket accept failed (%s: %s); retrying with back-off, "
                "repeats are logged at debug level",
                name,
                err,
            )
        else:
            log.debug("control socket accept failed again (%s), next try in %.2f s", name, backoff)

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
                line = _read_line(conn, time.monotonic() + READ_DEADLINE_S)
                conn.settimeout(REPLY_TIMEOUT_S)
                reply = self._answer(line)
            except (OSError, ValueError) as err:
                reply = {"ok": False, "error": f"bad request: {err}"}
            try:
                data = json.dumps(reply).encode()
            except (TypeError, ValueError) as err:  # a handler returned something not JSON
                log.error("control reply cannot be encoded: %s", err)
                data = json.dumps(
                    {"ok": False, "error": f"reply cannot be encoded: {err}"}
                ).encode()
            try:
                conn.sendall(data + b"\n")
            except OSError as err:
                log.debug("control client went away: %s", err)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except UnicodeDecodeError as err:
            return {"ok": False, "error": f"request is not UTF-8: {err}"}
        except json.JSONDecodeError as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        except RecursionError:  # "[[[[...": nested deeper than the parser's recursion limit
            return {"ok": False, "error": "request is not JSON: nested too deeply"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        name = request.get("cmd")
        if isinstance(name, str) and name in self._direct:
            try:
                return answer(self._direct, self._context, request)
            except StoreError as err:  # direct handlers must not touch the store
                log.error("control %s: store failure: %s", name, err)
                return {"ok": False, "error": f"store failure: {err}"}
        from agent.inputs import ControlCall

        call = ControlCall(request)
        self._post(call)
        if not call.done.wait(REPLY_TIMEOUT_S):
            return {"ok": False, "error": "daemon did not answer in time"}
        return call.reply or {"ok": False, "error": "no reply"}


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    """One request line; ValueError when it is too long, TimeoutError when it is too slow."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request line within {READ_DEADLINE_S:.0f} s")
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return buf.split(b"\n", 1)[0]
