"""The OCPP-J transport: one WebSocket to the CSMS, kept open from an asyncio thread.

Transport only: it connects to ``{ocpp.url}/{station.id}`` offering one subprotocol
(``ocpp1.6``), with HTTP basic auth (security profiles 1-2: user = the charge point id, password
= the key in ``ocpp.password_file``) and TLS (profiles 2-3, mutual in 3); it checks that the
CSMS chose that subprotocol, pings for liveness (a missing pong closes the socket) and
reconnects with capped, jittered exponential back-off. Each open socket is handed to the
adapter's ``serve`` coroutine, which runs the OCPP session until the socket closes.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import random
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from agent.config import OcppConfig
from agent.errors import BackendError, ConfigError
from agent.tls import build_ssl_context, read_secret

log = logging.getLogger(__name__)

T = TypeVar("T")
Serve = Callable[[ClientConnection], Awaitable[None]]
BASIC_AUTH_MIN_KEY = 16  # OCPP security whitepaper: the basic-auth key is 16-40 characters


class FrameLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ``ocpp`` package's logger, without payloads: it logs every frame in full at INFO and
    the calls it refuses with their payload and a traceback, and frames carry id tags (personal
    data). Here a frame is logged at DEBUG as its type, message id and action only; a refused
    call is one WARNING line naming the error; any other value is left out."""

    def __init__(self, logger: logging.Logger, station_id: str) -> None:
        super().__init__(logger, {})
        self._keep = station_id

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = sys.exc_info()[1] if kwargs.pop("exc_info", None) else None
        if exc is not None:
            level = logging.WARNING  # answered with a CALLERROR (or dropped): not our fault
        elif level < logging.WARNING:
            level = logging.DEBUG
        if not self.isEnabledFor(level):
            return
        safe = tuple(summarise(a, self._keep) for a in args)
        try:
            text = str(msg) % safe if safe else str(msg)
        except (TypeError, ValueError):
            text = f"{msg} {safe}"
        if exc is not None:
            text += f" ({type(exc).__name__})"
        self.logger.log(level, "%s", text, **kwargs)


class QuietWebSocketLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs frame contents at DEBUG: never here (they carry id tags)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


def summarise(value: object, keep: str = "") -> object:
    """A value the ``ocpp`` package logs, without personal data: a frame as ``[type, id,
    action]``, a message object as its kind, action and id, an exception as its type; numbers
    and the charge point's own id as they are; any other text as its length."""
    if value is None or isinstance(value, int | float) or value == keep:
        return value
    if isinstance(value, BaseException):
        return type(value).__name__
    ident = getattr(value, "unique_id", None)
    if ident is not None:
        what = getattr(value, "action", None) or getattr(value, "error_code", None) or ""
        return f"<{type(value).__name__} {what} {ident}>"
    text = str(value)
    if not text.startswith("["):
        return f"<{len(text)} characters>"
    try:
        frame = json.loads(text)
    except ValueError:
        return "<unparsable frame>"
    if isinstance(frame, list) and frame:
        head = frame[:3] if frame[0] == 2 else frame[:2]
        return json.dumps([x for x in head if isinstance(x, int | str)])
    return "<frame>"


def backoff_delay(attempt: int, low: float, high: float, rnd: random.Random) -> float:
    """Capped exponential back-off with full jitter in its upper half: attempt 1 waits about
    ``low``, each further attempt doubles, never beyond ``high``."""
    base = min(high, low * 2.0 ** max(0, attempt - 1))
    return base / 2 + rnd.random() * base / 2


