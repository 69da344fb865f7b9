"""``station-agent demo --backend ocpp1.6``: the demo's sessions against an OCPP central
system started for it (:mod:`agent.demo_csms`), told as a timeline of OCPP messages.

The agent runs as a child process with the simulated station config and ``backend.protocol =
"ocpp1.6"``; one session is played on every EVSE (plug, tap, charge, tap, unplug). Exit status
0 only if the CSMS saw every transaction start and stop, with the ids it assigned.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.control import ControlError, call
from agent.demo import DEMO_CARDS, Timeline, _evse_state, _start_agent, _wait, default_config
from agent.demo_csms import DemoCsms
from agent.errors import AgentError


def _say_ocpp(tl: Timeline) -> Any:
    def report(action: str, data: dict[str, Any]) -> None:
        if action == "StatusNotification":
            text = f"connector {data.get('connector_id')}: {data.get('status')}"
        elif action == "StartTransaction":
            text = f"connector {data['connector_id']} idTag {data['id_tag']}, meterStart " + (
                f"{data['meter_start']} Wh -> transactionId {data['transaction_id']}"
            )
        elif action == "StopTransaction":
            text = (
                f"transactionId {data['transaction_id']}, meterStop {data['meter_stop']} Wh,"
                f" reason {data.get('reason')}"
            )
        elif action == "MeterValues":
            value = data["meter_value"][0]["sampled_value"][0]["value"]
            text = f"transactionId {data.get('transaction_id')}: {value} Wh"
        elif action == "Authorize":
            text = f"idTag {data['id_tag']} -> Accepted"
        else:
            text = ", ".join(f"{k}={v}" for k, v in data.items())
        tl.say("station", f"{action:<18} {text}")

    return report


def _write_config(config: Path, url: str, tmp: Path) -> Path:
    path = tmp / "config.toml"
    path.write_text(
        f'include = "{config.resolve()}"\n\n[backend]\nprotocol = "ocpp1.6"\n\n'
        f'[ocpp]\nurl = "{url}"\nsecurity_profile = 0\nmeter_value_sample_interval_s = 1\n\n'
        "[store]\nmeter_interval_s = 1.0\n"
    )
    return path


def _play(sock: Path, evse_ids: list[str], seconds: float, tl: Timeline) -> None:
    for i, evse_id in enumerate(evse_ids):
        uid = DEMO_CARDS[i % len(DEMO_CARDS)]
        tl.say("driver", f"plugs the car into {evse_id} and taps card {uid}")
        call(sock, {"cmd": "sim.plug", "evse_id": evse_id})
        _wait(lambda e=evse_id: _evse_state(sock, e) == "preparing", 5, "preparing")
        call(sock, {"cmd": "sim.tap", "uid": uid})
        _wait(lambda e=evse_id: _evse_state(sock, e) == "charging", 10, "charging")
        tl.say("demo", f"relay closed on {evse_id}; charging for {seconds:.1f} s")
        time.sleep(seconds)  # the story's charging time, not a wait for readiness
        tl.say("driver", f"taps card {uid} again to stop, then unplugs")
        call(sock, {"cmd": "sim.tap", "uid": uid})
        _wait(lambda e=evse_id: _evse_state(sock, e) == "finishing", 10, "finishing")
        call(sock, {"cmd": "sim.unplug", "evse_id": evse_id})
    _wait(lambda: call(sock, {"cmd": "outbox"})["pending"] == 0, 15, "every CDR settled")


def run_ocpp_demo(config: Path | None = None, seconds: float = 3.0) -> int:
    config = config or default_config()
    cfg = load_config(config)
    tl = Timeline()
    csms = DemoCsms(_say_ocpp(tl))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="station-demo-")))
        csms.start()
        stack.callback(csms.stop)
        tl.say("demo", f"OCPP 1.6J central system listening on {csms.url}")
        sock = tmp / "control.sock"
        proc = _start_agent(
            stack, _write_config(config, csms.url, tmp), "mqtt://127.0.0.1:9", tmp, sock
        )
        try:
            _wait(lambda: sock.exists() or proc.poll() is not None, 15, "the agent to start")
            _wait(lambda: call(sock, {"cmd": "status"})["link"]["connected"], 15, "the CSMS")
            tl.say("demo", f"agent running: station {cfg.station.id}, {len(cfg.evse)} EVSE(s)")
            _play(sock, [e.id for e in cfg.evse], seconds, tl)
        except (AgentError, ControlError, TimeoutError, OSError) as err:
            print(f"demo failed: {err}", file=sys.stderr)
            print((tmp / "agent.log").read_text()[-4000:], file=sys.stderr)
            return 1
        proc.terminate()
        proc.wait(timeout=10)
    return _report(csms, len(cfg.evse))


def _report(csms: DemoCsms, evses: int) -> int:
    started, stopped = csms.ledger.started, csms.ledger.stopped
    complete = sorted(set(started) & set(stopped))
    for txid in complete:
        wh = stopped[txid]["meter_stop"] - started[txid]["meter_start"]
        print(f"transaction {txid}: idTag {started[txid]['id_tag']}, {wh} Wh")
    print(f"\n{len(started)} transaction(s) started, {len(complete)} stopped with their id")
    return 0 if len(complete) == evses == len(started) else 1


__all__ = ["run_ocpp_demo"]
