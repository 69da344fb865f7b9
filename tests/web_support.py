"""The status page in tests: ``station-agent web`` as a child process and an HTTPS client.

The client trusts exactly the certificate the web process made at its first start (and checks
the host name against it), so every test also proves the self-signed pair works.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.helpers import Daemon, wait_until

PASSWORD = "correct horse battery"


def write_password(path: Path, password: str = PASSWORD) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.stationctl", "web", "passwd", str(path)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def web_section(tmp: Path, **over: Any) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "password_file": str(tmp / "web.pass"),
        "cert_dir": str(tmp / "web-cert"),
        **over,
    }


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""

    def cookies(self) -> list[str]:
        return self.headers.get_all("set-cookie") or []


@dataclass
class WebProc:
    """``station-agent web --config`` (the daemon's config file, with a [web] section)."""

    config_path: Path
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.tmp / "web.log"

    def start(self, timeout: float = 30.0) -> WebProc:
        seen = len(self.log())  # a restart appends: only its own lines count
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "web", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        proc = self.proc
        m = wait_until(
            lambda: (
                re.search(r"listening on (https?://\S+)", self.log()[seen:])
                or proc.poll() is not None
            ),
            timeout,
            "the web process to listen",
        )
        if proc.poll() is not None:
            raise AssertionError(f"web exited with {proc.returncode}:\n{self.log()[-3000:]}")
        self.url = m.group(1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def client(self, source: str | None = None) -> Client:
        return Client(self.url, self.tmp / "web-cert" / "web-cert.pem", source)


class Client:
    """One browser's worth of state: a cookie jar of one cookie, and the CSRF token seen last."""

    def __init__(self, url: str, cafile: Path | None, source: str | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.tls = parts.scheme == "https"
        self.ctx = ssl.create_default_context(cafile=str(cafile)) if self.tls and cafile else None
        self.source = (source, 0) if source else None
        self.cookie: str | None = None
        self.csrf: str | None = None

    def _conn(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=60, context=self.ctx, source_address=self.source
            )
        return http.client.HTTPConnection(
            self.host, self.port, timeout=60, source_address=self.source
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        cookie: bool = True,
    ) -> Reply:
        conn = self._conn()
        hdrs = dict(headers or {})
        if cookie and self.cookie:
            hdrs["Cookie"] = self.cookie
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        m = re.search(r'name="csrf" value="([^"]+)"', reply.text)
        if m:
            self.csrf = m.group(1)
        return reply

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, fields: dict[str, str], **kw: Any) -> Reply:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
        return self.request("POST", path, urlencode(fields).encode(), headers=headers, **kw)

    def login(self, password: str = PASSWORD) -> Reply:
        reply = self.post("/login", {"password": password})
        for c in reply.cookies():
            if c.startswith("sa_session="):
                self.cookie = c.split(";", 1)[0]
        return reply


def start_web(daemon: Daemon, tmp: Path) -> WebProc:
    """A web process for a daemon whose config has a [web] section (password written here)."""
    write_password(Path(daemon.config["web"]["password_file"]))
    return WebProc(daemon.config_path, tmp).start()


def wait_card(client: Client, evse_id: str, state: str, timeout: float = 20.0) -> float:
    """Poll the station page until ``evse_id``'s card shows ``state``; returns when it did."""

    def seen() -> bool:
        return card_state(client.get("/").text, evse_id) == state

    wait_until(seen, timeout, f"{evse_id} card to show {state}")
    return time.monotonic()


class EventStream:
    """``GET /events`` read line by line: the station events' JSON payloads, one by one."""

    def __init__(self, client: Client) -> None:
        self.conn = client._conn()
        self.conn.request("GET", "/events", headers={"Cookie": client.cookie or ""})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.headers["content-type"].startswith("text/event-stream")

    def next_event(self) -> tuple[str, Any]:
        """The next ``(event, data)``; comments and ``retry:`` lines skipped."""
        event, data = "message", ""
        while True:
            line = self.resp.readline().decode()
            if not line:
                raise EOFError("the event stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                return event, json.loads(data)

    def wait_for(self, pred: Callable[[str, Any], bool], timeout: float = 10.0) -> Any:
        """The first event for which ``pred(event, data)`` holds."""
        self.conn.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event, data = self.next_event()
            if pred(event, data):
                return data
        raise AssertionError("no matching event in time")

    def close(self) -> None:
        self.conn.close()


def card_state(fragment: str, evse_id: str) -> str | None:
    m = re.search(
        rf'data-evse="{re.escape(evse_id)}"><h2>[^<]*</h2><p class="state">([a-z]+)<', fragment
    )
    return m.group(1) if m else None
