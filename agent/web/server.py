"""``station-agent web --config PATH``: the status page process (uvicorn serving agent.web.app).

It reads the daemon's configuration for ``[web]`` and the control socket's path, loads the
password hash, makes (once) a self-signed certificate when none is configured, binds the
listen address and serves. A missing ``[web]`` section or password file is a configuration
error (exit 78): the page is off unless configured.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

from agent.config import EX_CONFIG, AgentConfig, WebConfig, load_config, split_listen
from agent.errors import AgentError, ConfigError
from agent.web.auth import LoginLimiter, Sessions
from agent.web.certs import tls_pair
from agent.web.daemon_link import DaemonLink
from agent.web.passwd import read_hash

log = logging.getLogger(__name__)


def _web_config(config: AgentConfig, path: Path) -> WebConfig:
    if config.web is None:
        raise ConfigError(f"{path}: no [web] section: the status page is off (see the README)")
    return config.web


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise AgentError(f"web.listen: cannot listen on {host}:{port}: {err}") from err
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def serve(config_path: Path) -> int:
    import uvicorn

    from agent.web.app import WebState, build_app, load_static
    from agent.web.live import LiveFeed

    config = load_config(config_path)
    web = _web_config(config, config_path)
    password = read_hash(web.password_file)
    host, port = split_listen(web.listen)
    cert = key = None
    if web.tls:
        cert, key = tls_pair(
            web.tls_cert_file, web.tls_key_file, web.cert_dir, config.station.id, host
        )
    link = DaemonLink(config.station.control_socket)
    state = WebState(
        link=link,
        password=password,
        sessions=Sessions(web.session_minutes * 60.0),
        limiter=LoginLimiter(),
        feed=LiveFeed(lambda: link.call("web.station")),
        tls=web.tls,
        static=load_static(),
    )
    sock = _bind(host, port)
    scheme = "https" if web.tls else "http"
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    log.info("status page listening on %s://%s:%d", scheme, shown, bound)
    print(
        f"station-agent web: listening on {scheme}://{shown}:{bound}", file=sys.stderr, flush=True
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(state),
            ssl_certfile=cert,
            ssl_keyfile=key,
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=5,
            limit_concurrency=64,
            h11_max_incomplete_event_size=16 * 1024,
        )
    )
    server.run(sockets=[sock])
    return 0


def main(config_path: Path) -> int:
    try:
        return serve(config_path)
    except ConfigError as err:
        print(f"station-agent web: {err}", file=sys.stderr)
        return EX_CONFIG
    except AgentError as err:
        print(f"station-agent web: {err}", file=sys.stderr)
        return 1
