"""TLS to the broker: agent.tls with a real paho client against a real Mosquitto TLS listener.

The broker (tests/tls_fixtures.py) requires client certificates, takes the certificate's CN as
the username and lets each station read/write only ``stations/<its id>/#``.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import shutil
import socket
import ssl
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import INSTALL_HINT
from agent.errors import BackendError, ConfigError
from agent.tls import (
    build_ssl_context,
    certificate_validity,
    check_certificate_dates,
    explain_tls_error,
    probe_tls,
    read_secret,
)
from tests.tls_fixtures import (
    BACKEND,
    STATION_A,
    STATION_B,
    Pki,
    TlsBroker,
    issue,
    make_ca,
    make_pki,
    start_tls_broker,
)

HOST = "127.0.0.1"
WAIT = 5.0
SILENCE = 0.3  # how long "nothing arrives" is watched once a later sentinel has arrived


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail(f"the tests need a real Mosquitto broker: {INSTALL_HINT}", pytrace=False)
    broker = start_tls_broker(pki, tmp_path_factory.mktemp("tls-broker"))
    yield broker
    broker.stop()


def ctx_for(pki: Pki, cn: str, ca: Path | None = None) -> ssl.SSLContext:
    files = pki.clients[cn]
    return build_ssl_context(ca or pki.ca, files.cert, files.key)


class Peer:
    """A paho client (MQTT 3.1.1, QoS 1) that records what it receives."""

    def __init__(self, name: str, context: ssl.SSLContext) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.tls_set_context(context)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue[Any] = queue.Queue()
        self.subacks: dict[int, list[Any]] = {}
        self._suback = threading.Condition()
        self.errors: list[str] = []
        c = self.client
        c.on_connect = lambda cl, u, flags, rc, props: self.connack.put(rc)
        c.on_message = lambda cl, u, msg: self.inbox.put((msg.topic, bytes(msg.payload)))
        c.on_subscribe = self._on_subscribe
        c.on_log = lambda cl, u, level, text: (
            self.errors.append(text) if level >= mqtt.MQTT_LOG_WARNING else None
        )

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: list[Any], props: Any
    ) -> None:
        with self._suback:
            self.subacks[mid] = codes
            self._suback.notify_all()

    def connect(self, port: int, host: str = HOST) -> Peer:
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        rc = self.connack.get(timeout=WAIT)
        assert not rc.is_failure, f"broker refused: {rc}"
        return self

    def subscribe(self, topic: str) -> list[Any]:
        rc, mid = self.client.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self._suback:
            assert self._suback.wait_for(lambda: mid in self.subacks, WAIT), "no SUBACK"
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def wait_for(self, payload: bytes, timeout: float = WAIT) -> list[tuple[str, bytes]]:
        """Everything received up to and including ``payload`` (fails if it never comes)."""
        seen: list[tuple[str, bytes]] = []
        while True:
            try:
                item = self.inbox.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"{payload!r} never arrived; got {seen}") from None
            seen.append(item)
            if item[1] == payload:
                return seen

    def drain(self, wait: float = SILENCE) -> list[tuple[str, bytes]]:
        out = []
        try:
            while True:
                out.append(self.inbox.get(timeout=wait))
        except queue.Empty:
            return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def peer(peers: list[Peer], name: str, context: ssl.SSLContext, port: int) -> Peer:
    p = Peer(name, context)
    peers.append(p)
    return p.connect(port)


def paho_attempt(context: ssl.SSLContext, port: int) -> str | None:
    """Connect once with paho; None on CONNACK success, else a description of the failure."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    c.tls_set_context(context)
    logs: list[str] = []
    c.on_log = lambda cl, u, level, text: logs.append(text)
    result: list[Any] = []
    c.on_connect = lambda cl, u, flags, rc, props: result.append(rc)
    try:
        c.connect(HOST, port, keepalive=10)
    except (ssl.SSLError, OSError) as err:
        return explain_tls_error(err)
    try:
        for _ in range(100):
            if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS or result:
                break
    finally:
        c.disconnect()
    if result and not result[0].is_failure:
        return None
    return f"no CONNACK: {result or logs[-2:]}"


