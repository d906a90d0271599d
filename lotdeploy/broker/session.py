"""`BrokerClient`: an admin session on a broker's command channel (apply, verify, tests).

It publishes a command to `$SYS/Coreflux/Command` and matches the reply on
`$SYS/Coreflux/Command/Output` by requestId (or, for 1.x brokers that do not echo ids, takes the
first reply after the publish); every wait is bounded. The wire format (topics, verbs, the
envelope) is `lotdeploy.protocol`; the MQTT connection is `lotdeploy.broker.mqtt`.
See docs/coreflux-interface.md §2/§3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from lotdeploy.broker.mqtt import BoundedQueue, ConnectRefused, Message, MqttConnection, MqttError
from lotdeploy.errors import BrokerError
from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.lot import strip_comments
from lotdeploy.protocol import (
    COMMAND_TOPIC,
    FORBIDDEN_VERBS,
    OUTPUT_TOPIC,
    REPLY_TIMEOUT_SEC,
    UNKNOWN_COMMAND_NAME,
    USER_RIGHT_FLAGS,
    VERSION_TOPIC,
    Reply,
    Verb,
    command_payload,
    parse_reply,
    route_code_topic,
    route_status_topic,
    topic_matches,
    verb_key,
)
from lotdeploy.secret import Secret, scrub
from lotdeploy.values import check_command_token

log = logging.getLogger(__name__)
T = TypeVar("T")


_ROUTE_NAME = re.compile(r"[A-Za-z]\w*")
#: a 1.x text listing of nothing: `0 secret(s)`, `0 route(s)`
_NONE_LISTED = re.compile(r"0 [A-Za-z]+(\(s\)|s)?")
#: The forbidden verbs as a broker that takes any case and kebab aliases reads them.
_FORBIDDEN_KEYS = frozenset(verb_key(v) for v in FORBIDDEN_VERBS)
#: Set (to 1) for a broker that drops what a client sends before its CONNACK: the admin
#: login then waits for the CONNACK before its SUBSCRIBE and probe (one round trip more).
LOGIN_IN_TURN_ENV = "LOTDEPLOY_MQTT_LOGIN_IN_TURN"
_IN_TURN_HINT = (
    f" (sent right behind the CONNECT, as MQTT 3.1.1 allows; for a broker that drops what "
    f"comes before its CONNACK, or closes the connection for it, set {LOGIN_IN_TURN_ENV}=1)"
)
#: Topic filters per SUBSCRIBE (and UNSUBSCRIBE) packet: many routes' topics at once.
_TOPICS_PER_SUBSCRIBE = 100


def _packets(topics: list[str]) -> list[list[str]]:
    """`topics` split into SUBSCRIBE (or UNSUBSCRIBE) packets of `_TOPICS_PER_SUBSCRIBE`."""
    return [
        topics[start : start + _TOPICS_PER_SUBSCRIBE]
        for start in range(0, len(topics), _TOPICS_PER_SUBSCRIBE)
    ]


def _is_reply_to(reply: Reply, verb: str, rid: str | None) -> bool:
    """Whether a reply on the shared Output topic answers our `-verb`: by its requestId when
    it carries one; otherwise (a broker that echoes none, a 1.x text line, an envelope
    without the field) by the command it names, as the vendor's own client matches, so
    another admin's `-listRoutes` answer is not taken for our `-addRoute`'s. A reply that
    names no command (1.x text: `parse_reply` fills in ours) is taken as ours."""
    if reply.request_id is not None:
        return rid is None or reply.request_id == rid
    named = verb_key(reply.command)
    return named in (verb_key(verb), verb_key(UNKNOWN_COMMAND_NAME), "")


class CommandFailed(BrokerError):
    """The broker answered, and the answer was a failure; `reply` holds the details."""

    def __init__(self, node: str, verb: str, reply: Reply) -> None:
        self.reply = reply
        super().__init__(node, f"-{verb} failed: {reply.describe() or 'no message'}")


RequestIds = bool | Literal["auto", "probing"]


@dataclass
class RoutesSeen:
    """What `await_connected` saw: each route's last connection state (None: not reported,
    or not on the broker), the routes on the broker at the last listing, and whether the
    broker's listing carries no connection state at all (1.x text replies)."""

    states: dict[str, str | None]
    listed: set[str]
    stateless: bool

    def all_connected(self) -> bool:
        return all(state == "Connected" for state in self.states.values())

    def waiting(self) -> list[str]:
        return [name for name, state in self.states.items() if state != "Connected"]


