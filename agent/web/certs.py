"""The status page's TLS pair: the configured one, or a self-signed one made at first start.

Without ``tls_cert_file``/``tls_key_file`` a P-256 key and a self-signed certificate (10 years,
names: the station id, ``localhost``, the listen address when it is a specific IP) are made in
``web.cert_dir`` the first time and reused afterwards, so a technician's browser only has to
accept the same certificate once. The key is written with mode 0600 before any byte of it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from pathlib import Path

from agent.errors import ConfigError

log = logging.getLogger(__name__)

CERT_NAME = "web-cert.pem"
KEY_NAME = "web-key.pem"
VALID_DAYS = 3650


def tls_pair(
    cert_file: Path | None, key_file: Path | None, cert_dir: Path, station_id: str, host: str
) -> tuple[Path, Path]:
    """``(certificate, key)``: the configured files, or the self-signed pair in ``cert_dir``."""
    if cert_file is not None and key_file is not None:
        for path, name in ((cert_file, "web.tls_cert_file"), (key_file, "web.tls_key_file")):
            if not path.is_file():
                raise ConfigError(f"{name} ({path}): no such file")
        return cert_file, key_file
    cert, key = cert_dir / CERT_NAME, cert_dir / KEY_NAME
    if cert.is_file() and key.is_file():
        return cert, key
    try:
        make_self_signed(cert, key, station_id, host)
    except OSError as err:
        raise ConfigError(
            f"web.cert_dir ({cert_dir}): cannot write the self-signed certificate: {err}"
        ) from err
    log.warning(
        "no web.tls_cert_file configured: made a self-signed certificate %s (browsers warn "
        "once; its SHA-256 fingerprint is logged below for checking)",
        cert,
    )
    log.warning("status page certificate fingerprint: %s", fingerprint(cert))
    return cert, key


def make_self_signed(cert_path: Path, key_path: Path, station_id: str, host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    cn = f"station-agent {station_id}"[:64]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified:
            names.append(x509.IPAddress(ip))
    except ValueError:
        names.append(x509.DNSName(host))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint(cert_path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
