"""`lotdeploy drift`: what the nodes really run, against what apply recorded.

Per node, read live: the release `current` points at and its manifest (over SSH), the
sha256 of the TLS files in the broker's tls_dir, and the broker's routes (`-listRoutes`)
with the code of each route lotdeploy owns (`$SYS/Coreflux/Routes/<Name>`). Compare with
the state document. Route code is compared as normalised text with the password masked on
both sides, so drift needs no passphrase and never shows one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.apply import release
from lotdeploy.apply.activate import admin_session
from lotdeploy.apply.fanout import on_nodes
from lotdeploy.compiler.routes import canonical_route_text
from lotdeploy.lot import normalize
from lotdeploy.model import ROUTE_PREFIX, Node, Site
from lotdeploy.plan.desired import DesiredRoute
from lotdeploy.secret import SENSITIVE, Secret
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport
from lotdeploy.workspace import Workspace

TransportFactory = Callable[[Node], Transport]
_PASSWORD = re.compile(r'(WITH\s+PASSWORD\s+)"[^"]*"')
#: How long to wait for a route's code on $SYS (retained, so normally at once).
ROUTE_CODE_WAIT = 3.0


@dataclass
class DriftReport:
    findings: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: node -> {"routes": names, "files": names} that no longer hold on the node
    stale: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(self.findings.values())

    def summary(self) -> str:
        nodes = sum(1 for f in self.findings.values() if f)
        if self.errors:
            return f"drift: {len(self.errors)} node(s) could not be read, {nodes} drifted"
        if not nodes:
            return f"drift: none; {len(self.checked)} node(s) match what was applied"
        total = sum(len(f) for f in self.findings.values())
        return f"drift: {total} difference(s) on {nodes} of {len(self.checked)} node(s)"

    def to_json(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "nodes": {
                name: {"findings": self.findings.get(name, []), "error": self.errors.get(name)}
                for name in sorted(self.checked)
            },
        }


def masked(code: str) -> str:
    """Normalised LOT with the password's value masked: comparable without the secret."""
    return _PASSWORD.sub(lambda m: f'{m.group(1)}"{SENSITIVE}"', normalize(code))


def expected_code(attrs: dict[str, Any]) -> str:
    route = DesiredRoute.from_attrs(attrs)
    return masked(canonical_route_text(route.attrs(), Secret(SENSITIVE)))


def node_drift_items(
    site: Site, node: Node, record: NodeRecord, transport: Transport
) -> tuple[list[str], dict[str, set[str]]]:
    """The findings in words, and what no longer holds: {"routes": names, "files": names}
    (what `plan --refresh` forgets from the record, so the plan restores it).

    One command reads the files (the release, its files' and the TLS files' digests) while
    the broker is read over the same connection at the same time; the code of every owned
    route is read at once (one SUBSCRIBE), bounded by ROUTE_CODE_WAIT in all."""
    tls_names = [n for n in record.files if n != "routes.lot"]
    # the files themselves, not the manifest: a hand edit leaves the manifest as it was
    release_names = [n for n in record.files if n not in tls_names]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"drift-{node.name}") as pool:
        files = pool.submit(
            release.node_facts,
            transport,
            node,
            record.release or "0",
            tls_names,
            release_names=release_names,
        )
        # the broker's error, if any, is the one reported (leaving the pool waits for the
        # command, which its own timeout bounds)
        routes_found, routes_stale = _route_drift(site, node, record, transport)
        facts = files.result()
    found, stale = _file_drift(node, record, facts, tls_names)
    return found + routes_found, {"files": stale, "routes": routes_stale}


def _file_drift(
    node: Node, record: NodeRecord, facts: release.NodeFacts, tls_names: list[str]
) -> tuple[list[str], set[str]]:
    found: list[str] = []
    stale: set[str] = set()
    paths = release.NodePaths.of(node)
    current = facts.current
    if record.release and current != record.release:
        found.append(f"release: current is {current or 'missing'}, apply left {record.release}")
        stale |= set(record.files)
    for name, entry in sorted(record.files.items()):
        if name in tls_names:
            have = facts.tls_digests.get(name)
            where = f"{paths.tls_dir}/{name}"
        else:
            have = facts.release_digests.get(name)
            where = f"{paths.current}/{name}"
        if have is None:
            found.append(f"file {where}: missing")
            stale.add(name)
        elif have != entry.get("sha256"):
            found.append(f"file {where}: changed")
            stale.add(name)
    return found, stale


def _route_drift(
    site: Site, node: Node, record: NodeRecord, transport: Transport
) -> tuple[list[str], set[str]]:
    found: list[str] = []
    stale: set[str] = set()
    with admin_session(site, node, transport) as client:
        listing = client.listed_at_connect()  # the -listRoutes the session sent on connect
        routes = listing if listing is not None else client.list_routes()
        listed = {str(r.get("name")): r for r in routes if r.get("name")}
        for name in sorted(set(record.routes) - set(listed)):
            found.append(f"route {name}: missing on the broker")
            stale.add(name)
        for name in sorted(
            n for n in set(listed) - set(record.routes) if n.startswith(ROUTE_PREFIX)
        ):
            found.append(f"route {name}: on the broker, but not applied by lotdeploy")
        both = sorted(set(record.routes) & set(listed))
        codes = client.read_route_codes(both, timeout=ROUTE_CODE_WAIT) if both else {}
        for name in both:
            code = codes.get(name)
            if code is None:
                continue  # this broker does not republish route code: nothing to compare
            if masked(code) != expected_code(record.routes[name]):
                found.append(f"route {name}: its code on the broker differs from what was applied")
                stale.add(name)
    return found, stale


def read_drift(
    site: Site,
    workspace: Workspace,
    transports: TransportFactory,
    parallelism: int = 10,
    only: set[str] | None = None,
) -> DriftReport:
    """Drift of every chosen node that apply has recorded (concurrently, bounded)."""
    state = StateStore(workspace).read()
    report = DriftReport()
    nodes = [
        n
        for n in site.nodes
        if (only is None or n.name in only)
        and n.name in state.nodes
        and (state.nodes[n.name].routes or state.nodes[n.name].files)
    ]
    for node in site.nodes:
        if (only is None or node.name in only) and node not in nodes:
            report.findings[node.name] = ["never applied"]
            report.checked.append(node.name)

    found = on_nodes(
        nodes,
        transports,
        lambda node, t: node_drift_items(site, node, state.nodes[node.name], t),
        parallelism,
    )
    for name, items in found.items():
        report.checked.append(name)
        if isinstance(items, str):
            report.errors[name] = items
        else:
            report.findings[name], report.stale[name] = items
    return report
