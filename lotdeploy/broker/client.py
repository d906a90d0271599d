"""The broker command-channel client, shared by apply, verify, the lab broker and the tests.

Two layers live here:

* `MqttConnection`: a thin adapter over [aiomqtt](https://pypi.org/project/aiomqtt/) (asyncio
  on top of paho-mqtt 2.x, which speaks the protocol). It keeps what our callers rely on and
  the library leaves to them: every wait bounded (also by the connection's end, which aiomqtt
  does not watch for pending acknowledgements), TLS from a caller-supplied `ssl.SSLContext`,
  a password only ever handed to the library (never in a log line, repr or exception),
  CONNACK refusals and TLS failures turned into clear causes, a `closed` event, incoming
  messages delivered in order as they arrive (a callback or a bounded queue), and a will
  message (how the lab broker's cluster links identify themselves). It never reconnects by
  itself: callers own the retry policy.
* `BrokerClient`: the Coreflux command channel on top (interface.md §2/§3): publish a command
  to `$SYS/Coreflux/Command`, match the reply on `$SYS/Coreflux/Command/Output` by requestId
  (or, for 1.x brokers that do not echo ids, take the first reply after the publish), and parse
  the 2.x JSON envelope or the 1.x plain-text answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from lotdeploy.errors import BrokerError
from lotdeploy.lot import strip_comments
from lotdeploy.secret import Secret, scrub

log = logging.getLogger(__name__)

COMMAND_TOPIC = "$SYS/Coreflux/Command"
OUTPUT_TOPIC = "$SYS/Coreflux/Command/Output"
ROUTES_TOPIC = "$SYS/Coreflux/Routes"

# ---------------------------------------------------------------------------------------------
# One MQTT 3.1.1 connection (aiomqtt)
# ---------------------------------------------------------------------------------------------

#: paho-mqtt 2.x reports an MQTT 3.1.1 CONNACK return code as an MQTT 5 reason code; this maps
#: it back to the 3.1.1 code and says what to check.
_CONNACK: dict[int, tuple[int, str]] = {
    132: (1, "unacceptable protocol version (the broker does not speak MQTT 3.1.1)"),
    133: (2, "client identifier rejected"),
    136: (3, "server unavailable"),
    134: (4, "bad user name or password"),
    135: (5, "not authorized"),
}
_CONNACK_BY_CODE = {code: text for code, text in _CONNACK.values()}
#: What completes a publish, by QoS (paho calls QoS 0 published once written).
_ACK = ("write", "PUBACK", "PUBCOMP")


class MqttError(Exception):
    """Transport or protocol failure of one MQTT connection (never carries a password)."""


class ConnectRefused(MqttError):
    """The broker answered CONNACK with a non-zero return code (`code`: MQTT 3.1.1's)."""

    def __init__(self, code: int, where: str = "") -> None:
        self.code = code
        reason = _CONNACK_BY_CODE.get(code, f"code {code}")
        super().__init__(f"connection refused{f' by {where}' if where else ''}: {reason}")


@dataclass(frozen=True)
class Message:
    """One application message as received or to be sent."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


_T = TypeVar("_T")


class _VerifyAs:
    """A caller's SSLContext that verifies (and sends SNI for) `name` instead of the dialled host.

    paho uses the address it dials as the TLS server name; this is the only way to connect to an
    address while checking the certificate for another name. Everything else is the caller's.
    """

    def __init__(self, context: ssl.SSLContext, name: str) -> None:
        self._context = context
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._context, attr)

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = self._name
        return self._context.wrap_socket(sock, *args, **kwargs)


def _code(rc: ReasonCode | int | None) -> int:
    return int(rc.value) if isinstance(rc, ReasonCode) else int(rc or 0)


def _lost_reason(cause: BaseException | None) -> str:
    """Why aiomqtt saw the connection end (`cause`: what it chained to its MqttError)."""
    if cause is None:
        return "disconnected"
    if isinstance(cause, OSError):
        return f"closed by peer ({cause.strerror or type(cause).__name__})"
    rc = getattr(cause, "rc", None)
    if isinstance(rc, ReasonCode | int) and _code(rc) == 141:  # paho: MQTT_ERR_KEEPALIVE
        return "keepalive timeout (no PINGRESP)"
    if isinstance(rc, ReasonCode | int) and _code(rc) == 128:  # paho: MQTT_ERR_CONN_LOST
        return "closed by peer"
    return f"lost ({cause})"


def _inbox(deliver: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming-message queue class, made to hand each message to `deliver` at once.

    aiomqtt puts every received message in a queue of this class (its `queue_type` option) from
    paho's read callback. Delivering there, instead of from a task draining a queue, keeps
    arrival order with no extra hop: a reply that arrived before a call returned is already in
    the caller's hands when it does.
    """

    class Inbox(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            deliver(item)

    return Inbox


def _hang_up(client: aiomqtt.Client) -> None:
    """Drop a connection aiomqtt left half-open (no CONNACK in time, or connect cancelled).

    aiomqtt has no public call for this; `_client` is the paho-mqtt Client it wraps, whose
    `disconnect()` queues DISCONNECT and closes the socket once it is written. aiomqtt's
    disconnect callback is detached first: its state no longer matters, and at loop shutdown
    it would trip over its own cancelled CONNACK future.
    """
    with contextlib.suppress(Exception):
        client._client.on_disconnect = None
        client._client.disconnect()


class MqttConnection:
    """One MQTT 3.1.1 client connection (clean session). Not reconnecting: callers own retries.

    Incoming application messages go to `on_message` (called in the event loop as they arrive,
    must not block) or, if none is given, to the bounded `messages` queue. Every wait has a
    timeout and ends early with MqttError when the connection is lost.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: Secret | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        keepalive: int = 30,
        will: Message | None = None,
        connect_timeout: float = 10.0,
        on_message: Callable[[Message], None] | None = None,
        max_inflight: int = 20,
        source_address: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._username = username
        self._password = password
        self._tls = tls
        self._server_hostname = server_hostname
        self._keepalive = keepalive
        self._will = will
        self._connect_timeout = connect_timeout
        self._on_message = on_message
        self._max_inflight = max_inflight
        self._source_address = source_address
        self.messages: asyncio.Queue[Message] = asyncio.Queue(maxsize=10_000)
        self._client: aiomqtt.Client | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"MqttConnection({self.host}:{self.port}, client_id={self.client_id!r})"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and not self.closed.is_set()

    async def connect(self) -> None:
        """Connect (TLS if configured) and wait for CONNACK, all within connect_timeout."""
        tls: Any = self._tls
        if tls is not None and self._server_hostname and self._server_hostname != self.host:
            tls = _VerifyAs(tls, self._server_hostname)
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self._username,
            password=self._password.reveal() if self._password is not None else None,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,  # the lab and the command channel never resume sessions
            keepalive=self._keepalive,
            timeout=self._connect_timeout,
            will=(
                aiomqtt.Will(will.topic, will.payload, will.qos, will.retain)
                if (will := self._will) is not None
                else None
            ),
            tls_context=cast(ssl.SSLContext | None, tls),
            queue_type=_inbox(self._deliver),
            max_inflight_messages=self._max_inflight,
            bind_address=self._source_address,
            # small request/answer packets: without this, Nagle and delayed ACKs cost ~40 ms each
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # aiomqtt warns about "pending calls" above 10; a window of publishes is normal here
        client.pending_calls_threshold = max(100, 2 * self._max_inflight)
        # paho bounds the TCP connect and the TLS handshake by its own timeout (default 5 s);
        # aiomqtt does not expose it, the paho Client it wraps does.
        client._client.connect_timeout = self._connect_timeout
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            # paho connects in a worker thread that cannot be interrupted: drop what it opens
            entering.add_done_callback(lambda _: _hang_up(client))
            raise
        except Exception as exc:
            error = self._connect_error(exc)
            if not isinstance(error, ConnectRefused):
                _hang_up(client)  # e.g. no CONNACK in time: the socket is still open
            raise error from None
        self._client = client
        self._lost = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.create_task(self._watch(client), name=f"mqtt-{self.where}")

    def _connect_error(self, exc: BaseException) -> MqttError:
        if isinstance(exc, MqttConnectError):
            value = _code(exc.rc)
            code = _CONNACK.get(value, (value, ""))[0]
            return ConnectRefused(code, self.where)
        # aiomqtt re-raises socket errors as MqttError(str(exc)) `from None`: the original is
        # still the exception's context.
        cause = exc.__cause__ or exc.__context__ or exc
        if isinstance(exc, aiomqtt.MqttError) and str(exc) == "Operation timed out":
            return MqttError(f"no CONNACK from {self.where} within {self._connect_timeout:g}s")
        if isinstance(cause, ssl.SSLCertVerificationError):
            return MqttError(
                f"TLS handshake with {self.where} failed: certificate verify failed "
                f"({cause.verify_message})"
            )
        if isinstance(cause, ssl.SSLError):
            return MqttError(f"TLS handshake with {self.where} failed: {cause.reason or cause}")
        if isinstance(cause, TimeoutError):
            return MqttError(f"cannot connect to {self.where}: timed out")
        if isinstance(cause, OSError):
            return MqttError(f"cannot connect to {self.where}: {cause.strerror or cause}")
        return MqttError(f"cannot connect to {self.where}: {type(exc).__name__}: {exc}")

    def _deliver(self, item: aiomqtt.Message) -> None:
        payload = item.payload if isinstance(item.payload, bytes) else bytes(item.payload or b"")
        msg = Message(item.topic.value, payload, item.qos, bool(item.retain))
        if self._on_message is not None:
            try:
                self._on_message(msg)
            except Exception:  # a consumer's bug must not tear the connection down
                log.exception("message handler failed on %s", self.where)
        elif self.messages.full():
            log.warning("dropping a message from %s: receive queue full", self.where)
        else:
            self.messages.put_nowait(msg)

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Notice the end of the connection: aiomqtt ends message iteration when it drops."""
        try:
            async for _ in client.messages:  # never yields: the Inbox hands messages over
                pass
        except aiomqtt.MqttError as exc:
            self._fail(_lost_reason(exc.__cause__))

    def _fail(self, reason: str) -> None:
        """Mark closed once and wake every waiter."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _live(self) -> aiomqtt.Client:
        if self._client is None or self.closed.is_set():
            reason = f": {self.close_reason}" if self.close_reason else ""
            raise MqttError(f"connection to {self.where} is closed{reason}")
        return self._client

    def _op_error(self, exc: Exception, what: str, timeout: float) -> MqttError:
        if str(exc) == "Operation timed out":  # aiomqtt's own bound on the acknowledgement
            return MqttError(f"no {what} from {self.where} within {timeout:g}s")
        return MqttError(f"{what} on {self.where} failed: {exc}")

    async def _bounded(self, call: Awaitable[_T], timeout: float, what: str) -> _T:
        """Await one call within `timeout`, failing at once if the connection drops.

        aiomqtt bounds an acknowledgement only by its timeout; a lost connection would
        otherwise keep the caller waiting for all of it.
        """
        op = asyncio.ensure_future(call)
        assert self._lost is not None
        try:
            done, _ = await asyncio.wait(
                (op, self._lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            op.cancel()
            raise
        if op in done:
            try:
                return op.result()
            except (aiomqtt.MqttError, ValueError) as exc:
                raise self._op_error(exc, what, timeout) from None
        op.cancel()
        if self.closed.is_set():
            raise MqttError(f"connection to {self.where} lost: {self.close_reason}")
        raise MqttError(f"no {what} from {self.where} within {timeout:g}s")

    async def publish(self, msg: Message, timeout: float = 10.0) -> None:
        """Publish; for QoS 1/2 wait (bounded) until the broker acknowledged it.

        Fails at once if the connection drops meanwhile. Publishes are written in the order the
        calls start, also when many run concurrently as tasks (tasks start in creation order,
        and each hands its message to paho before it first yields).
        """
        await self._bounded(self.send(msg, timeout), timeout, _ACK[msg.qos])

    async def send(self, msg: Message, timeout: float = 10.0) -> None:
        """`publish` without watching for the connection's end, one task cheaper per message.

        For a sender that pipelines many publishes and watches `closed` itself (then cancels
        what is still pending): on a lost connection this waits until `timeout`.
        """
        client = self._live()
        try:
            await client.publish(msg.topic, msg.payload, msg.qos, msg.retain, timeout=timeout)
        except (aiomqtt.MqttError, ValueError) as exc:
            raise self._op_error(exc, _ACK[msg.qos], timeout) from None

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS (0x80 = refused) per topic."""
        client = self._live()
        codes = await self._bounded(client.subscribe(topics, timeout=timeout), timeout, "SUBACK")
        return [_code(code) for code in codes]

    async def unsubscribe(self, topics: list[str], timeout: float = 10.0) -> None:
        client = self._live()
        await self._bounded(client.unsubscribe(topics, timeout=timeout), timeout, "UNSUBACK")

    async def close(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT if still connected and stop (bounded). Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), timeout)
            _hang_up(client)  # no-op after a clean DISCONNECT; closes the socket otherwise
        self._fail("closed by client")
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._watcher, timeout)


