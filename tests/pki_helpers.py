"""Helpers for the PKI and credential tests: sites, workspaces, real TLS handshakes, openssl."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from lotdeploy.model import Site
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.workspace import Workspace

PASSPHRASE = "test-passphrase-9f8e7d6c5b4a"
NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)

DEFAULT_NODES: list[dict[str, Any]] = [
    {"name": "a", "address": "127.0.0.101", "region": "eu", "dns_names": ["a.test"]},
    {"name": "b", "address": "b.test", "region": "eu", "ip_addresses": ["127.0.0.102"]},
    {"name": "c", "address": "127.0.0.103", "region": "us"},
]


def write_site(
    directory: Path,
    nodes: list[dict[str, Any]] | None = None,
    pki: dict[str, Any] | None = None,
    tls: bool = True,
) -> Path:
    doc: dict[str, Any] = {
        "site": "testsite",
        "defaults": {"tls": tls},
        "nodes": nodes if nodes is not None else DEFAULT_NODES,
    }
    if pki:
        doc["pki"] = pki
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def load(path: Path) -> Site:
    return load_site(path).site


def workspace_for(site_file: Path, passphrase: str = PASSPHRASE) -> Workspace:
    """A fresh Workspace object (as a new run would make) with a fixed passphrase."""
    ws = Workspace.for_site(site_file)
    ws.passphrase_provider = lambda creating: Secret(passphrase)
    return ws


def no_passphrase_workspace(site_file: Path) -> Workspace:
    def refuse(creating: bool) -> Secret:
        raise AssertionError("this operation must not need the passphrase")

    ws = Workspace.for_site(site_file)
    ws.passphrase_provider = refuse
    return ws


Files = dict[str, tuple[bytes | Secret, int]]


def materialise(files: Files, directory: Path) -> dict[str, Path]:
    """Write a node's TLS files like render would; returns name → path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (content, mode) in files.items():
        path = directory / name
        data = content.reveal().encode() if isinstance(content, Secret) else content
        path.write_bytes(data)
        path.chmod(mode)
        paths[name] = path
    return paths


def context(paths: dict[str, Path], server: bool) -> ssl.SSLContext:
    """Mutual TLS, as a broker (server) or as a route (client) would use the files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(paths["server.crt"], paths["server.key"])
    ctx.load_verify_locations(cafile=paths["ca.crt"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = True
    return ctx


def handshake(
    server_paths: dict[str, Path],
    client_paths: dict[str, Path],
    host: str,
    server_hostname: str,
) -> str:
    """Run one mutual-TLS handshake on `host` (127.0.0.1xx) and return the client's CN as
    seen by the server. Raises ssl.SSLError (either side) when it fails."""
    server_ctx = context(server_paths, server=True)
    client_ctx = context(client_paths, server=False)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    result: dict[str, Any] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer: Any = tls.getpeercert()
                names = [rdn[0] for rdn in peer["subject"]]
                result["peer"] = next(value for key, value in names if key == "commonName")
                tls.sendall(b"ok")
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection((host, port), timeout=5) as raw:  # noqa: SIM117
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                data = tls.recv(2)
    finally:
        thread.join(10)
        listener.close()
    if "error" in result:
        raise result["error"]
    assert data == b"ok"
    return str(result["peer"])


def openssl_verify(
    ca_file: Path,
    cert_file: Path,
    *,
    purpose: str = "sslserver",
    ip: str | None = None,
    hostname: str | None = None,
    at: datetime | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", purpose]
    if ip:
        cmd += ["-verify_ip", ip]
    if hostname:
        cmd += ["-verify_hostname", hostname]
    if at:
        cmd += ["-attime", str(int(at.timestamp()))]
    cmd.append(str(cert_file))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
