"""The lab broker: amqtt 0.12.1 plus the Coreflux command channel and MQTT_CLUSTER routes.

`LabBroker` subclasses amqtt's Broker and overrides four private methods. They are private
API, which is why lotdeploy pins `amqtt==0.12.1` and tests each behaviour end to end:

* `_handle_message_delivery`: amqtt ends a client's message loop after it publishes to any
  `$` topic. We take `$SYS/Coreflux/Command` publishes here (command channel), swallow other
  `$` publishes (keeping the client connected), and hand every ordinary publish from a local,
  non-cluster client to the route links after the normal delivery.
* `_authenticate`: users come from the command line (admin) and `-addUser`; no plugin config.
  A refused CONNECT gets return code 4 (bad user name or password) for a wrong user name or
  password, as the vendor's broker answers, where amqtt always sends 5 (not authorised): the
  protocol handler is swapped for `LabProtocolHandler` to send it.
* `_initialize_client_session`: bounded in time, so a socket that never sends CONNECT is shed.
* `add_subscription`: `$SYS` filters are refused (SUBACK 0x80) to everyone but the admin, as
  on the vendor's broker: route code holds passwords, the Output topic other clients' replies.
* `_publish_retained_messages_for_subscription`: only for filters the session holds; amqtt
  also hands a connecting client the retained messages of every filter anyone subscribed to.
* `stream_connected`: bounds the size of every packet a client may send and guarantees the
  socket is closed whatever the client sent.

`LabNode` owns the rest: state, routes, the TLS listener (reloadable with SIGHUP), status
publishing, and start/stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker, Server
from amqtt.contexts import BrokerConfig, ListenerConfig
from amqtt.mqtt.connack import (
    BAD_USERNAME_PASSWORD,
    NOT_AUTHORIZED,
    ConnackPacket,
)
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from lotdeploy import __version__
from lotdeploy.broker.mqtt import Message
from lotdeploy.errors import LabError, LotSyntaxError
from lotdeploy.lab.broker.channel import CommandChannel
from lotdeploy.lab.broker.dialect import Dialect
from lotdeploy.lab.broker.routes import (
    CLUSTER_LINK_TOPIC,
    ClusterLink,
    ClusterSpec,
    RouteManager,
    RouteRejected,
    spec_from_route,
)
from lotdeploy.lab.broker.state import BrokerState, StateStore, hash_password, verify_password
from lotdeploy.lot import parse
from lotdeploy.protocol import (
    COMMAND_TOPIC,
    COREFLUX_CLUSTER_TOPIC,
    DEFAULT_ADMIN_USER,
    DEFAULT_PORT,
    OUTPUT_TOPIC,
    SEED_CLUSTER_TOPIC,
    VERSION_TOPIC,
    encode_reply,
    route_code_topic,
    route_status_topic,
    topic_matches,
)
from lotdeploy.secret import Secret

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
TLS_LISTENER = "tls"
CLUSTER_MARK = "_lotdeploy_cluster_link"
#: Session attribute: the CONNACK return code a refused CONNECT gets.
REFUSAL_MARK = "_lotdeploy_connack_refusal"
#: SUBACK return code of a refused subscription.
SUBSCRIPTION_REFUSED = 0x80
#: The listener of `--plain-links`: plain MQTT on the node's address.
PLAIN_LINKS_LISTENER = "plain-links"


@dataclass
class LabConfig:
    """Everything `lotdeploy lab broker` is told on its command line."""

    bind: str
    port: int = DEFAULT_PORT
    tls_port: int | None = None
    #: Where the TLS listener binds; default: `bind`. A lab node keeps plain MQTT (admin) on
    #: its own loopback and offers TLS on its address, like a production broker would.
    tls_bind: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    admin_user: str = DEFAULT_ADMIN_USER
    admin_password: Secret = field(default_factory=lambda: Secret("coreflux", public=True))
    state_dir: Path | None = None
    node_name: str | None = None
    allow_anonymous: bool = False
    status_interval: float = 5.0
    max_packet_bytes: int = 1024 * 1024
    link_backoff_max: float = 5.0
    link_queue_max: int = 10_000
    #: Which broker variant to play (docs/lab-broker.md, "Dialects"); default: 2.x JSON.
    dialect: Dialect = field(default_factory=Dialect)
    #: also plain MQTT on the TLS address (`port`): a cluster that runs plain-text links
    plain_links: bool = False

    @property
    def name(self) -> str:
        return self.node_name or f"{self.bind}:{self.port}"

    @property
    def tls_address(self) -> str:
        return self.tls_bind or self.bind

    @property
    def source_address(self) -> str:
        """The node's own address for outbound links ("" = let the kernel choose)."""
        address = self.tls_address.strip("[]")
        return "" if address in ("", "0.0.0.0", "::") else address


