"""TLS to the broker: the client ``ssl.SSLContext``, secret files, readable TLS error messages.

- :func:`build_ssl_context`: TLS 1.2 minimum, the broker's certificate verified against
  ``ca_file`` (or the system's CA store) with hostname checking, and the station's own
  certificate and key for mutual TLS. Verification is only ever switched off by the explicit
  ``insecure_for_testing`` flag (``mqtt.tls_insecure_for_testing``), loudly.
- :func:`read_secret`: a password from a file (``mqtt.password_file``).
- :func:`explain_tls_error`: one sentence saying what a handshake failure most likely means.
- :func:`probe_tls`: one handshake that waits for the broker's verdict on our certificate.
  With TLS 1.3 the broker rejects a client certificate *after* the client's handshake has
  finished; an MQTT client that sends CONNECT at once then only sees the connection reset
  ("EOF occurred in violation of protocol") and the broker's alert is lost. The probe sends
  nothing and reads, so the alert ("certificate expired", "unknown ca") arrives intact.
- :func:`certificate_validity`: the validity dates of a PEM certificate (standard library only),
  used to warn at start-up about an expired or soon-expiring station certificate.

Every problem with a file raises :class:`~agent.errors.ConfigError` naming the file (and the
config key when given) but never its contents. Secret files readable by every user on the
station are used, with a warning: refusing them would take a station off the network because
of a ``chmod`` slip, while the warning in the journal gets it fixed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import ssl
import stat
from pathlib import Path
from typing import NoReturn

from agent.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
MAX_SECRET_BYTES = 4096

_warned_world_readable: set[str] = set()


def _where(path: PathLike, key: str | None) -> str:
    return f"{key} ({path})" if key else str(path)


def _check_readable_file(path: PathLike, key: str | None, what: str) -> Path:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as err:
        raise ConfigError(f"{_where(p, key)}: no such {what} file") from err
    except PermissionError as err:
        raise ConfigError(
            f"{_where(p, key)}: permission denied (the agent runs as user "
            f"station-agent: make the {what} file readable by its group)"
        ) from err
    except OSError as err:
        raise ConfigError(f"{_where(p, key)}: cannot read the {what} file: {err.strerror}") from err
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{_where(p, key)}: not a regular file")
    if not os.access(p, os.R_OK):
        raise ConfigError(
            f"{_where(p, key)}: permission denied (the agent runs as user "
            f"station-agent: make the {what} file readable by its group)"
        )
    return p


def warn_if_world_readable(path: PathLike, key: str | None = None) -> bool:
    """Log a warning (once per path) when a secret file is readable by every user."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IROTH | stat.S_IWOTH):
        return False
    if str(p) not in _warned_world_readable:
        _warned_world_readable.add(str(p))
        log.warning(
            "%s is accessible to every user on this machine (mode %04o): "
            "run chmod 0640 on it (owner root, group station-agent)",
            _where(p, key),
            stat.S_IMODE(mode),
        )
    return True


def read_secret(path: PathLike, key: str | None = "mqtt.password_file") -> str:
    """The secret in ``path``: the first line, without its line ending.

    Raises :class:`ConfigError` for a missing, unreadable, empty, oversized or non-UTF-8 file.
    Only the first line counts so that an editor's trailing newline does not become part of the
    password; more non-empty lines are an error (a pasted file by mistake).
    """
    p = _check_readable_file(path, key, "secret")
    warn_if_world_readable(p, key)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{_where(p, key)}: cannot read: {err.strerror}") from err
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(
            f"{_where(p, key)}: larger than {MAX_SECRET_BYTES} bytes: not a password file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{_where(p, key)}: not UTF-8 text") from err
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"{_where(p, key)}: empty (the secret must be on the first line)")
    if any(line.strip() for line in lines[1:]):
        raise ConfigError(
            f"{_where(p, key)}: more than one line (the secret must be the only line)"
        )
    return lines[0]


