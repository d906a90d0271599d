"""The command-channel client: reply parsing, id matching, 1.x fallback, timeouts, secrecy.

Against the lab broker (subprocess) and, for behaviours the lab broker does not have (a 1.x
broker without requestIds, a broker that never answers), a tiny MQTT server on a real socket.
Addresses 127.0.0.40-127.0.0.59.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lotdeploy.broker.session import BrokerClient, CommandFailed, RequestIds
from lotdeploy.broker.sync import SyncBrokerClient
from lotdeploy.errors import BrokerError
from lotdeploy.protocol import parse_reply
from lotdeploy.secret import Secret
from tests.broker_fixtures import ADMIN_PASSWORD, LabFactory, cluster_route, lab_factory, run


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
    mode "ghost": lists no route, yet answers a SUBSCRIBE to a route's status topic with a
    status saying Connected (a status for a route the broker does not run).
    mode "held" (or "refused"): a 2.x broker (JSON replies echoing requestIds) whose CONNACK
    (a refusal: bad user name or password) waits until a PUBLISH came (at most 2 s), what it
    answers meanwhile queued behind the CONNACK; `before_connack`: the packet types that came
    before it.
    mode "deaf": as "held", but its CONNACK leaves after 0.2 s and what came before it is
    dropped unanswered (a broker the login in turn is for).
    Every SUBSCRIBE and UNSUBSCRIBE is kept in `subscriptions`, in the order it came.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.commands: list[str] = []
        self.subscriptions: list[tuple[str, str]] = []
        self.before_connack: list[int] = []
        self.held: bytearray | None = None  # answers waiting for the held CONNACK

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
                holding = ("held", "refused", "deaf")
                if self.held is not None or (kind == 1 and self.mode in holding):
                    self.before_connack.append(kind)
                if kind == 1 and self.mode in holding:
                    self.held = bytearray()
                    wait = 0.2 if self.mode == "deaf" else 2.0
                    asyncio.get_running_loop().call_later(wait, self.release, writer)
                    continue
                if self.held is not None and self.mode == "deaf":
                    continue  # not heard
                out = writer if self.held is None else _Held(self.held)
                if kind == 1:
                    writer.write(b"\x20\x02\x00\x00")
                elif kind in (8, 10):
                    self.subscriptions.append(("sub" if kind == 8 else "unsub", _topic(body)))
                    if kind == 10:
                        out.write(b"\xb0\x02" + body[:2])
                        await writer.drain()
                        continue
                    if self.mode == "v1":  # another admin's reply, stale before our command
                        self.reply(out, "Route 'Other' removed successfully")
                    out.write(b"\x90\x03" + body[:2] + b"\x01")
                    if self.mode == "ghost" and _topic(body).endswith("/status"):
                        self.reply(out, '{"connection": "Connected"}', _topic(body))
                elif kind == 3:
                    tlen = struct.unpack("!H", body[:2])[0]
                    pid = body[2 + tlen : 4 + tlen]
                    payload = body[4 + tlen :].decode()
                    out.write(b"\x40\x02" + pid)
                    self.commands.append(payload)
                    if self.mode == "ghost":
                        self.reply(out, '{"success": true, "data": []}')
                    if self.mode in ("held", "deaf"):
                        rid = payload.split(" -requestId ")[-1]
                        self.reply(out, f'{{"success": true, "requestId": "{rid}", "data": []}}')
                    if self.held is not None:
                        self.release(writer)
                    if self.mode == "v1":
                        verb = payload.split()[0]
                        text = (
                            "Parsing error: Expected WITH (2,5)"
                            if verb == "-addRoute"
                            else f"{verb[1:]} done successfully"
                        )
                        self.reply(out, text)
                elif kind == 12:
                    out.write(b"\xd0\x00")
                elif kind == 14:
                    break
                await writer.drain()
        writer.close()

    def release(self, writer: asyncio.StreamWriter) -> None:
        """Send the held CONNACK, then what was answered behind it (a refusal: nothing)."""
        held, self.held = self.held, None
        if held is None:
            return
        if self.mode == "refused":
            writer.write(b"\x20\x02\x00\x04")
            writer.close()
            return
        writer.write(b"\x20\x02\x00\x00" + bytes(held))

    @staticmethod
    def reply(writer: Any, text: str, on: str = "$SYS/Coreflux/Command/Output") -> None:
        topic = on.encode()
        body = struct.pack("!H", len(topic)) + topic + text.encode()
        writer.write(bytes([0x30, len(body)]) + body)


class _Held:
    """Where a held broker's answers go until its CONNACK is out."""

    def __init__(self, held: bytearray) -> None:
        self.held = held

    def write(self, data: bytes) -> None:
        self.held += data