# ------------------------------------------------------------------------------ the happy path
def test_station_publishes_and_subscribes_under_its_own_prefix(
    pki: Pki, tls_broker: TlsBroker, peers: list[Peer]
) -> None:
    port = tls_broker.tls_port
    station = peer(peers, STATION_A, ctx_for(pki, STATION_A), port)
    backend = peer(peers, BACKEND, ctx_for(pki, BACKEND), port)
    assert station.subscribe(f"stations/{STATION_A}/cmd/req")[0].value == 1  # granted QoS 1
    backend.subscribe("stations/+/status")

    backend.publish(f"stations/{STATION_A}/cmd/req", b"start")
    assert station.wait_for(b"start")[-1] == (f"stations/{STATION_A}/cmd/req", b"start")
    station.publish(f"stations/{STATION_A}/status", b"online")
    assert backend.wait_for(b"online")[-1] == (f"stations/{STATION_A}/status", b"online")
    assert station.client.socket().version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]


def test_hostname_is_verified(pki: Pki, tls_broker: TlsBroker) -> None:
    ctx = ctx_for(pki, STATION_A)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert probe_tls("localhost", tls_broker.tls_port, ctx, alert_wait_s=SILENCE)  # DNS SAN
    with (
        socket.create_connection((HOST, tls_broker.tls_port), timeout=WAIT) as raw,
        pytest.raises(ssl.SSLCertVerificationError) as exc,
    ):
        ctx.wrap_socket(raw, server_hostname="broker.example.com")
    assert "not valid for this host name" in explain_tls_error(exc.value)


# ------------------------------------------------------------------------------ refusals
def test_wrong_ca_fails_with_a_clear_error(pki: Pki, tls_broker: TlsBroker) -> None:
    ctx = ctx_for(pki, STATION_A, ca=pki.other_ca)
    failure = paho_attempt(ctx, tls_broker.tls_port)
    assert failure is not None and "not signed by a CA in mqtt.ca_file" in failure
    with pytest.raises(BackendError, match=r"not signed by a CA in mqtt\.ca_file"):
        probe_tls(HOST, tls_broker.tls_port, ctx, alert_wait_s=SILENCE)