# ---------------------------------------------------------------------------------------------
# The Coreflux command channel
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyError:
    """One entry of a reply's `errors[]` (line/column are set for parse errors)."""

    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f"{self.line}:{self.column}: " if self.line is not None else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class Reply:
    """A broker's answer to one command, from a 2.x JSON envelope or a 1.x text line."""

    success: bool
    command: str
    request_id: str | None
    message: str
    data: Any = None
    errors: tuple[ReplyError, ...] = ()
    raw: str = field(default="", repr=False)

    def describe(self) -> str:
        """One line for humans: the message plus every error (scrubbed of known secrets)."""
        parts = [self.message] + [str(e) for e in self.errors if str(e) != self.message]
        return scrub("; ".join(p for p in parts if p))


class CommandFailed(BrokerError):
    """The broker answered, and the answer was a failure; `reply` holds the details."""

    def __init__(self, node: str, verb: str, reply: Reply) -> None:
        self.reply = reply
        super().__init__(node, f"-{verb} failed: {reply.describe() or 'no message'}")


def pascal(verb: str) -> str:
    """`addRoute` -> `AddRoute`: how 2.x brokers name the command in their envelope."""
    verb = verb.lstrip("-")
    return verb[:1].upper() + verb[1:]


_TEXT_POSITION = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_TEXT_FAILURE = re.compile(
    r"error|not found|denied|unknown command|failed|already exists|invalid|not allowed|cannot",
    re.IGNORECASE,
)


