"""MQTT_CLUSTER routes of the lab broker: validation and the outbound peer links.

A route is one *outbound* link: this node connects to BROKER_ADDRESS:BROKER_PORT as a client
and pushes every message its ordinary local clients publish. The peer recognises the link as
cluster traffic by the CONNECT will topic `$SYS/Coreflux/Cluster/Link` (atomic with the
connection, MQTT 3.1.1 has no user properties) and delivers those messages locally without
forwarding them again: one hop, so a full mesh delivers each message once to every node.

While the peer is unreachable, messages wait in a bounded queue (oldest dropped first when
full); when sending, anything older than MESSAGE_VALIDITY_SEC is dropped, the rest goes out
in order. The link is an aiomqtt client (`MqttConnection`); publishes are pipelined (a window
of SEND_WINDOW not yet written or acknowledged) and keep their QoS and retain flag. QoS 1/2
messages not acknowledged when a connection drops, and QoS 0 ones not yet written, are sent
again after reconnecting (QoS 1/2 at least once). Reconnection is this module's loop, with
bounded jittered backoff; the client library never reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lotdeploy.broker.mqtt import Message, MqttConnection, MqttError
from lotdeploy.lot.ast import Bool, EnvRef, Int, Route, SecretRef, Str, Value
from lotdeploy.protocol import (
    CLUSTER_CONFIG_BLOCK,
    CLUSTER_KEY_ORDER,
    CLUSTER_KEYS_BY_NAME,
    REQUIRED_CLUSTER_KEYS,
    ROUTE_TYPE,
    format_duration,
)
from lotdeploy.secret import Secret

log = logging.getLogger(__name__)

CLUSTER_LINK_TOPIC = "$SYS/Coreflux/Cluster/Link"
#: The lab broker accepts the documented keys only; bridge-only ones are refused by name.
ALLOWED_KEYS = frozenset(CLUSTER_KEY_ORDER)
DEFAULT_VALIDITY_SEC = 30
SEND_WINDOW = 256
CONNECT_TIMEOUT = 5.0
ACK_TIMEOUT = 30.0
#: How long a replaced route's link waits for the acknowledgements of what it has in
#: flight before it hands the rest to the link that replaces it.
HAND_OVER_WAIT = 5.0

#: The `-routeCode MQTT_CLUSTER` template, line by line: the route line, one line per
#: offered key, and the template-only METADATA block. Placeholders are in the vendor's
#: `#name,type,description,regex,env#` form: five fields, no comma in the regex, the regex
#: may be empty, the fifth field a boolean (docs/coreflux-interface.md §1). Which keys the
#: vendor marks `true` there (may come from `GET ENV`?) is UNKNOWN: the lab's choice.
_TEMPLATE_HEAD = (
    r"DEFINE ROUTE #name,string,Route name,^[A-Za-z]\w*$,false# WITH TYPE MQTT_CLUSTER"
    "\n    ADD CLUSTER_CONFIG\n"
)
#: Each offered key: how its value is quoted, and its placeholder's five fields.
_TEMPLATE_KEYS: dict[str, tuple[str, str]] = {
    "BROKER_ADDRESS": ('"', r"address,string,Peer broker host or IP,^\S+$,true"),
    "BROKER_PORT": ("'", "port,int,Peer MQTT port,^[0-9]+$,true"),
    "CLIENT_ID": ('"', "clientId,string,Unique client id of this link,,false"),
    "USERNAME": ('"', "username,string,Cluster user on the peer,,true"),
    "PASSWORD": ('"', "password,password,Cluster user password,,true"),
    "MESSAGE_VALIDITY_SEC": (
        "'",
        "validity,int,Seconds a queued message stays valid,^[0-9]+$,false",
    ),
    "USE_TLS": ("", "tls,bool,Connect over TLS,^(true|false)$,false"),
}
_TEMPLATE_TAIL = (
    '    ADD METADATA\n        WITH DESCRIPTION "Template only: never deploy this block"\n'
)


def route_template(missing: frozenset[str] = frozenset()) -> str:
    """What `-routeCode MQTT_CLUSTER` answers: the accepted keys (all but `missing`)."""
    lines = [
        f"        WITH {key} {quote}#{fields}#{quote}\n"
        for key, (quote, fields) in ((k, _TEMPLATE_KEYS[k]) for k in CLUSTER_KEY_ORDER)
        if key not in missing
    ]
    return _TEMPLATE_HEAD + "".join(lines) + _TEMPLATE_TAIL


#: The template of a broker that offers every documented key (the default dialect).
ROUTE_TEMPLATE = route_template()


class RouteRejected(Exception):
    """The route parsed but this broker refuses it; line/column point at the culprit."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(message)


