"""Semantic checks the schema cannot express: uniqueness, references, topology sanity.

`check_raw` works on the raw YAML data (so it still runs when the schema found errors
elsewhere); `check_resolved` works on the resolved site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lotdeploy.model import DEFAULT_PORT, DEFAULT_REGION, DEFAULT_TLS_PORT, Site
from lotdeploy.spec.schema import SiteSpec, lot_safe
from lotdeploy.spec.yamlsource import Located


def _raw_setting(data: dict[str, Any], node: dict[str, Any], key: str) -> Any:
    regions = data.get("regions") if isinstance(data.get("regions"), dict) else {}
    region = regions.get(node.get("region") or DEFAULT_REGION) if regions else None
    defaults = data.get("defaults")
    for layer in (node, region, defaults):
        if isinstance(layer, dict) and layer.get(key) is not None:
            return layer[key]
    return None


def check_raw(located: Located) -> None:
    data = located.data
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        return
    seen_names: dict[str, int] = {}
    seen_endpoints: dict[tuple[str, Any], int] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        name = node.get("name")
        if isinstance(name, str):
            if name in seen_names:
                first = located.where(("nodes", seen_names[name], "name"))[0]
                located.error(
                    ("nodes", index, "name"),
                    f"duplicate node name '{name}' (first used at line {first})",
                )
            else:
                seen_names[name] = index
        address = node.get("address")
        if isinstance(address, str):
            tls = _raw_setting(data, node, "tls") is True
            port = _raw_setting(data, node, "port") or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
            endpoint = (address.lower(), port)
            if endpoint in seen_endpoints:
                other = nodes[seen_endpoints[endpoint]].get("name")
                located.error(
                    ("nodes", index, "address"),
                    f"address {address}:{port} is already used by node '{other}'",
                )
            else:
                seen_endpoints[endpoint] = index


def check_resolved(located: Located, spec: SiteSpec, site: Site, base_dir: Path) -> None:
    index_of = {node.name: i for i, node in enumerate(spec.nodes)}
    if len(site.nodes) == 1:
        located.error(
            ("nodes",),
            "a one-node site has no cluster links: no routes will be generated",
            severity="warning",
        )
    # Route names derive from node names; '-' and '_' map to the same identifier.
    by_route: dict[str, str] = {}
    for node in site.nodes:
        route = node.name.replace("-", "_")
        if route in by_route and by_route[route] != node.name:
            located.error(
                ("nodes", index_of[node.name], "name"),
                f"node names '{by_route[route]}' and '{node.name}' give the same route name; "
                "rename one",
            )
        by_route.setdefault(route, node.name)
    clients: dict[str, tuple[str, str]] = {}
    reported = False
    for link in site.links:
        if link.client_id in clients and not reported:
            a, b = clients[link.client_id]
            located.error(
                ("client_id_format",),
                f"CLIENT_ID '{link.client_id}' is used by links {a}->{b} and "
                f"{link.source}->{link.target}; client ids must be unique (include {{node}} "
                "and {peer})",
            )
            reported = True
        clients.setdefault(link.client_id, (link.source, link.target))
    if not reported and site.links:
        try:
            lot_safe(site.links[0].client_id)
        except ValueError as exc:
            located.error(("client_id_format",), f"CLIENT_ID '{site.links[0].client_id}' {exc}")
    _check_link_overrides(located, spec, site)
    used_regions = {node.region for node in site.nodes}
    for region in spec.regions:
        if region not in used_regions:
            located.error(
                ("regions", region), f"region '{region}' has no nodes", key=True, severity="warning"
            )
    if spec.templates is not None:
        templates = base_dir / spec.templates
        if not templates.is_dir():
            located.error(("templates",), f"templates directory '{spec.templates}' does not exist")
    plaintext = [node.name for node in site.nodes if not node.tls]
    if plaintext and len(site.nodes) > 1:
        located.error(
            ("defaults",) if ("defaults",) in located.values else (),
            f"TLS is off for {len(plaintext)} node(s): cluster links will carry the cluster "
            "password in clear (set `tls: true` in production)",
            severity="warning",
        )


def _check_link_overrides(located: Located, spec: SiteSpec, site: Site) -> None:
    nodes = {node.name for node in site.nodes}
    regions = set(site.regions)
    seen: dict[frozenset[str], int] = {}
    for index, override in enumerate(spec.links):
        a, b = override.between
        for position, name in enumerate((a, b)):
            if name in nodes and name in regions:
                located.error(
                    ("links", index, "between", position),
                    f"'{name}' is both a node and a region; rename one",
                )
            elif name not in nodes and name not in regions:
                located.error(
                    ("links", index, "between", position),
                    f"'{name}' is neither a node nor a region of this site",
                )
        if a == b and a in nodes:
            located.error(("links", index, "between"), "a link joins two different nodes")
        pair = frozenset((a, b))
        if pair in seen:
            located.error(
                ("links", index, "between"),
                f"links[{seen[pair]}] already sets the validity between {a} and {b}",
            )
        seen.setdefault(pair, index)
