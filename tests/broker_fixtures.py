"""Lab brokers as real subprocesses on 127.0.0.x, certificates, and small async helpers.

Every broker is started with `--port 0` (the kernel picks a free port, the broker reports it
on stdout), so concurrent test runs never clash. Every process started here is stopped at
teardown, also when the test failed; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lotdeploy.broker.mqtt import Message, MqttConnection
from lotdeploy.broker.session import BrokerClient
from lotdeploy.secret import Secret

ADMIN_PASSWORD = "admin-pass-for-tests"
START_TIMEOUT = 20.0
T = TypeVar("T")


@dataclass
class LabProc:
    """One running `python -m lotdeploy.lab.broker` and how to reach it."""

    host: str
    args: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    tls_port: int | None = None
    log: Path = field(default_factory=Path)

    @property
    def admin(self) -> Secret:
        return Secret(ADMIN_PASSWORD)

    def client(self, **kwargs: Any) -> BrokerClient:
        kwargs.setdefault("reply_timeout", 5.0)
        return BrokerClient(self.host, self.host, self.port, "root", self.admin, **kwargs)

    def start(self, port: int | None = None) -> LabProc:
        argv = [
            sys.executable,
            "-m",
            "lotdeploy.lab.broker",
            "--bind",
            self.host,
            "--port",
            str(self.port if port is None else port),
            *self.args,
        ]
        self.log = self.workdir / f"broker-{self.host}-{time.monotonic_ns()}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=self.workdir)
        ready = self._read_event("ready", START_TIMEOUT)
        self.port = int(ready["port"])
        self.tls_port = ready.get("tls_port")
        return self

    def _read_event(self, name: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            doc = json.loads(line)
            if doc.get("event") == name:
                return dict(doc)
        self.kill()
        raise AssertionError(f"broker on {self.host} did not report {name!r}:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class LabFactory:
    """Starts brokers for one test and stops every one of them at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[LabProc] = []
        pw = workdir / "admin.pw"
        pw.write_text(ADMIN_PASSWORD + "\n")
        os.chmod(pw, 0o600)
        self.password_file = pw

    def __call__(
        self, host: str, *extra: str | Path, status_interval: float = 0.5, start: bool = True
    ) -> LabProc:
        args = [
            "--admin-password-file",
            str(self.password_file),
            "--status-interval",
            str(status_interval),
            "--link-backoff-max",
            "0.5",
            "--log-level",
            "debug",
            *map(str, extra),
        ]
        lab = LabProc(host, args, self.workdir)
        self.procs.append(lab)
        return lab.start() if start else lab

    def close(self) -> None:
        for lab in self.procs:
            lab.stop(timeout=10)


def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
    """Body of each test module's `lab` fixture: `yield from lab_factory(tmp_path)`."""
    factory = LabFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one async test body with an overall bound."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_connected(client: BrokerClient, route: str, timeout: float = 10.0) -> None:
    async def connected() -> bool:
        status = await client.check_route_connection(route)
        return status.get("connection") == "Connected"

    await wait_until(connected, timeout, f"route {route} on {client.node_name} to connect")


async def subscriber(
    host: str,
    port: int,
    topic: str,
    user: str = "root",
    password: str = ADMIN_PASSWORD,
    qos: int = 1,
) -> MqttConnection:
    conn = MqttConnection(
        host,
        port,
        client_id=f"sub-{time.monotonic_ns()}",
        username=user,
        password=Secret(password),
        connect_timeout=5,
    )
    await conn.connect()
    await conn.subscribe([(topic, qos)], 5)
    return conn


async def drain(
    conn: MqttConnection, quiet: float = 0.5, limit: int = 100_000, total: float = 60.0
) -> list[Message]:
    """Collect what arrives until nothing came for `quiet` seconds (bounded in count, and
    in time by `total`: a topic a broker keeps publishing on never goes quiet)."""
    out: list[Message] = []
    deadline = time.monotonic() + total
    while len(out) < limit and time.monotonic() < deadline:
        try:
            out.append(await asyncio.wait_for(conn.messages.get(), quiet))
        except TimeoutError:
            break
    return out


def cluster_route(
    name: str,
    host: str,
    port: int,
    client_id: str,
    *,
    validity: int = 30,
    tls: bool = False,
    user: str = "cluster",
    password: str = "cluster-pass",
) -> str:
    lines = [
        f"DEFINE ROUTE {name} WITH TYPE MQTT_CLUSTER",
        "    ADD CLUSTER_CONFIG",
        f'        WITH BROKER_ADDRESS "{host}"',
        f"        WITH BROKER_PORT '{port}'",
        f'        WITH CLIENT_ID "{client_id}"',
        f'        WITH USERNAME "{user}"',
        f'        WITH PASSWORD "{password}"',
        f"        WITH MESSAGE_VALIDITY_SEC '{validity}'",
    ]
    if tls:
        lines.append("        WITH USE_TLS true")
    return "\n".join(lines) + "\n"


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Pki:
    ca_cert: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate


def make_ca(directory: Path, name: str) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(path, key, cert)


def make_server_cert(pki: Pki, directory: Path, name: str, ip: str) -> tuple[Path, Path]:
    """A leaf for `ip` (IP SAN), signed by `pki`; returns (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(pki.ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(pki.ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path
