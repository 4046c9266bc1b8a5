"""Pytest fixtures that run a real Mosquitto (``/usr/sbin/mosquitto``) on a free port of
127.0.0.1, with a generated config in the test's tmp dir: plain, TLS (test CA, server cert,
optional client certificates required) and password-file variants.

``mosquitto`` yields a started plain ``Broker``; ``broker_factory(tls=..., require_certificate=...,
users=...)`` starts variants. A ``Broker`` can be stopped and started again on the same port,
paused (SIGSTOP) and resumed. Tests skip only when the mosquitto binary is missing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = Path(os.environ.get("ACC_MOSQUITTO", "/usr/sbin/mosquitto"))
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- a test PKI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: server verification against it must fail


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, other_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("acc test CA", ca_key, "acc test CA", ca_key, ca=True)
    other = _cert("acc other CA", other_key, "acc other CA", other_key, ca=True)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
    srv = _cert("localhost", srv_key, "acc test CA", ca_key, ca=False, sans=sans)
    cli = _cert("node-1", cli_key, "acc test CA", ca_key, ca=False)
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other-ca.pem")
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.other_ca.write_bytes(other.public_bytes(pem))
    pki.server_cert.write_bytes(srv.public_bytes(pem))
    pki.client_cert.write_bytes(cli.public_bytes(pem))
    _write_key(pki.server_key, srv_key)
    _write_key(pki.client_key, cli_key)
    return pki


# --- the broker -------------------------------------------------------------------------------


@dataclass
class Broker:
    dir: Path
    port: int
    tls: Pki | None = None
    require_certificate: bool = False
    users: dict[str, str] = field(default_factory=dict)
    max_queued_messages: int = 100_000
    host: str = HOST
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def log(self) -> Path:
        return self.dir / "mosquitto.log"

    def write_config(self) -> None:
        lines = [
            f"listener {self.port} {HOST}",
            "persistence false",
            "user root",
            f"max_queued_messages {self.max_queued_messages}",
            "max_inflight_messages 100",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([str(MOSQUITTO_PASSWD), "-b", str(pw), user, password], check=True, capture_output=True)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 5.0) -> None:
        assert self.proc is None, "broker already running"
        self.proc = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start on port {self.port}: {err}\n{log}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mosquitto did not accept connections on {HOST}:{self.port} in {timeout}s"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL (works on a paused broker too): nothing buffered in it gets delivered."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers: ``broker_factory(tls=False, require_certificate=False, users=None)``."""
    if not MOSQUITTO.is_file():
        pytest.skip(f"mosquitto not installed at {MOSQUITTO} (apt-get install mosquitto)")
    started: list[Broker] = []

    def make(*, tls: bool = False, require_certificate: bool = False, users: dict[str, str] | None = None) -> Broker:
        d = tmp_path / f"broker{len(started)}"
        d.mkdir()
        pki = make_pki(d / "pki") if tls else None
        b = Broker(d, free_port(), tls=pki, require_certificate=require_certificate, users=dict(users or {}))
        b.write_config()
        started.append(b)
        b.start()
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def mosquitto(broker_factory: BrokerFactory) -> Broker:
    """A plain (no TLS, anonymous) Mosquitto on a free 127.0.0.1 port."""
    return broker_factory()