class PacketTooLarge(Exception):
    """A client announced a packet larger than --max-packet-bytes: drop the connection."""


class BoundedReader(StreamReaderAdapter):
    """amqtt reads a packet body with one read(n) per field: refuse any n above the limit."""

    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        super().__init__(reader)
        self._limit = limit

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._limit:
            raise PacketTooLarge(f"read of {n} bytes refused (limit {self._limit})")
        return await super().read(n)


class LabProtocolHandler(BrokerProtocolHandler):
    """amqtt's handler, answering a refused CONNECT with the code `_authenticate` chose.

    amqtt 0.12.1 sends 5 (not authorised) for every refusal; the vendor's broker sends 4 (bad
    user name or password) for a wrong user name or password.
    """

    async def mqtt_connack_authorize(self, authorize: bool) -> None:
        session = self.session
        if authorize or session is None:
            await super().mqtt_connack_authorize(authorize)
            return
        code = getattr(session, REFUSAL_MARK, NOT_AUTHORIZED)
        await self._send_packet(ConnackPacket.build(session.parent, code))


class LabBroker(Broker):
    """amqtt Broker with the Coreflux command channel and cluster forwarding hooked in."""

    def __init__(self, config: BrokerConfig, node: LabNode) -> None:
        super().__init__(config)
        self.node = node

    async def _authenticate(self, session: Session, _: ListenerConfig) -> bool:
        ok = self.node.authenticate(session.username, session.password)
        if not ok:
            setattr(session, REFUSAL_MARK, self.node.refusal_code(session.username))
        if ok and session.will_flag and session.will_topic == CLUSTER_LINK_TOPIC:
            # A cluster link: its messages are delivered here, never forwarded again.
            setattr(session, CLUSTER_MARK, True)
            session.will_flag = False
        return ok

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        handler, session = await asyncio.wait_for(
            super()._initialize_client_session(reader, writer, remote_address, remote_port),
            CONNECT_TIMEOUT,
        )
        # Same state, one method different: the refusal code (see LabProtocolHandler).
        handler.__class__ = LabProtocolHandler
        return handler, session

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Refuse `$SYS` filters to everyone but the admin (SUBACK 0x80), like the vendor
        (the `sys_readable` dialect: to anonymous clients only; the named rights model: also
        to a user given `AllowedSystemConfiguration`, which carries `SubscribeSys`)."""
        topic_filter = subscription[0]
        opened = self.node.dialect.sys_readable and session.username is not None
        if topic_filter.startswith("$SYS") and not (
            self.node.is_admin(session) or opened or self.node.may_read_sys(session.username)
        ):
            log.info("refused subscription to %s for %s", topic_filter[:80], session.username)
            return SUBSCRIPTION_REFUSED
        return await super().add_subscription(subscription, session)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        """Retained messages only for a filter this session holds.

        amqtt 0.12.1 also calls this on every CONNECT for every filter any client ever
        subscribed to (emptied filters stay in its table), so a new client got retained
        messages it never asked for, route code with passwords among them.
        """
        holders = self._subscriptions.get(subscription[0], [])
        if any(holder.client_id == session.client_id for holder, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)
            handler = self._get_handler(session)
            if handler is not None:
                self.node.send_snapshots(subscription, handler)

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        try:
            await self._client_connected(
                listener_name,
                BoundedReader(reader, self.node.config.max_packet_bytes),
                StreamWriterAdapter(writer),
            )
        except Exception as exc:  # whatever a client sent, only its own connection ends
            # where it was raised, never its message (a command's argument may be a secret)
            frames = traceback.extract_tb(exc.__traceback__)
            at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            log.warning("connection from %s dropped: %s%s", _peer(writer), type(exc).__name__, at)
            log.debug("connection failure details", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle_disconnect(
        self, client_session: Session, handler: BrokerProtocolHandler, waiter: asyncio.Future[Any]
    ) -> None:
        """amqtt logs a session's end only at debug; a client that vanished without DISCONNECT
        (its socket closed, or the broker's reader stopped) is worth a line in the lab log."""
        if not isinstance(waiter.result(), DisconnectPacket):
            log.info("client %s: connection ended without DISCONNECT", client_session.client_id)
        await super()._handle_disconnect(client_session, handler, waiter)

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        app_message = wait_deliver.result()
        topic = app_message.topic if app_message is not None else None
        if topic and topic.startswith("$"):
            if topic == COMMAND_TOPIC:
                await self.node.on_command(client_session, bytes(app_message.data or b""))
            return True  # swallow: amqtt 0.12.1 would end this client's loop otherwise
        keep_going = await super()._handle_message_delivery(client_session, handler, wait_deliver)
        if (
            keep_going
            and topic
            and "#" not in topic
            and "+" not in topic
            and not getattr(client_session, CLUSTER_MARK, False)
        ):
            packet = app_message.publish_packet
            retain = bool(packet and packet.retain_flag)
            self.node.routes.forward(
                Message(topic, bytes(app_message.data or b""), app_message.qos or 0, retain)
            )
        return keep_going


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if info else "?"


class LabNode:
    """One running lab broker: amqtt, command channel, routes, state, TLS listener."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.store = StateStore(config.state_dir)
        self.state = BrokerState()
        self.routes = RouteManager(self._make_link)
        self.channel = CommandChannel(self)
        self.broker: LabBroker | None = None
        self.port: int | None = None
        self.tls_port: int | None = config.tls_port
        self._tls_server: asyncio.AbstractServer | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._stopping = False
        self._user_settings: dict[str, dict[str, bool]] = {}
        #: monitoring topic -> the payload last retained there (republished only on change)
        self._monitoring: dict[str, bytes] = {}
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def admin_user(self) -> str:
        """The one user allowed to send commands (the channel asks the node, not its config)."""
        return self.config.admin_user

    @property
    def dialect(self) -> Dialect:
        """The broker variant this node plays."""
        return self.config.dialect

    @property
    def user_settings(self) -> dict[str, dict[str, bool]]:
        """`-changeUserSettings` flags per user (rights="named"), kept in memory; only
        `AllowedSystemConfiguration` is enforced, as `$SYS` read access (docs/lab-broker.md)."""
        return self._user_settings

    def may_read_sys(self, user: str | None) -> bool:
        """A user the named rights model lets read `$SYS` (`AllowedSystemConfiguration`)."""
        return (
            user is not None
            and self.dialect.rights == "named"
            and self._user_settings.get(user, {}).get("AllowedSystemConfiguration") is True
        )

    @property
    def version(self) -> str:
        """What `$SYS/Coreflux/Version` says: the lab, lotdeploy's version, the dialect."""
        return f"lab-{__version__} {self.dialect.label}"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        try:
            self.state = self.store.load()
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read state from {cfg.state_dir}: {exc}") from None
        broker_config = BrokerConfig(
            listeners={
                "default": ListenerConfig(bind=f"{_host(cfg.bind)}:{cfg.port}", max_connections=0)
            },
            plugins={},
        )
        if cfg.plain_links and cfg.tls_address != cfg.bind:
            broker_config.listeners[PLAIN_LINKS_LISTENER] = ListenerConfig(
                bind=f"{_host(cfg.tls_address)}:{cfg.port}", max_connections=0
            )
        broker_config.listeners[TLS_LISTENER] = ListenerConfig(bind=None)
        self.broker = LabBroker(broker_config, self)
        amqtt_log = logging.getLogger("amqtt.broker")
        level = amqtt_log.level
        amqtt_log.setLevel(logging.CRITICAL)  # it logs a traceback for a busy port; we explain
        try:
            await self.broker.start()
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            reason = getattr(cause, "strerror", None) or str(cause)
            raise LabError(f"cannot start the broker on {cfg.bind}:{cfg.port}: {reason}") from None
        finally:
            amqtt_log.setLevel(level)
        instance = self.broker._servers["default"].instance
        sockets = getattr(instance, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        if cfg.node_name is None:
            cfg.node_name = f"{cfg.bind}:{self.port}"
        if cfg.tls_port is not None:
            await self.reload_tls(initial=True)
        if self.dialect.version_topic:
            await self.broker.retain_message(None, VERSION_TOPIC, self.version.encode(), 1)
        for name, code in list(self.state.routes.items()):
            await self._restore_route(name, code)
        await self._publish_monitoring()
        self._status_task = asyncio.create_task(self._status_loop())

    async def _restore_route(self, name: str, code: str) -> None:
        try:
            routes = parse(code, f"state:{name}")
            spec = spec_from_route(routes[0], frozenset(self.dialect.offered_keys))
        except (LotSyntaxError, RouteRejected, IndexError) as exc:
            log.error("route %s from the state file is unusable and was skipped: %s", name, exc)
            return
        self.routes.add(spec)
        await self._publish_code(name, code)

    async def stop(self) -> None:
        """Stop cleanly: links first (no new traffic), then listeners and sessions."""
        self._stopping = True
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._status_task
        await self.routes.stop_all()
        if self._tls_server is not None:
            self._tls_server.close()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.shutdown(), 10.0)

    # -- TLS ------------------------------------------------------------------------------

    def server_tls_context(self) -> ssl.SSLContext | None:
        """A fresh server context from --cert/--key, or None while the files do not exist."""
        cfg = self.config
        if not (cfg.cert and cfg.key and cfg.cert.exists() and cfg.key.exists()):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cfg.cert, cfg.key)
        return ctx

    def client_tls_context(self) -> ssl.SSLContext:
        """For links with USE_TLS: verify the peer against --ca, else the system store."""
        ca = self.config.ca
        if ca is not None and ca.exists():
            return ssl.create_default_context(cafile=str(ca))
        return ssl.create_default_context()

    async def reload_tls(self, initial: bool = False) -> None:
        """(Re)open the TLS listener with the current files; old connections keep theirs."""
        if self.broker is None or self.tls_port is None:
            return
        try:
            ctx = self.server_tls_context()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS files unusable, listener unchanged: %s", exc)
            return
        if ctx is None:
            log.warning("TLS files missing: TLS listener waits for them and SIGHUP")
            return
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        try:
            server = await asyncio.start_server(
                partial(self.broker.stream_connected, listener_name=TLS_LISTENER),
                self.config.tls_address.strip("[]"),
                self.tls_port,
                ssl=ctx,
                reuse_address=True,
                ssl_handshake_timeout=CONNECT_TIMEOUT,
            )
        except OSError as exc:
            if initial:
                raise LabError(
                    f"cannot listen on {self.config.tls_address}:{self.tls_port}: {exc.strerror}"
                ) from None
            log.error("TLS listener could not be reopened: %s", exc.strerror)
            return
        self._tls_server = server
        self.tls_port = server.sockets[0].getsockname()[1]
        self.broker._servers[TLS_LISTENER] = Server(TLS_LISTENER, server)
        log.info(
            "TLS listener on %s:%s (%s)",
            self.config.tls_address,
            self.tls_port,
            "started" if initial else "reloaded",
        )

    # -- users, secrets, auth -------------------------------------------------------------

    def authenticate(self, username: str | None, password: str | None) -> bool:
        if username is None:
            return self.config.allow_anonymous
        if username == self.config.admin_user:
            return hmac.compare_digest(
                (password or "").encode(), self.config.admin_password.reveal().encode()
            )
        stored = self.state.users.get(username)
        return stored is not None and verify_password(password or "", stored)

    def refusal_code(self, username: str | None) -> int:
        """CONNACK code of a refused CONNECT: for a wrong user name or password 4 (the
        vendor's answer, as observed) or 5 (the dialect's `bad_login_code`); 5 (not
        authorised) for an anonymous client when those are off."""
        if username is None:
            return NOT_AUTHORIZED
        return BAD_USERNAME_PASSWORD if self.dialect.bad_login_code == 4 else NOT_AUTHORIZED

    def is_admin(self, session: Session) -> bool:
        return session.username is not None and session.username == self.config.admin_user

    async def set_user(self, user: str, password: Secret) -> None:
        self.state.users[user] = hash_password(password)
        self._save()

    async def delete_user(self, user: str) -> None:
        self.state.users.pop(user, None)
        self._save()

    async def set_secret(self, name: str, value: Secret) -> None:
        self.state.secrets[name] = value
        self._save()

    async def remove_secret(self, name: str) -> None:
        self.state.secrets.pop(name, None)
        self._save()

    def _save(self) -> None:
        try:
            self.store.save(self.state)
        except OSError as exc:
            log.error("cannot write the state file: %s", exc)

    # -- routes ---------------------------------------------------------------------------

    def _make_link(self, spec: ClusterSpec) -> ClusterLink:
        return ClusterLink(
            spec,
            node_name=self.config.name,
            tls_context=self.client_tls_context,
            resolve_secret=self.state.secrets.get,
            on_change=self._status_changed,
            backoff_max=self.config.link_backoff_max,
            queue_max=self.config.link_queue_max,
            source_address=self.config.source_address,
        )

    async def add_route(self, spec: ClusterSpec, code: str) -> None:
        self.routes.add(spec)
        self.state.routes[spec.name] = code
        self._save()
        await self._publish_code(spec.name, code)
        self._status_changed(self.routes.links[spec.name])

    async def replace_route(self, spec: ClusterSpec, code: str) -> None:
        """A re-added route replaces the one of its name, keeping what it had queued."""
        await self.routes.replace(spec)
        self.state.routes[spec.name] = code
        self._save()
        await self._publish_code(spec.name, code)
        self._status_changed(self.routes.links[spec.name])

    async def remove_route(self, name: str) -> bool:
        if not await self.routes.remove(name):
            return False
        self.state.routes.pop(name, None)
        self._save()
        if self.broker is not None:
            await self.broker.retain_message(None, route_code_topic(name), b"")
        await self._publish_monitoring()
        return True

    async def _publish_code(self, name: str, code: str) -> None:
        if self.broker is None:
            return
        topic, data = route_code_topic(name), code.encode()
        await self.broker.retain_message(None, topic, data, 1)
        await self.broker.internal_message_broadcast(topic, data)

    def _status_changed(self, link: ClusterLink) -> None:
        """Coalesce changes: publish each changed route's status once per loop iteration."""
        self._dirty.add(link.spec.name)
        if not self._flush_scheduled and not self._stopping:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self._flush_status())
            )

    async def _flush_status(self) -> None:
        self._flush_scheduled = False
        names, self._dirty = self._dirty, set()
        for name in names:
            await self._publish_status(name)
        await self._publish_monitoring()

    async def _publish_status(self, name: str) -> None:
        link = self.routes.links.get(name)
        if link is None or self.broker is None or self._stopping:
            return
        await self.broker.internal_message_broadcast(
            route_status_topic(name), json.dumps(link.status()).encode()
        )

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            for name in list(self.routes.links):
                with contextlib.suppress(Exception):
                    await self._publish_status(name)
            with contextlib.suppress(Exception):
                await self._publish_monitoring()

    def send_snapshots(self, subscription: tuple[str, int], handler: BrokerProtocolHandler) -> None:
        """A new subscriber to a route's status topic gets its current status at once, not
        retained (as the vendor's broker delivers it; the vendor's client waits 1.5 s)."""
        topic_filter, qos = subscription
        if self._stopping or not topic_filter.startswith("$SYS/"):
            return
        for name, link in list(self.routes.links.items()):
            topic = route_status_topic(name)
            if topic_matches(topic_filter, topic):
                payload = json.dumps(link.status()).encode()
                task = asyncio.ensure_future(
                    handler.mqtt_publish(topic, payload, min(qos, 1), retain=False)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _publish_monitoring(self) -> None:
        """The cluster monitoring topics of the dialect (`cluster_topics`), retained, each
        republished only when its content changed. Their format is the lab's reading
        (docs/lab-broker.md): the vendor's is UNKNOWN."""
        scheme = self.dialect.cluster_topics
        if scheme == "none" or self.broker is None or self._stopping:
            return
        links = list(self.routes.links.values())
        connected = sum(1 for k in links if k.connection == "Connected")
        state = (
            "alone"
            if not links
            else "ok"
            if connected == len(links)
            else "isolated"
            if connected == 0
            else "degraded"
        )
        status = {
            "status": state,
            "node": self.config.name,
            "peers": len(links),
            "connected": connected,
        }
        members = [
            {
                "route": k.spec.name,
                "peer": f"{k.spec.address}:{k.spec.port}",
                "connection": k.connection,
                "health": k.health,
            }
            for k in links
        ]
        successes = [k.last_success for k in links if k.last_success]
        sync = {
            "queued": sum(k.queued for k in links),
            "sent": sum(k.sent_ok for k in links),
            "failed": sum(k.failed for k in links),
            "expired": sum(k.expired for k in links),
            "lastSync": _iso_time(max(successes)) if successes else None,
        }
        if scheme == "seed":
            topics: dict[str, Any] = {
                f"{SEED_CLUSTER_TOPIC}/status": status,
                f"{SEED_CLUSTER_TOPIC}/nodes": members,
                f"{SEED_CLUSTER_TOPIC}/sync": sync,
            }
        else:
            topics = {
                f"{COREFLUX_CLUSTER_TOPIC}/Role": "Member",
                f"{COREFLUX_CLUSTER_TOPIC}/IsLeader": "false",
                f"{COREFLUX_CLUSTER_TOPIC}/Leader": "none",
                f"{COREFLUX_CLUSTER_TOPIC}/Term": "0",
                f"{COREFLUX_CLUSTER_TOPIC}/Members": members,
                f"{COREFLUX_CLUSTER_TOPIC}/Status": status,
            }
        for topic, value in topics.items():
            data = (value if isinstance(value, str) else json.dumps(value)).encode()
            if self._monitoring.get(topic) == data:
                continue
            self._monitoring[topic] = data
            await self.broker.retain_message(None, topic, data, 1)
            await self.broker.internal_message_broadcast(topic, data)

    # -- the command channel --------------------------------------------------------------

    async def on_command(self, session: Session, payload: bytes) -> None:
        reply = await self.channel.handle(payload, session.username, self.is_admin(session))
        if not self.dialect.echoes_request_id:
            reply = {**reply, "requestId": None}  # stripped by the channel, never echoed
        if self.broker is not None:
            await self.broker.internal_message_broadcast(
                OUTPUT_TOPIC, encode_reply(reply, self.dialect.replies)
            )


def _iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _host(bind: str) -> str:
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
