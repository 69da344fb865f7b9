"""``stationctl``: the technician's CLI. Talks to the running daemon over its control socket.

Every command is one handler function (``cmd_*``), attached to its sub-parser with
``set_defaults(handler=...)``; :func:`main` runs it and turns the errors a handler may raise into
one line on stderr and an exit status:

- ``ConfigError``: 78 (EX_CONFIG), e.g. ``config check`` of an invalid file;
- ``UsageError`` (a bad argument, also a ValueError/ProtocolError raised while interpreting
  one, see :func:`_argument`): 2, like argparse's own usage errors;
- ``ControlError`` (the daemon is not running, unreachable, or refused the request): 1;
- any other ``AgentError`` (a driver, e.g. an unreadable image): 1;
- ``BrokenPipeError`` (stdout closed early: ``stationctl sessions | head -1``): nothing is
  printed and the exit status is 141 (128 + SIGPIPE), what a shell reports for a tool killed by
  SIGPIPE, so ``set -o pipefail`` scripts still see that the output was cut short.

Commands also exit 1 on a negative answer (no card read, no code seen, a relay cycle that failed);
``selftest`` exits with the number of failed checks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, StationConfig, load_config
from agent.control import ControlError, call
from agent.errors import AgentError, ConfigError, DriverError, ProtocolError
from drivers.display.qrcode import DEFAULT_URL_TEMPLATE

DEFAULT_SOCKET = StationConfig.model_fields["control_socket"].default
EX_USAGE = 2  # argparse's exit status for a bad command line
EX_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141

Handler = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


class UsageError(AgentError):
    """A command-line argument that argparse accepted but that makes no sense (exit 2)."""


@contextmanager
def _argument(what: str) -> Iterator[None]:
    """While interpreting the argument ``what``: ValueError/ProtocolError -> :class:`UsageError`."""
    try:
        yield
    except (ValueError, ProtocolError) as err:
        raise UsageError(f"{what}: {err}") from err


# ----------------------------------------------------------------------------------- output
def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _print_json_or(args: argparse.Namespace, obj: Any, text: Callable[[Any], str]) -> None:
    """``--json``: the daemon's answer as JSON; otherwise ``text(obj)``."""
    if args.json:
        _print_json(obj)
    else:
        print(text(obj))


def _status_text(st: dict[str, Any]) -> str:
    link = st.get("link", {})
    outbox = st.get("outbox", {})
    lines = [
        f"station {st['station_id']}  version {st['version']}  "
        f"backend {'connected' if link.get('connected') else 'DISCONNECTED'} ({link.get('url')})",
        f"outbox: {outbox.get('pending', 0)} CDR(s) pending"
        + (f", oldest {outbox['oldest']}" if outbox.get("oldest") else ""),
    ]
    if st.get("faults"):
        lines.append("faults: " + ", ".join(st["faults"]))
    if link.get("nodes"):
        lines.append(_broker_text(link))
    if st.get("inbound_dropped"):
        lines.append(
            "inbound dropped (rate limit): "
            + ", ".join(f"{k} {v}" for k, v in sorted(st["inbound_dropped"].items()))
        )
    for e in st["evses"]:
        lines.append(
            f"  {e['evse_id']:<24} {e['state']:<12} plugged={'yes' if e['plugged'] else 'no':<3} "
            f"relay={'closed' if e['relay_closed'] else 'open':<6} "
            f"session={e['session_id'] or '-'}" + (f"  FAULT {e['fault']}" if e["fault"] else "")
        )
    return "\n".join(lines)


def _broker_text(link: dict[str, Any]) -> str:
    """The broker node in use and the reconnect policy (``mqtt.urls``: a cluster)."""
    delay = link.get("reconnect_delay_s")
    text = (
        f"broker node {link['node']}/{link['nodes']} {link['url']}; last reconnect delay "
        + (f"{delay:.1f} s" if delay is not None else "- (first connection)")
        + f"; failovers {link.get('failovers', 0)}"
    )
    if not link.get("connected") and link.get("next_attempt_in_s") is not None:
        text += f"; next attempt in {link['next_attempt_in_s']:.1f} s"
    return text


