"""The broker command-channel client, shared by apply, verify, the lab broker and the tests.

Two layers live here:

* `MqttConnection`: a deliberately small MQTT 3.1.1 client on asyncio streams. We own it
  instead of wrapping a library because every wait must be bounded, TLS must come from a
  caller-supplied `ssl.SSLContext`, a password must never reach a log line or a repr, and the
  lab broker's cluster links need pipelined QoS 1/2 publishing with explicit control over
  reconnection (no hidden background reconnect loop). It speaks exactly the packets we use.
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
import ssl
import struct
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from lotdeploy.errors import BrokerError
from lotdeploy.lot import strip_comments
from lotdeploy.secret import Secret, scrub

log = logging.getLogger(__name__)

COMMAND_TOPIC = "$SYS/Coreflux/Command"
OUTPUT_TOPIC = "$SYS/Coreflux/Command/Output"
ROUTES_TOPIC = "$SYS/Coreflux/Routes"

#: Largest packet we accept from a broker; anything larger is a protocol violation for us.
MAX_INCOMING_PACKET = 16 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Minimal MQTT 3.1.1
# ---------------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttError(Exception):
    """Transport or protocol failure of one MQTT connection (never carries a password)."""


class ConnectRefused(MqttError):
    """The broker answered CONNACK with a non-zero return code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"connection refused: {CONNACK_REASONS.get(code, f'code {code}')}")


