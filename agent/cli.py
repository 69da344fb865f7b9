"""``station-agent``: the daemon (``run``) and its helpers (``backend-sim``, ``demo``, ...)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, load_config
from agent.errors import AgentError, ConfigError


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.broker:
        # one broker named on the command line replaces a cluster's nodes
        out["mqtt"] = {"url": args.broker, "urls": None}
    if args.state_dir:
        out.setdefault("station", {})["state_dir"] = str(args.state_dir)
    if args.socket:
        out.setdefault("station", {})["control_socket"] = str(args.socket)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import run

    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as err:
        print(f"station-agent: {err}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(args.log_level)
    try:
        return run(config)
    except AgentError as err:
        logging.getLogger("agent").critical("%s", err)
        return 1


def cmd_backend_sim(args: argparse.Namespace) -> int:
    from agent.backend_sim import run_cli

    setup_logging(args.log_level)
    return run_cli(args.broker, args.accept, args.topic_prefix)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(config=args.config, broker=args.broker, seconds=args.seconds)


def cmd_schemas(args: argparse.Namespace) -> int:
    from agent.messages import export_schemas

    for path in export_schemas(args.directory):
        print(path)
    return 0


def cmd_pn532_sim(args: argparse.Namespace) -> int:
    from drivers.rfid.pn532_sim import main as sim_main

    return sim_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="station-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"station-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the station daemon")
    r.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    r.add_argument("--broker", help="override mqtt.url (and mqtt.urls)")
    r.add_argument("--state-dir", type=Path, help="override station.state_dir")
    r.add_argument("--socket", type=Path, help="override station.control_socket")
    r.add_argument("--log-level", default="info")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("backend-sim", help="run the reference backend simulator")
    b.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    b.add_argument("--accept", nargs="*", metavar="UID", help="accept only these tokens")
    b.add_argument("--topic-prefix", default="stations")
    b.add_argument("--log-level", default="warning")
    b.set_defaults(func=cmd_backend_sim)

    d = sub.add_parser("demo", help="play whole charging sessions on a simulated station")
    d.add_argument(
        "--config",
        type=Path,
        default=None,
        help="station config (default: hardware/simulated.toml)",
    )
    d.add_argument("--broker", help="use this broker instead of starting Mosquitto")
    d.add_argument("--seconds", type=float, default=3.0, help="charging time per session")
    d.set_defaults(func=cmd_demo)

    ps = sub.add_parser(
        "pn532-sim", help="a simulated PN532 reader on a pseudo-terminal", add_help=False
    )
    ps.add_argument("rest", nargs=argparse.REMAINDER)
    ps.set_defaults(func=cmd_pn532_sim)

    s = sub.add_parser("schemas", help="export the MQTT contract's JSON Schemas")
    s.add_argument("directory", type=Path)
    s.set_defaults(func=cmd_schemas)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pn532-sim"]:  # its own options, passed through untouched
        return cmd_pn532_sim(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