def parse_reply(payload: bytes | str, verb: str) -> Reply:
    """Parse one Output payload: the 2.x JSON envelope first, else a 1.x plain-text line."""
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "success" in doc:
        errors = []
        items = doc.get("errors") or []
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                errors.append(
                    ReplyError(
                        str(item.get("message", "")),
                        _as_int(item.get("line")),
                        _as_int(item.get("column")),
                    )
                )
            else:
                errors.append(ReplyError(str(item)))
        rid = doc.get("requestId")
        return Reply(
            success=bool(doc.get("success")),
            command=str(doc.get("command") or pascal(verb)),
            request_id=str(rid) if rid is not None else None,
            message=str(doc.get("message") or ""),
            data=doc.get("data"),
            errors=tuple(errors),
            raw=text,
        )
    stripped = text.strip()
    errors = []
    if stripped.lower().startswith("parsing error") or _TEXT_POSITION.search(stripped):
        match = _TEXT_POSITION.search(stripped)
        errors.append(
            ReplyError(stripped, int(match.group(1)), int(match.group(2)))
            if match
            else ReplyError(stripped)
        )
    success = not errors and (
        "successfully" in stripped.lower() or not _TEXT_FAILURE.search(stripped)
    )
    if not success and not errors:
        errors.append(ReplyError(stripped))
    return Reply(success, pascal(verb), None, stripped, None, tuple(errors), text)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