@dataclass(frozen=True)
class ClusterSpec:
    """A validated MQTT_CLUSTER route. `password` is a Secret or the name of a -setSecret."""

    name: str
    address: str
    port: int
    client_id: str
    username: str | None
    password: Secret | SecretRef | None
    validity_sec: int
    use_tls: bool


def _int(value: Value, key: str, lo: int, hi: int) -> int:
    if isinstance(value, Int):
        number = value.value
    elif isinstance(value, Str) and value.value.isdigit():
        number = int(value.value)
    else:
        raise ValueError(f"{key} must be an integer")
    if not lo <= number <= hi:
        raise ValueError(f"{key} must be between {lo} and {hi}")
    return number


def _str(value: Value, key: str) -> str:
    if not isinstance(value, Str):
        raise ValueError(f"{key} must be a double-quoted string")
    if not value.value:
        raise ValueError(f"{key} must not be empty")
    return value.value


def _bool(value: Value, key: str) -> bool:
    if isinstance(value, Bool):
        return value.value
    if isinstance(value, Str) and value.value.lower() in ("true", "false"):
        return value.value.lower() == "true"
    raise ValueError(f"{key} must be true or false")


def spec_from_route(route: Route, allowed: frozenset[str] = ALLOWED_KEYS) -> ClusterSpec:
    """Validate a parsed route against what the lab broker supports; RouteRejected if not.

    `allowed`: the CLUSTER_CONFIG keys this broker offers (its dialect may lack some); any
    other key is rejected as unknown, at its line and column.
    """
    if route.type != ROUTE_TYPE:
        raise RouteRejected(
            f"Route type '{route.type}' is not supported by the lab broker (only {ROUTE_TYPE})",
            route.line,
            route.column,
        )
    configs = [b for b in route.blocks if b.kind == CLUSTER_CONFIG_BLOCK]
    for block in route.blocks:
        if block.kind != CLUSTER_CONFIG_BLOCK:
            raise RouteRejected(
                f"Unknown block ADD {block.kind} in route '{route.name}'", block.line, block.column
            )
    if len(configs) != 1:
        raise RouteRejected(
            f"Route '{route.name}' needs exactly one ADD CLUSTER_CONFIG block",
            route.line,
            route.column,
        )
    block = configs[0]
    values: dict[str, Value] = {}
    for setting in block.settings:
        if setting.key not in allowed:
            raise RouteRejected(
                f"Unknown CLUSTER_CONFIG key '{setting.key}'", setting.line, setting.column
            )
        if setting.key in values:
            raise RouteRejected(
                f"Duplicate CLUSTER_CONFIG key '{setting.key}'", setting.line, setting.column
            )
        if isinstance(setting.value, EnvRef):
            raise RouteRejected(
                f"GET ENV is not supported by the lab broker ({setting.key})",
                setting.line,
                setting.column,
            )
        secret_ok = CLUSTER_KEYS_BY_NAME[setting.key].secret_ref
        if isinstance(setting.value, SecretRef) and not secret_ok:
            raise RouteRejected(
                f"GET SECRET is only supported for PASSWORD, not {setting.key}",
                setting.line,
                setting.column,
            )
        values[setting.key] = setting.value
    for key in REQUIRED_CLUSTER_KEYS:
        if key not in values:
            raise RouteRejected(
                f"Missing required CLUSTER_CONFIG key '{key}'", block.line, block.column
            )
    position = {s.key: (s.line, s.column) for s in block.settings}
    try:
        password = values.get("PASSWORD")
        return ClusterSpec(
            name=route.name,
            address=_str(values["BROKER_ADDRESS"], "BROKER_ADDRESS"),
            port=_int(values["BROKER_PORT"], "BROKER_PORT", 1, 65535),
            client_id=_str(values["CLIENT_ID"], "CLIENT_ID"),
            username=_str(values["USERNAME"], "USERNAME") if "USERNAME" in values else None,
            password=(
                password
                if isinstance(password, SecretRef)
                else Secret(_str(password, "PASSWORD"))
                if password is not None
                else None
            ),
            validity_sec=(
                _int(values["MESSAGE_VALIDITY_SEC"], "MESSAGE_VALIDITY_SEC", 0, 86_400 * 7)
                if "MESSAGE_VALIDITY_SEC" in values
                else DEFAULT_VALIDITY_SEC
            ),
            use_tls=_bool(values["USE_TLS"], "USE_TLS") if "USE_TLS" in values else False,
        )
    except ValueError as exc:
        key = str(exc).split(" ", 1)[0]
        line, column = position.get(key, (block.line, block.column))
        raise RouteRejected(str(exc), line, column) from None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