def _no_passphrase() -> NoReturn:
    # load_cert_chain would otherwise prompt on the terminal for an encrypted key
    raise ConfigError(
        "the private key is encrypted: station keys must be stored unencrypted "
        "(protect the file with mode 0640, owner root, group station-agent)"
    )


def build_ssl_context(
    ca_file: PathLike | None,
    cert_file: PathLike | None = None,
    key_file: PathLike | None = None,
    insecure_for_testing: bool = False,
) -> ssl.SSLContext:
    """A client context for the broker connection.

    - ``ca_file``: the CA bundle the broker's certificate must chain to; None uses the system's
      store (a broker with a public certificate).
    - ``cert_file`` + ``key_file``: the station's certificate and key (mutual TLS); both or
      neither. A certificate file holding the key too may be given without ``key_file``.
    - ``insecure_for_testing``: no certificate or hostname verification. Never in production.

    Always: TLS 1.2 or newer, ``CERT_REQUIRED`` and hostname checking (unless insecure).
    """
    if key_file is not None and cert_file is None:
        raise ConfigError(
            "mqtt.key_file is set but mqtt.cert_file is not: mutual TLS needs "
            "the station's certificate too"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if ca_file is not None:
        _load_ca_file(ctx, ca_file)
    else:
        _load_system_cas(ctx)
    if cert_file is not None:
        _load_station_certificate(ctx, cert_file, key_file)
    if insecure_for_testing:
        _switch_verification_off(ctx)
    return ctx


def _load_ca_file(ctx: ssl.SSLContext, ca_file: PathLike) -> None:
    """Trust the CA(s) in ``mqtt.ca_file``."""
    ca = _check_readable_file(ca_file, "mqtt.ca_file", "CA certificate")
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as err:
        raise ConfigError(
            f"mqtt.ca_file ({ca}): no usable PEM certificate in it ({err.reason or err})"
        ) from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"mqtt.ca_file ({ca}): cannot load: {err}") from err


def _load_system_cas(ctx: ssl.SSLContext) -> None:
    """Trust the system's CA store (a broker with a public certificate); warn if there is none."""
    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if not ctx.get_ca_certs() and not _has_default_ca_paths():
        log.warning(
            "no mqtt.ca_file and no system CA store found: the broker's certificate "
            "cannot be verified and the connection will fail"
        )


def _load_station_certificate(
    ctx: ssl.SSLContext, cert_file: PathLike, key_file: PathLike | None
) -> None:
    """The station's certificate and key for mutual TLS (the key may be in ``cert_file``)."""
    cert = _check_readable_file(cert_file, "mqtt.cert_file", "certificate")
    key = (
        _check_readable_file(key_file, "mqtt.key_file", "private key")
        if key_file is not None
        else None
    )
    warn_if_world_readable(
        key if key is not None else cert,
        "mqtt.key_file" if key is not None else "mqtt.cert_file",
    )
    try:
        ctx.load_cert_chain(
            str(cert), str(key) if key is not None else None, password=_no_passphrase
        )
    except ConfigError as err:
        raise ConfigError(f"{_where(key or cert, 'mqtt.key_file')}: {err}") from err
    except ssl.SSLError as err:
        raise _cert_chain_error(err, cert, key) from err
    except OSError as err:
        raise ConfigError(f"mqtt.cert_file ({cert}): cannot load: {err.strerror}") from err
    check_certificate_dates(cert)


def _cert_chain_error(err: ssl.SSLError, cert: Path, key: Path | None) -> ConfigError:
    """What went wrong loading the station's certificate and key, in words."""
    reason = f"{err.reason} {err}".upper()
    if "KEY_VALUES_MISMATCH" in reason:
        msg = "the private key does not belong to the certificate"
    elif "PEM" in reason or "NO_START_LINE" in reason or "BAD_BASE64" in reason:
        msg = "not a PEM certificate/private key"
    else:
        msg = f"cannot load the certificate or key ({err.reason or err})"
    return ConfigError(f"mqtt.cert_file ({cert}) / mqtt.key_file ({key}): {msg}")


