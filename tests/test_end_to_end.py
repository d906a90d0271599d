"""The compiler, the PKI and the lab broker together: what `render` produces forms a working
TLS full mesh on real brokers, and every message reaches every other node exactly once.

This is what apply will do by hand: install each node's certificate, accept the cluster user,
add each rendered route through the command channel.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lotdeploy.broker.mqtt import Message
from lotdeploy.lot import format_route, parse_file
from lotdeploy.render import write_bundles
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.workspace import Workspace
from tests.broker_fixtures import LabFactory, drain, lab_factory, run, subscriber, wait_connected

ADDRESSES = {"n1": "127.0.0.70", "n2": "127.0.0.71", "n3": "127.0.0.72"}
PASSPHRASE = Secret("end-to-end test passphrase")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabFactory]:
    yield from lab_factory(tmp_path)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_rendered_bundles_form_a_tls_mesh(tmp_path: Path, lab: LabFactory) -> None:
    tls_ports = {name: _free_port(address) for name, address in ADDRESSES.items()}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        "site: e2e\ndefaults: {tls: true}\nregions: {a: {}, b: {}}\nnodes:\n"
        + "".join(
            f"  - {{name: {name}, address: {ADDRESSES[name]}, port: {tls_ports[name]}, "
            f"region: {'a' if name != 'n3' else 'b'}}}\n"
            for name in ADDRESSES
        )
    )
    site = load_site(site_file).site
    workspace = Workspace(tmp_path / ".lotdeploy", passphrase_provider=lambda _new: PASSPHRASE)
    out = tmp_path / "out"
    write_bundles(site, workspace, out)
    store = workspace.secrets()
    password = store.get("cluster-password-v1")
    assert password is not None

    brokers = {}
    for name, address in ADDRESSES.items():
        bundle = out / name
        brokers[name] = lab(
            address,
            "--tls-port",
            tls_ports[name],
            "--cert",
            bundle / "server.crt",
            "--key",
            bundle / "server.key",
            "--ca",
            bundle / "ca.crt",
        )
        assert brokers[name].tls_port == tls_ports[name]

    async def deploy_and_check() -> None:
        for name, broker in brokers.items():
            routes = parse_file(out / name / "routes.lot")
            assert len(routes) == 2
            async with broker.client() as client:
                await client.add_user("cluster", password)
                for route in routes:
                    await client.add_route(format_route(route))
        for broker in brokers.values():
            async with broker.client() as client:
                for route in await client.list_routes():
                    await wait_connected(client, route["name"], timeout=15)
        subs = {n: await subscriber(b.host, b.port, "e2e/#") for n, b in brokers.items()}
        pubs = {n: await subscriber(b.host, b.port, "unused/x") for n, b in brokers.items()}
        for name, pub in pubs.items():
            for k in range(20):
                await pub.publish(Message(f"e2e/{name}", f"{name}:{k}".encode(), 1), 5)
        for name, sub in subs.items():
            got = Counter(m.payload.decode() for m in await drain(sub, quiet=1.0))
            expected = Counter(f"{other}:{k}" for other in ADDRESSES for k in range(20))
            assert got == expected, f"{name} got {sorted(set(got) ^ set(expected))[:5]}"
        for conn in [*subs.values(), *pubs.values()]:
            await conn.close()

    run(deploy_and_check(), timeout=90)
    for broker in brokers.values():
        assert password.reveal() not in broker.log_text()
