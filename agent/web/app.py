"""The status page's ASGI application (Starlette): routes, login, CSRF, security headers.

Every route but ``/login`` and the two static files needs the session cookie, checked here on
the server: pages redirect to the login, ``/api/*`` and ``/events`` answer 401. The only
actions are two POSTs with the session's CSRF token (run the self-test, re-send the outbox).
Errors never show a traceback: a refused or unreachable daemon is a sentence, anything else a
generic 500 (the traceback goes to the journal).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.control import ControlError
from agent.web import pages
from agent.web.auth import LoginLimiter, Session, Sessions
from agent.web.daemon_link import DaemonLink
from agent.web.live import LiveFeed, TooManyListeners
from agent.web.passwd import PasswordHash

log = logging.getLogger(__name__)

COOKIE = "sa_session"
MAX_FORM_BYTES = 8192
PER_PAGE = 25
CSV_BATCH = 500
MAX_CSV_ROWS = 20_000
KEEPALIVE_S = 15.0
SESSION_CHECK_S = 1.0  # an open event stream notices a logout within this time
STATIC = {"style.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form posts
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


@dataclass(kw_only=True)
class WebState:
    link: DaemonLink
    password: PasswordHash
    sessions: Sessions
    limiter: LoginLimiter
    feed: LiveFeed
    tls: bool
    static: dict[str, bytes]
    scrypt_lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, password: str) -> bool:
        """One scrypt at a time (16 MiB each): parallel guesses get no more CPU or memory."""
        with self.scrypt_lock:
            return self.password.verify(password)


class SecurityHeaders:
    """Adds the security headers to every response (and ``no-store`` unless one was set)."""

    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        self.extra = list(HEADERS)
        if tls:
            self.extra.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers + self.extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def _session(request: Request) -> Session | None:
    return _state(request).sessions.get(request.cookies.get(COOKIE))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _html(text: str, status: int = 200, **kw: Any) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, **kw)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form of at most MAX_FORM_BYTES; 413 beyond, 400 if it is not one."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise HTTPException(415, "forms must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as err:
        raise HTTPException(400, "the form cannot be read") from err
    return {k: v[0] for k, v in fields.items()}


def _same_origin(request: Request) -> bool:
    """A POST's Origin (when the browser sends one) names this host."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


async def _checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """The session and form of a POST action, or the response refusing it."""
    session = _session(request)
    if session is None:
        return _to_login()
    if not _same_origin(request):
        return _html(pages.error_page("Refused", "cross-origin form"), 403)
    form = await _form(request)
    if not Sessions.csrf_ok(session, form.get("csrf")):
        log.warning(
            "web: POST %s with a wrong CSRF token from %s", request.url.path, _client(request)
        )
        return _html(
            pages.error_page(
                "Refused", "the form is stale or forged (CSRF token)", csrf=session.csrf
            ),
            403,
        )
    return session, form


# ---------------------------------------------------------------------------- login
async def login_form(request: Request) -> Response:
    if _session(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _html(pages.login_page())


async def login(request: Request) -> Response:
    st, client = _state(request), _client(request)
    if not _same_origin(request):
        return _html(pages.login_page("Cross-origin login refused."), 403)
    wait = st.limiter.begin(client)
    if wait > 0:
        secs = math.ceil(wait)
        return _html(
            pages.login_page(f"Too many failed attempts: try again in {secs} s."),
            429,
            headers={"Retry-After": str(secs)},
        )
    try:
        form = await _form(request)
        password = form.get("password", "")
        ok = bool(password) and len(password) <= 1024
        if ok:
            ok = await anyio.to_thread.run_sync(st.verify, password)
    except BaseException:  # a bad form or a client gone mid-check: counted as a failure
        st.limiter.failed(client)
        raise
    if not ok:
        backoff = st.limiter.failed(client)
        log.warning("web: failed login from %s (next attempt in %.0f s)", client, backoff)
        return _html(pages.login_page("Wrong password."), 401)
    st.limiter.succeeded(client)
    session = st.sessions.create()
    log.info("web: login from %s", client)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
        COOKIE,
        session.token,
        max_age=int(st.sessions.lifetime_s),
        path="/",
        secure=st.tls,
        httponly=True,
        samesite="strict",
    )
    return resp


async def logout(request: Request) -> Response:
    checked = await _checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    _state(request).sessions.drop(session.token)
    resp = _to_login()
    resp.delete_cookie(
        COOKIE, path="/", secure=_state(request).tls, httponly=True, samesite="strict"
    )
    return resp


# ---------------------------------------------------------------------------- pages
async def _daemon(request: Request, cmd: str, **args: Any) -> Any:
    return await _state(request).link.call(cmd, **args)


