"""The broker protocol module: envelope round trips, the 1.x fallback, verbs, the key table,
and that it stays a bottom layer (no MQTT library, click or cryptography behind it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lotdeploy import protocol
from lotdeploy.protocol import (
    CLUSTER_CONFIG_KEYS,
    CLUSTER_KEY_ORDER,
    REPLY_NAMES,
    Reply,
    ReplyError,
    Verb,
    build_reply,
    command_payload,
    encode_reply,
    parse_reply,
    pascal,
    split_request_id,
)
from lotdeploy.secret import Secret

# -- the envelope: what the lab broker builds, the client parses ------------------------------


def _round_trip(doc: dict[str, object], verb: str) -> Reply:
    return parse_reply(encode_reply(doc), verb)


def test_success_envelope_round_trips() -> None:
    doc = build_reply(True, Verb.ADD_ROUTE, "r-1", "Route 'A' added successfully!", {"name": "A"})
    assert doc == {
        "success": True,
        "command": "AddRoute",
        "requestId": "r-1",
        "message": "Route 'A' added successfully!",
        "data": {"name": "A"},
    }
    reply = _round_trip(doc, "addRoute")
    assert reply == Reply(True, "AddRoute", "r-1", "Route 'A' added successfully!", {"name": "A"})
    assert reply.raw == encode_reply(doc).decode()


def test_success_without_data_sends_an_empty_object() -> None:
    reply = _round_trip(build_reply(True, Verb.LIST_SECRETS, None, "0 secret(s)"), "listSecrets")
    assert reply.success and reply.data == {} and reply.request_id is None


def test_failure_envelope_round_trips_with_line_and_column() -> None:
    errors = (ReplyError("Expected WITH", 3, 9, "ParseError"),)
    doc = build_reply(False, "addRoute", "r-2", "Parsing error: Expected WITH (3,9)", errors=errors)
    assert doc["errors"] == [
        {"message": "Expected WITH", "line": 3, "column": 9, "type": "ParseError"}
    ]
    reply = _round_trip(doc, "addRoute")
    assert not reply.success and reply.command == "AddRoute" and reply.request_id == "r-2"
    assert reply.errors == errors
    assert (reply.errors[0].line, reply.errors[0].column) == (3, 9)
    assert reply.describe() == "Parsing error: Expected WITH (3,9); 3:9: Expected WITH"


def test_failure_without_errors_carries_its_message_as_the_error() -> None:
    doc = build_reply(False, "removeRoute", None, "Route 'X' not found")
    assert doc["errors"] == [{"message": "Route 'X' not found"}]
    reply = _round_trip(doc, "removeRoute")
    assert reply.errors == (ReplyError("Route 'X' not found"),)
    assert reply.describe() == "Route 'X' not found"


def test_error_without_position_omits_line_and_column() -> None:
    doc = build_reply(False, "addRoute", None, "bad", errors=[ReplyError("bad key", kind="X")])
    assert doc["errors"] == [{"message": "bad key", "type": "X"}]
    assert _round_trip(doc, "addRoute").errors == (ReplyError("bad key", kind="X"),)


def test_reply_to_no_command_at_all_is_named_unknown() -> None:
    doc = build_reply(False, "", None, "Unknown command: hello")
    assert doc["command"] == protocol.UNKNOWN_COMMAND_NAME
    assert not _round_trip(doc, "").success


def test_describe_scrubs_known_secrets() -> None:
    secret = Secret("very-secret-password-1")
    doc = build_reply(False, "addUser", None, f"User x {secret.reveal()} rejected")
    assert "very-secret" not in _round_trip(doc, "addUser").describe()


def test_raw_payload_is_not_shown_nor_compared() -> None:
    a = parse_reply(b'{"success": true, "command": "ListRoutes", "data": []}', "listRoutes")
    b = parse_reply(b'{"command": "ListRoutes", "data": [], "success": true}', "listRoutes")
    assert a == b and a.raw != b.raw and "raw" not in repr(a)


# -- 1.x brokers: plain text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "success", "position"),
    [
        ("Route 'A' added successfully", True, None),
        ("Route 'A' removed successfully!", True, None),
        ("Parsing error: Expected WITH (3,9)", False, (3, 9)),
        ("Parsing error: unexpected end of input", False, None),
        ("Expected INDENT ( 12 , 4 )", False, (12, 4)),
        ("Route 'A' not found", False, None),
        ("Route 'A' already exists", False, None),
        ("Unknown command: -x", False, None),
        ("Permission denied: nope", False, None),
        ("  OK  \n", True, None),
        ("", True, None),
        ('"just a JSON string"', True, None),
        ('{"no": "success key"}', True, None),
    ],
)
def test_text_fallback(text: str, success: bool, position: tuple[int, int] | None) -> None:
    reply = parse_reply(text.encode(), "addRoute")
    assert reply.success is success
    assert reply.command == "AddRoute" and reply.request_id is None and reply.data is None
    assert reply.message == text.strip() and reply.raw == text
    if position:
        assert (reply.errors[0].line, reply.errors[0].column) == position
    if not success:
        assert reply.errors and reply.describe()
    else:
        assert reply.errors == ()


def test_invalid_utf8_is_read_as_text() -> None:
    reply = parse_reply(b"\xff failed", "listRoutes")
    assert not reply.success and "failed" in reply.message


# -- verbs and command framing ----------------------------------------------------------------


def test_every_verb_has_its_pascal_case_reply_name() -> None:
    assert {verb.value: name for verb, name in REPLY_NAMES.items()} == {
        "addRoute": "AddRoute",
        "removeRoute": "RemoveRoute",
        "listRoutes": "ListRoutes",
        "routeCode": "RouteCode",
        "checkRouteConnection": "CheckRouteConnection",
        "addUser": "AddUser",
        "removeUser": "RemoveUser",
        "changeUserPassword": "ChangeUserPassword",
        "setSecret": "SetSecret",
        "listSecrets": "ListSecrets",
        "removeSecret": "RemoveSecret",
        "connectionStatus": "ConnectionStatus",
        "listTemplates": "ListTemplates",
        "lotDiagnostic": "LotDiagnostic",
        "listUserGroups": "ListUserGroups",
        "changeUserSettings": "ChangeUserSettings",
    }
    assert set(REPLY_NAMES) == set(Verb)
    for verb in Verb:
        assert verb.reply_name == pascal(verb) == pascal(f"-{verb}")
    assert pascal("somethingNew") == "SomethingNew"
    assert "removeAllRoutes" in protocol.FORBIDDEN_VERBS
    assert "removeAllRoutes" not in set(Verb)


def test_command_payload_and_request_id_round_trip() -> None:
    route = "DEFINE ROUTE A WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
    payload = command_payload(Verb.ADD_ROUTE, route, "abc123")
    assert payload == f"-addRoute {route} -requestId abc123".encode()
    # the whitespace before the option goes with it; the LOT text keeps its lines
    assert split_request_id(payload.decode()) == (f"-addRoute {route.rstrip()}", "abc123")
    assert command_payload("-listRoutes") == b"-listRoutes"
    assert split_request_id("-listRoutes") == ("-listRoutes", None)


def test_topics() -> None:
    assert protocol.COMMAND_TOPIC == "$SYS/Coreflux/Command"
    assert protocol.OUTPUT_TOPIC == "$SYS/Coreflux/Command/Output"
    assert protocol.route_code_topic("lotdeploy_b") == "$SYS/Coreflux/Routes/lotdeploy_b"
    assert protocol.route_status_topic("X") == "$SYS/Coreflux/Routes/X/status"


# -- the CLUSTER_CONFIG key table -------------------------------------------------------------


def test_cluster_key_table() -> None:
    by_name = {key.name: key for key in CLUSTER_CONFIG_KEYS}
    assert len(by_name) == len(CLUSTER_CONFIG_KEYS)
    assert CLUSTER_KEY_ORDER == (
        "BROKER_ADDRESS",
        "BROKER_PORT",
        "CLIENT_ID",
        "USERNAME",
        "PASSWORD",
        "MESSAGE_VALIDITY_SEC",
        "USE_TLS",
    )
    assert protocol.REQUIRED_CLUSTER_KEYS == ("BROKER_ADDRESS", "BROKER_PORT", "CLIENT_ID")
    assert {
        "SERVER_CA_CERT_PATH",
        "CLIENT_CERT_PATH",
        "CLIENT_CERT_PASS",
        "ALLOW_UNTRUSTED_CERTS",
        "RECONNECTION_RETRIES",
    } == protocol.BRIDGE_ONLY_CLUSTER_KEYS
    assert {"PASSWORD", "CLIENT_CERT_PASS"} == protocol.SENSITIVE_CLUSTER_KEYS
    assert protocol.cluster_keys_of_kind("int") == {
        "BROKER_PORT",
        "MESSAGE_VALIDITY_SEC",
        "RECONNECTION_RETRIES",
    }
    assert protocol.cluster_keys_of_kind("bool", documented_only=True) == {"USE_TLS"}
    assert all(not key.required or key.documented for key in CLUSTER_CONFIG_KEYS)


def test_node_defaults() -> None:
    assert (protocol.DEFAULT_PORT, protocol.DEFAULT_TLS_PORT) == (1883, 8883)
    assert protocol.DEFAULT_ADMIN_PORT == protocol.DEFAULT_PORT
    assert protocol.DEFAULT_TLS_DIR == "/opt/coreflux/tls"
    assert (protocol.DEFAULT_CERT_FILE, protocol.DEFAULT_KEY_FILE, protocol.DEFAULT_CA_FILE) == (
        "server.crt",
        "server.key",
        "ca.crt",
    )


# -- a bottom layer ---------------------------------------------------------------------------


def test_importing_the_protocol_loads_no_heavy_library() -> None:
    heavy = ["aiomqtt", "paho", "amqtt", "click", "cryptography", "pydantic", "lark", "jinja2"]
    code = (
        "import json, sys\n"
        "import lotdeploy.protocol\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == []


def test_package_still_re_exports_the_client_lazily() -> None:
    code = (
        "import sys\n"
        "import lotdeploy.broker as b\n"
        "assert 'aiomqtt' not in sys.modules\n"
        "from lotdeploy.broker import BrokerClient, SyncBrokerClient, Message, parse_reply\n"
        "from lotdeploy.broker.session import BrokerClient as Direct\n"
        "assert BrokerClient is Direct and 'aiomqtt' in sys.modules\n"
        "try:\n"
        "    b.NoSuchName\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
