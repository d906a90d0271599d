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
from lotdeploy.compiler.routes import canonical_route_text
from lotdeploy.errors import LotdeployError
from lotdeploy.lot import normalize
from lotdeploy.model import ROUTE_PREFIX, Node, Site
from lotdeploy.plan.desired import DesiredRoute
from lotdeploy.secret import SENSITIVE, Secret, scrub
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
    checked: list[str] = field(default_factory=list)
    items: dict[str, list[Drifted]] = field(default_factory=dict)

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


@dataclass(frozen=True)
class Drifted:
    """One difference on a node: what kind of thing, its name, and the words for it."""

    kind: str  # release, file, route, extra-route
    name: str
    text: str


def node_drift_items(
    site: Site, node: Node, record: NodeRecord, transport: Transport
) -> list[Drifted]:
    found: list[Drifted] = []
    paths = release.NodePaths.of(node)
    live = release.live_manifest(transport, node)
    tls_names = [n for n in record.files if n != "routes.lot"]
    facts = release.node_facts(transport, node, record.release or "0", tls_names)
    current, digests = facts.current, facts.tls_digests
    if record.release and current != record.release:
        found.append(
            Drifted(
                "release",
                record.release,
                f"release: current is {current or 'missing'}, apply left {record.release}",
            )
        )
    live_files = (live or {}).get("files", {}) if isinstance(live, dict) else {}
    for name, entry in sorted(record.files.items()):
        if name in tls_names:
            have = digests.get(name)
            where = f"{paths.tls_dir}/{name}"
        else:
            have = (
                (live_files.get(name) or {}).get("sha256") if isinstance(live_files, dict) else None
            )
            where = f"{paths.current}/{name}"
        if have is None:
            found.append(Drifted("file", name, f"file {where}: missing"))
        elif have != entry.get("sha256"):
            found.append(Drifted("file", name, f"file {where}: changed"))
    with admin_session(site, node, transport) as client:
        listed = {str(r.get("name")): r for r in client.list_routes() if r.get("name")}
        for name in sorted(set(record.routes) - set(listed)):
            found.append(Drifted("route", name, f"route {name}: missing on the broker"))
        for name in sorted(
            n for n in set(listed) - set(record.routes) if n.startswith(ROUTE_PREFIX)
        ):
            found.append(
                Drifted(
                    "extra-route",
                    name,
                    f"route {name}: on the broker, but not applied by lotdeploy",
                )
            )
        for name in sorted(set(record.routes) & set(listed)):
            code = client.read_route_code(name, timeout=ROUTE_CODE_WAIT)
            if code is None:
                continue  # this broker does not republish route code: nothing to compare
            if masked(code) != expected_code(record.routes[name]):
                found.append(
                    Drifted(
                        "route",
                        name,
                        f"route {name}: its code on the broker differs from what was applied",
                    )
                )
    return found


def node_drift(site: Site, node: Node, record: NodeRecord, transport: Transport) -> list[str]:
    return [d.text for d in node_drift_items(site, node, record, transport)]


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

    def one(node: Node) -> tuple[str, list[Drifted] | None, str | None]:
        try:
            transport = transports(node)
            transport.connect()
            try:
                record = state.nodes[node.name]
                return node.name, node_drift_items(site, node, record, transport), None
            finally:
                transport.close()
        except (LotdeployError, OSError) as exc:
            return node.name, None, scrub(str(exc))

    if nodes:
        with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(nodes)))) as pool:
            for name, found, error in pool.map(one, nodes):
                report.checked.append(name)
                if error is not None:
                    report.errors[name] = error
                else:
                    report.items[name] = found or []
                    report.findings[name] = [d.text for d in found or []]
    return report


def forget_drifted(workspace: Workspace, report: DriftReport) -> list[str]:
    """`apply --refresh`: forget in the state what a node no longer has as apply left it, so
    the next plan puts it back. A route missing or changed on the broker leaves the node's
    recorded routes; a file missing or changed (or a `current` moved elsewhere: every
    file) leaves its recorded files. A `lotdeploy_*` route nobody applied is only reported
    (state has nothing to forget). Returns what was forgotten, as `node: finding` lines."""
    forgotten: list[str] = []
    if not any(report.items.values()):
        return forgotten
    with StateStore(workspace).transaction() as state:
        for name, items in sorted(report.items.items()):
            record = state.nodes.get(name)
            if record is None:
                continue
            for item in items:
                if item.kind == "route":
                    record.routes.pop(item.name, None)
                elif item.kind == "file":
                    record.files.pop(item.name, None)
                elif item.kind == "release":
                    record.files.clear()
                else:
                    continue
                forgotten.append(f"{name}: {item.text}")
    return forgotten