RequestIds = bool | Literal["auto"]


class BrokerClient:
    """An admin session on one broker's command channel. Use as an async context manager.

    Commands are sent one at a time per client (a lock), so when a broker does not echo
    requestIds the first reply after our publish is ours. `request_ids="auto"` probes the
    broker once with `-listRoutes -requestId <id>` and only sends ids if they come back.
    """

    def __init__(
        self,
        node_name: str,
        host: str,
        port: int,
        username: str,
        password: Secret,
        tls: ssl.SSLContext | None = None,
        reply_timeout: float = 15.0,
        request_ids: RequestIds = True,
        *,
        client_id: str | None = None,
        connect_timeout: float = 10.0,
        server_hostname: str | None = None,
    ) -> None:
        if not isinstance(password, Secret):
            raise TypeError("password must be a Secret")
        self.node_name = node_name
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self._tls = tls
        self.reply_timeout = reply_timeout
        self.request_ids: RequestIds = request_ids
        self._client_id = client_id or f"lotdeploy-{uuid.uuid4().hex[:12]}"
        self._connect_timeout = connect_timeout
        self._server_hostname = server_hostname
        self._conn: MqttConnection | None = None
        self._lock = asyncio.Lock()
        self._replies: asyncio.Queue[Message] = asyncio.Queue(maxsize=1000)
        self._watchers: dict[str, list[asyncio.Queue[Message]]] = {}

    def __repr__(self) -> str:
        return f"BrokerClient({self.node_name!r}, {self.host}:{self.port}, user={self.username!r})"

    async def __aenter__(self) -> BrokerClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _error(self, cause: str) -> BrokerError:
        return BrokerError(self.node_name, scrub(cause))

    async def connect(self) -> None:
        """Connect, authenticate, subscribe to the Output topic (before any publish)."""
        conn = MqttConnection(
            self.host,
            self.port,
            client_id=self._client_id,
            username=self.username,
            password=self._password,
            tls=self._tls,
            server_hostname=self._server_hostname,
            keepalive=30,
            connect_timeout=self._connect_timeout,
            on_message=self._on_message,
        )
        try:
            await conn.connect()
            codes = await conn.subscribe([(OUTPUT_TOPIC, 1)], self._connect_timeout)
        except MqttError as exc:
            await conn.close()
            raise self._error(str(exc)) from None
        if codes and codes[0] == 0x80:
            await conn.close()
            raise self._error(f"subscription to {OUTPUT_TOPIC} refused")
        self._conn = conn
        if self.request_ids == "auto":
            await self._detect_request_ids()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _on_message(self, msg: Message) -> None:
        if msg.topic == OUTPUT_TOPIC:
            if not self._replies.full():
                self._replies.put_nowait(msg)
            return
        for queue in self._watchers.get(msg.topic, []):
            if not queue.full():
                queue.put_nowait(msg)

    async def _detect_request_ids(self) -> None:
        self.request_ids = True
        reply = await self.command("listRoutes")
        self.request_ids = reply.request_id is not None
        log.debug("broker %s echoes requestIds: %s", self.node_name, self.request_ids)

    async def command(self, verb: str, argument: str = "") -> Reply:
        """Send `-<verb> <argument>` and return the matching reply (bounded by reply_timeout).

        Raises BrokerError (naming the node) if not connected, on a lost connection or when no
        reply arrives in time. A failure *answer* is returned as a Reply with success False.
        """
        verb = verb.lstrip("-")
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error(f"not connected (cannot send -{verb})")
        async with self._lock:
            while not self._replies.empty():  # stale replies of other admins or timed-out calls
                self._replies.get_nowait()
            rid = uuid.uuid4().hex if self.request_ids else None
            payload = f"-{verb}" + (f" {argument}" if argument else "")
            if rid:
                payload += f" -requestId {rid}"
            try:
                await conn.publish(Message(COMMAND_TOPIC, payload.encode(), 1), self.reply_timeout)
            except MqttError as exc:
                raise self._error(f"-{verb}: {exc}") from None
            return await self._await_reply(conn, verb, rid)

    async def _await_reply(self, conn: MqttConnection, verb: str, rid: str | None) -> Reply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        for _ in range(100_000):  # bounded in count as well as in time
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            get = asyncio.ensure_future(self._replies.get())
            lost = asyncio.ensure_future(conn.closed.wait())
            done, _ = await asyncio.wait(
                {get, lost}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in (get, lost):
                if fut not in done:
                    fut.cancel()
            if get not in done:
                if lost in done:
                    raise self._error(f"connection lost while waiting for the reply to -{verb}")
                break
            reply = parse_reply(get.result().payload, verb)
            if rid is None or reply.request_id is None or reply.request_id == rid:
                return reply
        raise self._error(f"no reply to -{verb} within {self.reply_timeout:g}s")

    # -- typed helpers -------------------------------------------------------------------

    async def _checked(self, verb: str, argument: str = "") -> Reply:
        reply = await self.command(verb, argument)
        if not reply.success:
            raise CommandFailed(self.node_name, verb, reply)
        return reply

    async def add_route(self, lot_text: str) -> Reply:
        """Send LOT text with comments stripped; raises CommandFailed with errors[].

        Leading blank lines (e.g. a stripped comment header) are not sent; error line numbers
        in the reply are shifted back so they point into `lot_text`.
        """
        lines = strip_comments(lot_text).split("\n")
        offset = 0
        while offset < len(lines) and not lines[offset].strip():
            offset += 1
        text = "\n".join(lines[offset:]).rstrip() + "\n"
        if not text.strip():
            raise self._error("-addRoute: empty LOT text")
        reply = await self.command("addRoute", text)
        if offset and reply.errors:
            shifted = tuple(
                replace(e, line=e.line + offset) if e.line is not None else e for e in reply.errors
            )
            reply = replace(reply, errors=shifted)
        if not reply.success:
            raise CommandFailed(self.node_name, "addRoute", reply)
        return reply

    async def remove_route(self, name: str) -> Reply:
        """Remove a route; "not found" counts as done (what the vendor's editor does)."""
        reply = await self.command("removeRoute", name)
        if not reply.success and "not found" not in reply.describe().lower():
            raise CommandFailed(self.node_name, "removeRoute", reply)
        return reply

    async def list_routes(self) -> list[dict[str, Any]]:
        reply = await self._checked("listRoutes")
        data = reply.data
        if isinstance(data, dict) and isinstance(data.get("routes"), list):
            data = data["routes"]
        if not isinstance(data, list):
            return []
        return [item for item in data if isinstance(item, dict)]

    async def route_code(self, route_type: str) -> str:
        """The broker's LOT template for a route type (tells which keys it accepts)."""
        reply = await self._checked("routeCode", route_type)
        data = reply.data
        if isinstance(data, dict) and isinstance(data.get("code"), str):
            return str(data["code"])
        if isinstance(data, str):
            return data
        return reply.message

    async def check_route_connection(self, name: str) -> dict[str, Any]:
        reply = await self._checked("checkRouteConnection", name)
        if isinstance(reply.data, dict):
            return reply.data
        return {"name": name, "message": reply.message}

    async def add_user(self, user: str, password: Secret) -> Reply:
        return await self._checked("addUser", f"{self._word(user)} {self._word(password.reveal())}")

    async def remove_user(self, user: str) -> Reply:
        return await self._checked("removeUser", self._word(user))

    async def change_user_password(self, user: str, password: Secret) -> Reply:
        return await self._checked(
            "changeUserPassword", f"{self._word(user)} {self._word(password.reveal())}"
        )

    async def set_secret(self, name: str, value: Secret) -> Reply:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise self._error(f"invalid secret name {name!r}")
        return await self._checked("setSecret", f"{name}={self._word(value.reveal())}")

    async def list_secrets(self) -> list[str]:
        reply = await self._checked("listSecrets")
        data = reply.data
        if isinstance(data, dict):
            data = data.get("secrets", list(data))
        return [str(x) for x in data] if isinstance(data, list) else []

    async def read_route_code(self, name: str, timeout: float = 10.0) -> str | None:
        """The LOT a broker republishes on `$SYS/Coreflux/Routes/<name>` (None if none in time)."""
        msg = await self._watch_once(f"{ROUTES_TOPIC}/{name}", timeout)
        return msg.payload.decode("utf-8", errors="replace") if msg else None

    async def route_status(self, name: str, timeout: float = 35.0) -> dict[str, Any] | None:
        """The next `$SYS/Coreflux/Routes/<name>/status` JSON (None if none in time)."""
        msg = await self._watch_once(f"{ROUTES_TOPIC}/{name}/status", timeout)
        if msg is None:
            return None
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _word(self, value: str) -> str:
        """An argument travels as one whitespace-free word; refuse what would break it."""
        if not value or any(c.isspace() for c in value) or value.startswith("-"):
            raise self._error(
                "a user name, password or secret value must be non-empty, contain no "
                "whitespace and not start with '-'"
            )
        return value

    async def _watch_once(self, topic: str, timeout: float) -> Message | None:
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error("not connected")
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=100)
        self._watchers.setdefault(topic, []).append(queue)
        try:
            try:
                await conn.subscribe([(topic, 1)], timeout)
            except MqttError as exc:
                raise self._error(str(exc)) from None
            try:
                return await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return None
            finally:
                with contextlib.suppress(MqttError):
                    if conn.connected:
                        await conn.unsubscribe([topic], timeout)
        finally:
            self._watchers[topic].remove(queue)
            if not self._watchers[topic]:
                del self._watchers[topic]


class SyncBrokerClient:
    """Blocking wrapper for scripts and tests: runs a BrokerClient on a private event loop.

    `with SyncBrokerClient(...) as c: c.add_route(text)`; every method mirrors BrokerClient.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = self._run(self._make(args, kwargs))

    @staticmethod
    async def _make(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BrokerClient:
        return BrokerClient(*args, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coro)

    def __enter__(self) -> SyncBrokerClient:
        self._run(self._client.connect())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._runner.close()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if isinstance(result, Awaitable):
                return self._run(_await(result))
            return result

        return call


async def _await(aw: Awaitable[_T]) -> _T:
    return await aw