def _switch_verification_off(ctx: ssl.SSLContext) -> None:
    """``mqtt.tls_insecure_for_testing``: no certificate or hostname checks, loudly."""
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    log.warning(
        "TLS certificate and hostname verification are OFF "
        "(mqtt.tls_insecure_for_testing): never use this on a station"
    )


def _has_default_ca_paths() -> bool:
    paths = ssl.get_default_verify_paths()
    return any(p and os.path.exists(p) for p in (paths.cafile, paths.capath))


# -------------------------------------------------------------------------- certificate dates
EXPIRY_WARNING_DAYS = 30
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _der_time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ (RFC 5280: 50-99 = 19xx)
        parsed = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"unexpected time tag 0x{tag:02x}")
    return parsed.replace(tzinfo=dt.UTC)


def certificate_validity(path: PathLike) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) of the first certificate in a PEM file.

    Raises :class:`ConfigError` when the file holds no parsable certificate.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii", errors="replace")
        m = _PEM_CERT.search(text)
        if m is None:
            raise ValueError("no PEM certificate")
        der = ssl.PEM_cert_to_DER_cert(m.group(0))
        _, cert_start, _ = _der_element(der, 0)  # Certificate
        _, pos, tbs_end = _der_element(der, cert_start)  # TBSCertificate
        fields: list[tuple[int, int, int]] = []
        while pos < tbs_end and len(fields) < 6:
            element = _der_element(der, pos)
            fields.append(element)
            pos = element[2]
        if fields and fields[0][0] == 0xA0:  # [0] version (absent in v1 certificates)
            fields.pop(0)
        if len(fields) < 4 or fields[3][0] != 0x30:  # serial, signature, issuer, validity
            raise ValueError("no validity in the certificate")
        _, vpos, _ = fields[3]
        t1, s1, e1 = _der_element(der, vpos)
        t2, s2, e2 = _der_element(der, e1)
        return _der_time(t1, der[s1:e1]), _der_time(t2, der[s2:e2])
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read the certificate's validity: {err}") from err


def check_certificate_dates(path: PathLike, now: dt.datetime | None = None) -> str | None:
    """Warn (and return the warning) when the certificate is expired, not yet valid or expires
    within :data:`EXPIRY_WARNING_DAYS`. Only a warning: a Raspberry Pi has no battery-backed
    clock, so before NTP sync the local time proves nothing; the broker decides."""
    try:
        not_before, not_after = certificate_validity(path)
    except ConfigError as err:
        log.warning("%s", err)
        return str(err)
    now = now or dt.datetime.now(dt.UTC)
    msg = None
    if now > not_after:
        msg = (
            f"the station certificate {path} expired on {not_after:%Y-%m-%d %H:%M} UTC: the "
            "broker will refuse the connection (or this station's clock is wrong)"
        )
    elif now < not_before:
        msg = (
            f"the station certificate {path} is only valid from {not_before:%Y-%m-%d %H:%M} "
            "UTC: is this station's clock wrong?"
        )
    elif not_after - now < dt.timedelta(days=EXPIRY_WARNING_DAYS):
        msg = f"the station certificate {path} expires on {not_after:%Y-%m-%d %H:%M} UTC: renew it"
    if msg:
        log.warning("%s", msg)
    return msg


