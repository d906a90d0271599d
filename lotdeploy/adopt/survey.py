"""Read a cluster as it runs: every broker's MQTT_CLUSTER routes, their code and state, and
which logins each broker accepts. Read-only: nothing here changes a broker.

Two passes, each over the nodes at once (bounded):

1. On each broker, as its admin: `-listRoutes` (names, types, connection states), the code
   of every route (`$SYS/Coreflux/Routes/<Name>`, one SUBSCRIBE, bounded), and for a route
   that is not Connected the broker's last error for it (`-checkRouteConnection`).
2. On each broker, with every credential the cluster's routes log in with (they are in
   their route code): whether it accepts the login (MQTT CONNECT), and whether that user,
   or an anonymous client, may read route code on `$SYS` (a SUBSCRIBE to
   `$SYS/Coreflux/Routes/#`; a route's code holds its password).

A broker is reached through an `Access`: over SSH to its admin address, as `status` and
`drift` do (`SiteAccess`), or directly at an `address[:port]` (`DirectAccess`). Passwords
stay Secrets; every error is scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lotdeploy.errors import LotdeployError
from lotdeploy.protocol import ROUTE_TYPE, ROUTES_TOPIC, parse_route_status
from lotdeploy.routecode import RouteCode, read_route
from lotdeploy.secret import Secret, scrub

if TYPE_CHECKING:
    from lotdeploy.broker.sync import SyncBrokerClient
    from lotdeploy.model import Node, Site
    from lotdeploy.transport.base import Transport

#: How long the code of all of a broker's routes may take to arrive (retained: at once).
CODE_WAIT = 3.0
#: How long one login (CONNECT) may take.
LOGIN_WAIT = 5.0
#: How long a user granted `$SYS/Coreflux/Routes/#` is watched for route code to arrive.
SYS_WAIT = 1.5
#: Who an anonymous login is reported as.
ANONYMOUS = "(anonymous)"


@dataclass(frozen=True)
class Member:
    """A node of the cluster: its name, the address peers' routes must name (and the other
    names it goes by: its certificate's DNS names and IPs), and its port."""

    name: str
    address: str
    port: int
    aliases: tuple[str, ...] = ()

    def answers_to(self, address: str) -> bool:
        return address == self.address or address in self.aliases


@dataclass(frozen=True)
class LiveRoute:
    """One route a broker runs; `code` None when its code could not be read or is not one
    MQTT_CLUSTER route."""

    node: str
    name: str
    code: RouteCode | None
    connection: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Credential:
    """A user name and password a route logs in with (the password never shown)."""

    username: str
    password: Secret = field(repr=False)


@dataclass
class NodeSurvey:
    node: str
    routes: list[LiveRoute] = field(default_factory=list)
    #: routes of other types (bridges, ...): not the cluster's, not audited
    other_routes: list[str] = field(default_factory=list)
    #: credential -> whether this broker accepts its login (the credentials peers use)
    logins: dict[Credential, bool] = field(default_factory=dict)
    #: who (a user, or ANONYMOUS) read route code on $SYS without being the admin
    sys_readers: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Survey:
    members: list[Member]
    nodes: dict[str, NodeSurvey]

    def member_at(self, address: str | None) -> Member | None:
        """The member a route's BROKER_ADDRESS names (None: no member has it)."""
        if address is None:
            return None
        return next((m for m in self.members if m.answers_to(address)), None)

    @property
    def errors(self) -> dict[str, str]:
        return {n: s.error for n, s in self.nodes.items() if s.error}


class Access(Protocol):
    """How a broker is reached: `endpoint(node)` gives (host, port) of its MQTT listener,
    for as long as the context lasts; the admin's user name and password."""

    def endpoint(self, node: str) -> AbstractContextManager[tuple[str, int]]: ...

    def admin(self, node: str) -> tuple[str, Secret]: ...


class DirectAccess:
    """Brokers at `address[:port]`, reached directly, with one admin login for all."""

    def __init__(self, members: list[Member], user: str, password: Secret) -> None:
        self._members = {m.name: m for m in members}
        self._user = user
        self._password = password

    @contextlib.contextmanager
    def endpoint(self, node: str) -> Iterator[tuple[str, int]]:
        member = self._members[node]
        yield member.address, member.port

    def admin(self, node: str) -> tuple[str, Secret]:
        return self._user, self._password


class SiteAccess:
    """A site's brokers, each through a port forwarded over its node's transport (SSH) to
    its admin address, with the admin password the site names: as `status` does."""

    def __init__(self, site: Site, transports: Callable[[Node], Transport]) -> None:
        self._site = site
        self._transports = transports

    @contextlib.contextmanager
    def endpoint(self, node: str) -> Iterator[tuple[str, int]]:
        from lotdeploy.transport.base import opened

        spec = self._site.node(node)
        with (
            opened(self._transports(spec)) as transport,
            transport.forward(spec.broker.admin_host, spec.broker.admin_port) as port,
        ):
            yield "127.0.0.1", port

    def admin(self, node: str) -> tuple[str, Secret]:
        from lotdeploy.apply.activate import admin_password

        spec = self._site.node(node)
        return spec.broker.admin_user, admin_password(self._site, spec)