def _sessions_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no sessions"
    out = [f"{'session':<36} {'evse':<20} {'state':<10} {'kWh':>8} {'reason':<16} start"]
    for r in rows:
        kwh = "-" if r["energy_kwh"] is None else f"{r['energy_kwh']:.3f}"
        out.append(
            f"{r['session_id']:<36} {r['evse_id']:<20} {r['state']:<10} {kwh:>8} "
            f"{r['stop_reason'] or '-':<16} {r['session_start']}"
        )
    return "\n".join(out)


def _outbox_text(ob: dict[str, Any]) -> str:
    out = [f"{ob['pending']} CDR(s) pending" + (f", oldest {ob['oldest']}" if ob["oldest"] else "")]
    for e in ob["entries"]:
        out.append(
            f"  {e['session_id']}  {e['evse_id']}  {e['energy_kwh']} kWh  "
            f"token {e['token']}  attempts {e['attempts']}  created {e['created_at']}"
        )
    return "\n".join(out)


def _auth_text(res: dict[str, Any]) -> str:
    out = [
        f"local list version {res['version']}, {res['size']} entries; auth cache "
        f"{res['cache_size']} entries; offline policy {res['offline_policy']}"
    ]
    for e in res["entries"]:
        out.append(f"  {e['token']:<24} {e['status']:<9} expires {e['expires_at'] or '-'}")
    return "\n".join(out)


def _meter_text(res: dict[str, Any]) -> str:
    return (
        f"{res['evse_id']}: {res['energy_kwh']:.3f} kWh, power {res['power_w']} W, "
        f"voltage {res['voltage_v']} V ({res['driver']} {res['model']}, "
        f"{res['read_ms']:.1f} ms)"
    )


def _selftest_line(chk: dict[str, Any]) -> str:
    verdict = "PASS" if chk["ok"] else "FAIL"
    return f"{verdict}  {chk['check']:<28} {chk['ms']:7.1f} ms  {chk['detail']}"


def _relay_step_text(step: dict[str, Any]) -> str:
    fb = step.get("feedback_closed")
    state = "-" if fb is None else ("closed" if fb else "open")
    return f"  {step['step']:<10} {step.get('ms', 0):7.1f} ms  feedback {state}" + (
        f"  ERROR {step['error']}" if "error" in step else ""
    )


# --------------------------------------------------------------------- daemon commands
def cmd_status(args: argparse.Namespace) -> int:
    _print_json_or(args, call(args.socket, {"cmd": "status"}), _status_text)
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    rows = call(args.socket, {"cmd": "sessions", "limit": args.limit})
    _print_json_or(args, rows, _sessions_text)
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    if args.action == "retry":
        res = call(args.socket, {"cmd": "outbox.retry"})
        print(f"re-sent {res['sent']} CDR(s)")
    else:
        _print_json_or(args, call(args.socket, {"cmd": "outbox"}), _outbox_text)
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    _print_json_or(args, call(args.socket, {"cmd": "auth.list"}), _auth_text)
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    checks = call(args.socket, {"cmd": "selftest"}, timeout=60)
    if args.json:
        _print_json(checks)
    else:
        for chk in checks:
            print(_selftest_line(chk))
    return sum(1 for chk in checks if not chk["ok"])


def cmd_sim_tap(args: argparse.Namespace) -> int:
    res = call(args.socket, {"cmd": "sim.tap", "uid": args.uid, "card_type": args.card_type})
    print(f"tapped {res['tapped']}")
    return 0


