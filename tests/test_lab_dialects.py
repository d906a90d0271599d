"""The lab broker plays each dialect `lotdeploy doctor` detects, and matches the vendor's
broker where that was checked against a real client (CONNACK 4, `$SYS` refused to non-admins,
the placeholder form, `$SYS/Coreflux/Version`).

Every broker here runs in-process on 127.0.0.1 with port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from lotdeploy import __version__
from lotdeploy.broker.mqtt import ConnectRefused, Message, MqttConnection
from lotdeploy.broker.session import BrokerClient, CommandFailed
from lotdeploy.errors import BrokerError, LabError
from lotdeploy.lab.broker.dialect import (
    DIALECT_1X,
    DIALECT_2X,
    OMITTABLE_KEYS,
    Dialect,
    dialect_from_options,
)
from lotdeploy.lab.broker.routes import ALLOWED_KEYS, ROUTE_TEMPLATE, route_template
from lotdeploy.lab.broker.server import LabConfig, LabNode
from lotdeploy.protocol import (
    CLUSTER_KEY_ORDER,
    COMMAND_TOPIC,
    OUTPUT_TOPIC,
    VERSION_TOPIC,
    Placeholder,
    build_reply,
    build_text_reply,
    encode_reply,
    parse_placeholder,
    parse_reply,
    parse_route_template,
    route_code_topic,
)
from lotdeploy.secret import Secret
from tests.broker_fixtures import cluster_route, drain, run

HOST = "127.0.0.1"
ADMIN_PASSWORD = "dialect-admin-pass"
CLUSTER_PASSWORD = "cluster-pass-never-leaks"
#: Nothing listens on port 1: links to it fail at once and keep retrying (bounded backoff).
DEAD_PORT = 1

DIALECTS = [
    DIALECT_2X,
    DIALECT_1X,
    Dialect(echo_request_id=False),
    Dialect(readd="overwrite"),
    Dialect(route_code_missing=frozenset({"USE_TLS"})),
    Dialect(
        replies="text",
        echo_request_id=False,
        readd="overwrite",
        route_code_missing=frozenset({"USE_TLS", "MESSAGE_VALIDITY_SEC"}),
    ),
]


@contextlib.asynccontextmanager
async def lab_node(dialect: Dialect = DIALECT_2X) -> AsyncIterator[LabNode]:
    """A started in-process lab broker on 127.0.0.1, any free port; stopped (bounded) after."""
    node = LabNode(
        LabConfig(
            bind=HOST,
            port=0,
            admin_password=Secret(ADMIN_PASSWORD),
            status_interval=0.5,
            link_backoff_max=0.5,
            dialect=dialect,
        )
    )
    await asyncio.wait_for(node.start(), 10)
    try:
        yield node
    finally:
        await asyncio.wait_for(node.stop(), 15)


def admin_client(node: LabNode, **kwargs: object) -> BrokerClient:
    assert node.port is not None
    return BrokerClient(
        "lab",
        HOST,
        node.port,
        "root",
        Secret(ADMIN_PASSWORD),
        reply_timeout=5,
        connect_timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )


async def connect(node: LabNode, user: str, password: str, client_id: str) -> MqttConnection:
    assert node.port is not None
    conn = MqttConnection(
        HOST,
        node.port,
        client_id=client_id,
        username=user,
        password=Secret(password),
        connect_timeout=5,
    )
    await conn.connect()
    return conn


def route(name: str, client_id: str, missing: frozenset[str] = frozenset()) -> str:
    """A route to a dead peer, without the keys in `missing` (those a dialect lacks)."""
    text = cluster_route(name, HOST, DEAD_PORT, client_id, password=CLUSTER_PASSWORD)
    lines = [ln for ln in text.splitlines() if not any(f"WITH {k} " in ln for k in missing)]
    return "\n".join(lines) + "\n"


def route_with(name: str, key: str, missing: frozenset[str] = frozenset()) -> str:
    """A route carrying `key` as its last setting (once), and none of the other `missing`."""
    value = "true" if key == "USE_TLS" else "'30'" if key == "MESSAGE_VALIDITY_SEC" else '"/x"'
    base = route(name, f"{name}-id", missing | {key})
    return base + f"        WITH {key} {value}\n"


# -- the placeholder form and the template ------------------------------------------------------


def test_every_placeholder_of_the_lab_template_parses_and_names_the_offered_keys() -> None:
    template = parse_route_template(ROUTE_TEMPLATE)
    assert template.keys == CLUSTER_KEY_ORDER and frozenset(template.keys) == ALLOWED_KEYS
    assert len(template.placeholders) == len(CLUSTER_KEY_ORDER) + 1  # + the route name
    for placeholder in template.placeholders:
        assert "," not in placeholder.regex and all(
            (placeholder.name, placeholder.type, placeholder.description, placeholder.env)
        )
        assert placeholder.from_env in (True, False)  # the vendor's fifth field: a boolean
        assert parse_placeholder(str(placeholder)) == placeholder
    assert any(not p.regex for p in template.placeholders)  # the vendor's regex may be empty
    for missing in ({"USE_TLS"}, set(OMITTABLE_KEYS)):
        code = route_template(frozenset(missing))
        assert parse_route_template(code).keys == tuple(
            k for k in CLUSTER_KEY_ORDER if k not in missing
        )
        assert not any(f"WITH {key} " in code for key in missing)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("#port,int,Peer port,^[0-9]{1,5}$,BROKER_PORT#", "6 comma-separated fields"),
        ("#name,string,Route name,^x$,#", "empty env"),
        ("#,,,^x$,true#", "empty name, type"),
        ("#a,b,c,d#", "4 comma-separated fields"),
    ],
)
def test_placeholder_form_is_enforced(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_placeholder(text)
    with pytest.raises(ValueError, match="line 3"):
        parse_route_template(f"DEFINE ROUTE X WITH TYPE MQTT_CLUSTER\n    ADD X\n    {text}\n")


def test_placeholder_round_trip() -> None:
    placeholder = parse_placeholder("tls,bool,Connect over TLS,^(true|false)$,USE_TLS")
    assert placeholder == Placeholder(
        "tls", "bool", "Connect over TLS", "^(true|false)$", "USE_TLS"
    )
    assert placeholder.from_env is None  # an older lab's key name there: unknown, not false


@pytest.mark.parametrize(
    ("text", "fields", "from_env"),
    [
        # the vendor's own example: empty regex, boolean env
        ("#IP,string,PLC address,,true#", ("IP", "string", "PLC address", ""), True),
        ("#port,int,,,false#", ("port", "int", "", ""), False),
        ("# ID , string , Id , ^x$ , TRUE #", ("ID", "string", "Id", "^x$"), True),
    ],
)
def test_the_vendors_placeholder_form_parses(
    text: str, fields: tuple[str, ...], from_env: bool
) -> None:
    placeholder = parse_placeholder(text)
    assert (placeholder.name, placeholder.type, placeholder.description, placeholder.regex) == (
        fields
    )
    assert placeholder.from_env is from_env
    template = parse_route_template(
        f"DEFINE ROUTE RouteName WITH TYPE MODBUS_TCP\n    ADD MODBUS_CONFIG\n"
        f'        WITH IP {text}\n    ADD METADATA\n        WITH DESCRIPTION "t"\n',
        "MODBUS_CONFIG",
    )
    assert template.keys == ("IP",) and template.placeholders == (placeholder,)


# -- dialect values -----------------------------------------------------------------------------


def test_dialect_from_options_validates_with_clear_messages() -> None:
    assert dialect_from_options("json", True, "reject", "") == DIALECT_2X
    assert dialect_from_options("TEXT", False, "Overwrite", " use_tls, MESSAGE_VALIDITY_SEC ") == (
        Dialect("text", False, "overwrite", frozenset({"USE_TLS", "MESSAGE_VALIDITY_SEC"}))
    )
    with pytest.raises(LabError, match=r"--replies must be one of json, text, not 'xml'"):
        dialect_from_options("xml", True, "reject", "")
    with pytest.raises(LabError, match=r"--readd must be one of reject, overwrite"):
        dialect_from_options("json", True, "merge", "")
    with pytest.raises(LabError, match=r"'BROKER_PORT' is a required key"):
        dialect_from_options("json", True, "reject", "BROKER_PORT")
    with pytest.raises(LabError, match=r"'SERVER_CA_CERT_PATH' is not an offered key"):
        dialect_from_options("json", True, "reject", "SERVER_CA_CERT_PATH")
    with pytest.raises(LabError, match="cannot be left out"):
        Dialect(route_code_missing=frozenset({"CLIENT_ID"}))
    with pytest.raises(LabError, match="unknown reply form"):
        Dialect(replies="yaml")  # type: ignore[arg-type]
    assert LabConfig(bind=HOST).dialect == DIALECT_2X


def test_dialect_labels() -> None:
    assert DIALECT_2X.label == "2.x-json" and DIALECT_1X.label == "1.x-text"
    assert (
        DIALECTS[-1].label
        == "1.x-text+readd-overwrite+without-MESSAGE_VALIDITY_SEC+without-USE_TLS"
    )
    assert Dialect(echo_request_id=False).label == "2.x-json+no-request-id"


# -- both reply forms round-trip through the client's parser --------------------------------------


def _commands() -> list[tuple[bytes, bool]]:
    """(payload, sent by the admin) covering every verb, its success and its failures."""
    ok = route("PeerB", "a-to-b")
    two_same = ok + route("PeerB", "again")
    bad_key = route_with("PeerC", "SERVER_CA_CERT_PATH")
    wrong_type = ok.replace("WITH BROKER_PORT '1'", 'WITH BROKER_PORT "abc"').replace("B ", "D ")
    no_client_id = "\n".join(ln for ln in ok.splitlines() if "CLIENT_ID" not in ln)
    admin = [
        b"-listRoutes",
        b"-addRoute " + ok.encode(),
        b"-addRoute " + ok.encode(),  # already exists
        b"-addRoute " + ok.replace("    ADD", "    ADD\n", 1).encode(),  # parse error
        b"-addRoute " + bad_key.encode(),
        b"-addRoute " + wrong_type.encode(),
        b"-addRoute " + no_client_id.replace("PeerB", "PeerE").encode(),
        b"-addRoute " + two_same.replace("PeerB", "PeerF").encode(),
        b"-addRoute DEFINE ROUTE Other WITH TYPE MQTT_BRIDGE\n",
        b"-addRoute",
        b"-listRoutes",
        b"-routeCode MQTT_CLUSTER",
        b"-routeCode MQTT_BRIDGE",
        b"-checkRouteConnection PeerB",
        b"-checkRouteConnection Nope",
        b"-addUser alice alice-pass-1",
        b"-addUser alice alice-pass-1",
        b"-addUser onlyname",
        b"-addUser bad!name x",
        b"-changeUserPassword alice alice-pass-2",
        b"-changeUserPassword bob x",
        b"-changeUserPassword root x",
        b"-removeUser alice",
        b"-removeUser alice",
        b"-removeUser root",
        b"-setSecret CLUSTER_PW=value-1",
        b"-setSecret novalue",
        b"-listSecrets",
        b"-removeRoute PeerB",
        b"-removeRoute PeerB",
        b"-removeRoute",
        b"-frobnicate x",
        b"\xff\xfe not utf-8",
        b"",
        b"no dash",
        b"-addRoute DEFINE ROUTE \x00",
        b"-addRoute " + b"x" * 270_000,
    ]
    return [(p, True) for p in admin] + [(b"-listRoutes", False), (b"-removeRoute PeerB", False)]


def test_every_reply_the_lab_builds_parses_back_in_both_forms() -> None:
    async def body() -> None:
        async with lab_node() as node:
            seen_failure_kinds: set[str] = set()
            for payload, is_admin in _commands():
                user = "root" if is_admin else "alice"
                doc = await node.channel.handle(payload + b" -requestId r-1", user, is_admin)
                verb = payload.split(b" ", 1)[0].lstrip(b"-").decode(errors="replace")
                as_json = parse_reply(encode_reply(doc), verb)
                assert as_json.success is doc["success"] and as_json.message == doc["message"]
                assert as_json.request_id == doc["requestId"]
                text = encode_reply(doc, "text").decode()
                assert text == build_text_reply(doc)
                as_text = parse_reply(text, verb)
                assert as_text.success is doc["success"], (payload[:60], text[:200])
                assert as_text.request_id is None and "r-1" not in text
                if doc["success"]:
                    assert text.startswith(doc["message"])
                    continue
                seen_failure_kinds.add(doc["message"].split(" ", 1)[0])
                first = doc["errors"][0]
                if "line" in first:
                    assert (as_text.errors[0].line, as_text.errors[0].column) == (
                        first["line"],
                        first["column"],
                    ), text
            assert {"Route", "Parsing", "Unknown", "Permission", "Usage:"} <= seen_failure_kinds

    run(body())


def test_text_listing_names_routes_and_secrets() -> None:
    doc = build_reply(True, "listRoutes", None, "2 route(s)", [{"name": "A"}, {"name": "B"}])
    assert build_text_reply(doc) == "2 route(s): A, B"
    failure = build_reply(False, "addRoute", None, "Missing required CLUSTER_CONFIG key 'X'")
    assert build_text_reply(failure) == "Error: Missing required CLUSTER_CONFIG key 'X'"


# -- each dialect against the real client -------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.label)
def test_dialect_against_the_broker_client(dialect: Dialect) -> None:
    missing = dialect.route_code_missing

    async def body() -> None:
        async with lab_node(dialect) as node, admin_client(node, request_ids="auto") as c:
            assert c.request_ids is dialect.echoes_request_id

            added = await c.add_route(route("PeerB", "first-id", missing))
            assert added.success and "added successfully" in added.message
            assert added.request_id is not None if dialect.echoes_request_id else True
            if not dialect.echoes_request_id:
                assert added.request_id is None

            again = await c.command("addRoute", route("PeerB", "second-id", missing))
            if dialect.readd == "reject":
                assert not again.success and "already exists" in again.describe()
                expected_id = "first-id"
            else:
                assert again.success, again.describe()
                expected_id = "second-id"
            code = await c.read_route_code("PeerB", timeout=5)
            assert code is not None and f'WITH CLIENT_ID "{expected_id}"' in code
            assert list(node.routes.links) == ["PeerB"]
            assert node.routes.links["PeerB"].spec.client_id == expected_id

            listing = await c.command("listRoutes")
            assert listing.success
            if dialect.replies == "json":
                assert [r["name"] for r in await c.list_routes()] == ["PeerB"]
            else:
                assert listing.message == "1 route(s): PeerB" and listing.data is None

            status = await c.check_route_connection("PeerB")
            assert status["name"] == "PeerB"

            await c.add_user("cluster", Secret(CLUSTER_PASSWORD))
            with pytest.raises(CommandFailed, match="already exists"):
                await c.add_user("cluster", Secret(CLUSTER_PASSWORD))

            template = await c.route_code("MQTT_CLUSTER")
            parsed = parse_route_template(template)
            assert parsed.keys == dialect.offered_keys
            assert all(placeholder.env for placeholder in parsed.placeholders)
            for key in dialect.route_code_missing:
                assert f"WITH {key} " not in template

            lacking = sorted(dialect.route_code_missing) or ["SERVER_CA_CERT_PATH"]
            for key in lacking:
                text = route_with("PeerK", key, missing)
                with pytest.raises(CommandFailed) as refused:
                    await c.add_route(text)
                error = refused.value.reply.errors[0]
                assert f"Unknown CLUSTER_CONFIG key '{key}'" in refused.value.reply.describe()
                assert (error.line, error.column) == (len(text.splitlines()), 9)
            for key in OMITTABLE_KEYS:
                if key not in dialect.route_code_missing:
                    assert (await c.add_route(route_with(f"Has{key[:4]}", key, missing))).success
                    assert (await c.remove_route(f"Has{key[:4]}")).success

            with pytest.raises(CommandFailed) as unparsable:
                await c.add_route(route("PeerP", "p", missing).replace("    ADD", "    ADD\n", 1))
            assert unparsable.value.reply.errors[0].line == 2

            assert (await c.remove_route("PeerB")).success
            gone = await c.remove_route("PeerB")  # "not found" counts as done
            assert not gone.success and "not found" in gone.describe()
            assert await c.list_routes() == []
            unknown = await c.command("frobnicate")
            assert not unknown.success and "Unknown command: -frobnicate" in unknown.message

        async with lab_node(dialect) as node, admin_client(node, request_ids=True) as always:
            # ids sent regardless: a broker that ignores them still answers every command
            for _ in range(3):
                assert (await always.command("listSecrets")).success

    run(body())


@pytest.mark.parametrize("dialect", DIALECTS[:3], ids=lambda d: d.label)
def test_request_id_on_the_wire(dialect: Dialect) -> None:
    """Echoed when the dialect echoes; otherwise stripped from the command, never echoed."""

    async def body() -> None:
        async with lab_node(dialect) as node:
            conn = await connect(node, "root", ADMIN_PASSWORD, "raw-admin")
            try:
                await conn.subscribe([(OUTPUT_TOPIC, 1)], 5)
                await conn.publish(Message(COMMAND_TOPIC, b"-listRoutes -requestId abc-123", 1), 5)
                payload = (await asyncio.wait_for(conn.messages.get(), 5)).payload.decode()
                await conn.publish(Message(COMMAND_TOPIC, b"-removeRoute X -requestId q9", 1), 5)
                removed = (await asyncio.wait_for(conn.messages.get(), 5)).payload.decode()
            finally:
                await conn.close()
            if dialect.replies == "text":
                assert payload == "0 route(s)" and "abc-123" not in payload
                assert removed == "Route 'X' not found"  # the id was not taken as the name
            else:
                doc = json.loads(payload)
                assert doc["success"] is True
                assert doc["requestId"] == ("abc-123" if dialect.echo_request_id else None)
                assert json.loads(removed)["message"] == "Route 'X' not found"

    run(body())


# -- vendor-matching behaviour, the same in every dialect ------------------------------------------


def _paho_connect_code(port: int, user: str | None, password: str | None) -> int:
    """CONNACK return code a paho client sees (MQTT 3.1.1), within 5 s."""
    done = threading.Event()
    codes: list[int] = []
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"paho-{user}", protocol=paho.MQTTv311
    )
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(_c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        codes.append(int(getattr(reason, "value", reason)))  # type: ignore[call-overload]
        done.set()

    client.on_connect = on_connect
    client.connect(HOST, port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(5), "no CONNACK within 5 s"
    finally:
        client.loop_stop()
        client.disconnect()
    return codes[0]


@pytest.mark.parametrize("dialect", [DIALECT_2X, DIALECT_1X], ids=lambda d: d.label)
def test_wrong_user_or_password_gets_connack_4(dialect: Dialect) -> None:
    async def body() -> None:
        async with lab_node(dialect) as node:
            assert node.port is not None
            # paho 2.x reports 3.1.1's return code 4 as reason code 134, "bad user name or
            # password" (5, "not authorized", would be 135)
            for user, password in (("root", "wrong-password"), ("nobody", "x")):
                code = await asyncio.to_thread(_paho_connect_code, node.port, user, password)
                assert code == 134
            assert await asyncio.to_thread(_paho_connect_code, node.port, None, None) == 135
            assert (
                await asyncio.to_thread(_paho_connect_code, node.port, "root", ADMIN_PASSWORD) == 0
            )

            # the raw CONNACK bytes: fixed header 0x20 0x02, flags, return code 4
            reader, writer = await asyncio.open_connection(HOST, node.port)
            try:
                user, password = b"root", b"bad"
                body = (
                    b"\x00\x04MQTT\x04\xc2\x00\x0a\x00\x03raw"
                    + len(user).to_bytes(2, "big")
                    + user
                    + len(password).to_bytes(2, "big")
                    + password
                )
                writer.write(b"\x10" + bytes([len(body)]) + body)
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x04"
            finally:
                writer.close()

            with pytest.raises(ConnectRefused) as refused:
                await connect(node, "root", "wrong-password", "aiomqtt-1")
            assert refused.value.code == 4 and "bad user name or password" in str(refused.value)
            bad = BrokerClient("n", HOST, node.port, "root", Secret("wrong-pw"), reply_timeout=2)
            with pytest.raises(BrokerError, match="bad user name or password"):
                await bad.connect()

    run(body())


def test_sys_subscriptions_refused_to_all_but_the_admin() -> None:
    sys_filters = [
        "$SYS/#",
        "$SYS/Coreflux/Routes/#",
        route_code_topic("PeerB"),
        OUTPUT_TOPIC,
        VERSION_TOPIC,
    ]

    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            await c.add_user("cluster", Secret(CLUSTER_PASSWORD))
            cluster = await connect(node, "cluster", CLUSTER_PASSWORD, "cluster-1")
            admin = await connect(node, "root", ADMIN_PASSWORD, "admin-1")
            try:
                codes = await cluster.subscribe([(f, 1) for f in [*sys_filters, "#"]], 5)
                assert codes == [0x80] * len(sys_filters) + [1]
                assert await admin.subscribe([(f, 1) for f in sys_filters], 5) == [1] * len(
                    sys_filters
                )
                await drain(admin, quiet=0.3)  # retained Version

                await c.add_route(route("PeerB", "b"))
                await cluster.publish(Message("app/x", b"hello", 1), 5)
                got = await drain(cluster, quiet=0.5)
                # route status is published on every change of a route that cannot connect
                admin_got = await drain(admin, quiet=0.5, total=3)
            finally:
                await cluster.close()
                await admin.close()
            assert [m.topic for m in got] == ["app/x"]
            assert all(CLUSTER_PASSWORD.encode() not in m.payload for m in got)
            assert route_code_topic("PeerB") in {m.topic for m in admin_got}

            # once any client has subscribed to the route code (and left), a new client that
            # never asked for it still gets none of it (amqtt 0.12.1 handed it to everyone)
            assert await c.read_route_code("PeerB", timeout=5) is not None
            late_cluster = await connect(node, "cluster", CLUSTER_PASSWORD, "cluster-2")
            late_admin = await connect(node, "root", ADMIN_PASSWORD, "admin-2")
            try:
                await late_cluster.subscribe([("#", 1)], 5)
                await late_admin.subscribe([(OUTPUT_TOPIC, 1)], 5)
                late = await drain(late_cluster, quiet=0.5) + await drain(late_admin, quiet=0.1)
            finally:
                await late_cluster.close()
                await late_admin.close()
            assert late == []

            user_client = BrokerClient(
                "n", HOST, node.port or 0, "cluster", Secret(CLUSTER_PASSWORD), reply_timeout=2
            )
            with pytest.raises(BrokerError, match=r"subscription to .*Output refused"):
                await user_client.connect()

    run(body())


@pytest.mark.parametrize("dialect", [DIALECT_2X, DIALECT_1X, DIALECTS[-1]], ids=lambda d: d.label)
def test_version_is_published_retained(dialect: Dialect) -> None:
    async def body() -> None:
        async with lab_node(dialect) as node:
            admin = await connect(node, "root", ADMIN_PASSWORD, "admin-v")
            try:
                await admin.subscribe([(VERSION_TOPIC, 1)], 5)
                msg = await asyncio.wait_for(admin.messages.get(), 5)
            finally:
                await admin.close()
            assert msg.topic == VERSION_TOPIC and msg.retain
            assert msg.payload.decode() == f"lab-{__version__} {dialect.label}"

    run(body())


def test_lab_broker_command_plays_a_dialect(tmp_path: Path) -> None:
    """`lotdeploy lab broker --replies text --readd overwrite ...` through the real CLI."""
    import subprocess
    import sys

    password = tmp_path / "admin.pw"
    password.write_text("lab-admin-password\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lotdeploy",
            "lab",
            "broker",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-password-file",
            str(password),
            "--replies",
            "text",
            "--no-echo-request-id",
            "--readd",
            "overwrite",
            "--route-code-missing",
            "USE_TLS",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        assert ready["dialect"] == "1.x-text+readd-overwrite+without-USE_TLS"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "lotdeploy",
            "lab",
            "broker",
            "--bind",
            "127.0.0.1",
            "--route-code-missing",
            "BROKER_ADDRESS",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("lotdeploy: error:")
    assert "BROKER_ADDRESS" in bad.stderr
