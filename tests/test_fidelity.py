"""The lab broker as the vendor documents its broker, and lotdeploy tolerant of every form.

Issue 21, items 1-3: verbs in any case and as kebab aliases, quotes stripped around names,
the verbs the vendor's client uses, route status at once to a new subscriber with the
vendor's fields, the dialects where builds differ (exact verbs, cluster topics, no Version
topic, CONNACK 5, no secret store, named rights), and the client reading each of them
(replies without requestId, status `uptime` "HH:MM:SS", templates with empty regex).

Every broker runs in-process on 127.0.0.1, port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from lotdeploy.broker.monitoring import read_cluster_topics
from lotdeploy.broker.mqtt import ConnectRefused, Message
from lotdeploy.broker.session import _is_reply_to
from lotdeploy.errors import LabError, LotSyntaxError
from lotdeploy.lab import labstate
from lotdeploy.lab.broker.dialect import Dialect, dialect_from_options
from lotdeploy.lab.broker.routes import route_template
from lotdeploy.lot import lint_text
from lotdeploy.lot.template import parse_template
from lotdeploy.protocol import (
    CLUSTER_KEY_ORDER,
    COMMAND_TOPIC,
    OUTPUT_TOPIC,
    Reply,
    parse_duration,
    parse_reply,
    parse_route_status,
    route_status_topic,
)
from lotdeploy.secret import Secret
from tests.broker_fixtures import cluster_route, drain, run, wait_connected, wait_until
from tests.test_lab_dialects import (
    ADMIN_PASSWORD,
    CLUSTER_PASSWORD,
    HOST,
    admin_client,
    connect,
    lab_node,
    route,
)


async def raw_command(node: object, payload: bytes) -> dict[str, object]:
    """Publish one command as a plain admin MQTT client and return the JSON reply."""
    conn = await connect(node, "root", ADMIN_PASSWORD, f"raw-{time.monotonic_ns()}")  # type: ignore[arg-type]
    try:
        await conn.subscribe([(OUTPUT_TOPIC, 1)], 5)
        await conn.publish(Message(COMMAND_TOPIC, payload, 1), 5)
        reply = await asyncio.wait_for(conn.messages.get(), 5)
    finally:
        await conn.close()
    return dict(json.loads(reply.payload))


# -- command words ------------------------------------------------------------------------------


def test_verbs_in_any_case_and_kebab_aliases_quotes_stripped() -> None:
    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            await c.add_route(route("PeerB", "b"))
            for spelled in ("-listroutes", "--list-routes", "-LIST-ROUTES", "-ListRoutes"):
                doc = await raw_command(node, spelled.encode())
                assert doc["success"] is True and doc["command"] == "ListRoutes", spelled
                assert [r["name"] for r in doc["data"]] == ["PeerB"]  # type: ignore[union-attr]
            checked = await raw_command(node, b"-checkRouteConnection 'PeerB'")
            assert checked["success"] is True and checked["data"]["name"] == "PeerB"  # type: ignore[index]
            await c.command("addUser", '"bob" "bob-pass-1"')
            assert (await c.command("removeUser", '"bob"')).success
            removed = await raw_command(node, b'--remove-route "PeerB"')
            assert removed["success"] is True and removed["command"] == "RemoveRoute"
            assert (removed["entityType"], removed["entityName"]) == ("Route", "PeerB")
            assert node.routes.links == {}
            unknown = await raw_command(node, b"--frob-nicate")
            assert unknown["message"] == "Unknown command: --frob-nicate"

        async with lab_node(Dialect(verbs="exact")) as node, admin_client(node) as c:
            assert (await c.command("listRoutes")).success
            for spelled in (b"-listroutes", b"--list-routes"):
                doc = await raw_command(node, spelled)
                assert doc["success"] is False and "Unknown command" in str(doc["message"])

    run(body())


def test_the_verbs_the_vendors_client_uses() -> None:
    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            empty = await c.command("connectionStatus")
            assert empty.success and empty.message == "No active connections found."
            await c.add_route(route("PeerB", "b"))
            report = await c.command("connectionStatus")
            assert report.success and report.message.startswith("PeerB: ")
            templates = await c.command("listTemplates")
            assert templates.success and templates.data == ["MQTT_CLUSTER"]
            diagnosis = await c.command("lotDiagnostic", "route PeerB")
            assert diagnosis.success and diagnosis.data["name"] == "PeerB"
            assert any("not connected" in issue for issue in diagnosis.data["issues"])
            missing = await c.command("lotDiagnostic", "model Nope")
            assert not missing.success and "Model 'Nope' not found" in missing.message
            usage = await c.command("lotDiagnostic", "PeerB")
            assert not usage.success and usage.message.startswith("Usage: -lotDiagnostic")

    run(body())


# -- route status -------------------------------------------------------------------------------


def test_route_status_arrives_at_once_with_the_vendors_fields() -> None:
    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            assert node.port is not None
            node.config.status_interval = 3600  # nothing periodic: only the snapshot counts
            await c.add_user("cluster", Secret(CLUSTER_PASSWORD))
            # a link to this very broker: it connects and then stays as it is
            await c.add_route(
                cluster_route("PeerB", HOST, node.port, "b", password=CLUSTER_PASSWORD)
            )
            await wait_connected(c, "PeerB", 5)
            await asyncio.sleep(0.7)  # the last change and the 0.5 s loop have published
            sub = await connect(node, "root", ADMIN_PASSWORD, "status-sub")
            try:
                began = time.monotonic()
                await sub.subscribe([("$SYS/Coreflux/Routes/+/status", 1)], 5)
                first = await asyncio.wait_for(sub.messages.get(), 1.5)  # the vendor client's wait
                took = time.monotonic() - began
                more = await drain(sub, quiet=0.3)
                await sub.publish(Message("app/x", b"1", 1), 5)  # the link carries it
            finally:
                await sub.close()
            assert took < 0.5 and more == []
            assert (first.topic, first.retain) == (route_status_topic("PeerB"), False)
            status = json.loads(first.payload)
            assert re.fullmatch(r"\d\d:[0-5]\d:[0-5]\d", status["uptime"])
            assert "lastSuccess" in status and status["lastSuccess"] is None
            parsed = parse_route_status(status)
            assert parsed.connection == "Connected" and parsed.uptime_sec is not None

            async def succeeded() -> bool:
                latest = await c.check_route_connection("PeerB")
                return parse_route_status(latest).last_success is not None

            await wait_until(succeeded, 5, "lastSuccess after a forwarded message")
            await c.remove_route("PeerB")
            assert await c.route_status("PeerB", timeout=0.5) is None

    run(body())


def test_status_documents_in_every_form_read_the_same() -> None:
    vendor = {
        "name": "PLC1",
        "connection": "Connected",
        "uptime": "02:15:30",
        "lastSuccess": "2025-01-01T00:00:00Z",
    }
    parsed = parse_route_status(vendor)
    assert (parsed.uptime_sec, parsed.last_success) == (8130.0, "2025-01-01T00:00:00Z")
    assert parse_route_status({"uptime": 12.5}).uptime_sec == 12.5  # the lab's older form
    assert parse_duration("1.02:00:00.5") == 93600.5  # .NET's form past a day (assumed)
    for odd in ("soon", "-1", "1:2", None, True, -3, "9" * 5000 + ":00:00"):
        assert parse_duration(odd) is None


# -- replies without requestId ------------------------------------------------------------------


def test_replies_without_request_id_are_matched_by_command() -> None:
    no_id = parse_reply(b'{"success": true, "command": "ListRoutes", "message": "0"}', "x")
    assert no_id.request_id is None
    assert _is_reply_to(no_id, "listRoutes", "abc") and not _is_reply_to(no_id, "addRoute", "abc")
    text = parse_reply(b"Route 'X' added successfully!", "addRoute")
    assert _is_reply_to(text, "addRoute", None)
    other = Reply(True, "AddRoute", "zzz", "ok")
    assert not _is_reply_to(other, "addRoute", "abc") and _is_reply_to(other, "addRoute", None)

    async def body() -> None:
        # two admins share the Output topic of a broker that echoes no ids: each takes the
        # reply to its own command, never the other's
        async with lab_node(Dialect(echo_request_id=False)) as node:
            one = admin_client(node, request_ids="auto")
            two = admin_client(node, request_ids="auto")
            async with one, two:
                assert one.request_ids is False and two.request_ids is False
                for _ in range(15):
                    a, b = await asyncio.gather(
                        one.command("listRoutes"), two.command("listTemplates")
                    )
                    assert (a.command, b.command) == ("ListRoutes", "ListTemplates")

    run(body())


# -- dialects where builds differ ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["none", "seed", "coreflux"])
def test_cluster_monitoring_topics_by_dialect(scheme: str) -> None:
    async def body() -> None:
        dialect = Dialect(cluster_topics=scheme)  # type: ignore[arg-type]
        async with lab_node(dialect) as node, admin_client(node) as c:
            await c.add_route(route("PeerB", "b"))
            await asyncio.sleep(0.3)
            topics = await read_cluster_topics(c, timeout=1.0)
            assert topics.scheme == scheme
            if scheme == "none":
                assert not topics and "cluster" not in dialect.label
                return
            assert f"cluster-{scheme}" in node.version
            status_topic = (
                "$SYS/broker/cluster/status" if scheme == "seed" else "$SYS/Coreflux/Cluster/Status"
            )
            status = json.loads(topics.values[status_topic])
            assert status == {
                "status": "isolated",
                "node": node.config.name,
                "peers": 1,
                "connected": 0,
            }
            assert (status_topic, "connected", 0.0) in topics.samples()
            assert CLUSTER_PASSWORD not in json.dumps(topics.to_json())
            # $SYS: nobody but the admin reads them
            await c.add_user("cluster", Secret(CLUSTER_PASSWORD))
            other = await connect(node, "cluster", CLUSTER_PASSWORD, "mon-cluster")
            try:
                assert await other.subscribe([("$SYS/broker/cluster/#", 1)], 5) == [0x80]
            finally:
                await other.close()

    run(body())


def test_dialects_without_version_secrets_or_connack_4_and_with_named_rights() -> None:
    async def body() -> None:
        dialect = Dialect(version_topic=False, bad_login_code=5, secret_store=False, rights="named")
        assert dialect.label == "2.x-json+no-version+connack-5+no-secrets+named-rights"
        async with lab_node(dialect) as node, admin_client(node) as c:
            assert await c.read_version(timeout=0.5) is None
            with pytest.raises(ConnectRefused) as refused:
                await connect(node, "root", "wrong-password", "bad-login")
            assert refused.value.code == 5
            listed = await c.command("listSecrets")
            assert not listed.success and "Unknown command: -listSecrets" in listed.message
            await c.add_user("alice", Secret("alice-pass-1"))
            changed = await c.command("changeUserSettings", "alice AllowedSystemConfiguration true")
            assert changed.success, changed.describe()
            groups = await c.command("listUserGroups", "alice")
            assert groups.success and groups.data["groups"] == []
            assert groups.data["settings"] == {"AllowedSystemConfiguration": True}
            bad = await c.command("changeUserSettings", "alice SuperUser true")
            assert not bad.success and bad.message.startswith("Usage:")

        async with lab_node() as node, admin_client(node) as c:
            # the default plays admin-only rights: those verbs do not exist there
            assert "Unknown command" in (await c.command("listUserGroups", "root")).message

    run(body())


def test_dialect_options_and_lab_up_words() -> None:
    dialect = dialect_from_options(
        "json",
        True,
        "overwrite",
        "",
        verbs="exact",
        cluster_topics="coreflux",
        version_topic=False,
        bad_login_code=5,
        secret_store=False,
        rights="named",
    )
    assert dialect.label == (
        "2.x-json+readd-overwrite+exact-verbs+cluster-coreflux+no-version+connack-5"
        "+no-secrets+named-rights"
    )
    with pytest.raises(LabError, match="--cluster-topics must be one of none, seed, coreflux"):
        dialect_from_options("json", True, "reject", "", cluster_topics="sys")
    with pytest.raises(LabError, match="CONNACK code must be 4 or 5"):
        Dialect(bad_login_code=3)
    words = labstate.parse_dialects(
        ["eu=cluster-seed,exact-verbs", "us1=no-version,connack-5,no-secrets,named-rights"],
        [("eu1", "eu"), ("us1", "us")],
    )
    assert words == {
        "eu1": ["--cluster-topics", "seed", "--verbs", "exact"],
        "us1": [
            "--no-version-topic",
            "--bad-login-code",
            "5",
            "--no-secret-store",
            "--rights",
            "named",
        ],
    }
    with pytest.raises(LabError, match="bad --dialect word 'cluster-sys'"):
        labstate.parse_dialects(["eu1=cluster-sys"], [("eu1", "eu")])


# -- templates through lotdeploy's own LOT parser ----------------------------------------------

VENDOR_TEMPLATE = (
    "DEFINE ROUTE RouteName WITH TYPE MODBUS_TCP\n"
    "    ADD MODBUS_CONFIG\n"
    "        WITH IP #IP,string,PLC address,,true#\n"
    '    ADD METADATA\n        WITH DESCRIPTION "template"\n'
)


def test_templates_parse_and_lint_as_lot_not_as_syntax_errors() -> None:
    template = parse_template(VENDOR_TEMPLATE, "vendor.lot")
    (spot,) = template.placeholders
    assert (spot.line, spot.column, spot.placeholder.regex, spot.placeholder.from_env) == (
        3,
        17,
        "",
        True,
    )
    config = template.routes[0].block("MODBUS_CONFIG")
    assert config is not None and [s.key for s in config.settings] == ["IP"]
    found = [(d.line, d.message) for d in lint_text(VENDOR_TEMPLATE, "vendor.lot")]
    assert (3, "value of IP looks like a template placeholder") in found
    assert (4, "ADD METADATA is template-only (-routeCode) and must never be deployed") in found

    lab = parse_template(route_template(), "lab.lot")
    assert lab.routes[0].name == "name" and len(lab.placeholders) == len(CLUSTER_KEY_ORDER) + 1
    assert lab.placeholders[0].is_route_name
    lines = {d.line for d in lint_text(route_template(), "lab.lot") if d.severity == "error"}
    assert 1 in lines  # the route name placeholder, named
    with pytest.raises(LotSyntaxError, match="4 comma-separated fields"):
        parse_template(VENDOR_TEMPLATE.replace(",,true#", ",true#"), "bad.lot")
