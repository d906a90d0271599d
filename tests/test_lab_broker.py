"""The lab broker end to end: real subprocesses, real sockets on 127.0.0.2-127.0.0.39."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from lotdeploy.broker.mqtt import Message, MqttConnection
from lotdeploy.broker.session import BrokerClient, CommandFailed
from lotdeploy.errors import BrokerError
from lotdeploy.protocol import COMMAND_TOPIC, OUTPUT_TOPIC, parse_reply
from lotdeploy.secret import Secret
from tests.broker_fixtures import (
    ADMIN_PASSWORD,
    LabFactory,
    cluster_route,
    drain,
    lab_factory,
    make_ca,
    make_server_cert,
    run,
    subscriber,
    wait_connected,
    wait_until,
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabFactory]:
    yield from lab_factory(tmp_path)


async def raw_command(conn: MqttConnection, payload: bytes) -> dict[str, object]:
    """Publish bytes on the command topic, return the next Output envelope."""
    await conn.publish(Message(COMMAND_TOPIC, payload, 1), 5)
    msg = await asyncio.wait_for(conn.messages.get(), 5)
    doc = json.loads(msg.payload)
    assert isinstance(doc, dict)
    return doc


async def admin_conn(host: str, port: int) -> MqttConnection:
    return await subscriber(host, port, OUTPUT_TOPIC)


def test_command_round_trips_and_error_envelopes(lab: LabFactory) -> None:
    node = lab("127.0.0.2")
    route = cluster_route("PeerB", "127.0.0.3", 1883, "a-to-b")

    async def body() -> None:
        async with node.client() as c:
            reply = await c.add_route("// a comment header, stripped before sending\n" + route)
            assert reply.success and reply.command == "AddRoute" and reply.request_id
            assert "added successfully" in reply.message

            again = await c.command("addRoute", route)
            assert not again.success and "already exists" in again.message

            bad = await c.command("addRoute", route.replace("    ADD", "    ADD\n", 1))
            assert not bad.success and bad.errors[0].line is not None
            assert bad.errors[0].column is not None

            unknown_key = route.replace(
                "WITH CLIENT_ID", 'WITH SERVER_CA_CERT_PATH "/x"\n        WITH CLIENT_ID'
            )
            reply = await c.command("addRoute", unknown_key.replace("PeerB", "PeerC"))
            assert not reply.success and "SERVER_CA_CERT_PATH" in reply.message
            assert reply.errors[0].line == 5

            wrong_type = route.replace("WITH BROKER_PORT '1883'", 'WITH BROKER_PORT "abc"')
            reply = await c.command("addRoute", wrong_type.replace("PeerB", "PeerD"))
            assert not reply.success and "BROKER_PORT" in reply.message

            missing = "\n".join(ln for ln in route.splitlines() if "CLIENT_ID" not in ln)
            reply = await c.command("addRoute", missing.replace("PeerB", "PeerE"))
            assert not reply.success and "CLIENT_ID" in reply.message

            with pytest.raises(CommandFailed) as failed:
                await c.add_route("DEFINE ROUTE 9bad WITH TYPE MQTT_CLUSTER\n")
            assert failed.value.reply.errors[0].line == 1

            assert [r["name"] for r in await c.list_routes()] == ["PeerB"]
            template = await c.route_code("MQTT_CLUSTER")
            assert "CLUSTER_CONFIG" in template and "ADD METADATA" in template
            status = await c.check_route_connection("PeerB")
            assert status["name"] == "PeerB" and status["connection"] in (
                "Connecting",
                "Reconnecting",
            )

            code = await c.read_route_code("PeerB", timeout=5)
            assert code is not None and "DEFINE ROUTE PeerB" in code and "//" not in code
            status_doc = await c.route_status("PeerB", timeout=5)
            assert status_doc is not None and status_doc["type"] == "MQTT_CLUSTER"
            assert {"errors", "messages", "health", "timestamp"} <= set(status_doc)

            unknown = await c.command("frobnicate", "x")
            assert not unknown.success and unknown.message == "Unknown command: -frobnicate"

            # users: a new user can log in, is not an admin, and loses access when removed
            await c.add_user("alice", Secret("alice-pass-1"))
            with pytest.raises(CommandFailed, match="already exists"):
                await c.add_user("alice", Secret("alice-pass-1"))
            alice = BrokerClient(
                "n", node.host, node.port, "alice", Secret("alice-pass-1"), reply_timeout=5
            )
            # a non-admin may not read $SYS (the vendor's broker refuses it too), so it cannot
            # run a BrokerClient; its commands are still answered, and the admin sees that
            with pytest.raises(BrokerError, match="Output refused"):
                async with alice:
                    pass
            watcher = await admin_conn(node.host, node.port)
            alice_conn = MqttConnection(
                node.host,
                node.port,
                client_id="alice-raw",
                username="alice",
                password=Secret("alice-pass-1"),
                connect_timeout=5,
            )
            try:
                await alice_conn.connect()
                await alice_conn.publish(Message(COMMAND_TOPIC, b"-listRoutes", 1), 5)
                answer = await asyncio.wait_for(watcher.messages.get(), 5)
            finally:
                await alice_conn.close()
                await watcher.close()
            denied = parse_reply(answer.payload, "listRoutes")
            assert not denied.success and denied.message.startswith("Permission denied")
            await c.change_user_password("alice", Secret("alice-pass-2"))
            with pytest.raises(BrokerError, match=r"not authorized|bad user"):
                async with alice:
                    pass
            await c.remove_user("alice")
            with pytest.raises(CommandFailed, match="not found"):
                await c.remove_user("alice")
            with pytest.raises(CommandFailed, match="Permission denied"):
                await c.remove_user("root")

            await c.set_secret("CLUSTER_PW", Secret("top-secret-value"))
            assert await c.list_secrets() == ["CLUSTER_PW"]
            listing = await c.command("listSecrets")
            assert "top-secret-value" not in listing.raw

            assert (await c.remove_route("PeerB")).success
            assert not (await c.remove_route("PeerB")).success  # "not found" is fine
            assert await c.list_routes() == []
            assert await c.read_route_code("PeerB", timeout=1) is None

    run(body())
    assert "top-secret-value" not in node.log_text()
    assert "alice-pass" not in node.log_text()
    assert ADMIN_PASSWORD not in node.log_text()


def test_malformed_commands_and_oversized_payloads(lab: LabFactory) -> None:
    node = lab("127.0.0.4", "--max-packet-bytes", "300000")

    async def body() -> None:
        conn = await admin_conn(node.host, node.port)
        try:
            doc = await raw_command(conn, b"\xff\xfe not utf-8")
            assert doc["success"] is False and "UTF-8" in str(doc["message"])
            doc = await raw_command(conn, b"")
            assert doc["success"] is False and "Unknown command" in str(doc["message"])
            doc = await raw_command(conn, b"no dash -requestId r1")
            assert doc["success"] is False and doc["requestId"] == "r1"
            doc = await raw_command(conn, b"-addRoute " + b"x" * 270_000)
            assert doc["success"] is False and "too large" in str(doc["message"])
            doc = await raw_command(conn, b"-addRoute DEFINE ROUTE \x00 -requestId r2")
            assert doc["success"] is False and doc["requestId"] == "r2"
            doc = await raw_command(conn, b"-addUser onlyname")
            assert doc["success"] is False and "Usage" in str(doc["message"])
            doc = await raw_command(conn, b"-setSecret novalue")
            assert doc["success"] is False
            # a publish to another $ topic is dropped, and the client stays connected
            await conn.publish(Message("$SYS/whatever", b"x", 1), 5)
            doc = await raw_command(conn, b"-listRoutes -requestId r3")
            assert doc["success"] is True and doc["requestId"] == "r3"

            # an oversized packet ends only that connection
            big = MqttConnection(
                node.host,
                node.port,
                client_id="big",
                username="root",
                password=Secret(ADMIN_PASSWORD),
            )
            await big.connect()
            await big.publish(Message("t/big", b"y" * 400_000, 0))
            await asyncio.wait_for(big.closed.wait(), 5)
            await big.close()

            # garbage on a fresh socket, a lying length, and a silent socket
            for junk in (b"\x00\x01garbage", b"\x10\xff\xff\xff\x7f", b"\x30\x05ab"):
                reader, writer = await asyncio.open_connection(node.host, node.port)
                writer.write(junk)
                await writer.drain()
                with __import__("contextlib").suppress(Exception):
                    await asyncio.wait_for(reader.read(100), 2)
                writer.close()
            doc = await raw_command(conn, b"-listRoutes -requestId r4")
            assert doc["requestId"] == "r4"
        finally:
            await conn.close()

    run(body())
    assert node.proc is not None and node.proc.poll() is None


def test_anonymous_refused_by_default(lab: LabFactory) -> None:
    node = lab("127.0.0.5")

    async def body() -> None:
        anon = MqttConnection(node.host, node.port, client_id="anon")
        with pytest.raises(Exception, match=r"not authorized|bad user"):
            await anon.connect()
        bad = BrokerClient(
            "n5", node.host, node.port, "root", Secret("wrong-password-x"), reply_timeout=2
        )
        with pytest.raises(BrokerError) as err:
            await bad.connect()
        assert "n5" in str(err.value) and "wrong-password-x" not in str(err.value)

    run(body())


def test_many_commands_on_one_connection(lab: LabFactory) -> None:
    node = lab("127.0.0.6")

    async def body() -> None:
        async with node.client() as c:
            for i in range(300):
                verb = ("listRoutes", "listSecrets", "nope")[i % 3]
                reply = await c.command(verb)
                assert reply.success == (verb != "nope")

    run(body())


def test_paho_client_interop_and_dollar_publish(lab: LabFactory) -> None:
    """A client from another MQTT implementation: $ publishes keep it connected."""
    node = lab("127.0.0.7")
    got: list[paho.MQTTMessage] = []
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="paho-1", protocol=paho.MQTTv311
    )
    client.username_pw_set("root", ADMIN_PASSWORD)
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client.connect(node.host, node.port, keepalive=10)
    client.loop_start()
    try:
        client.subscribe(OUTPUT_TOPIC, qos=1)
        client.subscribe("app/#", qos=1)
        time.sleep(0.3)
        for i in range(20):
            client.publish(COMMAND_TOPIC, f"-listRoutes -requestId p{i}", qos=1).wait_for_publish(5)
        client.publish("app/x", b"hello", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(got) < 21:
            time.sleep(0.05)
        replies = [parse_reply(m.payload, "listRoutes") for m in got if m.topic == OUTPUT_TOPIC]
        assert [r.request_id for r in replies] == [f"p{i}" for i in range(20)]
        assert any(m.topic == "app/x" for m in got)
        assert client.is_connected()
    finally:
        client.loop_stop()
        client.disconnect()


def _mesh(lab: LabFactory, hosts: list[str]) -> list:
    nodes = [lab(h) for h in hosts]

    async def setup() -> None:
        for node in nodes:
            async with node.client() as c:
                await c.add_user("cluster", Secret("cluster-pass"))
        for node in nodes:
            async with node.client() as c:
                for peer in nodes:
                    if peer is not node:
                        name = "To" + peer.host.replace(".", "_")
                        await c.add_route(
                            cluster_route(name, peer.host, peer.port, f"{node.host}-to-{peer.host}")
                        )
                for peer in nodes:
                    if peer is not node:
                        await wait_connected(c, "To" + peer.host.replace(".", "_"))

    run(setup())
    return nodes


def test_full_mesh_delivers_each_message_exactly_once(lab: LabFactory) -> None:
    nodes = _mesh(lab, ["127.0.0.10", "127.0.0.11", "127.0.0.12"])
    per_node = 50

    async def body() -> None:
        subs = [await subscriber(n.host, n.port, "mesh/#") for n in nodes]
        pubs = [await subscriber(n.host, n.port, "unused/x") for n in nodes]
        for i, pub in enumerate(pubs):
            for k in range(per_node):
                await pub.publish(Message(f"mesh/{i}", f"{i}:{k}".encode(), k % 3), 5)
        # retained messages carry over to the peers
        await pubs[0].publish(Message("mesh/retained", b"keep", 1, retain=True), 5)
        expected = Counter(f"{i}:{k}" for i in range(3) for k in range(per_node))
        expected["keep"] = 1
        for j, sub in enumerate(subs):
            got = Counter(m.payload.decode() for m in await drain(sub, quiet=1.0))
            assert got == expected, f"node {j}: {set(got.items()) ^ set(expected.items())}"
        late = await subscriber(nodes[2].host, nodes[2].port, "mesh/retained")
        msg = await asyncio.wait_for(late.messages.get(), 5)
        assert msg.payload == b"keep" and msg.retain
        for conn in [*subs, *pubs, late]:
            await conn.close()

    run(body())


def test_unreachable_peer_queue_honours_validity(lab: LabFactory) -> None:
    a = lab("127.0.0.14")
    b = lab("127.0.0.15")

    async def setup() -> None:
        async with b.client() as c:
            await c.add_user("cluster", Secret("cluster-pass"))
        async with a.client() as c:
            await c.add_route(cluster_route("ToB", b.host, b.port, "a-to-b", validity=3))
            await wait_connected(c, "ToB")

    run(setup())
    b.stop()

    async def publish(prefix: str, count: int) -> None:
        pub = await subscriber(a.host, a.port, "unused/x")
        for k in range(count):
            await pub.publish(Message("q/t", f"{prefix}{k}".encode(), 1), 5)
        await pub.close()

    run(publish("old", 10))
    time.sleep(3.3)
    run(publish("new", 10))
    b.start()  # same port, no state dir: the cluster user is missing until we add it

    async def receive() -> list[str]:
        sub = await subscriber(b.host, b.port, "q/#")
        async with b.client() as c:
            await c.add_user("cluster", Secret("cluster-pass"))
        async with a.client() as c:
            await wait_connected(c, "ToB", timeout=10)
            status = await c.check_route_connection("ToB")
        got = [m.payload.decode() for m in await drain(sub, quiet=1.0)]
        await sub.close()
        assert status["expired"] == 10
        return got

    assert run(receive()) == [f"new{k}" for k in range(10)]


def test_restart_with_state_dir_keeps_routes_users_secrets(lab: LabFactory, tmp_path: Path) -> None:
    state = tmp_path / "state"
    node = lab("127.0.0.17", "--state-dir", state)
    route = cluster_route("Keep", "127.0.0.18", 1883, "keep-1")

    async def before() -> None:
        async with node.client() as c:
            await c.add_route(route)
            await c.add_user("bob", Secret("bob-password"))
            await c.set_secret("S1", Secret("secret-one"))

    run(before())
    assert node.stop() == 0
    saved = (state / "state.json").read_text()
    assert "bob-password" not in saved and oct((state / "state.json").stat().st_mode)[-3:] == "600"
    node.start()

    async def after() -> None:
        async with node.client() as c:
            assert [r["name"] for r in await c.list_routes()] == ["Keep"]
            assert await c.list_secrets() == ["S1"]
            code = await c.read_route_code("Keep", timeout=5)
            assert code is not None and "keep-1" in code
        bob = MqttConnection(
            node.host,
            node.port,
            client_id="bob",
            username="bob",
            password=Secret("bob-password"),
            connect_timeout=5,
        )
        await bob.connect()  # a non-admin logs in; it may not read $SYS, so no BrokerClient
        await bob.close()

    run(after())


def test_sigterm_stops_cleanly(lab: LabFactory) -> None:
    node = lab("127.0.0.19")
    assert node.stop() == 0
    assert "Traceback" not in node.log_text()


# -- TLS -------------------------------------------------------------------------------------


def test_tls_listener_verifies_and_fails_closed(lab: LabFactory, tmp_path: Path) -> None:
    good_ca = make_ca(tmp_path, "good-ca")
    other_ca = make_ca(tmp_path, "other-ca")
    host = "127.0.0.21"
    cert, key = make_server_cert(good_ca, tmp_path, "node21", host)
    wrong_cert, wrong_key = make_server_cert(good_ca, tmp_path, "node21-wrong", "127.0.0.99")
    if shutil.which("openssl"):
        out = subprocess.run(
            ["openssl", "verify", "-CAfile", str(good_ca.ca_cert), str(cert)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert out.returncode == 0, out.stderr
    tls_cert, tls_key = tmp_path / "live.crt", tmp_path / "live.key"
    # start without TLS files: the plain listener works, TLS comes up after SIGHUP
    node = lab(
        host, "--tls-port", "0", "--cert", tls_cert, "--key", tls_key, "--ca", good_ca.ca_cert
    )
    assert node.tls_port is None
    shutil.copy(cert, tls_cert)
    shutil.copy(key, tls_key)
    node.signal(signal.SIGHUP)

    def tls_port() -> int:
        for line in node.log_text().splitlines():
            if "TLS listener on" in line:
                return int(line.split(":")[-1].split()[0])
        return 0

    deadline = time.monotonic() + 10
    while not tls_port() and time.monotonic() < deadline:
        time.sleep(0.1)
    port = tls_port()
    assert port

    def ctx(ca: Path) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca))

    async def body() -> None:
        ok = BrokerClient(
            "n21",
            host,
            port,
            "root",
            Secret(ADMIN_PASSWORD),
            tls=ctx(good_ca.ca_cert),
            reply_timeout=5,
        )
        async with ok:
            assert (await ok.command("listRoutes")).success
        bad = BrokerClient(
            "n21",
            host,
            port,
            "root",
            Secret(ADMIN_PASSWORD),
            tls=ctx(other_ca.ca_cert),
            reply_timeout=5,
        )
        with pytest.raises(BrokerError, match=r"n21.*(certificate|TLS)"):
            await bad.connect()

    run(body())

    # a certificate whose SAN does not name the host is refused after a reload
    shutil.copy(wrong_cert, tls_cert)
    shutil.copy(wrong_key, tls_key)
    node.signal(signal.SIGHUP)
    time.sleep(0.5)

    async def wrong_san() -> None:
        bad = BrokerClient(
            "n21",
            host,
            port,
            "root",
            Secret(ADMIN_PASSWORD),
            tls=ctx(good_ca.ca_cert),
            reply_timeout=5,
        )
        with pytest.raises(BrokerError, match=r"certificate|TLS"):
            await bad.connect()

    run(wrong_san())


def test_cluster_link_over_tls_verifies_the_peer(lab: LabFactory, tmp_path: Path) -> None:
    good_ca = make_ca(tmp_path, "mesh-ca")
    other_ca = make_ca(tmp_path, "evil-ca")
    b_host = "127.0.0.24"
    cert, key = make_server_cert(good_ca, tmp_path, "node24", b_host)
    b = lab(b_host, "--tls-port", "0", "--cert", cert, "--key", key, "--ca", good_ca.ca_cert)
    a_good = lab("127.0.0.23", "--ca", good_ca.ca_cert)
    a_bad = lab("127.0.0.25", "--ca", other_ca.ca_cert)
    assert b.tls_port

    async def body() -> None:
        async with b.client() as c:
            await c.add_user("cluster", Secret("cluster-pass"))
        sub = await subscriber(b.host, b.port, "tls/#")
        for node, name in ((a_good, "Good"), (a_bad, "Bad")):
            async with node.client() as c:
                await c.add_route(
                    cluster_route(name, b_host, b.tls_port or 0, f"{name}-link", tls=True)
                )
        async with a_good.client() as c:
            await wait_connected(c, "Good")
        async with a_bad.client() as c:

            async def failed() -> bool:
                status = await c.check_route_connection("Bad")
                return "certificate" in str(status.get("lastError"))

            await wait_until(failed, 10, "the untrusted link to fail")
            assert (await c.check_route_connection("Bad"))["connection"] != "Connected"
        for node in (a_good, a_bad):
            pub = await subscriber(node.host, node.port, "unused/x")
            await pub.publish(Message("tls/x", node.host.encode(), 1), 5)
            await pub.close()
        got = [m.payload.decode() for m in await drain(sub, quiet=1.5)]
        assert got == [a_good.host]
        await sub.close()

    run(body())


def test_port_in_use_is_a_clean_error(lab: LabFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.27", 0))
        s.listen()
        port = s.getsockname()[1]
        node = lab("127.0.0.27", start=False)
        with pytest.raises(AssertionError, match="did not report"):
            node.start(port)
        assert "Traceback" not in node.log_text()


def test_cluster_links_leave_from_the_nodes_own_address(lab: LabFactory) -> None:
    """So a peer, or the lab's proxy applying partitions by source address, knows the caller."""
    import socket
    import threading

    a = lab("127.0.0.30")
    seen: list[str] = []
    with socket.socket() as peer:
        peer.bind(("127.0.0.31", 0))
        peer.listen(1)
        peer.settimeout(10)

        def accept_one() -> None:
            with contextlib.suppress(OSError):
                conn, address = peer.accept()
                seen.append(address[0])
                conn.close()

        thread = threading.Thread(target=accept_one)
        thread.start()

        async def add() -> None:
            async with a.client() as c:
                await c.add_route(
                    cluster_route("ToPeer", "127.0.0.31", peer.getsockname()[1], "a-to-p")
                )

        run(add())
        thread.join(15)
    assert seen == ["127.0.0.30"]


def test_only_the_server_imports_the_channel() -> None:
    """No import cycle: the channel, routes and state modules never import the server."""
    import ast

    import lotdeploy.lab.broker as package

    root = Path(package.__file__).parent
    for name in ("channel.py", "routes.py", "state.py"):
        tree = ast.parse((root / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert "lotdeploy.lab.broker.server" not in imported, name


def test_route_template_offers_exactly_the_accepted_keys() -> None:
    """-routeCode answers the keys the lab broker accepts: the protocol's documented keys."""
    import re

    from lotdeploy.lab.broker.routes import ALLOWED_KEYS, ROUTE_TEMPLATE
    from lotdeploy.protocol import CLUSTER_KEY_ORDER

    offered = tuple(re.findall(r"^\s+WITH (\w+) ", ROUTE_TEMPLATE, re.MULTILINE))
    assert offered[:-1] == CLUSTER_KEY_ORDER and offered[-1] == "DESCRIPTION"
    assert frozenset(CLUSTER_KEY_ORDER) == ALLOWED_KEYS
