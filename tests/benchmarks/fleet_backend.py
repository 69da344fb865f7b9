"""One backend worker for the fleet benchmark: its own process, its own paho client (MQTT 5).

Workers share the load through an MQTT 5 shared subscription: every worker subscribes to
``$share/backend/<prefix>/+/auth/req`` and ``$share/backend/<prefix>/+/cdr``, and the broker
hands each message to one worker of the group. A worker accepts every token (``auth/res``
published from the network thread the moment the request arrives) and acks every CDR.

    python -m tests.benchmarks.fleet_backend --broker mqtt://127.0.0.1:PORT --prefix P \\
        --name w1 --out stats.json

Prints ``ready`` once its subscriptions are acknowledged; on SIGTERM it writes ``--out``: the
number of auth requests and CDRs it handled and, for every auth request, the one-way latency
``receipt (time.time()) - the request's ts field`` (the station's wall clock when it built the
request; RFC 3339 with milliseconds, so 1 ms resolution; same machine, same clock).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.link import set_nodelay


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    url = urlsplit(args.broker)
    stop = threading.Event()
    stats: dict[str, Any] = {"name": args.name, "auth": 0, "cdr": 0, "req_one_way_ms": []}
    group = f"$share/backend/{args.prefix}/+/"

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.name, protocol=mqtt.MQTTv5)
    client.on_socket_open = lambda c, u, sock: set_nodelay(sock)

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        c.subscribe([(group + "auth/req", 1), (group + "cdr", 1)])

    def on_subscribe(c: mqtt.Client, u: Any, mid: Any, rcs: Any, props: Any) -> None:
        print("ready", flush=True)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        _, station, suffix = msg.topic.split("/", 2)
        data = json.loads(msg.payload)
        root = f"{args.prefix}/{station}/"
        if suffix == "auth/req":
            c.publish(
                root + "auth/res",
                json.dumps({"v": 1, "request_id": data["request_id"], "status": "accepted"}),
                qos=1,
            )
            stats["auth"] += 1
            try:
                ts = datetime.fromisoformat(data["ts"]).timestamp()
                stats["req_one_way_ms"].append(round((now - ts) * 1000, 3))
            except (KeyError, ValueError):
                pass
        elif suffix == "cdr":
            c.publish(
                root + "cdr/ack", json.dumps({"v": 1, "session_id": data["session_id"]}), qos=1
            )
            stats["cdr"] += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=60)
    client.loop_start()
    while not stop.wait(0.2):
        pass
    client.disconnect()
    client.loop_stop()
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(stats, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