@dataclass
class _Queued:
    at: float  # time.monotonic() when this broker received the message
    msg: Message


class ClusterLink:
    """One route's outbound connection: queue, sender, reconnection with bounded backoff."""

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        node_name: str,
        tls_context: Callable[[], ssl.SSLContext],
        resolve_secret: Callable[[str], Secret | None],
        on_change: Callable[[ClusterLink], None],
        backoff_max: float = 5.0,
        queue_max: int = 10_000,
        queue_max_bytes: int = 64 * 1024 * 1024,
        source_address: str = "",
    ) -> None:
        self.spec = spec
        # Links leave from the node's own address, so a peer (or the lab's proxy, which
        # applies partitions and region delays by source address) knows who is calling.
        self._source_address = source_address
        self.node_name = node_name
        self._tls_context = tls_context
        self._resolve_secret = resolve_secret
        self._on_change = on_change
        self._backoff_max = backoff_max
        self._queue: deque[_Queued] = deque()
        self._queue_bytes = 0
        self._queue_max = queue_max
        self._queue_max_bytes = queue_max_bytes
        self._wake = asyncio.Event()
        #: publishes written and not yet acknowledged (the pump's window)
        self._inflight: deque[tuple[_Queued, asyncio.Task[None]]] = deque()
        #: set by `hand_over`: send nothing more, let what is in flight be acknowledged
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._conn: MqttConnection | None = None
        self.connection = "Disconnected"
        self.created = time.time()
        self.connected_since: float | None = None
        self.last_activity: float | None = None
        #: when the peer last took a message (wall clock), for `lastSuccess`
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.errors_total = 0
        self.errors_consecutive = 0
        self.sent_ok = 0
        self.failed = 0  # expired or dropped on overflow
        self.expired = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"cluster-link-{self.spec.name}")

    async def stop(self) -> None:
        """Stop the link (bounded): cancel the loop, close the connection, drop the queue."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)
        if self._conn is not None:
            await self._conn.close()
        self._queue.clear()
        self._queue_bytes = 0
        self._set_state("Disconnected")

    async def hand_over(self, timeout: float = HAND_OVER_WAIT) -> list[_Queued]:
        """Stop, handing over what the peer has not taken (a route replaced in place: the
        `overwrite` dialect). Nothing more is sent; what is in flight gets `timeout` to be
        acknowledged (so it is not sent twice); then the link stops and returns the
        messages not acknowledged and those queued, in order, with their arrival times."""
        self._draining = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._inflight and loop.time() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)
        if self._conn is not None:
            await self._conn.close()
        left = list(self._queue)
        self._queue.clear()
        self._queue_bytes = 0
        self._set_state("Disconnected")
        return left

    def take_over(self, items: list[_Queued]) -> None:
        """Put what a replaced link handed over in front of this link's queue (before it
        starts): older messages first, as they came."""
        for item in reversed(items):
            self._queue.appendleft(item)
            self._queue_bytes += len(item.msg.payload) + len(item.msg.topic)
        if items:
            self._wake.set()

    def enqueue(self, msg: Message) -> None:
        """Queue a locally published message for the peer (never blocks)."""
        if self.spec.validity_sec == 0 and self.connection != "Connected":
            self.failed += 1  # validity 0: only what can be sent right now is valid
            return
        size = len(msg.payload) + len(msg.topic)
        while self._queue and (
            len(self._queue) >= self._queue_max or self._queue_bytes + size > self._queue_max_bytes
        ):
            dropped = self._queue.popleft()
            self._queue_bytes -= len(dropped.msg.payload) + len(dropped.msg.topic)
            self.failed += 1
        self._queue.append(_Queued(time.monotonic(), msg))
        self._queue_bytes += size
        self._wake.set()

    @property
    def queued(self) -> int:
        """Messages waiting for the peer."""
        return len(self._queue)

    @property
    def health(self) -> str:
        if self.connection == "Connected":
            return "Green" if self.errors_consecutive == 0 else "Yellow"
        if self.errors_consecutive >= 3 or self.connection == "Disconnected":
            return "Red"
        return "Yellow"

    def status(self) -> dict[str, Any]:
        """The `$SYS/Coreflux/Routes/<Name>/status` document: the vendor's fields (`uptime`
        as "HH:MM:SS", `lastSuccess`), plus the lab's `queued` and `expired`."""
        now = time.time()
        minutes = max((now - self.created) / 60.0, 1 / 60)
        return {
            "name": self.spec.name,
            "type": ROUTE_TYPE,
            "connection": self.connection,
            "health": self.health,
            "errors": {
                "total": self.errors_total,
                "consecutive": self.errors_consecutive,
                "rate": round(self.errors_total / minutes, 3),
            },
            "messages": {
                "total": self.sent_ok + self.failed,
                "succeeded": self.sent_ok,
                "failed": self.failed,
            },
            "queued": len(self._queue),
            "expired": self.expired,
            "lastActivity": _iso(self.last_activity),
            "lastSuccess": _iso(self.last_success),
            "lastError": self.last_error,
            "uptime": format_duration(now - self.connected_since if self.connected_since else 0),
            "connectedSince": _iso(self.connected_since),
            "timestamp": _iso(now),
        }

    def _set_state(self, state: str) -> None:
        if state != self.connection:
            self.connection = state
            self._on_change(self)

    def _error(self, reason: str) -> None:
        self.errors_total += 1
        self.errors_consecutive += 1
        self.last_error = reason
        log.info("route %s: %s", self.spec.name, reason)
        self._on_change(self)

    def _password(self) -> Secret | None:
        pw = self.spec.password
        if isinstance(pw, SecretRef):
            value = self._resolve_secret(pw.name)
            if value is None:
                raise MqttError(f"secret '{pw.name}' is not set on this broker")
            return value
        return pw

    def _source_for_peer(self) -> str:
        """Our address as the link's source, unless that cannot reach the peer (a loopback
        source towards a non-loopback or named peer): then the kernel chooses."""
        source = self._source_address
        try:
            if not source or not ipaddress.ip_address(source).is_loopback:
                return source
            return source if ipaddress.ip_address(self.spec.address).is_loopback else ""
        except ValueError:
            return ""

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._set_state("Connecting" if attempt == 0 and self.sent_ok == 0 else "Reconnecting")
            try:
                conn = MqttConnection(
                    self.spec.address,
                    self.spec.port,
                    client_id=self.spec.client_id,
                    username=self.spec.username,
                    password=self._password(),
                    tls=self._tls_context() if self.spec.use_tls else None,
                    keepalive=10,
                    will=Message(
                        CLUSTER_LINK_TOPIC,
                        json.dumps({"node": self.node_name, "route": self.spec.name}).encode(),
                    ),
                    connect_timeout=CONNECT_TIMEOUT,
                    max_inflight=SEND_WINDOW,
                    source_address=self._source_for_peer(),
                )
                self._conn = conn
                await conn.connect()
            except (MqttError, ssl.SSLError, OSError) as exc:
                attempt += 1
                self._error(str(exc))
                delay = min(self._backoff_max, 0.1 * 2 ** min(attempt, 10))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                continue
            attempt = 0
            self.errors_consecutive = 0
            self.connected_since = time.time()
            self._set_state("Connected")
            try:
                await self._pump(conn)
            except MqttError as exc:
                self._error(str(exc))
            finally:
                self.connected_since = None
                await conn.close()
            self._set_state("Reconnecting")
            await asyncio.sleep(0.1)

    async def _pump(self, conn: MqttConnection) -> None:
        """Send queued messages in order, with a window of publishes awaiting their ack.

        Each publish is a task; tasks start in creation order and hand their message to the
        MQTT client before yielding, so messages go out in queue order. QoS 0 publishes count
        as done once written, QoS 1/2 once acknowledged (PUBACK/PUBCOMP).
        """
        inflight: deque[tuple[_Queued, asyncio.Task[None]]] = deque()
        self._inflight = inflight
        try:
            while not conn.closed.is_set():
                now = time.monotonic()
                sent_any = False
                while self._queue and len(inflight) < SEND_WINDOW and not self._draining:
                    item = self._queue.popleft()
                    self._queue_bytes -= len(item.msg.payload) + len(item.msg.topic)
                    if self.spec.validity_sec and now - item.at > self.spec.validity_sec:
                        self.expired += 1
                        self.failed += 1
                        continue
                    inflight.append((item, asyncio.create_task(conn.send(item.msg, ACK_TIMEOUT))))
                    sent_any = True
                if sent_any:
                    self.last_activity = time.time()
                while inflight and inflight[0][1].done():
                    _, task = inflight.popleft()
                    task.result()  # raises MqttError if the connection was lost or no ack came
                    self.sent_ok += 1
                    self.last_success = time.time()
                if self._queue and len(inflight) < SEND_WINDOW and not self._draining:
                    continue
                self._wake.clear()
                waiters: list[asyncio.Future[Any]] = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(conn.closed.wait()),
                ]
                if inflight:
                    waiters.append(inflight[0][1])
                await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters[:2]:
                    waiter.cancel()
            raise MqttError(conn.close_reason or "connection closed")
        finally:
            # whatever the peer did not acknowledge goes back to the front, in order
            for item, task in reversed(inflight):
                if task.done() and not task.cancelled() and task.exception() is None:
                    self.sent_ok += 1
                else:
                    task.cancel()
                    self._queue.appendleft(item)
                    self._queue_bytes += len(item.msg.payload) + len(item.msg.topic)


class RouteManager:
    """The broker's routes: add/remove links, fan out local messages to every link."""

    def __init__(self, make_link: Callable[[ClusterSpec], ClusterLink]) -> None:
        self._make_link = make_link
        self.links: dict[str, ClusterLink] = {}

    def add(self, spec: ClusterSpec) -> ClusterLink:
        link = self._make_link(spec)
        self.links[spec.name] = link
        link.start()
        return link

    async def replace(self, spec: ClusterSpec) -> ClusterLink:
        """The route named `spec.name` replaced in place: the new link takes messages from
        now on, and what the old one had not delivered goes out first over the new one
        (lab's choice for the `overwrite` dialect: docs/lab-broker.md)."""
        old = self.links.get(spec.name)
        link = self._make_link(spec)
        self.links[spec.name] = link  # forward() queues into the new link from here on
        if old is not None:
            link.take_over(await old.hand_over())
        link.start()
        return link

    async def remove(self, name: str) -> bool:
        link = self.links.pop(name, None)
        if link is None:
            return False
        await link.stop()
        return True

    def forward(self, msg: Message) -> None:
        for link in self.links.values():
            link.enqueue(msg)

    async def stop_all(self) -> None:
        for name in list(self.links):
            await self.remove(name)