@dataclass(frozen=True)
class Message:
    """One application message as received or to be sent."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


def _encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise MqttError("string field longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _encode_length(len(body)) + body


def encode_publish(msg: Message, packet_id: int | None, dup: bool = False) -> bytes:
    """PUBLISH packet bytes; `packet_id` is required for QoS 1 and 2."""
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (msg.qos << 1) | (1 if msg.retain else 0)
    body = _str(msg.topic)
    if msg.qos:
        assert packet_id is not None
        body += struct.pack("!H", packet_id)
    return _packet(first, body + msg.payload)


TMsg = TypeVar("TMsg")


class MqttConnection:
    """One MQTT 3.1.1 client connection. Not reconnecting: callers own the retry policy.

    Incoming application messages go to `on_message` (called in the reader task, must not
    block) or, if none is given, to the bounded `messages` queue. Every wait has a timeout.
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
        on_close: Callable[[], None] | None = None,
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
        self._on_close = on_close
        self.messages: asyncio.Queue[Message] = asyncio.Queue(maxsize=10_000)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = 0
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._qos2_phase: dict[int, int] = {}
        self._incoming_qos2: set[int] = set()
        self._connack: asyncio.Future[int] | None = None
        self._pong = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"MqttConnection({self.host}:{self.port}, client_id={self.client_id!r})"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed.is_set()

    async def connect(self) -> None:
        """Open the socket (TLS if configured), send CONNECT, wait for CONNACK (bounded)."""
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._tls,
                    server_hostname=(self._server_hostname or self.host) if self._tls else None,
                    limit=2**16,
                ),
                self._connect_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise MqttError(
                f"TLS handshake with {self.host}:{self.port} failed: certificate verify failed "
                f"({exc.verify_message})"
            ) from None
        except ssl.SSLError as exc:
            raise MqttError(
                f"TLS handshake with {self.host}:{self.port} failed: {exc.reason or exc}"
            ) from None
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise MqttError(f"cannot connect to {self.host}:{self.port}: {reason}") from None
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._tasks.append(asyncio.create_task(self._read_loop()))
        try:
            self._write(self._connect_packet())
            code = await asyncio.wait_for(asyncio.shield(self._connack), self._connect_timeout)
        except TimeoutError:
            await self.close()
            raise MqttError(
                f"no CONNACK from {self.host}:{self.port} within {self._connect_timeout}s"
            ) from None
        except MqttError:
            await self.close()
            raise
        if code != 0:
            await self.close()
            raise ConnectRefused(code)
        if self._keepalive:
            self._tasks.append(asyncio.create_task(self._ping_loop()))

    def _connect_packet(self) -> bytes:
        flags = 0x02  # clean session: the lab and the command channel never resume sessions
        payload = _str(self.client_id)
        if self._will is not None:
            flags |= 0x04 | (self._will.qos << 3) | (0x20 if self._will.retain else 0)
            payload += _str(self._will.topic) + _str(self._will.payload)
        if self._username is not None:
            flags |= 0x80
            payload += _str(self._username)
            if self._password is not None:
                flags |= 0x40
                payload += _str(self._password.reveal())
        header = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", self._keepalive)
        return _packet(CONNECT << 4, header + payload)

    def _write(self, data: bytes) -> None:
        if self._writer is None or self.closed.is_set():
            raise MqttError(f"connection to {self.host}:{self.port} is closed")
        self._writer.write(data)

    async def _drain(self, timeout: float) -> None:
        if self._writer is None:
            raise MqttError("not connected")
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except (OSError, TimeoutError) as exc:
            self._fail(f"write failed: {type(exc).__name__}")
            raise MqttError(f"write to {self.host}:{self.port} failed") from None

    def _packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._acks:
                return self._next_id
        raise MqttError("no free packet identifier")

    def publish_nowait(self, msg: Message) -> asyncio.Future[Any] | None:
        """Queue a PUBLISH on the socket; returns the acknowledgement future for QoS 1/2."""
        if msg.qos == 0:
            self._write(encode_publish(msg, None))
            return None
        pid = self._packet_id()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        self._qos2_phase.pop(pid, None)
        self._write(encode_publish(msg, pid))
        return fut

    async def publish(self, msg: Message, timeout: float = 10.0) -> None:
        """Publish and wait (bounded) until the broker acknowledged it (QoS 1/2)."""
        fut = self.publish_nowait(msg)
        await self._drain(timeout)
        if fut is not None:
            await self._wait_ack(fut, timeout, "PUBACK")

    async def drain(self, timeout: float = 10.0) -> None:
        await self._drain(timeout)

    async def _wait_ack(self, fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise MqttError(f"no {what} from {self.host}:{self.port} within {timeout}s") from None

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS (0x80 = refused) per topic."""
        pid = self._packet_id()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        body = struct.pack("!H", pid) + b"".join(_str(t) + bytes([q]) for t, q in topics)
        self._write(_packet((SUBSCRIBE << 4) | 0x02, body))
        await self._drain(timeout)
        codes: list[int] = await self._wait_ack(fut, timeout, "SUBACK")
        return codes

    async def unsubscribe(self, topics: list[str], timeout: float = 10.0) -> None:
        pid = self._packet_id()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        body = struct.pack("!H", pid) + b"".join(_str(t) for t in topics)
        self._write(_packet((UNSUBSCRIBE << 4) | 0x02, body))
        await self._drain(timeout)
        await self._wait_ack(fut, timeout, "UNSUBACK")

    async def close(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT if still connected, close the socket, stop the tasks (bounded)."""
        if self._writer is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self._writer.write(bytes([DISCONNECT << 4, 0]))
                await asyncio.wait_for(self._writer.drain(), timeout)
        self._fail("closed by client")
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(
                    *(t for t in self._tasks if t is not current), return_exceptions=True
                ),
                timeout,
            )
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), timeout)

    def _fail(self, reason: str) -> None:
        """Mark closed once: fail every pending acknowledgement, close the transport."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        err = MqttError(f"connection to {self.host}:{self.port} lost: {reason}")
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: callers may have given up on it already
        self._acks.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(err)
            self._connack.exception()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._on_close is not None:
            with contextlib.suppress(Exception):
                self._on_close()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                first = await reader.readexactly(1)
                length, shift = 0, 0
                for _ in range(4):
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                else:
                    raise MqttError("malformed remaining length")
                if length > MAX_INCOMING_PACKET:
                    raise MqttError(f"packet of {length} bytes exceeds the client limit")
                body = await reader.readexactly(length) if length else b""
                self._dispatch(first[0], body)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._fail("closed by peer")
        except MqttError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a peer speaking garbage must not escape as a traceback
            self._fail(f"protocol error ({type(exc).__name__})")

    def _dispatch(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == CONNACK:
            if len(body) != 2:
                raise MqttError("malformed CONNACK")
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(body[1])
        elif kind == PUBLISH:
            self._on_publish(first, body)
        elif kind in (PUBACK, PUBCOMP, UNSUBACK):
            self._resolve(struct.unpack("!H", body[:2])[0], None)
        elif kind == PUBREC:
            pid = struct.unpack("!H", body[:2])[0]
            self._write(_packet((PUBREL << 4) | 0x02, body[:2]))
            self._qos2_phase[pid] = PUBREC
        elif kind == PUBREL:
            pid = struct.unpack("!H", body[:2])[0]
            self._incoming_qos2.discard(pid)
            self._write(_packet(PUBCOMP << 4, body[:2]))
        elif kind == SUBACK:
            self._resolve(struct.unpack("!H", body[:2])[0], list(body[2:]))
        elif kind == PINGRESP:
            self._pong.set()
        else:
            raise MqttError(f"unexpected packet type {kind}")

    def _resolve(self, pid: int, value: Any) -> None:
        fut = self._acks.pop(pid, None)
        self._qos2_phase.pop(pid, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _on_publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise MqttError("PUBLISH with QoS 3")
        (tlen,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + tlen].decode("utf-8", errors="replace")
        pos = 2 + tlen
        pid = None
        if qos:
            (pid,) = struct.unpack("!H", body[pos : pos + 2])
            pos += 2
        msg = Message(topic, bytes(body[pos:]), qos, bool(first & 0x01))
        duplicate = False
        if qos == 1:
            self._write(_packet(PUBACK << 4, struct.pack("!H", pid)))
        elif qos == 2:
            assert pid is not None
            duplicate = pid in self._incoming_qos2
            self._incoming_qos2.add(pid)
            self._write(_packet(PUBREC << 4, struct.pack("!H", pid)))
        if duplicate:
            return
        if self._on_message is not None:
            self._on_message(msg)
        elif self.messages.full():
            log.warning("dropping a message from %s:%s: receive queue full", self.host, self.port)
        else:
            self.messages.put_nowait(msg)

    async def _ping_loop(self) -> None:
        interval = max(1.0, self._keepalive / 2)
        try:
            while not self.closed.is_set():
                await asyncio.sleep(interval)
                self._pong.clear()
                self._write(bytes([PINGREQ << 4, 0]))
                try:
                    await asyncio.wait_for(self._pong.wait(), self._keepalive)
                except TimeoutError:
                    self._fail("keepalive timeout")
        except MqttError:
            pass


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


_T = TypeVar("_T")
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