def test_expired_certificate_fails_with_a_clear_error(
    pki: Pki, tls_broker: TlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    assert pki.expired is not None
    with caplog.at_level(logging.WARNING, logger="agent.tls"):
        ctx = build_ssl_context(pki.ca, pki.expired.cert, pki.expired.key)
    assert any("expired on" in r.getMessage() for r in caplog.records)  # said at start-up
    assert paho_attempt(ctx, tls_broker.tls_port) is not None  # never connected
    with pytest.raises(BackendError, match="rejected this station's certificate: it has expired"):
        probe_tls(HOST, tls_broker.tls_port, ctx, alert_wait_s=SILENCE)


def test_certificate_from_another_ca_is_refused(pki: Pki, tls_broker: TlsBroker) -> None:
    assert pki.foreign is not None  # CN = ST-A, but not issued by the broker's CA
    ctx = build_ssl_context(pki.ca, pki.foreign.cert, pki.foreign.key)
    assert paho_attempt(ctx, tls_broker.tls_port) is not None
    with pytest.raises(BackendError, match="not signed by the CA it trusts"):
        probe_tls(HOST, tls_broker.tls_port, ctx, alert_wait_s=SILENCE)


def test_client_certificate_is_required(pki: Pki, tls_broker: TlsBroker) -> None:
    ctx = build_ssl_context(pki.ca)
    assert paho_attempt(ctx, tls_broker.tls_port) is not None
    with pytest.raises(BackendError, match=r"requires a client certificate|rejected"):
        probe_tls(HOST, tls_broker.tls_port, ctx, alert_wait_s=SILENCE)


def test_probe_accepts_a_good_certificate_and_spots_a_plain_port(
    pki: Pki, tls_broker: TlsBroker
) -> None:
    assert probe_tls(HOST, tls_broker.tls_port, ctx_for(pki, STATION_A), alert_wait_s=SILENCE) in (
        "TLSv1.2",
        "TLSv1.3",
    )
    with pytest.raises(BackendError, match=r"is this port a TLS listener"):
        probe_tls(HOST, tls_broker.mosquitto.port, ctx_for(pki, STATION_A), alert_wait_s=SILENCE)


def test_another_station_cannot_use_this_stations_topics(
    pki: Pki, tls_broker: TlsBroker, peers: list[Peer]
) -> None:
    """ST-B holds a valid certificate, but the ACL keeps it out of stations/ST-A/#.

    Every "must not arrive" is followed by a sentinel on an allowed topic from the same sender:
    the broker routes one client's messages in order, so once the sentinel is in, a leaked
    message would already have been delivered. The sentinels also prove the checks can fail.
    """
    port = tls_broker.tls_port
    a = peer(peers, STATION_A, ctx_for(pki, STATION_A), port)
    b = peer(peers, STATION_B, ctx_for(pki, STATION_B), port)
    backend = peer(peers, BACKEND, ctx_for(pki, BACKEND), port)
    a.subscribe(f"stations/{STATION_A}/#")
    backend.subscribe("stations/#")

    # 1. B publishes into A's subtree: neither A nor the backend may see it
    b.publish(f"stations/{STATION_A}/cmd/req", b"forged command")
    b.publish(f"stations/{STATION_A}/cdr", b"forged cdr")
    b.publish(f"stations/{STATION_B}/status", b"sentinel from B")
    got = backend.wait_for(b"sentinel from B")
    assert [p for _, p in got] == [b"sentinel from B"], got
    backend.publish(f"stations/{STATION_A}/cmd/req", b"sentinel for A")
    got = a.wait_for(b"sentinel for A")
    assert [p for _, p in got] == [b"sentinel for A"], got

    # 2. B subscribes to A's subtree (and to everything): nothing of A's may reach it
    b_codes = [*b.subscribe(f"stations/{STATION_A}/#"), *b.subscribe("stations/#")]
    b.subscribe(f"stations/{STATION_B}/#")
    backend.publish(f"stations/{STATION_A}/cmd/req", b"secret for A")
    a.publish(f"stations/{STATION_A}/status", b"A's own status")
    backend.publish(f"stations/{STATION_B}/cmd/req", b"sentinel for B")
    a.publish(f"stations/{STATION_A}/status", b"A's second status")
    backend.wait_for(b"A's second status")  # A's messages were routed by now
    got = b.wait_for(b"sentinel for B")
    got += b.drain()
    leaked = [(t, p) for t, p in got if STATION_A in t]
    assert leaked == [], f"ST-B received ST-A's messages: {leaked} (SUBACK codes {b_codes})"
    assert (f"stations/{STATION_B}/cmd/req", b"sentinel for B") in got


def test_tls_1_1_is_refused_by_the_broker(pki: Pki, tls_broker: TlsBroker) -> None:
    files = pki.clients[STATION_A]
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
    old.load_verify_locations(str(pki.ca))
    old.load_cert_chain(str(files.cert), str(files.key))
    with (
        socket.create_connection((HOST, tls_broker.tls_port), timeout=WAIT) as raw,
        pytest.raises(ssl.SSLError) as exc,
    ):
        old.wrap_socket(raw, server_hostname=HOST)
    # the broker's alert, not a local refusal to offer TLS 1.1 (which would prove nothing)
    assert "ALERT_PROTOCOL_VERSION" in str(exc.value), exc.value
    assert "no common TLS version" in explain_tls_error(exc.value)


def test_agent_refuses_a_tls_1_1_broker(pki: Pki) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        server_ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    server_error: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                server_ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as err:
                server_error.append(err)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(BackendError, match="no common TLS version"):
            probe_tls(HOST, port, ctx_for(pki, STATION_A), alert_wait_s=SILENCE)
    finally:
        t.join(WAIT)
        listener.close()
    assert server_error, "the TLS 1.1 server completed a handshake with the agent's context"


def test_insecure_for_testing_skips_verification_loudly(
    pki: Pki, tls_broker: TlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    files = pki.clients[STATION_A]
    with caplog.at_level(logging.WARNING, logger="agent.tls"):
        ctx = build_ssl_context(pki.other_ca, files.cert, files.key, insecure_for_testing=True)
    assert any("verification are OFF" in r.getMessage() for r in caplog.records)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2  # still TLS 1.2+
    assert paho_attempt(ctx, tls_broker.tls_port) is None  # wrong CA, but connects


# ------------------------------------------------------------------------------ file problems
def _key_body(path: Path) -> str:
    return path.read_text().splitlines()[1]  # a base64 line of the key


def test_file_problems_are_config_errors_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    a, b = pki.clients[STATION_A], pki.clients[STATION_B]
    cases: list[tuple[tuple[Any, ...], str]] = [
        ((tmp_path / "missing.pem",), "mqtt.ca_file .*missing.pem.*no such CA certificate"),
        ((tmp_path,), "not a regular file"),
        ((a.key,), "no usable PEM certificate"),
        ((pki.ca, a.cert, tmp_path / "nokey.key"), "mqtt.key_file .*no such private key"),
        ((pki.ca, a.cert, b.key), "the private key does not belong to the certificate"),
        ((pki.ca, None, a.key), "mqtt.key_file is set but mqtt.cert_file is not"),
        ((pki.ca, a.key, a.key), "mqtt.cert_file"),
    ]
    for args, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as exc:
            build_ssl_context(*args)
        for f in (a.key, b.key):
            assert _key_body(f) not in str(exc.value)
        assert "PRIVATE KEY" not in str(exc.value)


def test_encrypted_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    a = pki.clients[STATION_A]
    key = serialization.load_pem_private_key(a.key.read_bytes(), None)
    enc = tmp_path / "encrypted.key"
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    enc.chmod(0o640)
    with pytest.raises(ConfigError, match="encrypted"):
        build_ssl_context(pki.ca, a.cert, enc)


def test_unreadable_file(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    # the tests run as root, who reads anything: pretend to be the station-agent user
    monkeypatch.setattr("agent.tls.os.access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=r"permission denied .*readable by its group"):
        build_ssl_context(pki.ca)


def test_explain_tls_error_for_paho_style_failures() -> None:
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)")
    assert "rejected this station's certificate" in explain_tls_error(eof)
    assert "probe_tls" in explain_tls_error(eof)
    assert explain_tls_error(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_world_readable_key_is_warned_about(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = pki.clients[STATION_A]
    key = tmp_path / "open.key"
    key.write_bytes(a.key.read_bytes())
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="agent.tls"):
        build_ssl_context(pki.ca, a.cert, key)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("accessible to every user" in m and "0644" in m for m in msgs), msgs
    assert all(_key_body(a.key) not in m for m in msgs)


# ------------------------------------------------------------------------------ read_secret
def test_read_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "pw"
    for content, expected in [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("with space \n\n", "with space "),
    ]:
        p.write_text(content)
        p.chmod(0o640)
        assert read_secret(p) == expected
    for content, pattern in [
        ("", "empty"),
        ("\nZq9-hidden\n", "empty"),
        ("Zq9-hidden\nsecond\n", "more than one"),
        ("Zq9-hidden" * 500, "larger than"),
    ]:
        p.write_text(content)
        with pytest.raises(ConfigError, match=pattern) as exc:
            read_secret(p)
        assert "mqtt.password_file" in str(exc.value) and str(p) in str(exc.value)
        assert "Zq9" not in str(exc.value)
    p.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_secret(p)
    with pytest.raises(ConfigError, match="no such secret file"):
        read_secret(tmp_path / "missing")

    open_file = tmp_path / "open-pw"
    open_file.write_text("hunter2\n")
    open_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="agent.tls"):
        assert read_secret(open_file) == "hunter2"
        assert read_secret(open_file) == "hunter2"
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "accessible to every user" in msgs[0]  # once per file
    assert all("hunter2" not in m for m in msgs)


# ------------------------------------------------------------------------------ certificate dates
def test_certificate_validity_and_date_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography import x509

    ca = make_ca("dates CA")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    far = dt.datetime(2051, 6, 1, 12, 0, tzinfo=dt.UTC)  # encoded as GeneralizedTime
    cases = {
        "ok": (now - dt.timedelta(days=1), now + dt.timedelta(days=200), None),
        "soon": (now - dt.timedelta(days=1), now + dt.timedelta(days=10), "renew it"),
        "expired": (now - dt.timedelta(days=9), now - dt.timedelta(days=2), "expired on"),
        "future": (now + dt.timedelta(days=2), now + dt.timedelta(days=9), "clock wrong"),
        "far": (now - dt.timedelta(days=1), far, None),
    }
    for name, (nb, na, warning) in cases.items():
        cert, _ = issue(ca, "dates", not_before=nb, not_after=na)
        path = tmp_path / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        parsed = x509.load_pem_x509_certificate(path.read_bytes())
        assert certificate_validity(path) == (
            parsed.not_valid_before_utc,
            parsed.not_valid_after_utc,
        ), name
        msg = check_certificate_dates(path)
        assert (msg is None) if warning is None else (msg is not None and warning in msg), name
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="validity"):
        certificate_validity(bad)