def _topic(body: bytes) -> str:
    """The first topic filter of a SUBSCRIBE or UNSUBSCRIBE body (after the packet id)."""
    length = struct.unpack("!H", body[2:4])[0]
    return body[4 : 4 + length].decode()


@contextlib.asynccontextmanager
async def tiny(host: str, mode: str) -> AsyncIterator[tuple[TinyBroker, int]]:
    broker = TinyBroker(mode)
    server = await asyncio.start_server(broker.handle, host, 0)
    try:
        yield broker, server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_the_login_sends_its_subscribe_and_probe_without_waiting_for_the_connack() -> None:
    """The admin login is one round trip: the SUBSCRIBE to the Output topic and the
    request-id probe leave right behind the CONNECT (MQTT 3.1.1 lets a client send before
    the CONNACK; a broker reads them in order, after accepting the CONNECT). This broker
    holds its CONNACK until a PUBLISH came: a client waiting for it first would wait 2 s."""

    async def body() -> None:
        async with tiny("127.0.0.53", "held") as (broker, port):
            client = BrokerClient(
                "n", "127.0.0.53", port, "root", Secret("pw-pw-pw"), request_ids="auto"
            )
            started = time.monotonic()
            async with client:
                assert time.monotonic() - started < 1.5
                assert broker.before_connack == [1, 8, 3]  # CONNECT, SUBSCRIBE, PUBLISH
                assert client.request_ids is True
                assert client.last_listing is not None
                assert await client.list_routes() == []

    run(body())


def test_the_login_in_turn_waits_for_the_connack(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOTDEPLOY_MQTT_LOGIN_IN_TURN=1 (a broker that drops what comes before its CONNACK):
    nothing follows the CONNECT until the CONNACK came."""
    monkeypatch.setenv("LOTDEPLOY_MQTT_LOGIN_IN_TURN", "1")

    async def body() -> None:
        async with tiny("127.0.0.55", "held") as (broker, port):
            client = BrokerClient(
                "n", "127.0.0.55", port, "root", Secret("pw-pw-pw"), request_ids="auto"
            )
            async with client:
                assert broker.before_connack == [1]
                assert client.request_ids is True

    run(body())


def test_a_refused_login_says_so_when_the_subscribe_and_probe_were_sent_with_it() -> None:
    """A refusal of the CONNECT that the SUBSCRIBE and the probe already followed is said as
    the refusal, at once: not a timeout of the probe, nor a lost connection."""

    async def body() -> None:
        async with tiny("127.0.0.54", "refused") as (broker, port):
            client = BrokerClient(
                "edge-9", "127.0.0.54", port, "root", Secret("pw-pw-pw"), request_ids="auto"
            )
            started = time.monotonic()
            with pytest.raises(BrokerError, match="bad user name or password") as err:
                await client.connect()
            assert time.monotonic() - started < 1.5
            assert broker.before_connack == [1, 8, 3]
            assert "edge-9" in str(err.value) and "pw-pw-pw" not in str(err.value)
            assert not client.connected

    run(body())


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


def test_a_reads_unsubscribe_goes_before_the_next_subscribe() -> None:
    """Each read of a topic subscribes and unsubscribes within itself, so a read of the same
    topic right after never has its SUBSCRIBE overtaken by the first one's UNSUBSCRIBE (the
    broker applies them in the order they arrive: the other order would drop the new
    subscription)."""

    async def body() -> None:
        async with tiny("127.0.0.52", "silent") as (broker, port):
            client = BrokerClient("n", "127.0.0.52", port, "root", Secret("pw-pw-pw"))
            async with client:
                for _ in range(2):
                    assert await client.route_status("R", timeout=0.2) is None
                await asyncio.sleep(0.2)
            topic = "$SYS/Coreflux/Routes/R/status"
            assert [s for s in broker.subscriptions if s[1] == topic] == [
                ("sub", topic),
                ("unsub", topic),
                ("sub", topic),
                ("unsub", topic),
            ]

    run(body())


def test_a_status_for_a_route_the_broker_does_not_list_does_not_end_the_wait() -> None:
    """Only a route the last listing showed can be seen Connected by its status: "Apply
    complete" must not rest on a status alone."""

    async def body() -> None:
        async with tiny("127.0.0.53", "ghost") as (broker, port):
            client = BrokerClient("n", "127.0.0.53", port, "root", Secret("pw-pw-pw"))
            async with client:
                seen = await client.await_connected(["Ghost"], 0.8, (), 0.2)
            assert any(
                s == ("sub", "$SYS/Coreflux/Routes/Ghost/status") for s in broker.subscriptions
            )
            assert seen.listed == set() and seen.waiting() == ["Ghost"]

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


