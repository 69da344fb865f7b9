"""A three-node NATS Server cluster on loopback with its MQTT listener and JetStream (tests and
the fleet benchmark).

Each node has a ``server_name`` (NATS needs one for MQTT and for JetStream in a cluster), its
own JetStream directory, client, cluster-route, monitoring and MQTT ports. Ready means: every
node's monitoring endpoint answers ``/healthz`` with ``ok`` (routes up, JetStream meta leader
known) and every node's MQTT listener answers a CONNACK (the first MQTT connection creates the
MQTT streams, R3 in a three-node cluster). No sleeps: each step waits for its answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import free_port

INSTALL_HINT = "install it with: sudo apt-get install nats-server"


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )


class NatsNode:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.dir = workdir / name
        self.client_port, self.route_port = free_port(), free_port()
        self.http_port, self.mqtt_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "nats.log"

    def config(self, routes: list[int], cluster: str, mqtt_options: str) -> str:
        route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        return (
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}", max_memory_store: 256MB, '
            "max_file_store: 2GB }\n"
            f"cluster {{ name: {cluster}, listen: 127.0.0.1:{self.route_port}, "
            f"routes: [{route_urls}] }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}{mqtt_options} }}\n"
        )

    def health(self) -> str:
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as r:
                return str(json.load(r).get("status"))
        except (OSError, urllib.error.URLError, ValueError) as err:
            return f"down ({err})"

    def jsz(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/jsz?streams=true&accounts=true"
        with urllib.request.urlopen(url, timeout=2) as r:
            return dict(json.load(r))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """``nodes`` NATS servers routed into one cluster; ``kill(i)`` is a SIGKILL (a node lost)."""

    def __init__(
        self,
        workdir: Path,
        nodes: int = 3,
        cluster: str = "fleet",
        mqtt_options: str = "",
    ) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.mqtt_options = mqtt_options  # extra settings of the mqtt block, ", key: value"
        self.nodes = [NatsNode(f"n{i + 1}", workdir) for i in range(nodes)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        binary = nats_binary()
        if binary is None:
            raise RuntimeError(f"the fleet tests need NATS Server: {INSTALL_HINT}")
        routes = [n.route_port for n in self.nodes]
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            conf = node.dir / "nats.conf"
            conf.write_text(node.config(routes, self.cluster, self.mqtt_options))
            with node.log_path.open("ab") as log:
                node.proc = subprocess.Popen(
                    [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                self._wait(lambda n=node: n.health() == "ok", deadline, f"{node.name} healthz")
            for node in self.nodes:
                mqtt_probe(node.url, f"probe-{node.name}", deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise

    def _wait(self, pred: Any, deadline: float, what: str) -> None:
        while not pred():
            dead = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if dead:
                tail = self.nodes[0].log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nats-server {', '.join(dead)} exited at start:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"NATS cluster not ready: timed out waiting for {what}")
            time.sleep(0.05)  # the polling interval of this wait

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, index: int) -> None:
        """Start a killed node again (same configuration and JetStream directory)."""
        binary = nats_binary()
        assert binary is not None
        node = self.nodes[index]
        with node.log_path.open("ab") as log:
            node.proc = subprocess.Popen(
                [binary, "-c", str(node.dir / "nats.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        # no wait here: a node restoring hundreds of JetStream consumers answers nothing for
        # minutes; the stations coming back through it are the signal the caller waits for

    def stream_leaders(self) -> dict[str, str]:
        """The node leading each MQTT stream (asked of a live node)."""
        node = next(n for n in self.nodes if n.alive)
        data = node.jsz()
        return {
            s["name"]: s.get("cluster", {}).get("leader", "?")
            for a in data.get("account_details", [])
            for s in a.get("stream_detail", [])
        }

    def log_lines(self, needle: str) -> list[str]:
        out = []
        for n in self.nodes:
            if n.log_path.exists():
                out += [
                    ln for ln in n.log_path.read_text(errors="replace").splitlines() if needle in ln
                ]
        return out

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def mqtt_probe(url: str, client_id: str, timeout: float) -> None:
    """Connect to ``url`` and wait for the CONNACK (the node's MQTT side is up)."""
    host, port = url.removeprefix("mqtt://").split(":")
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-{os.getpid()}")
    client.on_connect = lambda c, u, f, rc, p: done.set()
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    try:
        if not done.wait(max(0.1, timeout)):
            raise RuntimeError(f"NATS MQTT listener {url}: no CONNACK within {timeout:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