class OcppLink:
    def __init__(self, config: OcppConfig, station_id: str, subprotocol: str) -> None:
        self._config = config
        self._station_id = station_id
        self._subprotocol = subprotocol
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._rnd = random.Random()
        self.auth_refused = False  # the CSMS answered 401/403: the key is wrong
        self.last_error = ""

    @property
    def url(self) -> str:
        return f"{self._config.url.rstrip('/')}/{self._station_id}"

    # ---------------------------------------------------------------- loop thread side
    def start(self, serve: Serve) -> None:
        """Read the secrets (a bad file is a config error now, not a retry loop later), then
        connect in the background; every open socket goes to ``serve``."""
        headers = self._headers()
        ctx = self._ssl_context()
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._main = loop.create_task(self._run(serve, headers, ctx))
            loop.call_soon(ready.set)
            try:
                loop.run_until_complete(self._main)
            except asyncio.CancelledError:
                pass
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="ocpp", daemon=True)
        self._thread.start()
        ready.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        loop, main = self._loop, self._main
        self._stopping = True
        if loop is None or main is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(main.cancel)
        if self._thread is not None:
            self._thread.join(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return None
        return asyncio.run_coroutine_threadsafe(coro, loop)

    # ---------------------------------------------------------------- set-up
    def _headers(self) -> dict[str, str]:
        cfg = self._config
        if cfg.password_file is None:
            return {}
        key = read_secret(cfg.password_file, "ocpp.password_file")
        if len(key) < BASIC_AUTH_MIN_KEY:
            log.warning(
                "ocpp.password_file: the key has %d characters; OCPP asks for at least %d",
                len(key),
                BASIC_AUTH_MIN_KEY,
            )
        raw = f"{self._station_id}:{key}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self._config
        if cfg.security_profile < 2:
            return None
        try:
            return build_ssl_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
        except ConfigError as err:
            raise ConfigError(str(err).replace("mqtt.", "ocpp.")) from err

    # ---------------------------------------------------------------- asyncio thread
    async def _run(self, serve: Serve, headers: dict[str, str], ctx: ssl.SSLContext | None) -> None:
        attempt = 0
        while not self._stopping:
            try:
                served = await self._connect_and_serve(serve, headers, ctx)
            except asyncio.CancelledError:
                raise
            except BackendError as err:
                self.last_error = str(err)
                log.error("%s", err)
                served = False
            except Exception as err:  # noqa: BLE001 - the reconnect loop must outlive any bug
                log.error("OCPP connection failed (%s): reconnecting", summarise(err))
                served = False
            attempt = 1 if served else attempt + 1
            delay = backoff_delay(
                attempt, self._config.reconnect_min_s, self._config.reconnect_max_s, self._rnd
            )
            log.info("reconnecting to the CSMS in %.1f s (attempt %d)", delay, attempt)
            await asyncio.sleep(delay)

    async def _connect_and_serve(
        self, serve: Serve, headers: dict[str, str], ctx: ssl.SSLContext | None
    ) -> bool:
        cfg = self._config
        try:
            ws = await connect(
                self.url,
                subprotocols=[Subprotocol(self._subprotocol)],
                additional_headers=headers,
                ssl=ctx,
                proxy=None,
                compression=None,
                open_timeout=cfg.call_timeout_s,
                ping_interval=cfg.ping_interval_s,
                ping_timeout=cfg.ping_interval_s,
                close_timeout=2.0,
                user_agent_header=None,
                logger=QuietWebSocketLog(logging.getLogger("websockets.client"), {}),
            )
        except InvalidStatus as err:
            code = err.response.status_code
            if code in (401, 403):
                self.auth_refused = True
                raise BackendError(
                    f"the CSMS at {self.url} refused this station's credentials (HTTP {code}):"
                    " the key in ocpp.password_file is not the one the CSMS has for"
                    f" {self._station_id!r}"
                ) from err
            raise BackendError(f"the CSMS at {self.url} answered HTTP {code}") from err
        except (OSError, TimeoutError, InvalidHandshake, ssl.SSLError) as err:
            raise BackendError(f"cannot connect to the CSMS at {self.url}: {err}") from err
        self.auth_refused = False
        self.last_error = ""
        try:
            if ws.subprotocol != self._subprotocol:
                raise BackendError(
                    f"the CSMS at {self.url} did not accept subprotocol {self._subprotocol}"
                    f" (it chose {ws.subprotocol!r})"
                )
            log.info("connected to the CSMS at %s (%s)", self.url, self._subprotocol)
            self._ws = ws
            await serve(ws)
            return True
        except ConnectionClosed as err:
            log.warning("CSMS connection closed: %s", err)
            return True
        finally:
            self._ws = None
            await ws.close()
