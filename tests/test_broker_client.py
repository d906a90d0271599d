"""The command-channel client: reply parsing, id matching, 1.x fallback, timeouts, secrecy.

Against the lab broker (subprocess) and, for behaviours the lab broker does not have (a 1.x
broker without requestIds, a broker that never answers), a tiny MQTT server on a real socket.
Addresses 127.0.0.40-127.0.0.59.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lotdeploy.broker.session import BrokerClient, CommandFailed
from lotdeploy.broker.sync import SyncBrokerClient
from lotdeploy.errors import BrokerError
from lotdeploy.protocol import parse_reply
from lotdeploy.secret import Secret
from tests.broker_fixtures import ADMIN_PASSWORD, LabFactory, lab_factory, run


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabFactory]:
    yield from lab_factory(tmp_path)


# -- reply parsing ----------------------------------------------------------------------------


def test_parse_json_envelope() -> None:
    reply = parse_reply(
        b'{"success": false, "command": "AddRoute", "requestId": "r1", "message": "bad",'
        b' "errors": [{"message": "Expected WITH", "line": 3, "column": 9}]}',
        "addRoute",
    )
    assert not reply.success and reply.request_id == "r1" and reply.command == "AddRoute"
    assert reply.errors[0].line == 3 and reply.errors[0].column == 9
    assert "3:9: Expected WITH" in reply.describe()


@pytest.mark.parametrize(
    ("text", "success", "position"),
    [
        ("Route 'A' added successfully", True, None),
        ("Parsing error: Expected WITH (3,9)", False, (3, 9)),
        ("Route 'A' not found", False, None),
        ("Unknown command: -x", False, None),
        ("Permission denied: nope", False, None),
        ("OK", True, None),
        ("[1, 2]", True, None),  # JSON, but not an envelope: treated as text
    ],
)
def test_parse_plain_text_replies(
    text: str, success: bool, position: tuple[int, int] | None
) -> None:
    reply = parse_reply(text.encode(), "addRoute")
    assert reply.success is success and reply.request_id is None
    if position:
        assert (reply.errors[0].line, reply.errors[0].column) == position


def test_parse_never_raises_on_garbage() -> None:
    for payload in (b"\xff\xfe", b"{", b'{"success": true, "errors": 7}', b"", b"null"):
        parse_reply(payload, "listRoutes")


def test_password_never_in_repr_or_errors() -> None:
    client = BrokerClient("n1", "127.0.0.40", 1, "root", Secret("hunter2-long-password"))
    assert "hunter2" not in repr(client) and "hunter2" not in repr(client.__dict__)
    with pytest.raises(TypeError):
        BrokerClient("n1", "127.0.0.40", 1, "root", "plain")  # type: ignore[arg-type]


def test_remove_all_routes_is_never_sent() -> None:
    """It would wipe routes lotdeploy does not own: refused before anything is published."""
    client = BrokerClient("n1", "127.0.0.40", 1, "root", Secret("pw-pw-pw"))
    # a broker that takes any case and --kebab-case aliases would read these the same
    for spelled in (
        "-removeAllRoutes",
        "removeallroutes",
        "--remove-all-routes",
        "-REMOVEALLROUTES",
    ):
        with pytest.raises(BrokerError, match="never sent"):
            asyncio.run(client.command(spelled))


def test_unreachable_broker_is_a_broker_error_naming_the_node() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.41", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused

    async def body() -> None:
        client = BrokerClient(
            "edge-7", "127.0.0.41", port, "root", Secret("pw-pw-pw"), connect_timeout=2
        )
        with pytest.raises(BrokerError, match="edge-7") as err:
            await client.connect()
        assert "pw-pw-pw" not in str(err.value)
        with pytest.raises(BrokerError, match="not connected"):
            await client.command("listRoutes")

    run(body())


# -- a minimal MQTT server for behaviours the lab broker does not have ------------------------


class TinyBroker:
    """Accepts any CONNECT, SUBACKs, PUBACKs; answers commands per `mode`.

    mode "v1": a 1.x broker: plain text replies, no requestId echo (and a stale reply of
    "another admin" on the Output topic before our first command).
    mode "silent": never answers a command.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.commands: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    b = (await reader.readexactly(1))[0]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first >> 4
                if kind == 1:
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 8:
                    if self.mode == "v1":  # another admin's reply, stale before our command
                        self.reply(writer, "Route 'Other' removed successfully")
                    writer.write(b"\x90\x03" + body[:2] + b"\x01")
                elif kind == 3:
                    tlen = struct.unpack("!H", body[:2])[0]
                    pid = body[2 + tlen : 4 + tlen]
                    payload = body[4 + tlen :].decode()
                    writer.write(b"\x40\x02" + pid)
                    self.commands.append(payload)
                    if self.mode == "v1":
                        verb = payload.split()[0]
                        text = (
                            "Parsing error: Expected WITH (2,5)"
                            if verb == "-addRoute"
                            else f"{verb[1:]} done successfully"
                        )
                        self.reply(writer, text)
                elif kind == 12:
                    writer.write(b"\xd0\x00")
                elif kind == 14:
                    break
                await writer.drain()
        writer.close()

    @staticmethod
    def reply(writer: asyncio.StreamWriter, text: str) -> None:
        topic = b"$SYS/Coreflux/Command/Output"
        body = struct.pack("!H", len(topic)) + topic + text.encode()
        writer.write(bytes([0x30, len(body)]) + body)


