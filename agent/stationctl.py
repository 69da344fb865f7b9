"""``stationctl``: the technician's CLI. Talks to the running daemon over its control socket."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, StationConfig, load_config
from agent.control import ControlError, call
from agent.errors import ConfigError

DEFAULT_SOCKET = StationConfig.model_fields["control_socket"].default


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


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
    for e in st["evses"]:
        lines.append(
            f"  {e['evse_id']:<24} {e['state']:<12} plugged={'yes' if e['plugged'] else 'no':<3} "
            f"relay={'closed' if e['relay_closed'] else 'open':<6} "
            f"session={e['session_id'] or '-'}" + (f"  FAULT {e['fault']}" if e["fault"] else "")
        )
    return "\n".join(lines)


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


def _qr_local(args: argparse.Namespace) -> int:
    """``qr show`` and ``qr decode`` work on this machine, without the daemon."""
    if args.qr_command == "decode":
        from drivers.qr.decode import decode_file
        from drivers.qr.payload import classify

        try:
            payloads = decode_file(args.image)
        except (OSError, ValueError) as err:
            print(f"stationctl: cannot read {args.image}: {err}", file=sys.stderr)
            return 1
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
    from drivers.display.qrcode import render_for_cli

    template = "http://m.intercharge.eu/qr?evseid={evse_id}"
    evse_id = args.evse_id
    try:
        cfg = load_config(args.config)
        template = cfg.qr.url_template
        if evse_id is None:
            if len(cfg.evse) != 1:
                print(f"stationctl: name an EVSE: {', '.join(cfg.evse_ids())}", file=sys.stderr)
                return 1
            evse_id = cfg.evse[0].id
    except ConfigError as err:
        if evse_id is None:
            print(f"stationctl: no EVSE_ID given and no readable config: {err}", file=sys.stderr)
            return EX_CONFIG
    try:
        print(
            render_for_cli(
                evse_id,
                template,
                png_path=str(args.png) if args.png else None,
                terminal=not args.png or args.terminal,
            )
        )
    except ValueError as err:
        print(f"stationctl: {err}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    sock: Path = args.socket
    c = args.command
    if c == "qr" and args.qr_command in ("show", "decode"):
        return _qr_local(args)
    if c == "config":
        try:
            cfg = load_config(args.path)
        except ConfigError as err:
            print(f"stationctl: {err}", file=sys.stderr)
            return EX_CONFIG
        print(f"{args.path}: OK (station {cfg.station.id}, {len(cfg.evse)} EVSE(s))")
        return 0
    if c == "status":
        st = call(sock, {"cmd": "status"})
        _print_json(st) if args.json else print(_status_text(st))
    elif c == "sim":
        if args.sim_command == "tap":
            res = call(sock, {"cmd": "sim.tap", "uid": args.uid, "card_type": args.card_type})
            print(f"tapped {res['tapped']}")
        elif args.sim_command == "qr":
            res = call(sock, {"cmd": "sim.qr", "payload": args.payload})
            print("delivered" if res["delivered"] else "ignored (same code within the debounce)")
        else:
            res = call(sock, {"cmd": f"sim.{args.sim_command}", "evse_id": args.evse_id})
            print(f"{res['evse_id']}: {'plugged' if res['plugged'] else 'unplugged'}")
    elif c == "sessions":
        rows = call(sock, {"cmd": "sessions", "limit": args.limit})
        _print_json(rows) if args.json else print(_sessions_text(rows))
    elif c == "qr":  # verify: the daemon's camera
        res = call(
            sock,
            {"cmd": "qr.verify", "evse_id": args.evse_id, "timeout": args.timeout},
            timeout=args.timeout + 15,
        )
        if res["seen"] is None:
            print(f"no station code seen within {args.timeout:.0f} s")
            return 1
        verdict = "MATCHES" if res["match"] else "DOES NOT MATCH"
        print(f"sticker shows {res['seen']}: {verdict} {res['evse_id']}")
        return 0 if res["match"] else 1
    elif c == "rfid":
        if args.rfid_command == "read":
            res = call(
                sock, {"cmd": "rfid.read", "timeout": args.timeout}, timeout=args.timeout + 15
            )
            if res["card"] is None:
                print(f"no card within {args.timeout:.0f} s")
                return 1
            card = res["card"]
            print(f"UID {card['uid']}  type {card['card_type']}  after {res['seconds']:.3f} s")
        else:
            info = call(sock, {"cmd": "rfid.info"})
            _print_json(info) if args.json else print(
                "\n".join(f"{k}: {v}" for k, v in info.items())
            )
    elif c == "relay":
        res = call(sock, {"cmd": f"relay.{args.relay_command}", "evse_id": args.evse_id})
        if args.relay_command == "reset":
            print(f"{res['evse_id']}: fault cleared, now {res['state']}")
        else:
            for step in res["steps"]:
                fb = step.get("feedback_closed")
                state = "-" if fb is None else ("closed" if fb else "open")
                print(
                    f"  {step['step']:<10} {step.get('ms', 0):7.1f} ms  feedback {state}"
                    + (f"  ERROR {step['error']}" if "error" in step else "")
                )
            print(f"{res['evse_id']}: {res['verdict']}")
            return 0 if res["verdict"].startswith("ok") else 1
    elif c == "meter":
        res = call(sock, {"cmd": "meter.read", "evse_id": args.evse_id})
        if args.json:
            _print_json(res)
        else:
            print(
                f"{res['evse_id']}: {res['energy_kwh']:.3f} kWh, power {res['power_w']} W, "
                f"voltage {res['voltage_v']} V ({res['driver']} {res['model']}, "
                f"{res['read_ms']:.1f} ms)"
            )
    elif c == "selftest":
        checks = call(sock, {"cmd": "selftest"}, timeout=60)
        if args.json:
            _print_json(checks)
        else:
            for chk in checks:
                print(
                    f"{'PASS' if chk['ok'] else 'FAIL'}  {chk['check']:<28} {chk['ms']:7.1f} ms"
                    f"  {chk['detail']}"
                )
        return sum(1 for chk in checks if not chk["ok"])
    elif c == "auth":
        res = call(sock, {"cmd": "auth.list"})
        if args.json:
            _print_json(res)
        else:
            print(
                f"local list version {res['version']}, {res['size']} entries; auth cache "
                f"{res['cache_size']} entries; offline policy {res['offline_policy']}"
            )
            for e in res["entries"]:
                print(f"  {e['token']:<24} {e['status']:<9} expires {e['expires_at'] or '-'}")
    elif c == "outbox":
        if args.action == "retry":
            res = call(sock, {"cmd": "outbox.retry"})
            print(f"re-sent {res['sent']} CDR(s)")
        else:
            ob = call(sock, {"cmd": "outbox"})
            _print_json(ob) if args.json else print(_outbox_text(ob))
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --socket is accepted before or after the sub-command; SUPPRESS keeps a sub-parser from
    # resetting a value given earlier on the line
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"control socket (default {DEFAULT_SOCKET})",
    )
    p = argparse.ArgumentParser(prog="stationctl", description=__doc__)
    p.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"control socket (default {DEFAULT_SOCKET})",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("status", parents=[common], help="station and EVSE state")
    s.add_argument("--json", action="store_true")

    sim = sub.add_parser("sim", parents=[common], help="drive the sim drivers of a running daemon")
    simsub = sim.add_subparsers(dest="sim_command", required=True)
    tap = simsub.add_parser("tap", parents=[common], help="present a card to the sim reader")
    tap.add_argument("uid")
    tap.add_argument(
        "--card-type",
        default="unknown",
        choices=["unknown", "mifare_classic", "ultralight", "iso_dep"],
    )
    for name in ("plug", "unplug"):
        sp = simsub.add_parser(name, parents=[common], help=f"{name} the car (sim plug sensor)")
        sp.add_argument("evse_id", nargs="?")

    ss = sub.add_parser("sessions", parents=[common], help="recent sessions (tokens masked)")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--limit", type=int, default=50)

    ob = sub.add_parser("outbox", parents=[common], help="CDRs waiting for the backend's ack")
    ob.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    ob.add_argument("--json", action="store_true")

    simqr = simsub.add_parser("qr", parents=[common], help="hold a code to the sim camera")
    simqr.add_argument("payload")

    qr = sub.add_parser("qr", parents=[common], help="Intercharge QR codes")
    qrsub = qr.add_subparsers(dest="qr_command", required=True)
    show = qrsub.add_parser("show", parents=[common], help="render an EVSE's code")
    show.add_argument("evse_id", nargs="?")
    show.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    out = show.add_mutually_exclusive_group()
    out.add_argument("--png", type=Path, help="write the code to this PNG file")
    out.add_argument("--terminal", action="store_true", help="draw it here (default)")
    dec = qrsub.add_parser("decode", parents=[common], help="decode the codes in an image")
    dec.add_argument("image", type=Path)
    dec.add_argument("--json", action="store_true")
    ver = qrsub.add_parser(
        "verify", parents=[common], help="hold the printed sticker to the camera: does it match?"
    )
    ver.add_argument("evse_id", nargs="?")
    ver.add_argument("--timeout", type=float, default=30.0)

    rf = sub.add_parser("rfid", parents=[common], help="card reader diagnostics")
    rfsub = rf.add_subparsers(dest="rfid_command", required=True)
    rd = rfsub.add_parser("read", parents=[common], help="wait for one card, show its UID")
    rd.add_argument("--timeout", type=float, default=10.0)
    inf = rfsub.add_parser("info", parents=[common], help="firmware, path, polls/s, last error")
    inf.add_argument("--json", action="store_true")

    rl = sub.add_parser("relay", parents=[common], help="contactor diagnostics")
    rlsub = rl.add_subparsers(dest="relay_command", required=True)
    for name, text in (
        ("cycle", "close and open an idle EVSE's relay, check the feedback"),
        ("reset", "clear a welded/stuck fault once the feedback reads open"),
    ):
        rp = rlsub.add_parser(name, parents=[common], help=text)
        rp.add_argument("evse_id", nargs="?")
    mt = sub.add_parser("meter", parents=[common], help="energy meter diagnostics")
    mtsub = mt.add_subparsers(dest="meter_command", required=True)
    mr = mtsub.add_parser("read", parents=[common], help="read energy, power, voltage now")
    mr.add_argument("evse_id", nargs="?")
    mr.add_argument("--json", action="store_true")
    stp = sub.add_parser(
        "selftest", parents=[common], help="probe every device; exit status = number of failures"
    )
    stp.add_argument("--json", action="store_true")

    au = sub.add_parser("auth", parents=[common], help="offline authorisation: the local list")
    au.add_argument("action", nargs="?", choices=["list"], default="list")
    au.add_argument("--json", action="store_true")

    cfg = sub.add_parser("config", parents=[common], help="configuration tools")
    cfgsub = cfg.add_subparsers(dest="config_command", required=True)
    chk = cfgsub.add_parser("check", help="validate a config file (exit 78 if invalid)")
    chk.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ControlError as err:
        print(f"stationctl: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
