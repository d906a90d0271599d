"""One MQTT 3.1.1 connection: a thin adapter over aiomqtt, shared by the session and the lab.

`MqttConnection` wraps [aiomqtt](https://pypi.org/project/aiomqtt/) (asyncio on top of paho-mqtt
2.x, which speaks the protocol). It keeps what our callers rely on and the library leaves to
them: every wait bounded (also by the connection's end, which aiomqtt does not watch for pending
acknowledgements), TLS from a caller-supplied `ssl.SSLContext`, a password only ever handed to
the library (never in a log line, repr or exception), CONNACK refusals and TLS failures turned
into clear causes, a `closed` event, incoming messages delivered in order as they arrive (a
callback or a bounded queue), and a will message (how the lab broker's cluster links identify
themselves). It never reconnects by itself: callers own the retry policy.

Nothing here knows about Coreflux: the command channel is `lotdeploy.broker.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from lotdeploy.secret import Secret

log = logging.getLogger(__name__)
#: paho's and aiomqtt's messages: silenced (every failure reaches callers as an MqttError)
_LIBRARY_LOG = logging.getLogger(f"{__name__}.library")
_LIBRARY_LOG.setLevel(logging.CRITICAL + 1)
_LIBRARY_LOG.propagate = False

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
#: The largest packet a connection accepts by default. MQTT allows 256 MB, and paho reads a
#: packet whole before anyone sees it: a broker could make a client hold gigabytes. Every
#: reply lotdeploy expects is far smaller (a 1,000-route listing is ~150 KB).
MAX_PACKET_BYTES = 16 * 1024 * 1024
#: What the `messages` queue (and a BoundedQueue by default) holds at most, in payload bytes.
MAX_QUEUED_BYTES = 64 * 1024 * 1024


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


class BoundedQueue(asyncio.Queue[Message]):
    """A message queue bounded in count and in payload bytes; `fits` says whether one more
    message may go in (callers drop it otherwise, as they do for a full queue)."""

    def __init__(self, maxsize: int = 0, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0

    def fits(self, msg: Message) -> bool:
        return not self.full() and self.bytes + len(msg.payload) <= self.max_bytes

    def _put(self, item: Message) -> None:
        self.bytes += len(item.payload)
        super()._put(item)

    def _get(self) -> Message:
        item: Message = super()._get()
        self.bytes -= len(item.payload)
        return item


def _cap_packets(paho: Any, max_bytes: int, oversize: Callable[[int], None]) -> None:
    """Refuse, before reading it, any incoming packet longer than `max_bytes`.

    paho-mqtt (which aiomqtt wraps) reads a packet's remaining length, then the whole packet
    into memory, asking the socket for all of it at once. Its receive call is wrapped: once
    the length is known and too large, the call fails and paho drops the connection
    (`oversize` is told the length first, for the close reason). paho's `_sock_recv` and
    `_in_packet` are its own; the versions are pinned.
    """
    receive = paho._sock_recv

    def bounded(size: int) -> bytes:
        packet = paho._in_packet
        if packet.get("have_remaining") and packet.get("remaining_length", 0) > max_bytes:
            oversize(int(packet["remaining_length"]))
            raise OSError(errno.EMSGSIZE, "packet too large")
        return bytes(receive(size))

    paho._sock_recv = bounded


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


def _hang_up_when_done(entering: asyncio.Future[Any], client: aiomqtt.Client) -> None:
    """Once a connect nobody awaits any more ends (paho dials in a worker thread that cannot
    be interrupted): read its outcome, so asyncio reports no "exception never retrieved",
    and drop what it opened."""

    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()
        _hang_up(client)

    entering.add_done_callback(done)


def _signal_when_written(client: aiomqtt.Client) -> asyncio.Event:
    """An event set once paho has connected and queued the CONNECT (aiomqtt dials in a
    worker thread and exposes no such moment: its dialling call is wrapped). TCP_NODELAY is
    set there too, before anything else is written: aiomqtt sets it only later, and Nagle
    would hold a packet sent after the CONNECT until the CONNECT's acknowledgement. paho
    writes its packets in the order they were queued, so what follows leaves behind it. Where
    aiomqtt (pinned) has no such call, the event is never set: no packet goes early."""
    written = asyncio.Event()
    dial = getattr(client, "_client_connect", None)
    if dial is None:
        return written
    loop = asyncio.get_running_loop()

    def dial_then_signal() -> None:
        dial()
        sock = client._client.socket()
        if isinstance(sock, socket.socket):  # a TLS socket is one too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.call_soon_threadsafe(written.set)

    client._client_connect = dial_then_signal  # type: ignore[method-assign]
    return written


async def _first(written: asyncio.Event, entering: asyncio.Future[Any]) -> bool:
    """Wait until the CONNECT is written (True) or the connect ended first (False: it failed,
    or its CONNACK was read before this task ran again)."""
    waiting = asyncio.ensure_future(written.wait())
    try:
        await asyncio.wait({waiting, entering}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    return written.is_set() and not entering.done()


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
        max_packet: int = MAX_PACKET_BYTES,
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
        self._max_packet = max_packet
        self._oversize: int | None = None
        self.messages: BoundedQueue = BoundedQueue(maxsize=10_000)
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

    async def connect(self, early: Callable[[], Awaitable[None]] | None = None) -> None:
        """Connect (TLS if configured) and wait for CONNACK, all within connect_timeout.

        `early` is awaited once the CONNECT is written, before its CONNACK, with the
        connection usable: MQTT 3.1.1 (§3.1.4) lets a client send further packets at once,
        and a server reads them in order, only after it accepted the CONNECT. What `early`
        starts (a SUBSCRIBE, a command) thus leaves with the CONNECT and is answered in the
        same round trip. Where the CONNACK came first, `early` runs after it instead; where
        the CONNECT is refused, the refusal is raised and what `early` started fails with
        the connection. Either way `early` runs at most once, and only starts work: the
        caller awaits what it started."""
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
            # paho's own log lines ("Socket exception: ...") would reach the terminal beside
            # the clear error this class raises for the same event: only that one is said
            logger=_LIBRARY_LOG,
        )
        # aiomqtt warns about "pending calls" above 10; a window of publishes is normal here
        client.pending_calls_threshold = max(100, 2 * self._max_inflight)
        # paho bounds the TCP connect and the TLS handshake by its own timeout (default 5 s);
        # aiomqtt does not expose it, the paho Client it wraps does.
        client._client.connect_timeout = self._connect_timeout
        _cap_packets(client._client, self._max_packet, self._note_oversize)
        written = _signal_when_written(client) if early is not None else None
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            if early is not None and written is not None and await _first(written, entering):
                self._client = client  # usable before the CONNACK: `early` sends now
                self._lost = asyncio.get_running_loop().create_future()
                await early()
                early = None
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            # paho connects in a worker thread that cannot be interrupted: drop what it opens
            _hang_up_when_done(entering, client)
            self._client = None
            self._fail("connect cancelled")
            raise
        except Exception as exc:
            error = self._connect_error(exc)
            if not isinstance(error, ConnectRefused):
                _hang_up(client)  # e.g. no CONNACK in time: the socket is still open
            if not entering.done():  # `early` failed: the CONNACK's wait is nobody's now
                _hang_up_when_done(entering, client)
            self._client = None
            self._fail(str(error))  # what `early` started ends with the connection
            raise error from None
        self._client = client
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.create_task(self._watch(client), name=f"mqtt-{self.where}")
        if early is not None:
            await early()

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

    def _note_oversize(self, length: int) -> None:
        self._oversize = length

    def _deliver(self, item: aiomqtt.Message) -> None:
        payload = item.payload if isinstance(item.payload, bytes) else bytes(item.payload or b"")
        msg = Message(item.topic.value, payload, item.qos, bool(item.retain))
        if self._on_message is not None:
            try:
                self._on_message(msg)
            except Exception:  # a consumer's bug must not tear the connection down
                log.exception("message handler failed on %s", self.where)
        elif not self.messages.fits(msg):
            log.warning("dropping a message from %s: receive queue full", self.where)
        else:
            self.messages.put_nowait(msg)

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Notice the end of the connection: aiomqtt ends message iteration when it drops."""
        try:
            async for _ in client.messages:  # never yields: the Inbox hands messages over
                pass
        except aiomqtt.MqttError as exc:
            if self._oversize is not None:
                self._fail(
                    f"closed: it sent a packet of {self._oversize} bytes, more than the "
                    f"{self._max_packet} accepted"
                )
            else:
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