async def station(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    try:
        data = await _daemon(request, "web.station")
    except ControlError as err:
        return _html(pages.unreachable_page("Station", str(err), session.csrf, "/"), 503)
    return _html(pages.station_page(data, session.csrf))


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise HTTPException(400, f"{name} must be a whole number from {lo} to {hi}")
    return int(raw)


async def charge_log(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    page = _int_param(request, "page", 1, 1, 100_000)
    try:
        data = await _daemon(request, "web.sessions", offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
    except ControlError as err:
        return _html(pages.unreachable_page("Charge log", str(err), session.csrf, "/log"), 503)
    return _html(pages.log_page(data, page, PER_PAGE, session.csrf))


async def charge_log_csv(request: Request) -> Response:
    if _session(request) is None:
        return _to_login()
    rows: list[dict[str, Any]] = []
    try:
        while len(rows) < MAX_CSV_ROWS:
            data = await _daemon(request, "web.sessions", offset=len(rows), limit=CSV_BATCH)
            batch = data.get("sessions") or []
            rows.extend(batch)
            if len(batch) < CSV_BATCH:
                break
    except ControlError as err:
        return PlainTextResponse(f"The station daemon did not answer: {err}\n", 503)
    return Response(
        pages.sessions_csv(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="charge-log.csv"'},
    )


async def session_detail(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    sid = request.path_params["session_id"][:200]
    try:
        data = await _daemon(request, "web.session", session_id=sid)
    except ControlError as err:
        return _html(pages.unreachable_page("Session", str(err), session.csrf, "/log"), 503)
    if data.get("session") is None:
        message = "No such session in the station's store (purged after retention?)."
        return _html(pages.error_page("Not found", message, csrf=session.csrf), 404)
    return _html(pages.session_page(data, session.csrf))


async def diagnostics(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    return _html(pages.diagnostics_page(session.csrf))


async def run_selftest(request: Request) -> Response:
    checked = await _checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    log.info("web: self-test requested from %s", _client(request))
    try:
        checks = await _state(request).link.call("selftest", timeout=60.0)
    except ControlError as err:
        return _html(pages.diagnostics_page(session.csrf, error=str(err)), 503)
    return _html(pages.diagnostics_page(session.csrf, checks=checks))


async def resend_outbox(request: Request) -> Response:
    checked = await _checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    log.info("web: outbox re-send requested from %s", _client(request))
    try:
        result = await _daemon(request, "outbox.retry")
    except ControlError as err:
        return _html(pages.diagnostics_page(session.csrf, error=f"Not re-sent: {err}"), 409)
    sent = result.get("sent") if isinstance(result, dict) else None
    return _html(pages.diagnostics_page(session.csrf, message=f"Re-sent {sent} CDR(s)."))


# ---------------------------------------------------------------------------- API, events
def _unauthorised() -> JSONResponse:
    return JSONResponse({"error": "login required"}, status_code=401)


async def api_status(request: Request) -> Response:
    if _session(request) is None:
        return _unauthorised()
    try:
        return JSONResponse(await _daemon(request, "status"))
    except ControlError as err:
        return JSONResponse({"error": str(err)}, status_code=503)


async def api_sessions(request: Request) -> Response:
    if _session(request) is None:
        return _unauthorised()
    offset = _int_param(request, "offset", 0, 0, 10_000_000)
    limit = _int_param(request, "limit", 50, 1, 500)
    try:
        return JSONResponse(await _daemon(request, "web.sessions", offset=offset, limit=limit))
    except ControlError as err:
        return JSONResponse({"error": str(err)}, status_code=503)


async def events(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _unauthorised()
    st = _state(request)
    token = session.token

    async def stream() -> AsyncIterator[str]:
        try:
            async with st.feed.listen() as queue:
                yield "retry: 2000\n\n"
                idle = 0.0
                while st.sessions.get(token) is not None:  # logged out or expired: end
                    try:
                        payload = await asyncio.wait_for(queue.get(), SESSION_CHECK_S)
                    except TimeoutError:
                        idle += SESSION_CHECK_S
                        if idle >= KEEPALIVE_S:
                            idle = 0.0
                            yield ": keepalive\n\n"
                        continue
                    idle = 0.0
                    yield f"event: station\ndata: {payload}\n\n"
                yield "event: logout\ndata: {}\n\n"
        except TooManyListeners:
            yield "event: busy\ndata: {}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    body = _state(request).static.get(name)
    if body is None:
        raise HTTPException(404, "not found")
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------- errors, app
async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not found", 405: "Not allowed"}.get(exc.status_code, "Bad request")
    session = _session(request)
    return _html(
        pages.error_page(title, str(exc.detail), csrf=session.csrf if session else None),
        exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("web: %s %s failed", request.method, request.url.path, exc_info=exc)
    return PlainTextResponse("Internal error; see the station's journal.\n", 500)


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", station, methods=["GET"]),
    Route("/log", charge_log, methods=["GET"]),
    Route("/log.csv", charge_log_csv, methods=["GET"]),
    Route("/session/{session_id}", session_detail, methods=["GET"]),
    Route("/diagnostics", diagnostics, methods=["GET"]),
    Route("/diagnostics/selftest", run_selftest, methods=["POST"]),
    Route("/diagnostics/resend", resend_outbox, methods=["POST"]),
    Route("/api/status", api_status, methods=["GET"]),
    Route("/api/sessions", api_sessions, methods=["GET"]),
    Route("/events", events, methods=["GET"]),
    Route("/static/{name}", static, methods=["GET"]),
]


def load_static() -> dict[str, bytes]:
    folder = resources.files("agent.web") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


def build_app(state: WebState) -> ASGIApp:
    app = Starlette(
        debug=False,
        routes=ROUTES,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.web = state
    return SecurityHeaders(app, state.tls)