def test_the_sync_wrapper_closes_its_event_loop_with_the_session(
    lab: LabFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """`close()` (open_admin's way, beside `with`) ends the private event loop too: what is
    still pending on it is cancelled there, not destroyed by the garbage collector once the
    worker thread that ran it ends (which printed "Task was destroyed but it is pending!"
    on an interrupted apply's stderr). Run in a thread of its own, as apply's fan-out does."""
    node = lab("127.0.0.57")
    kept: list[asyncio.Future[None]] = []

    async def leave_pending(client: BrokerClient) -> None:
        kept.append(asyncio.ensure_future(asyncio.sleep(300)))  # a wait nobody awaits

    def session() -> None:
        client = SyncBrokerClient(
            node.host, node.host, node.port, "root", Secret(ADMIN_PASSWORD), reply_timeout=5
        )
        client.connect()
        client.call(leave_pending)
        client.close()
        client.close()  # idempotent

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(target=session)
        worker.start()
        worker.join(30)
        kept.clear()
        gc.collect()
    assert not [w for w in caught if "unclosed event loop" in str(w.message)]
    assert "Task was destroyed" not in caplog.text


# -- waiting for routes to connect (apply's wait, the route gate) -------------------------------


def test_a_link_coming_up_is_seen_from_its_status_not_the_next_listing(lab: LabFactory) -> None:
    """The route cannot log in until the peer has its user; the wait lists only once (its
    next listing would come 30 s later), so returning Connected at once means the route's
    status message was read as it changed."""
    a = lab("127.0.0.47")
    b = lab("127.0.0.48")

    async def body() -> None:
        async with a.client() as ca, b.client() as cb:
            await ca.add_route(cluster_route("ToB", b.host, b.port, "a-to-b"))
            waiting = asyncio.ensure_future(ca.await_connected(["ToB"], 20.0, (), 30.0))
            await asyncio.sleep(0.3)  # the first listing has seen it not Connected
            assert not waiting.done()
            started = time.monotonic()
            await cb.add_user("cluster", Secret("cluster-pass"))
            seen = await waiting
            assert seen.all_connected() and seen.listed == {"ToB"} and not seen.stateless
            assert time.monotonic() - started < 5.0
            # the subscriptions went with the wait: a second wait works the same way
            assert (await ca.await_connected(["ToB"], 5.0, (), 30.0)).all_connected()

    run(body())


def test_a_link_that_never_comes_up_is_reported_when_the_wait_ends(lab: LabFactory) -> None:
    a = lab("127.0.0.49")

    async def body() -> None:
        async with a.client() as client:
            await client.add_route(cluster_route("Nowhere", "127.0.0.50", 9, "a-to-x"))
            started = time.monotonic()
            seen = await client.await_connected(["Nowhere", "Absent"], 1.5, (0.05,), 0.2)
            assert 1.4 < time.monotonic() - started < 5.0
            assert seen.waiting() == ["Nowhere", "Absent"] and seen.listed == {"Nowhere"}
            assert seen.states["Absent"] is None and seen.states["Nowhere"] != "Connected"

    run(body())


@pytest.mark.parametrize("request_ids", ["auto", True], ids=["together", "in-turn"])
def test_ensure_users_makes_new_users_and_rekeys_existing_ones(
    lab: LabFactory, request_ids: RequestIds
) -> None:
    """Both ways (every -addUser and -changeUserPassword at once where the broker echoes
    requestIds; adds, then changes where a user exists, otherwise) end with each user
    logging in with its new password only; a refusal neither explains is raised."""
    node = lab("127.0.0.54" if request_ids == "auto" else "127.0.0.55")

    async def body() -> None:
        async with node.client(request_ids=request_ids) as client:
            assert client.echoes_ids is (request_ids == "auto")
            first, second = Secret("alice-pass-1"), Secret("alice-pass-2")
            assert await client.ensure_users({"alice": first}) == ["alice"]
            assert await client.ensure_users({"alice": second, "bob": Secret("bob-pass-1")}) == [
                "alice",
                "bob",
            ]
            logins = {"alice": second, "bob": Secret("bob-pass-1")}
            assert await client.check_logins(logins) == {"alice": True, "bob": True}
            assert await client.check_logins({"alice": first}) == {"alice": False}
            # the admin exists (so -addUser's refusal is the expected one) and may not be
            # re-keyed: -changeUserPassword's refusal is the one raised
            with pytest.raises(CommandFailed, match="Permission denied"):
                await client.ensure_users({"root": Secret("not-the-admin-password")})

    run(body())


def test_reading_the_same_retained_topics_twice_in_a_row_gets_them_both_times(
    lab: LabFactory,
) -> None:
    """On a real broker, the reads' UNSUBSCRIBEs not waited for (the order of the packets
    is checked on the tiny broker above)."""
    node = lab("127.0.0.51")

    async def body() -> None:
        async with node.client() as client:
            await client.add_route(cluster_route("Twice", "127.0.0.50", 9, "twice"))
            for _ in range(3):
                code = await client.read_route_code("Twice", timeout=5.0)
                assert "Twice" in (code or "")
                assert (await client.route_status("Twice", timeout=5.0)) is not None

    run(body())
    with SyncBrokerClient(
        node.host, node.host, node.port, "root", Secret(ADMIN_PASSWORD), reply_timeout=5
    ) as sync:
        for _ in range(3):
            assert "Twice" in (sync.read_route_codes(["Twice"], timeout=5.0)["Twice"] or "")


def test_a_broker_deaf_before_its_connack_is_named_with_the_setting_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that drops what comes before its CONNACK (MQTT 3.1.1 lets a client send it;
    whether Coreflux reads it is ASSUMED): the login fails within its two budgets, naming
    LOTDEPLOY_MQTT_LOGIN_IN_TURN, and with that set it logs in."""

    async def body() -> None:
        async with tiny("127.0.0.56", "deaf") as (broker, port):
            client = BrokerClient(
                "edge-4", "127.0.0.56", port, "root", Secret("pw-pw-pw"), connect_timeout=0.5
            )
            started = time.monotonic()
            with pytest.raises(BrokerError, match="LOTDEPLOY_MQTT_LOGIN_IN_TURN=1") as err:
                await client.connect()
            assert 0.9 < time.monotonic() - started < 2.5  # the CONNACK's and SUBACK's 0.5 s
            assert "edge-4" in str(err.value) and "no SUBACK" in str(err.value)
            assert broker.before_connack[:2] == [1, 8]
            monkeypatch.setenv("LOTDEPLOY_MQTT_LOGIN_IN_TURN", "1")
            async with BrokerClient(
                "edge-4", "127.0.0.56", port, "root", Secret("pw-pw-pw"), connect_timeout=0.5
            ) as again:
                assert again.request_ids is True

    run(body())