@contextlib.asynccontextmanager
async def tiny(host: str, mode: str) -> AsyncIterator[tuple[TinyBroker, int]]:
    broker = TinyBroker(mode)
    server = await asyncio.start_server(broker.handle, host, 0)
    try:
        yield broker, server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_v1_broker_without_request_ids() -> None:
    async def body() -> None:
        async with tiny("127.0.0.42", "v1") as (broker, port):
            client = BrokerClient(
                "old",
                "127.0.0.42",
                port,
                "root",
                Secret("pw-pw-pw"),
                reply_timeout=3,
                request_ids="auto",
            )
            async with client:
                assert client.request_ids is False
                assert "-requestId" in broker.commands[0]
                # with ids off, the first reply after the publish is taken as ours
                reply = await client.command("removeRoute", "A")
                assert reply.request_id is None
                assert broker.commands[-1] == "-removeRoute A"
                with pytest.raises(CommandFailed) as err:
                    await client.add_route(
                        "// header\nDEFINE ROUTE A WITH TYPE MQTT_CLUSTER // note\n    ADD X\n"
                    )
                assert err.value.reply.errors[0].line == 3  # line 2 as sent, 3 in the file
                assert broker.commands[-1].startswith("-addRoute DEFINE ROUTE A")
                assert "//" not in broker.commands[-1]

    run(body())


def test_silent_broker_times_out_with_a_broker_error() -> None:
    async def body() -> None:
        async with tiny("127.0.0.43", "silent") as (_, port):
            client = BrokerClient(
                "mute", "127.0.0.43", port, "root", Secret("pw-pw-pw"), reply_timeout=0.5
            )
            async with client:
                with pytest.raises(BrokerError, match=r"broker mute: no reply to -setSecret"):
                    await client.set_secret("S", Secret("value-never-shown"))

    run(body())


# -- against the lab broker --------------------------------------------------------------------


def test_request_id_auto_detected_on_the_lab_broker(lab: LabFactory) -> None:
    node = lab("127.0.0.44")

    async def body() -> None:
        async with node.client(request_ids="auto") as client:
            assert client.request_ids is True
            reply = await client.command("listRoutes")
            assert reply.success and reply.request_id
        async with node.client(request_ids=False) as client:
            reply = await client.command("listRoutes")
            assert reply.success and reply.request_id is None

    run(body())


def test_two_admins_share_the_output_topic(lab: LabFactory) -> None:
    """Replies are matched by requestId even when another admin's replies interleave."""
    node = lab("127.0.0.45")

    async def worker(verb: str, n: int) -> list[str]:
        async with node.client() as client:
            return [(await client.command(verb)).command for _ in range(n)]

    async def body() -> None:
        a, b = await asyncio.gather(worker("listRoutes", 40), worker("listSecrets", 40))
        assert set(a) == {"ListRoutes"} and set(b) == {"ListSecrets"}

    run(body())


def test_sync_wrapper(lab: LabFactory) -> None:
    node = lab("127.0.0.46")
    with SyncBrokerClient(
        node.host, node.host, node.port, "root", Secret(ADMIN_PASSWORD), reply_timeout=5
    ) as client:
        assert client.list_routes() == []
        assert client.route_code("MQTT_CLUSTER").startswith("DEFINE ROUTE")