def cmd_sim_plug(args: argparse.Namespace) -> int:
    """``sim plug`` and ``sim unplug``."""
    res = call(args.socket, {"cmd": f"sim.{args.sim_command}", "evse_id": args.evse_id})
    print(f"{res['evse_id']}: {'plugged' if res['plugged'] else 'unplugged'}")
    return 0


def cmd_sim_qr(args: argparse.Namespace) -> int:
    res = call(args.socket, {"cmd": "sim.qr", "payload": args.payload})
    print("delivered" if res["delivered"] else "ignored (same code within the debounce)")
    return 0


def cmd_qr_verify(args: argparse.Namespace) -> int:
    """The daemon's camera: does the printed sticker show this EVSE's code?"""
    res = call(
        args.socket,
        {"cmd": "qr.verify", "evse_id": args.evse_id, "timeout": args.timeout},
        timeout=args.timeout + 15,
    )
    if res["seen"] is None:
        print(f"no station code seen within {args.timeout:.0f} s")
        return 1
    verdict = "MATCHES" if res["match"] else "DOES NOT MATCH"
    print(f"sticker shows {res['seen']}: {verdict} {res['evse_id']}")
    return 0 if res["match"] else 1


def cmd_rfid_read(args: argparse.Namespace) -> int:
    res = call(
        args.socket, {"cmd": "rfid.read", "timeout": args.timeout}, timeout=args.timeout + 15
    )
    if res["card"] is None:
        print(f"no card within {args.timeout:.0f} s")
        return 1
    card = res["card"]
    print(f"UID {card['uid']}  type {card['card_type']}  after {res['seconds']:.3f} s")
    return 0


def cmd_rfid_info(args: argparse.Namespace) -> int:
    info = call(args.socket, {"cmd": "rfid.info"})
    _print_json_or(args, info, lambda i: "\n".join(f"{k}: {v}" for k, v in i.items()))
    return 0


def cmd_relay_cycle(args: argparse.Namespace) -> int:
    res = call(args.socket, {"cmd": "relay.cycle", "evse_id": args.evse_id})
    for step in res["steps"]:
        print(_relay_step_text(step))
    print(f"{res['evse_id']}: {res['verdict']}")
    return 0 if res["verdict"].startswith("ok") else 1


def cmd_relay_reset(args: argparse.Namespace) -> int:
    res = call(args.socket, {"cmd": "relay.reset", "evse_id": args.evse_id})
    print(f"{res['evse_id']}: fault cleared, now {res['state']}")
    return 0


def cmd_meter_read(args: argparse.Namespace) -> int:
    _print_json_or(
        args, call(args.socket, {"cmd": "meter.read", "evse_id": args.evse_id}), _meter_text
    )
    return 0


# ---------------------------------------------------------------------- local commands
def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.path)  # ConfigError: exit 78
    print(f"{args.path}: OK (station {cfg.station.id}, {len(cfg.evse)} EVSE(s))")
    return 0


def cmd_qr_decode(args: argparse.Namespace) -> int:
    """Every code in an image file, without the daemon; exit 1 if there is none."""
    from drivers.qr.decode import decode_file
    from drivers.qr.payload import classify

    try:
        payloads = decode_file(args.image)  # DriverError: missing or unreadable file
    except (OSError, ValueError) as err:
        raise DriverError(f"cannot read {args.image}: {err}") from err
    codes = [classify(p).to_dict() for p in payloads]
    if args.json:
        _print_json({"codes": codes})
    else:
        for code in codes:
            extra = code.get("emaid") or code.get("evse_id") or code.get("reason") or ""
            print(f"{code['kind']:<9} {extra}  {code.get('payload', '')}")
    if not codes:
        print(f"stationctl: no QR code found in {args.image}", file=sys.stderr)
    return 0 if codes else 1


