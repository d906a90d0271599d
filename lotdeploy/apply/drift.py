"""Read what the nodes really run (the refresh behind `drift`, `plan --refresh` and `apply`).

Per node, read live: the release `current` points at and the digests of its files, the TLS
files in the broker's TLS directory (both where apply wrote them), the broker's routes
(`-listRoutes`) with the code of each route lotdeploy owns (`$SYS/Coreflux/Routes/<Name>`),
and, when the cluster passwords are at hand, whether the broker accepts each cluster
user's login. `lotdeploy.plan.live.reconcile` compares that with the state document. Route
code is compared as normalised text with the password masked on both sides, so a refresh
without the passphrase still reads everything but the users, and never shows a secret.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lotdeploy.apply.activate import admin_session
from lotdeploy.broker.session import BrokerClient
from lotdeploy.model import Node, Site
from lotdeploy.node import facts, release
from lotdeploy.node.session import on_nodes
from lotdeploy.plan.live import ROUTE_FILE, NodeLive, Refresh, reconcile, secrets_read
from lotdeploy.protocol import named_rights
from lotdeploy.routecode import comparable_attrs, comparable_code
from lotdeploy.secret import Secret
from lotdeploy.selection import chosen_nodes
from lotdeploy.sitefacts import bind_site
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport, TransportFactory
from lotdeploy.workspace import Workspace

#: How long to wait for a route's code on $SYS (retained, so normally at once).
ROUTE_CODE_WAIT = 3.0
#: How long a cluster user's login check may take.
LOGIN_WAIT = 5.0


@dataclass
class DriftReport(Refresh):
    """A refresh as `lotdeploy drift` reports it."""

    @property
    def checked(self) -> list[str]:
        return sorted(set(self.read) | set(self.findings) | set(self.errors))

    def summary(self) -> str:
        nodes = sum(1 for f in self.findings.values() if f)
        if self.errors:
            return f"drift: {len(self.errors)} node(s) could not be read, {nodes} drifted"
        if not nodes:
            return f"drift: none; {len(self.checked)} node(s) match what was applied"
        total = sum(len(f) for f in self.findings.values())
        return f"drift: {total} difference(s) on {nodes} of {len(self.checked)} node(s)"

    @property
    def drifted(self) -> bool:
        return any(self.findings.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "nodes": {
                name: {"findings": self.findings.get(name, []), "error": self.errors.get(name)}
                for name in self.checked
            },
            "notes": self.notes,
        }


def masked(code: str) -> str:
    """A route's code as its values, the password masked: comparable without the secret,
    and whatever its layout (lotdeploy.routecode: a hand-made route an import adopted has
    its own)."""
    return comparable_code(code)


def expected_code(attrs: Mapping[str, Any]) -> str:
    """What `masked` gives for the route recorded with `attrs`."""
    return comparable_attrs(attrs)


def node_live(
    site: Site,
    node: Node,
    record: NodeRecord,
    transport: Transport,
    logins: dict[str, Secret] | None = None,
) -> NodeLive:
    """What `node` runs. One command reads the files while the broker is read over the same
    connection at the same time; the code of every owned route is read at once (one
    SUBSCRIBE, bounded by ROUTE_CODE_WAIT in all), and the logins are tried at once."""
    paths = release.NodePaths.where(record.paths, node)
    # the files themselves, not the manifest: a hand edit leaves the manifest as it was
    in_release = {n: posixpath.join(paths.current, n) for n in record.files if n == ROUTE_FILE}
    in_tls = {n: posixpath.join(paths.tls_dir, n) for n in record.files if n != ROUTE_FILE}
    asked: list[facts.Fact[Any]] = [
        facts.current_release(paths.current),
        facts.digests("rsum", in_release),
        facts.digests("sum", in_tls),
        facts.timers("timer", paths.timers),
    ]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"drift-{node.name}") as pool:
        read = pool.submit(facts.read, transport, asked)
        # the broker's error, if any, is the one reported (leaving the pool waits for the
        # command, which its own timeout bounds)
        broker = _broker_live(site, node, record, transport, logins)
        current, release_digests, tls_digests, (armed, firing) = read.result()
    return NodeLive(
        current,
        release_digests,
        tls_digests,
        broker.routes,
        broker.users,
        (*armed, *firing),
        broker.rights,
        broker.secrets,
    )


@dataclass(frozen=True)
class _BrokerLive:
    routes: dict[str, str | None]
    users: dict[str, bool] | None
    rights: dict[str, list[str]] | None
    secrets: list[str] | None


def _broker_live(
    site: Site,
    node: Node,
    record: NodeRecord,
    transport: Transport,
    logins: dict[str, Secret] | None,
) -> _BrokerLive:
    """The owned routes' code, the cluster users' logins, (on a broker with the named
    rights model) the rights they hold and (where recorded routes read their password from
    the broker's store) the store's names, all asked at once over the node's admin session."""
    # the rights of lotdeploy's users are read where doctor found the named model
    ask_rights = named_rights(record.broker) and bool(record.users)
    ask_secrets = bool(secrets_read(record))
    with admin_session(site, node, transport) as client:
        listing = client.listed_at_connect()  # the -listRoutes the session sent on connect
        routes = listing if listing is not None else client.list_routes()
        owns = site.ownership.of(node.name)
        owned = sorted(str(r["name"]) for r in routes if owns(str(r.get("name", ""))))
        applied = sorted(n for n in owned if record.routes.get(n))

        async def read(raw: BrokerClient) -> _BrokerLive:
            # the route codes, the logins, the rights and the secrets at once: one wait
            async def nothing() -> None:
                return None

            codes, users, rights, secrets = await asyncio.gather(
                raw.read_route_codes(applied, timeout=ROUTE_CODE_WAIT) if applied else nothing(),
                raw.check_logins(logins, timeout=LOGIN_WAIT) if logins else nothing(),
                raw.user_rights(record.users) if ask_rights else nothing(),
                raw.list_secrets() if ask_secrets else nothing(),
            )
            live: dict[str, str | None] = dict.fromkeys(owned)
            for name, code in (codes or {}).items():
                live[name] = None if code is None else masked(code)
            return _BrokerLive(live, users, rights, secrets)

        return client.call(read)


def read_drift(
    site: Site,
    workspace: Workspace,
    transports: TransportFactory,
    parallelism: int = 10,
    only: set[str] | None = None,
    logins: dict[str, Secret] | None = None,
) -> DriftReport:
    """Read every chosen node that apply has recorded (concurrently, bounded) and reconcile
    it with its record. `logins` (cluster user -> password): also check that each broker
    still accepts the users its record lists (none: users are not checked, and a note says
    so)."""
    state = StateStore(workspace).read()
    site = bind_site(site, state)  # which routes are lotdeploy's (lotdeploy.sitefacts)
    report = DriftReport()
    chosen = chosen_nodes(site, only)
    nodes = [
        n
        for n in chosen
        if n.name in state.nodes
        and (state.nodes[n.name].routes or state.nodes[n.name].files or state.nodes[n.name].release)
    ]
    for node in chosen:
        if node not in nodes:
            report.findings[node.name] = ["never applied"]
    if logins is None and nodes:
        report.notes.append(
            "users not checked: their logins need the cluster password (set "
            "LOTDEPLOY_PASSPHRASE, or run apply, which reads them too)"
        )

    def job(node: Node, transport: Transport) -> NodeLive:
        record = state.nodes[node.name]
        # a record that lists no users predates user records: check every cluster user
        mine = (
            {u: p for u, p in logins.items() if u in record.users or not record.users}
            if logins
            else None
        )
        return node_live(site, node, record, transport, mine)

    found = on_nodes(nodes, transports, job, parallelism)
    for name, live in found.items():
        if isinstance(live, str):
            report.errors[name] = live
            continue
        record = state.nodes[name]
        paths = release.NodePaths.where(record.paths, site.node(name)).to_json()
        report.drift[name], report.findings[name] = reconcile(
            record, live, expected_code, paths, site.ownership.of(name)
        )
        report.read.append(name)
    return report
