"""``stationctl``: the technician's CLI. Talks to the running daemon over its control socket.

Every command is one handler function (``cmd_*``), attached to its sub-parser with
``set_defaults(handler=...)``; :func:`main` runs it and turns the errors a handler may raise into
one line on stderr and an exit status (one handler per exception type, see
:mod:`agent.cli_errors`):

- ``ConfigError``: 78 (EX_CONFIG), e.g. ``config check`` of an invalid file;
- ``UsageError`` (a bad argument, also a ValueError/ProtocolError raised while interpreting
  one, see :func:`_argument`): 2, like argparse's own usage errors;
- ``ControlError`` (the daemon is not running, unreachable, or refused the request): 1;
- any other ``AgentError`` (a driver, e.g. an unreadable image): 1;
- ``KeyboardInterrupt`` (Ctrl-C while ``rfid read`` waits): one line, 130;
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
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from agent import __version__
from agent.cli_errors import (
    EX_BROKEN_PIPE,
    EX_CONFIG,
    EX_INTERRUPTED,
    EX_USAGE,
    ErrorHandlers,
    one_line,
    standard_handlers,
    stdout_closed,
)
from agent.cli_help import Parser
from agent.control_client import DEFAULT_SOCKET, ControlError, call
from agent.errors import AgentError, ConfigError, DriverError, ProtocolError
from agent.stationctl_pilot import add_pilot_commands, pilot_columns
from agent.web.passwd import add_web_commands

# Only the standard library and the light modules above at import time (stationctl answers in
# under 150 ms): the config (pydantic) and the QR code libraries are imported by the commands
# that use them. The daemon's defaults, kept equal to agent.config's by a test:
DEFAULT_CONFIG_PATH = Path("/etc/station-agent/config.toml")
SOCKET_ENV = "STATIONCTL_SOCKET"  # the control socket, unless --socket names one
EPILOG = f"""\
exit status: 0 done; 1 failed, a negative answer, or the daemon not running; 2 bad command
line; 78 invalid configuration; 130 interrupted; 141 output cut short (| head); selftest: the
number of failed checks. ${SOCKET_ENV} names the control socket unless --socket does.
"""


DESCRIPTION = (
    "stationctl: the technician's CLI. Talks to the running daemon over its control socket."
)


_Parser = Parser  # every (sub-)parser: clean help (agent.cli_help)


__all__ = ["EX_BROKEN_PIPE", "EX_CONFIG", "EX_USAGE", "main"]

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


def _plain(value: Any) -> str:
    """A value for a person, not a Python repr: None is '-', a float has 3 decimals, a bool is
    yes/no, a token is its type and identifier, a list is comma-separated."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        if "type" in value:  # a token (masked by the daemon)
            ident = value.get("uid") or value.get("contract_id") or "-"
            return f"{value['type']} {ident}"
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "-"
    return str(value)


def _num(value: Any, fmt: str) -> str:
    """A number in ``fmt``, or '-' for a missing one."""
    return "-" if value is None else format(value, fmt)


def _backend_text(st: dict[str, Any]) -> str:
    """Whether the backend behind a connected broker answers; a duplicate station id."""
    faults = st.get("faults") or []
    if not st.get("link", {}).get("connected"):
        return ""
    text = ", backend NOT ANSWERING" if "backend:not_answering" in faults else ", backend answering"
    if "station_id:duplicate" in faults:
        text += "\nSTATION ID USED TWICE: another station-agent is connected with this id"
    return text