def _qr_template_and_evse(args: argparse.Namespace) -> tuple[str, str]:
    """The URL template (from the config if readable) and the EVSE to show (the only one in
    the config when none was named)."""
    template = DEFAULT_URL_TEMPLATE
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        if args.evse_id is None:
            raise ConfigError(f"no EVSE_ID given and no readable config: {err}") from err
        return template, str(args.evse_id)
    if args.evse_id is not None:
        return cfg.qr.url_template, str(args.evse_id)
    if len(cfg.evse) != 1:
        raise UsageError(f"name an EVSE: {', '.join(cfg.evse_ids())}")
    return cfg.qr.url_template, cfg.evse[0].id


def cmd_qr_show(args: argparse.Namespace) -> int:
    """An EVSE's Intercharge code, on the terminal or as a PNG; no daemon needed."""
    from drivers.display.qrcode import intercharge_payload, render_for_cli

    template, evse_id = _qr_template_and_evse(args)
    with _argument("EVSE_ID"):  # the template was validated with the config
        intercharge_payload(evse_id, template)
    try:
        text = render_for_cli(
            evse_id,
            template,
            png_path=str(args.png) if args.png else None,
            terminal=not args.png or args.terminal,
        )
    except OSError as err:  # only the PNG is written
        raise DriverError(f"cannot write {args.png}: {err.strerror or err}") from err
    except ValueError as err:
        raise DriverError(str(err)) from err
    print(text)
    return 0


# ------------------------------------------------------------------------------- parser
def _common() -> argparse.ArgumentParser:
    """``--socket``, accepted before or after the sub-command: SUPPRESS keeps a sub-parser from
    resetting a value given earlier on the line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"control socket (default {DEFAULT_SOCKET})",
    )
    return common


def _command(
    sub: SubParsers, name: str, handler: Handler, common: argparse.ArgumentParser, **kw: Any
) -> argparse.ArgumentParser:
    """A sub-parser that runs ``handler`` (``sub`` is an argparse sub-parsers action)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], **kw)
    parser.set_defaults(handler=handler)
    return parser


def _add_status_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    _command(sub, "status", cmd_status, common, help="station and EVSE state").add_argument(
        "--json", action="store_true"
    )


def _add_sim_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    sim = sub.add_parser("sim", parents=[common], help="drive the sim drivers of a running daemon")
    simsub = sim.add_subparsers(dest="sim_command", required=True)
    tap = _command(simsub, "tap", cmd_sim_tap, common, help="present a card to the sim reader")
    tap.add_argument("uid")
    tap.add_argument(
        "--card-type",
        default="unknown",
        choices=["unknown", "mifare_classic", "ultralight", "iso_dep"],
    )
    for name in ("plug", "unplug"):
        sp = _command(simsub, name, cmd_sim_plug, common, help=f"{name} the car (sim plug sensor)")
        sp.add_argument("evse_id", nargs="?")
    simqr = _command(simsub, "qr", cmd_sim_qr, common, help="hold a code to the sim camera")
    simqr.add_argument("payload")


def _add_session_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    ss = _command(sub, "sessions", cmd_sessions, common, help="recent sessions (tokens masked)")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--limit", type=int, default=50)
    ob = _command(sub, "outbox", cmd_outbox, common, help="CDRs waiting for the backend's ack")
    ob.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    ob.add_argument("--json", action="store_true")


def _add_qr_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    qr = sub.add_parser("qr", parents=[common], help="Intercharge QR codes")
    qrsub = qr.add_subparsers(dest="qr_command", required=True)
    show = _command(qrsub, "show", cmd_qr_show, common, help="render an EVSE's code")
    show.add_argument("evse_id", nargs="?")
    show.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    out = show.add_mutually_exclusive_group()
    out.add_argument("--png", type=Path, help="write the code to this PNG file")
    out.add_argument("--terminal", action="store_true", help="draw it here (default)")
    dec = _command(qrsub, "decode", cmd_qr_decode, common, help="decode the codes in an image")
    dec.add_argument("image", type=Path)
    dec.add_argument("--json", action="store_true")
    ver = _command(
        qrsub,
        "verify",
        cmd_qr_verify,
        common,
        help="hold the printed sticker to the camera: does it match?",
    )
    ver.add_argument("evse_id", nargs="?")
    ver.add_argument("--timeout", type=float, default=30.0)