def _connection_of(msg: Message) -> str | None:
    """The connection state a route status document gives, or None when it gives none."""
    try:
        doc = parse_json(msg.payload)
    except UnreadableFile:
        return None
    state = doc.get("connection") if isinstance(doc, dict) else None
    return state if isinstance(state, str) else None


def _user_exists(result: object) -> bool:
    """A refusal of `-addUser` because the user is there already."""
    return isinstance(result, CommandFailed) and "exist" in result.reply.describe().lower()


def routes_of(reply: Reply) -> list[dict[str, Any]]:
    """The routes a `-listRoutes` reply lists (a 2.x data list, or a 1.x text message)."""
    data = reply.data
    if isinstance(data, dict) and isinstance(data.get("routes"), list):
        data = data["routes"]
    if data is None and reply.message:  # no connection state in a 1.x text listing
        data = [{"name": name} for name in text_names(reply.message) or []]
    if not isinstance(data, list):
        return []
    return [item for item in data if isinstance(item, dict)]


def text_names(message: str) -> list[str] | None:
    """The names a 1.x plain-text listing gives after its colon (`2 route(s): a, b`,
    protocol.build_text_reply), [] for an explicit count of none (`0 secret(s)`); None
    when the message has no such list."""
    if _NONE_LISTED.fullmatch(message.strip()):
        return []
    _, colon, names = message.rpartition(": ")
    found = [n for n in (n.strip() for n in names.split(",")) if _ROUTE_NAME.fullmatch(n)]
    return found if colon and found else None


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
        reply_timeout: float = REPLY_TIMEOUT_SEC,
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
        # bounded in count and bytes: a broker flooding replies costs at most MAX_QUEUED_BYTES
        self._replies: BoundedQueue = BoundedQueue(maxsize=1000)
        self._watchers: dict[str, list[BoundedQueue]] = {}
        #: wildcard filters being read (`read_topics`), each with its queue
        self._filter_watchers: list[tuple[str, BoundedQueue]] = []
        #: requestId -> the reply's future, for commands in flight together (`command`)
        self._pending: dict[str, asyncio.Future[Message]] = {}
        #: the broker echoed our requestId (the connect probe saw it): replies can be matched
        #: by id alone, so commands may be in flight together
        self.echoes_ids = False
        #: The reply to the `-listRoutes` this session sent last (the request-id probe sent on
        #: connect is one): the routes the broker ran then, with no further round trip.
        self.last_listing: Reply | None = None

    def __repr__(self) -> str:
        return f"BrokerClient({self.node_name!r}, {self.host}:{self.port}, user={self.username!r})"

    async def __aenter__(self) -> BrokerClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _error(self, cause: str) -> BrokerError:
        lost = self._conn is not None and not self._conn.connected
        return BrokerError(self.node_name, scrub(cause), lost=lost)

    @staticmethod
    def _why(conn: MqttConnection | None) -> str:
        """`: <why the connection ended>` (a packet too large, a lost link), when it did."""
        return f": {conn.close_reason}" if conn is not None and conn.close_reason else ""

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
        started: list[asyncio.Future[Any]] = []
        in_turn = os.environ.get(LOGIN_IN_TURN_ENV, "") not in ("", "0")
        # sent before the CONNACK, the SUBACK's wait holds the CONNACK's too: the two
        # budgets of a login in turn
        suback_timeout = self._connect_timeout * (1 if in_turn else 2)

        async def subscribe_and_probe() -> None:
            # the SUBSCRIBE and the request-id probe leave together, right behind the
            # CONNECT (MqttConnection.connect): one round trip for the three. A broker
            # handles one client's packets in order, so the probe's reply finds the
            # subscription in place, and nothing of it is read if the login is refused.
            self._conn = conn
            started.append(
                asyncio.ensure_future(conn.subscribe([(OUTPUT_TOPIC, 1)], suback_timeout))
            )
            await asyncio.sleep(0)  # the SUBSCRIBE is handed to paho first
            if self.request_ids == "auto":
                started.append(asyncio.ensure_future(self._detect_request_ids()))

        try:
            await conn.connect(early=None if in_turn else subscribe_and_probe)
            if in_turn:
                await subscribe_and_probe()
            try:
                codes = await started[0]
            except MqttError as exc:  # the CONNECT was accepted: what followed it was not
                raise MqttError(f"{exc}{'' if in_turn else _IN_TURN_HINT}") from None
            if codes and codes[0] == 0x80:
                raise MqttError(f"subscription to {OUTPUT_TOPIC} refused")
            for probe in started[1:]:
                await probe
        except BaseException as exc:  # a refusal, a lost connection, a cancelled connect
            self._conn = None
            for task in started:
                task.cancel()
            await asyncio.gather(*started, return_exceptions=True)
            await conn.close()
            if isinstance(exc, MqttError):
                raise self._error(str(exc)) from None
            raise

    @property
    def connected(self) -> bool:
        """The session is open and its connection alive (a phase that comes much later may
        find it dropped: then it opens a new one)."""
        return self._conn is not None and self._conn.connected

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _on_message(self, msg: Message) -> None:
        if msg.topic == OUTPUT_TOPIC:
            if self._pending:  # a reply carrying one of our requestIds goes to its waiter
                rid = parse_reply(msg.payload, "").request_id
                waiter = self._pending.pop(rid, None) if rid is not None else None
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(msg)
                    return
            if self._replies.fits(msg):
                self._replies.put_nowait(msg)
            return
        for queue in self._watchers.get(msg.topic, []):
            if queue.fits(msg):
                queue.put_nowait(msg)
        for topic_filter, queue in self._filter_watchers:
            if topic_matches(topic_filter, msg.topic) and queue.fits(msg):
                queue.put_nowait(msg)

    async def _detect_request_ids(self) -> None:
        await self.probe_request_ids()
        log.debug("broker %s echoes requestIds: %s", self.node_name, self.request_ids)

    async def probe_request_ids(self) -> Reply:
        """Send `-listRoutes -requestId <id>` and return the reply as received.

        What `request_ids="auto"` runs on connect; `lotdeploy doctor` runs it to report the
        reply's form (`raw`: JSON envelope or 1.x text) too. Afterwards the session sends ids
        only if this one came back.
        """
        self.request_ids = "probing"  # one at a time, matched by id or by command name
        try:
            reply = await self.command(Verb.LIST_ROUTES)
        finally:
            self.request_ids = False
        self.request_ids = reply.request_id is not None
        self.echoes_ids = self.request_ids
        self.last_listing = reply
        return reply

    def uses_credentials(self, username: str, password: Secret) -> bool:
        """Whether this session logs in as `username` with `password` (constant time): doctor
        skips probing for the factory admin login when the site itself uses it."""
        return username == self.username and password == self._password

    async def command(self, verb: str, argument: str = "") -> Reply:
        """Send `-<verb> <argument>` and return the matching reply (bounded by reply_timeout).

        Raises BrokerError (naming the node) if not connected, on a lost connection or when no
        reply arrives in time. A failure *answer* is returned as a Reply with success False.
        """
        # `--kebab-case` is kept as written (doctor asks whether a broker takes it); a broker
        # that reads verbs in any case would take `-removeallroutes` too: refused by key
        verb = verb if verb.startswith("--") else verb.lstrip("-")
        if verb_key(verb) in _FORBIDDEN_KEYS:
            raise self._error(
                f"-{verb.lstrip('-')} is never sent: it removes routes lotdeploy does not own"
            )
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error(f"not connected{self._why(conn)} (cannot send -{verb})")
        if self.request_ids is True and self.echoes_ids:  # by id: many in flight at once
            return await self._command_by_id(conn, verb, argument)
        async with self._lock:
            while not self._replies.empty():  # stale replies of other admins or timed-out calls
                self._replies.get_nowait()
            rid = uuid.uuid4().hex if self.request_ids in (True, "probing") else None
            payload = command_payload(verb, argument, rid)
            try:
                await conn.publish(Message(COMMAND_TOPIC, payload, 1), self.reply_timeout)
            except MqttError as exc:
                raise self._error(f"-{verb}: {exc}") from None
            return await self._await_reply(conn, verb, rid)

    async def _command_by_id(self, conn: MqttConnection, verb: str, argument: str) -> Reply:
        """One command of a broker that echoes requestIds: its reply comes to a future of its
        own, so commands sent together (`together`) wait one round trip between them, not
        one each. Publishes leave in the order the calls start (MqttConnection.publish)."""
        rid = uuid.uuid4().hex
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = waiter
        try:
            try:
                await conn.publish(
                    Message(COMMAND_TOPIC, command_payload(verb, argument, rid), 1),
                    self.reply_timeout,
                )
            except MqttError as exc:
                raise self._error(f"-{verb}: {exc}") from None
            lost: asyncio.Future[Any] = asyncio.ensure_future(conn.closed.wait())
            try:
                done, _ = await asyncio.wait(
                    {waiter, lost}, timeout=self.reply_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                lost.cancel()
            if waiter not in done:
                if lost in done:
                    raise self._error(f"connection lost while waiting for the reply to -{verb}")
                raise self._error(f"no reply to -{verb} within {self.reply_timeout:g}s")
            return parse_reply(waiter.result().payload, verb)
        finally:
            self._pending.pop(rid, None)

    async def together(self, calls: list[Awaitable[T]]) -> list[T | BrokerError]:
        """Run several commands (typed helpers) at once: with a broker that echoes
        requestIds they are all sent, then all replies awaited (one round trip in all);
        without, one after another. Each result is its value or the BrokerError it raised.
        Only commands that do not depend on each other belong in one call: the broker may
        answer them in any order."""

        async def one(call: Awaitable[T]) -> T | BrokerError:
            try:
                return await call
            except BrokerError as exc:
                return exc

        if self.request_ids is True and self.echoes_ids:
            return list(await asyncio.gather(*(one(c) for c in calls)))
        return [await one(c) for c in calls]

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
            if _is_reply_to(reply, verb, rid):
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
        reply = await self.command(Verb.ADD_ROUTE, text)
        if offset and reply.errors:
            shifted = tuple(
                replace(e, line=e.line + offset) if e.line is not None else e for e in reply.errors
            )
            reply = replace(reply, errors=shifted)
        if not reply.success:
            raise CommandFailed(self.node_name, Verb.ADD_ROUTE, reply)
        return reply

    async def remove_route(self, name: str) -> Reply:
        """Remove a route; "not found" counts as done (what the vendor's editor does)."""
        reply = await self.command(Verb.REMOVE_ROUTE, name)
        if not reply.success and "not found" not in reply.describe().lower():
            raise CommandFailed(self.node_name, Verb.REMOVE_ROUTE, reply)
        return reply

    async def list_routes(self) -> list[dict[str, Any]]:
        reply = await self._checked(Verb.LIST_ROUTES)
        self.last_listing = reply
        return routes_of(reply)

    def listed_at_connect(self) -> list[dict[str, Any]] | None:
        """The routes of the last `-listRoutes` reply (the one `request_ids="auto"` sends on
        connect, or a later `list_routes`): no extra round trip. None when there was none or
        it was a failure."""
        reply = self.last_listing
        return routes_of(reply) if reply is not None and reply.success else None

    async def route_code(self, route_type: str) -> str:
        """The broker's LOT template for a route type (tells which keys it accepts)."""
        reply = await self._checked(Verb.ROUTE_CODE, route_type)
        data = reply.data
        if isinstance(data, dict) and isinstance(data.get("code"), str):
            return str(data["code"])
        if isinstance(data, str):
            return data
        return reply.message

    async def check_route_connection(self, name: str) -> dict[str, Any]:
        reply = await self._checked(Verb.CHECK_ROUTE_CONNECTION, name)
        if isinstance(reply.data, dict):
            return reply.data
        return {"name": name, "message": reply.message}

    async def add_user(self, user: str, password: Secret) -> Reply:
        return await self._checked(
            Verb.ADD_USER, f"{self._word(user)} {self._word(password.reveal())}"
        )

    async def remove_user(self, user: str) -> Reply:
        return await self._checked(Verb.REMOVE_USER, self._word(user))

    async def change_user_password(self, user: str, password: Secret) -> Reply:
        return await self._checked(
            Verb.CHANGE_USER_PASSWORD, f"{self._word(user)} {self._word(password.reveal())}"
        )

    async def set_secret(self, name: str, value: Secret) -> Reply:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise self._error(f"invalid secret name {name!r}")
        return await self._checked(Verb.SET_SECRET, f"{name}={self._word(value.reveal())}")

    async def list_secrets(self) -> list[str] | None:
        """The names in the broker's secret store (never values); None when the reply
        holds no list that can be read, or the broker answered with a failure: not "none"
        (a refresh then says nothing of the store rather than everything missing)."""
        try:
            reply = await self._checked(Verb.LIST_SECRETS)
        except CommandFailed:
            return None
        data = reply.data
        if isinstance(data, dict):
            data = data.get("secrets", list(data))
        if isinstance(data, list):
            return [str(x) for x in data]
        return text_names(reply.message) if data is None else None

    async def check_logins(self, users: dict[str, Secret], timeout: float = 5.0) -> dict[str, bool]:
        """Whether the broker accepts each user's login, tried at once on this session's
        address (MQTT CONNECT, then DISCONNECT): how a refresh sees a cluster user removed,
        or given another password, by hand, where no command lists users. A refusal (return
        code 4 or 5) is False; anything else that stops a login is this node's error."""

        async def one(user: str, password: Secret) -> tuple[str, bool]:
            conn = MqttConnection(
                self.host,
                self.port,
                client_id=f"lotdeploy-login-{uuid.uuid4().hex[:12]}",
                username=self._word(user),
                password=password,
                tls=self._tls,
                server_hostname=self._server_hostname,
                connect_timeout=timeout,
            )
            try:
                await conn.connect()
            except ConnectRefused as refused:
                if refused.code in (4, 5):
                    return user, False
                raise self._error(f"checking the login of user {user}: {refused}") from None
            except MqttError as exc:
                raise self._error(f"checking the login of user {user}: {exc}") from None
            finally:
                await conn.close()
            return user, True

        found = await asyncio.gather(*(one(u, p) for u, p in sorted(users.items())))
        return dict(found)

    # -- several at once (`together`: one round trip with a broker that echoes ids) --------

    async def ensure_users(self, users: dict[str, Secret]) -> list[str]:
        """Create each user, or set its password where it exists already; the names done.

        With a broker that echoes requestIds, `-addUser` and `-changeUserPassword` of every
        user go at once (one round trip whether the users exist or not): whichever applies
        succeeds, and the other's refusal (the user exists; no such user) is the expected
        one. Without, the adds go first and the changes only where a user exists."""
        names = sorted(users)
        if self.request_ids is True and self.echoes_ids:
            both = await self.together(
                [
                    call
                    for n in names
                    for call in (self.add_user(n, users[n]), self.change_user_password(n, users[n]))
                ]
            )
            for add, change in zip(both[::2], both[1::2], strict=True):
                if isinstance(add, BrokerError) and isinstance(change, BrokerError):
                    raise change if _user_exists(add) else add
            return names
        added = await self.together([self.add_user(n, users[n]) for n in names])
        again = []
        for name, result in zip(names, added, strict=True):
            if _user_exists(result):
                again.append(name)
            elif isinstance(result, BrokerError):
                raise result
        changed = await self.together([self.change_user_password(n, users[n]) for n in again])
        for result in changed:
            if isinstance(result, BrokerError):
                raise result
        return names

    async def user_rights(self, users: list[str]) -> dict[str, list[str]]:
        """The named right flags each of `users` holds true (`-listUserGroups <user>`, all
        sent at once). A user the broker does not know, or whose reply carries no
        `settings`, is left out: nothing is guessed (its login check says it is gone)."""
        names = sorted(users)
        replies = await self.together(
            [self._checked(Verb.LIST_USER_GROUPS, self._word(u)) for u in names]
        )
        held: dict[str, list[str]] = {}
        for user, reply in zip(names, replies, strict=True):
            if isinstance(reply, CommandFailed):
                continue
            if isinstance(reply, BrokerError):
                raise reply
            data = reply.data if isinstance(reply.data, dict) else {}
            settings = data.get("settings")
            if isinstance(settings, dict):
                held[user] = sorted(flag for flag in USER_RIGHT_FLAGS if settings.get(flag) is True)
        return held

    async def revoke_rights(self, users: list[str]) -> list[str]:
        """Every named right flag of `users` set to false (`-changeUserSettings`, all sent
        at once): the least a cluster or probe user needs, whatever a build gives a new
        user by default or a hand gave it since. Only for brokers with the named rights
        model (doctor's `rights_model`); the names done."""
        names = sorted(users)
        calls: list[Awaitable[Reply]] = [
            self._checked(Verb.CHANGE_USER_SETTINGS, f"{self._word(user)} {flag} false")
            for user in names
            for flag in USER_RIGHT_FLAGS
        ]
        for result in await self.together(calls):
            if isinstance(result, BrokerError):
                raise result
        return names

    async def set_secrets(self, secrets: dict[str, Secret]) -> list[str]:
        """Set each broker secret (`-setSecret NAME=value`, the value never shown); the
        names set."""
        names = sorted(secrets)
        for result in await self.together([self.set_secret(n, secrets[n]) for n in names]):
            if isinstance(result, BrokerError):
                raise result
        return names

    async def remove_users(self, names: list[str]) -> list[str]:
        """Remove each user; "not found" counts as done."""
        results = await self.together([self.remove_user(n) for n in names])
        for result in results:
            if isinstance(result, CommandFailed) and "not found" in result.reply.describe().lower():
                continue
            if isinstance(result, BrokerError):
                raise result
        return list(names)

    async def remove_routes(self, names: list[str]) -> None:
        """Remove each route ("not found" counts as done: remove_route)."""
        for result in await self.together([self.remove_route(n) for n in names]):
            if isinstance(result, BrokerError):
                raise result

    async def add_routes(self, texts: dict[str, str]) -> dict[str, Reply | BrokerError]:
        """Add each route; name -> its reply, or the error the broker answered."""
        names = list(texts)
        results = await self.together([self.add_route(texts[n]) for n in names])
        return dict(zip(names, results, strict=True))

    async def read_route_code(self, name: str, timeout: float = 10.0) -> str | None:
        """The LOT a broker republishes on `$SYS/Coreflux/Routes/<name>` (None if none in time)."""
        msg = await self._watch_once(route_code_topic(name), timeout)
        return msg.payload.decode("utf-8", errors="replace") if msg else None

    async def read_route_codes(
        self, names: list[str], timeout: float = 10.0
    ) -> dict[str, str | None]:
        """`read_route_code` for many routes at once: one SUBSCRIBE for all their topics, the
        retained codes gathered as they come, one UNSUBSCRIBE; the whole wait bounded by
        `timeout` (not `timeout` per route). None for a route whose code did not come."""
        found: dict[str, str | None] = dict.fromkeys(names)
        for start in range(0, len(names), _TOPICS_PER_SUBSCRIBE):
            chunk = names[start : start + _TOPICS_PER_SUBSCRIBE]
            topics = {route_code_topic(name): name for name in chunk}
            got = await self._watch_many(list(topics), timeout)
            for topic, msg in got.items():
                found[topics[topic]] = msg.payload.decode("utf-8", errors="replace")
        return found

    async def read_version(self, timeout: float = 5.0) -> str | None:
        """The broker's version string, retained on `$SYS/Coreflux/Version` (None if none in
        time: older builds may not publish it)."""
        msg = await self._watch_once(VERSION_TOPIC, timeout)
        if msg is None or not msg.payload:
            return None
        return scrub(msg.payload.decode("utf-8", errors="replace").strip()[:200]) or None

    async def route_status(self, name: str, timeout: float = 35.0) -> dict[str, Any] | None:
        """The next `$SYS/Coreflux/Routes/<name>/status` JSON (None if none in time)."""
        msg = await self._watch_once(route_status_topic(name), timeout)
        if msg is None:
            return None
        try:
            doc = parse_json(msg.payload)
        except UnreadableFile:
            return None
        return doc if isinstance(doc, dict) else None

    async def await_connected(
        self, names: list[str], timeout: float, pauses: tuple[float, ...], pause: float
    ) -> RoutesSeen:
        """Until every route in `names` is Connected, or `timeout`: `-listRoutes` (after each
        of `pauses`, then every `pause`) and, between listings, the routes' status topics,
        which the broker publishes on every change (docs/coreflux-interface.md §3). A link
        that comes up is seen as it happens, not at the next listing; a broker that
        publishes no status is still seen by the listings.

        Either source is the broker's word that the route was Connected at a moment after
        the wait began (status topics are not retained, and the caller added the routes
        before), which is what the wait is for; a listing resets what the statuses said,
        and a status counts only for a route the last listing showed on the broker."""
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error(f"not connected{self._why(conn)}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        topics = {route_status_topic(name): name for name in names}
        arrived = BoundedQueue(maxsize=len(names) * 4 + 16)
        for topic in topics:
            self._watchers.setdefault(topic, []).append(arrived)
        # the SUBSCRIBE leaves with the first listing (one round trip, not two); a refused
        # or unanswered one leaves the listings
        subscribed = asyncio.ensure_future(self._subscribe_quietly(conn, list(topics)))
        await asyncio.sleep(0)
        seen = RoutesSeen(dict.fromkeys(names), set(), False)
        waits = iter(pauses)
        try:
            for _ in range(100_000):  # bounded in count as well as in time
                listed = {str(r.get("name")): r for r in await self.list_routes()}
                seen.listed = set(listed) & set(names)
                for name in names:
                    seen.states[name] = listed.get(name, {}).get("connection")
                if seen.listed and all(seen.states[n] is None for n in seen.listed):
                    seen.stateless = True
                    break
                next_listing = min(loop.time() + next(waits, pause), deadline)
                while not seen.all_connected() and loop.time() < next_listing:
                    try:
                        msg = await asyncio.wait_for(arrived.get(), next_listing - loop.time())
                    except TimeoutError:
                        break
                    route, state = topics[msg.topic], _connection_of(msg)
                    if state is not None and route in seen.listed:
                        seen.states[route] = state
                if seen.all_connected() or loop.time() >= deadline:
                    break
            return seen
        finally:
            subscribed.cancel()
            await asyncio.wait([subscribed], timeout=1.0)  # over within this call, as all is
            for topic in topics:
                self._watchers[topic].remove(arrived)
                if not self._watchers[topic]:
                    del self._watchers[topic]
            await self._unsubscribe(conn, list(topics), 5.0)

    async def _subscribe_quietly(self, conn: MqttConnection, topics: list[str]) -> None:
        with contextlib.suppress(BrokerError):
            await self._subscribe(conn, topics, 5.0)

    @staticmethod
    async def _unsubscribe(conn: MqttConnection, topics: list[str], timeout: float) -> None:
        """UNSUBSCRIBE, the UNSUBACK awaited (bounded). Not left to a task of its own: a
        SyncBrokerClient's loop runs only during a call, so such a task would go out at the
        next call, in the middle of other commands (rollouts lost admin sessions that way)."""
        for packet in _packets(topics):
            with contextlib.suppress(MqttError):
                if conn.connected:
                    await conn.unsubscribe(packet, timeout)

    async def _subscribe(self, conn: MqttConnection, topics: list[str], timeout: float) -> None:
        """SUBSCRIBE (QoS 0: retained messages all at once), in packets."""
        try:
            for packet in _packets(topics):  # a refused one brings nothing
                await conn.subscribe([(t, 0) for t in packet], timeout)
        except MqttError as exc:
            raise self._error(str(exc)) from None

    async def read_topics(
        self, filters: list[str], timeout: float = 2.0, quiet: float = 0.3, limit: int = 200
    ) -> dict[str, bytes]:
        """What the broker publishes on `filters` right after we subscribe (retained state,
        or a snapshot it sends a new subscriber): topic -> last payload. Reading stops after
        `quiet` seconds without a message, at `limit` messages, or at `timeout` in all;
        a refused filter (SUBACK 0x80) gives nothing, never an error."""
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error("not connected")
        arrived = BoundedQueue(maxsize=limit)
        watchers = [(f, arrived) for f in filters]
        self._filter_watchers += watchers
        found: dict[str, bytes] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self._subscribe(conn, filters, timeout)
            try:
                for _ in range(limit):  # bounded in count as well as in time
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        msg = await asyncio.wait_for(arrived.get(), min(quiet, remaining))
                    except TimeoutError:
                        break
                    found[msg.topic] = msg.payload
            finally:
                await self._unsubscribe(conn, filters, timeout)
        finally:
            for watcher in watchers:
                self._filter_watchers.remove(watcher)
        return found

    def _word(self, value: str) -> str:
        """An argument travels as one word of a command line: the same rule the spec applies
        to user names (lotdeploy.values), so validate refuses first what this would refuse.
        The reason never contains the value."""
        why = check_command_token(value)
        if why:
            raise self._error(f"a user name, password or secret value {why}")
        return value

    async def _watch_many(self, topics: list[str], timeout: float) -> dict[str, Message]:
        """The first message on each topic (one SUBSCRIBE, one UNSUBSCRIBE), until every
        topic had one or `timeout` passed; topics with none are left out."""
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error(f"not connected{self._why(conn)}")
        if not topics:
            return {}
        arrived = BoundedQueue(maxsize=len(topics) * 4)
        for topic in topics:
            self._watchers.setdefault(topic, []).append(arrived)
        found: dict[str, Message] = {}
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            await self._subscribe(conn, topics, timeout)
            try:
                for _ in range(len(topics) * 4):  # bounded in count as well as in time
                    remaining = deadline - loop.time()
                    if len(found) == len(topics) or remaining <= 0:
                        break
                    try:
                        msg = await asyncio.wait_for(arrived.get(), remaining)
                    except TimeoutError:
                        break
                    found.setdefault(msg.topic, msg)
            finally:
                await self._unsubscribe(conn, topics, timeout)
        finally:
            for topic in topics:
                self._watchers[topic].remove(arrived)
                if not self._watchers[topic]:
                    del self._watchers[topic]
        return found

    async def _watch_once(self, topic: str, timeout: float) -> Message | None:
        conn = self._conn
        if conn is None or not conn.connected:
            raise self._error(f"not connected{self._why(conn)}")
        queue = BoundedQueue(maxsize=100)
        self._watchers.setdefault(topic, []).append(queue)
        try:
            await self._subscribe(conn, [topic], timeout)
            try:
                return await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return None
            finally:
                await self._unsubscribe(conn, [topic], timeout)
        finally:
            self._watchers[topic].remove(queue)
            if not self._watchers[topic]:
                del self._watchers[topic]