def _status_text(st: dict[str, Any]) -> str:
    link = st.get("link", {})
    outbox = st.get("outbox", {})
    lines = [
        f"station {st['station_id']}  version {st['version']}  "
        f"broker {'connected' if link.get('connected') else 'DISCONNECTED'} ({link.get('url')})"
        + _backend_text(st),
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
    meter = st.get("meter") or {}
    for e in st["evses"]:
        lines.append(
            f"  {e['evse_id']:<24} {e['state']:<12} plugged={'yes' if e['plugged'] else 'no':<3} "
            f"relay={'closed' if e['relay_closed'] else 'open':<6} "
            f"session={e['session_id'] or '-'}"
            + pilot_columns(e)
            + (f"  FAULT {e['fault']}" if e["fault"] else "")
        )
        m = meter.get(e["evse_id"])
        if m:  # charging: energy so far, power now
            power = None if m["power_w"] is None else m["power_w"] / 1000
            lines.append(
                f"  {'':<24} charged {_num(m['energy_kwh'], '.3f')} kWh, "
                f"power {_num(power, '.1f')} kW"
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
            f"  {e['session_id']}  {e['evse_id']}  {_num(e['energy_kwh'], '.3f')} kWh  "
            f"token {_plain(e['token'])}  attempts {e['attempts']}  created {e['created_at']}"
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
        f"{res['evse_id']}: {res['energy_kwh']:.3f} kWh, power {_num(res['power_w'], '.0f')} W, "
        f"voltage {_num(res['voltage_v'], '.1f')} V ({res['driver']} {res['model']}, "
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


@contextmanager
def _waiting(what: str, seconds: float) -> Iterator[None]:
    """While the daemon waits: on a terminal, say for what and count the seconds down (on
    stderr, one line rewritten in place, erased at the end); in a pipe or a script, nothing."""
    if not sys.stderr.isatty():
        yield
        return
    import threading
    import time

    done = threading.Event()
    end = time.monotonic() + seconds

    def count_down() -> None:
        while True:
            left = max(0.0, end - time.monotonic())
            sys.stderr.write(f"\rwaiting for {what}: {left:3.0f} s left (Ctrl-C to stop) ")
            sys.stderr.flush()
            if done.wait(min(1.0, left) or 1.0):
                return

    ticker = threading.Thread(target=count_down, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join(2)
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _evse_call(
    args: argparse.Namespace, cmd: str, extra: dict[str, Any] | None = None, **kw: Any
) -> Any:
    """``call`` for a command that names an EVSE: an id without '*' that the daemon does not
    know was most likely expanded by the shell, so the refusal says to quote it."""
    try:
        return call(args.socket, {"cmd": cmd, "evse_id": args.evse_id, **(extra or {})}, **kw)
    except ControlError as err:
        evse_id = args.evse_id
        if evse_id is not None and "*" not in evse_id and "unknown EVSE" in str(err):
            raise ControlError(
                f"{err}; quote EVSE ids in the shell ('DE*ICE*E000001*1'): an unquoted '*' "
                "is a file name pattern"
            ) from err
        raise


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
    with _waiting("the self-test to probe every device", 60):
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
    extra = None if getattr(args, "car_max", None) is None else {"car_max_a": args.car_max}
    res = _evse_call(args, f"sim.{args.sim_command}", extra)
    print(f"{res['evse_id']}: {'plugged' if res['plugged'] else 'unplugged'}")
    return 0


def cmd_sim_qr(args: argparse.Namespace) -> int:
    res = call(args.socket, {"cmd": "sim.qr", "payload": args.payload})
    print("delivered" if res["delivered"] else "ignored (same code within the debounce)")
    return 0


def cmd_qr_verify(args: argparse.Namespace) -> int:
    """The daemon's camera: does the printed sticker show this EVSE's code?"""
    with _waiting("a station sticker in front of the camera", args.timeout):
        res = _evse_call(args, "qr.verify", {"timeout": args.timeout}, timeout=args.timeout + 15)
    if res["seen"] is None:
        print(f"no station code seen within {args.timeout:.0f} s")
        return 1
    verdict = "MATCHES" if res["match"] else "DOES NOT MATCH"
    print(f"sticker shows {res['seen']}: {verdict} {res['evse_id']}")
    return 0 if res["match"] else 1


def cmd_rfid_read(args: argparse.Namespace) -> int:
    with _waiting("a card on the reader (it starts no charge)", args.timeout):
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
    _print_json_or(args, info, lambda i: "\n".join(f"{k}: {_plain(v)}" for k, v in i.items()))
    return 0


def cmd_relay_cycle(args: argparse.Namespace) -> int:
    res = _evse_call(args, "relay.cycle")
    for step in res["steps"]:
        print(_relay_step_text(step))
    print(f"{res['evse_id']}: {res['verdict']}")
    return 0 if res["verdict"].startswith("ok") else 1


def cmd_relay_reset(args: argparse.Namespace) -> int:
    res = _evse_call(args, "relay.reset")
    print(f"{res['evse_id']}: fault cleared, now {res['state']}")
    return 0


def cmd_meter_read(args: argparse.Namespace) -> int:
    _print_json_or(args, _evse_call(args, "meter.read"), _meter_text)
    return 0


def cmd_cdr_verify(args: argparse.Namespace) -> int:
    """Fetch a session's signed records from the daemon and check them with pyocmf here."""
    from agent.ocmf_verify import check, report

    got = call(args.socket, {"cmd": "cdr.signed", "session_id": args.session_id})
    values = got.get("signed_meter_values")
    if not values:
        print(f"session {got['session_id']}: the meter does not sign (signed: false)")
        return 1
    verdict = check(values)  # VerifyError (an AgentError): one line, exit 1
    if args.json:
        _print_json({**got, "verdict": "ok" if verdict.ok else "failed"})
    else:
        print(f"session {got['session_id']} on {got['evse_id']} ({got['state']})")
        print("\n".join(report(verdict)))
    return 0 if verdict.ok else 1


# ---------------------------------------------------------------------- local commands
def cmd_config_check(args: argparse.Namespace) -> int:
    from agent.config import load_config

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
    from agent.config import load_config
    from drivers.display.qrcode import DEFAULT_URL_TEMPLATE

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


def cmd_completion(args: argparse.Namespace) -> int:
    """The shell completion script of both commands (generated from their parsers)."""
    from agent.cli import build_parser as agent_parser
    from agent.completion import script

    print(script(args.shell, {"stationctl": build_parser(), "station-agent": agent_parser()}))
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
        help=f"control socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
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
        if name == "plug":
            sp.add_argument("--car-max", type=float, help="the sim car's own maximum (A)")
    simqr = _command(simsub, "qr", cmd_sim_qr, common, help="hold a code to the sim camera")
    simqr.add_argument("payload")


def _add_session_commands(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    ss = _command(sub, "sessions", cmd_sessions, common, help="recent sessions (tokens masked)")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--limit", type=int, default=50)
    cdr = sub.add_parser("cdr", parents=[common], help="charge detail records")
    cdrsub = cdr.add_subparsers(dest="cdr_command", required=True)
    cv = _command(cdrsub, "verify", cmd_cdr_verify, common, help="check the signed meter records")
    cv.add_argument("session_id")
    cv.add_argument("--json", action="store_true")
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
    chk = _command(
        cfgsub,
        "check",
        cmd_config_check,
        common,
        help="validate a config file (exit 78 if invalid)",
    )
    chk.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH)
    comp = _command(
        sub, "completion", cmd_completion, common, help="print the shell completion script"
    )
    comp.add_argument("shell", choices=["bash", "zsh"])


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = _Parser(prog="stationctl", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"stationctl {__version__}")
    p.add_argument(
        "--socket",
        type=Path,
        default=Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET),
        help=f"control socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )
    sub = cast("SubParsers", p.add_subparsers(dest="command", required=True))
    _add_status_commands(sub, common)
    _add_sim_commands(sub, common)
    _add_session_commands(sub, common)
    _add_qr_commands(sub, common)
    _add_rfid_commands(sub, common)
    _add_power_commands(sub, common)
    _add_admin_commands(sub, common)
    add_web_commands(sub)  # `web passwd` (agent/web/passwd.py)
    add_pilot_commands(sub, common, _command)
    return p


# --------------------------------------------------------------------------------- main
def _fail(err: BaseException, status: int) -> int:
    """One line on stderr, whatever the message: continuation lines are joined with '; '."""
    print(f"stationctl: {one_line(err)}", file=sys.stderr)
    return status


def _stdout_closed() -> int:
    """The reader of our stdout went away: stop without a word (see :mod:`agent.cli_errors`)."""
    return stdout_closed()


def error_handlers() -> ErrorHandlers:
    """stationctl's handlers: the shared ones plus its own (see :mod:`agent.cli_errors`)."""
    eh = standard_handlers("stationctl")

    @eh.register(UsageError)
    def _usage(err: UsageError) -> int:
        return _fail(err, EX_USAGE)

    @eh.register(ControlError)  # not running, unreachable, or refused: the message says which
    def _control(err: ControlError) -> int:
        return _fail(err, 1)

    @eh.register(KeyboardInterrupt)
    def _interrupted(err: KeyboardInterrupt) -> int:
        return eh.fail("interrupted (the daemon gives up waiting by itself)", EX_INTERRUPTED)

    return eh


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse exits 2 itself
    handler: Handler = args.handler
    return error_handlers().run(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
