"""Test PKI and a Mosquitto TLS listener with per-station ACLs (helper module, not tests).

:func:`make_pki` writes, with the ``cryptography`` package, a test CA, a second unrelated CA, a
broker certificate for ``localhost``/``127.0.0.1`` and client certificates whose CN is the
station id (valid, expired, another station's) plus one for the backend. :func:`start_tls_broker`
runs :class:`agent.broker.Mosquitto` with an extra mutual-TLS listener (``require_certificate``,
``use_identity_as_username``, ``tls_version tlsv1.2``) and an ACL file letting each station
read/write only ``stations/<its id>/#``. Listener config and ACL are the example files shipped
for backend teams (hardware/broker/), only paths and port rewritten, so the tests check them.

EC P-256 keys keep generation fast (a few milliseconds for the whole set).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.broker import Mosquitto, free_port

STATION_A = "ST-A"
STATION_B = "ST-B"
BACKEND = "backend"

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass
class Pki:
    directory: Path
    ca: Path  # the CA the broker and the stations trust
    other_ca: Path  # an unrelated CA: "wrong CA file"
    server: CertFiles  # broker: localhost + 127.0.0.1, signed by ca
    clients: dict[str, CertFiles] = field(default_factory=dict)  # CN -> files, signed by ca
    expired: CertFiles | None = None  # CN = STATION_A, expired yesterday
    foreign: CertFiles | None = None  # CN = STATION_A but signed by other_ca


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "station-agent tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write(path: Path, cert: x509.Certificate, key: Key | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def make_ca(cn: str) -> tuple[x509.Certificate, Key]:
    key = _key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, Key],
    cn: str,
    *,
    server: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, Key]:
    ca_cert, ca_key = ca
    key = _key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, stations: tuple[str, ...] = (STATION_A, STATION_B)) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("station-agent test CA")
    other = make_ca("some other CA")
    _write(directory / "ca.pem", ca[0])
    _write(directory / "other-ca.pem", other[0])

    def files(name: str, pair: tuple[x509.Certificate, Key]) -> CertFiles:
        _write(directory / f"{name}.pem", pair[0], pair[1])
        return CertFiles(directory / f"{name}.pem", directory / f"{name}.key")

    now = _now()
    pki = Pki(
        directory,
        directory / "ca.pem",
        directory / "other-ca.pem",
        files("server", issue(ca, "localhost", server=True)),
    )
    for cn in (*stations, BACKEND):
        pki.clients[cn] = files(f"client-{cn}", issue(ca, cn))
    pki.expired = files(
        "expired",
        issue(
            ca,
            STATION_A,
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        ),
    )
    pki.foreign = files("foreign", issue(other, STATION_A))
    return pki


REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONF = REPO / "hardware/broker/mosquitto-station-tls.conf"
EXAMPLE_ACL = REPO / "hardware/broker/acl"


def acl_text() -> str:
    """The shipped example ACL (hardware/broker/acl): the tests check what backend teams get."""
    return EXAMPLE_ACL.read_text()


def tls_listener_config(port: int, pki: Pki, acl_file: Path) -> str:
    """The shipped example listener config with this test's paths and port.

    Its ``persistence true`` is dropped (the test broker must not write a database into the
    working directory); everything else is used as shipped.
    """
    paths = {
        "acl_file": acl_file,
        "cafile": pki.ca,
        "certfile": pki.server.cert,
        "keyfile": pki.server.key,
    }
    out = []
    for line in EXAMPLE_CONF.read_text().splitlines():
        word = line.split(" ", 1)[0]
        if word in paths:
            out.append(f"{word} {paths[word]}")
        elif word == "listener":
            out.append(f"listener {port} 127.0.0.1")
        elif word != "persistence":
            out.append(line)
    return "\n" + "\n".join(out) + "\n"


@dataclass
class TlsBroker:
    mosquitto: Mosquitto
    tls_port: int
    pki: Pki

    def stop(self) -> None:
        self.mosquitto.close()


def start_tls_broker(pki: Pki, workdir: Path) -> TlsBroker:
    """Mosquitto with its usual loopback listener plus the mutual-TLS listener on ``tls_port``.

    The example config's ``allow_anonymous false`` (it comes later) overrides the plain
    listener's ``allow_anonymous true``, and the ACL file covers that listener too.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "acl"
    acl.write_text(acl_text())
    port = free_port()
    mosq = Mosquitto(extra_config=tls_listener_config(port, pki, acl), workdir=workdir)
    mosq.start()
    try:
        _wait_listening(port)
    except BaseException:
        mosq.close()
        raise
    return TlsBroker(mosq, port, pki)


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    """Wait until the TLS listener accepts a TCP connection (the broker's signal it is up)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # the polling interval of this wait, not a wait for readiness
