"""``station-agent``: the daemon (``run``) and its helpers (``backend-sim``, ``demo``, ...)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli_errors import standard_handlers
from agent.cli_help import Parser
from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, load_config
from agent.errors import AgentError, ConfigError

DESCRIPTION = "station-agent: the station daemon (run) and its helpers."
EPILOG = """\
exit status: 0 done; 1 failed; 2 bad command line; 69 the MQTT broker cannot be reached
(demo, backend-sim); 78 invalid configuration (run, init); 130 interrupted; 141 output cut
short (| head).
"""


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
    if args.backend != "mqtt":
        from agent.demo_ocpp import run_ocpp_demo

        return run_ocpp_demo(config=args.config, seconds=args.seconds)
    from agent.demo import run_demo

    return run_demo(config=args.config, broker=args.broker, seconds=args.seconds)


def cmd_schemas(args: argparse.Namespace) -> int:
    from agent.messages import export_schemas

    for path in export_schemas(args.directory):
        print(path)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from agent.web.server import main as web_main

    setup_logging(args.log_level)
    return web_main(args.config)


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from agent.asyncapi import write

    text = write(args.file)
    if args.file is None:
        print(text, end="")
    return 0


def cmd_pn532_sim(args: argparse.Namespace) -> int:
    from drivers.rfid.pn532_sim import main as sim_main

    return sim_main(args.rest)


def cmd_ocmf_verify(args: argparse.Namespace) -> int:
    """Check signed meter records offline (a CDR file, its signed_meter_values, or a record)."""
    from agent.ocmf_verify import VerifyError, check, load_values, report

    try:
        verdict = check(load_values(args.file, args.public_key))
    except VerifyError as err:
        print(f"station-agent ocmf verify: {err}", file=sys.stderr)
        return 1
    print("\n".join(report(verdict)))
    return 0 if verdict.ok else 1


def cmd_init(args: argparse.Namespace) -> int:
    from agent.init_config import InitRequest, build

    req = InitRequest(
        profile=args.profile,
        station_id=args.station_id,
        operator_id=args.operator_id,
        broker=args.broker,
        location=args.location,
        evse_ids=args.evse or [],
    )
    print(build(req), end="")  # ConfigError (exit 78): nothing printed
    return 0


def _add_init(sub: Any) -> None:
    i = sub.add_parser(
        "init", help="print a station's config.toml (board profile, identity, broker)"
    )
    i.add_argument("--profile", required=True, help="shipped profile name or a TOML file")
    i.add_argument("--station-id", required=True, help="e.g. ST-0001 (MQTT client id)")
    i.add_argument("--operator-id", required=True, help="OICP OperatorID, e.g. 'DE*ICE'")
    i.add_argument("--broker", required=True, help="mqtt:// or mqtts:// URL of the backend")
    i.add_argument("--location", help="free text or a location id (default: the station id)")
    i.add_argument("--evse", action="append", metavar="EVSE_ID", help="one per charge point")
    i.set_defaults(func=cmd_init)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="station-agent", description=DESCRIPTION, epilog=EPILOG)
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
        help="station config (default: the shipped simulated station)",
    )
    d.add_argument("--broker", help="use this broker instead of starting Mosquitto")
    d.add_argument("--seconds", type=float, default=3.0, help="charging time per session")
    d.add_argument(
        "--backend", choices=("mqtt", "ocpp1.6"), default="mqtt", help="the backend to play"
    )
    d.set_defaults(func=cmd_demo)

    ps = sub.add_parser(
        "pn532-sim", help="a simulated PN532 reader on a pseudo-terminal", add_help=False
    )
    ps.add_argument("rest", nargs=argparse.REMAINDER)
    ps.set_defaults(func=cmd_pn532_sim)

    w = sub.add_parser("web", help="serve the status page (config section [web])")
    w.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    w.add_argument("--log-level", default="info")
    w.set_defaults(func=cmd_web)

    oc = sub.add_parser("ocmf", help="signed meter records (OCMF)")
    ocsub = oc.add_subparsers(dest="ocmf_command", required=True)
    ov = ocsub.add_parser("verify", help="check a CDR's signed records with pyocmf (offline)")
    ov.add_argument("file", type=Path, help="a CDR JSON, its signed_meter_values, or a record")
    ov.add_argument("--public-key", help="hex DER public key (for a bare OCMF record)")
    ov.set_defaults(func=cmd_ocmf_verify)
    _add_init(sub)
    s = sub.add_parser("schemas", help="export the MQTT contract's JSON Schemas")
    s.add_argument("directory", type=Path)
    s.set_defaults(func=cmd_schemas)
    a = sub.add_parser("asyncapi", help="print (or write) the MQTT contract as AsyncAPI 3.0")
    a.add_argument("file", type=Path, nargs="?")
    a.set_defaults(func=cmd_asyncapi)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pn532-sim"]:  # its own options, passed through untouched
        return cmd_pn532_sim(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    # one line and a documented exit status per exception type, never a traceback
    return standard_handlers("station-agent").run(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