def site_members(site: Site) -> list[Member]:
    """The members of a site: its nodes as their peers' routes must name them."""
    return [Member(n.name, n.address, n.port, (*n.dns_names, *n.ip_addresses)) for n in site.nodes]


def survey(members: list[Member], access: Access, parallelism: int = 10) -> Survey:
    """Read every member's broker (both passes); a broker that cannot be read is an error
    of its node, and the others are read all the same."""
    result = Survey(members, {m.name: NodeSurvey(m.name) for m in members})
    workers = max(1, min(parallelism, len(members)))

    def first(member: Member) -> None:
        found = result.nodes[member.name]
        try:
            _read_routes(member, access, found)
        except (LotdeployError, OSError) as exc:
            found.error = scrub(str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(first, members))

    def second(member: Member) -> None:
        found = result.nodes[member.name]
        if found.error:
            return
        credentials = _credentials_to(result, member)
        try:
            with access.endpoint(member.name) as (host, port):
                asyncio.run(_check_access(host, port, credentials, found))
        except (LotdeployError, OSError) as exc:
            found.error = scrub(f"checking logins: {exc}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(second, members))
    return result


def _client(member: Member, access: Access, host: str, port: int) -> SyncBrokerClient:
    from lotdeploy.broker.sync import SyncBrokerClient

    user, password = access.admin(member.name)
    return SyncBrokerClient(member.name, host, port, user, password, request_ids="auto")


def _read_routes(member: Member, access: Access, found: NodeSurvey) -> None:
    from lotdeploy.broker.session import CommandFailed

    with access.endpoint(member.name) as (host, port), _client(member, access, host, port) as c:
        listed = c.listed_at_connect()
        routes = listed if listed is not None else c.list_routes()
        names = [str(r["name"]) for r in routes if r.get("name")]
        kinds = {str(r["name"]): r.get("type") for r in routes if r.get("name")}
        states = {str(r["name"]): r.get("connection") for r in routes if r.get("name")}
        cluster = [n for n in names if kinds[n] in (None, ROUTE_TYPE)]
        found.other_routes = sorted(n for n in names if n not in cluster)
        codes = c.read_route_codes(cluster, timeout=CODE_WAIT) if cluster else {}
        for name in sorted(cluster):
            text = codes.get(name)
            code = read_route(text, name) if text is not None else None
            if text is not None and code is None and kinds[name] is None:
                found.other_routes.append(name)  # a 1.x listing names no type: its code does
                continue
            state = states.get(name)
            last_error = None
            if state not in (None, "Connected"):
                with contextlib.suppress(CommandFailed):
                    status = parse_route_status(c.check_route_connection(name))
                    last_error = status.last_error
            found.routes.append(
                LiveRoute(
                    member.name,
                    name,
                    code,
                    None if state is None else str(state),
                    scrub(last_error) if last_error else None,
                )
            )


def _credentials_to(result: Survey, member: Member) -> list[Credential]:
    """The credentials the brokers' routes log in with: each is tried on every member
    (import needs to know where the cluster's user exists; one route's credential may be
    meant for a broker that lacks it)."""
    found: list[Credential] = []
    for node in result.nodes.values():
        for route in node.routes:
            code = route.code
            if code is None or code.username is None or code.password is None:
                continue
            if result.member_at(code.broker_address) is None:
                continue  # a route to a stranger: its credential is not the cluster's
            credential = Credential(code.username, code.password)
            if credential not in found:
                found.append(credential)
    return found


async def _check_access(
    host: str, port: int, credentials: list[Credential], found: NodeSurvey
) -> None:
    """Logins (each credential) and `$SYS` reads (each accepted one, and anonymous)."""
    for credential in credentials:
        found.logins[credential] = await _reads_sys(
            host, port, credential.username, credential.password, found
        )
    await _reads_sys(host, port, None, None, found)


async def _reads_sys(
    host: str, port: int, user: str | None, password: Secret | None, found: NodeSurvey
) -> bool:
    """Log in (False: refused); if granted `$SYS/Coreflux/Routes/#` and route code comes,
    note the reader. Bounded in time."""
    from lotdeploy.broker.mqtt import ConnectRefused, Message, MqttConnection, MqttError

    codes: list[str] = []

    def on_message(msg: Message) -> None:
        rest = msg.topic.removeprefix(ROUTES_TOPIC + "/")
        if rest != msg.topic and "/" not in rest and msg.payload:
            codes.append(rest)

    conn = MqttConnection(
        host,
        port,
        client_id=f"lotdeploy-audit-{uuid.uuid4().hex[:12]}",
        username=user,
        password=password,
        connect_timeout=LOGIN_WAIT,
        on_message=on_message,
    )
    try:
        try:
            await conn.connect()
        except ConnectRefused:
            return False
        except MqttError as exc:
            if user is None:  # an anonymous login that fails otherwise says nothing
                return False
            raise LotdeployError(f"logging in as {user}: {exc}") from None
        try:
            granted = await conn.subscribe([(ROUTES_TOPIC + "/#", 0)], LOGIN_WAIT)
        except MqttError:
            return True
        if granted and granted[0] != 0x80:
            for _ in range(int(SYS_WAIT / 0.05)):
                if codes:
                    break
                await asyncio.sleep(0.05)
            if codes:
                found.sys_readers.append(user or ANONYMOUS)
        return True
    finally:
        await conn.close()