# -------------------------------------------------------------------------- error messages
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("certificate has expired",),
        "the broker's certificate has expired (or this station's clock is wrong)",
    ),
    (
        ("certificate is not yet valid",),
        "the broker's certificate is not valid yet: is this station's clock wrong?",
    ),
    (
        ("hostname mismatch", "ip address mismatch"),
        "the broker's certificate is not valid for this host name: check the host in mqtt.url",
    ),
    (
        (
            "unable to get local issuer",
            "self-signed certificate",
            "self signed certificate",
            "unable to verify the first certificate",
        ),
        "the broker's certificate is not signed by a CA in mqtt.ca_file (wrong CA file?)",
    ),
    (("certificate verify failed",), "the broker's certificate could not be verified"),
    (
        ("alert certificate expired",),
        "the broker rejected this station's certificate: it has expired (mqtt.cert_file)",
    ),
    (
        ("alert certificate revoked",),
        "the broker rejected this station's certificate: it is revoked",
    ),
    (
        (
            "alert unknown ca",
            "alert bad certificate",
            "alert certificate unknown",
            "alert unsupported certificate",
        ),
        "the broker rejected this station's certificate (not signed by the CA it trusts?)",
    ),
    (
        ("alert certificate required", "peer did not return a certificate"),
        "the broker requires a client certificate: set mqtt.cert_file and mqtt.key_file",
    ),
    (
        ("alert protocol version", "unsupported protocol", "no protocols available"),
        "no common TLS version with the broker (the agent requires TLS 1.2 or newer)",
    ),
    (
        ("handshake failure", "no shared cipher"),
        "TLS handshake failed: no common cipher or the broker rejected the handshake",
    ),
    (
        ("wrong version number", "packet length too long", "record layer failure"),
        "the broker does not speak TLS on this port (mqtts:// to a plain MQTT port?)",
    ),
    (
        ("eof occurred in violation of protocol", "unexpected eof", "connection reset"),
        "the broker closed the connection during TLS set-up: it rejected this station's "
        "certificate (expired, revoked, another CA) or the port is not a TLS listener; "
        "agent.tls.probe_tls tells which",
    ),
)
NOT_TLS = (
    "the broker closed the connection during the TLS handshake: is this port a TLS "
    "listener? (mqtts:// to a plain MQTT port)"
)
REJECTED = (
    "the broker closed the connection right after the TLS handshake without an alert: "
    "it most likely rejected this station's certificate (see the broker's log)"
)


def explain_tls_error(err: BaseException) -> str:
    """One sentence describing a TLS failure for the log, with OpenSSL's reason appended."""
    detail = str(getattr(err, "verify_message", "") or getattr(err, "reason", "") or err)
    text = f"{detail} {err}".lower().replace("_", " ")
    for needles, hint in _HINTS:
        if any(n in text for n in needles):
            return f"{hint} [{detail}]"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {detail}"
    return f"{type(err).__name__}: {err}"


def tls_backend_error(err: BaseException, url: str) -> BackendError:
    """A :class:`BackendError` for a failed TLS connection to ``url`` (raise it ``from err``)."""
    return BackendError(f"TLS connection to {url} failed: {explain_tls_error(err)}")


def probe_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    timeout_s: float = 5.0,
    alert_wait_s: float = 1.0,
) -> str:
    """Handshake with the broker and wait ``alert_wait_s`` for a rejection of our certificate.

    Returns the negotiated TLS version when the broker accepted the connection; raises
    :class:`BackendError` (from the underlying error) with :func:`explain_tls_error`'s text
    otherwise. Sends no MQTT bytes: the broker just sees a client that went away.
    """
    url = f"mqtts://{host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as err:
        raise BackendError(f"cannot reach {url}: {err.strerror or err}") from err
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLError as err:
            if isinstance(err, ssl.SSLEOFError):
                raise BackendError(f"TLS connection to {url} failed: {NOT_TLS}") from err
            raise tls_backend_error(err, url) from err
        except OSError as err:  # reset during the handshake: not a TLS listener
            raise BackendError(f"TLS connection to {url} failed: {NOT_TLS} [{err}]") from err
        with tls:
            version = tls.version() or "TLS"
            tls.settimeout(alert_wait_s)
            try:
                data = tls.recv(1)
            except TimeoutError:
                return version  # silence: the broker waits for CONNECT, so it accepted us
            except ssl.SSLError as err:
                raise tls_backend_error(err, url) from err
            except OSError as err:
                raise BackendError(f"TLS connection to {url} failed: {REJECTED} [{err}]") from err
            if not data:
                raise BackendError(f"TLS connection to {url} failed: {REJECTED}")
            return version