def _add_rfid_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    rf = sub.add_parser("rfid", parents=[common], help="card reader diagnostics")
    rfsub = rf.add_subparsers(dest="rfid_command", required=True)
    rd = _command(rfsub, "read", cmd_rfid_read, common, help="wait for one card, show its UID")
    rd.add_argument("--timeout", type=float, default=10.0)
    inf = _command(rfsub, "info", cmd_rfid_info, common, help="firmware, path, polls/s, last error")
    inf.add_argument("--json", action="store_true")


def _add_power_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    """``relay cycle|reset``, ``meter read`` and ``selftest``."""
    rl = sub.add_parser("relay", parents=[common], help="contactor diagnostics")
    rlsub = rl.add_subparsers(dest="relay_command", required=True)
    for name, handler, text in (
        ("cycle", cmd_relay_cycle, "close and open an idle EVSE's relay, check the feedback"),
        ("reset", cmd_relay_reset, "clear a welded/stuck fault once the feedback reads open"),
    ):
        _command(rlsub, name, handler, common, help=text).add_argument("evse_id", nargs="?")
    mt = sub.add_parser("meter", parents=[common], help="energy meter diagnostics")
    mtsub = mt.add_subparsers(dest="meter_command", required=True)
    mr = _command(mtsub, "read", cmd_meter_read, common, help="read energy, power, voltage now")
    mr.add_argument("evse_id", nargs="?")
    mr.add_argument("--json", action="store_true")
    stp = _command(
        sub,
        "selftest",
        cmd_selftest,
        common,
        help="probe every device; exit status = number of failures",
    )
    stp.add_argument("--json", action="store_true")


def _add_admin_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    """``auth list`` and ``config check``."""
    au = _command(sub, "auth", cmd_auth, common, help="offline authorisation: the local list")
    au.add_argument("action", nargs="?", choices=["list"], default="list")
    au.add_argument("--json", action="store_true")
    cfg = sub.add_parser("config", parents=[common], help="configuration tools")
    cfgsub = cfg.add_subparsers(dest="config_command", required=True)
    chk = cfgsub.add_parser("check", help="validate a config file (exit 78 if invalid)")
    chk.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH)
    chk.set_defaults(handler=cmd_config_check)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    # the docstring's first paragraph: the rest is for the reader of this module
    description = (__doc__ or "").split("\n\n", 1)[0]
    p = argparse.ArgumentParser(prog="stationctl", description=description)
    p.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"control socket (default {DEFAULT_SOCKET})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_status_commands(sub, common)
    _add_sim_commands(sub, common)
    _add_session_commands(sub, common)
    _add_qr_commands(sub, common)
    _add_rfid_commands(sub, common)
    _add_power_commands(sub, common)
    _add_admin_commands(sub, common)
    return p


# --------------------------------------------------------------------------------- main
def _fail(err: BaseException, status: int) -> int:
    """One line on stderr, whatever the message: continuation lines are joined with '; '."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"stationctl: {text or type(err).__name__}", file=sys.stderr)
    return status


def _stdout_closed() -> int:
    """The reader of our stdout went away: stop without a word.

    Python flushes stdout once more at exit; pointing its descriptor at /dev/null keeps that
    flush from raising again (the recipe of the Python documentation, ``signal`` module).
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture stdout)
        return EX_BROKEN_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EX_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse exits 2 itself
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at interpreter exit
    except BrokenPipeError:
        return _stdout_closed()
    except ConfigError as err:
        return _fail(err, EX_CONFIG)
    except UsageError as err:
        return _fail(err, EX_USAGE)
    except ControlError as err:
        return _fail(err, 1)
    except AgentError as err:
        return _fail(err, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
