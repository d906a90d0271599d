"""Semantic checks the schema cannot express: uniqueness, references, topology sanity,
paths that would collide, settings that contradict each other.

`check_raw` works on the raw YAML data, `check_resolved` on a resolved site; both run even
when the schema found errors elsewhere (then on the parts that are valid, see
`validation.valid_parts`), so one run reports every error of the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lotdeploy.model import DEFAULT_PORT, DEFAULT_REGION, DEFAULT_TLS_PORT, Node, PkiPolicy, Site
from lotdeploy.spec.schema import SiteSpec, lot_safe
from lotdeploy.spec.validation import Indices
from lotdeploy.spec.yamlsource import Located, Path_
from lotdeploy.values import NAME_MAX_BYTES, paths_overlap


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
    _check_pki(located, data.get("pki"))
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


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_pki(located: Located, pki: Any) -> None:
    """Lifetimes that contradict each other: refused, not silently clamped."""
    if not isinstance(pki, dict):
        return
    cert = _int(pki.get("cert_lifetime_days"))
    ca = _int(pki.get("ca_lifetime_days"))
    renew = _int(pki.get("renew_before_days"))
    default = PkiPolicy()
    cert_days = cert if "cert_lifetime_days" in pki else default.cert_lifetime_days
    ca_days = ca if "ca_lifetime_days" in pki else default.ca_lifetime_days
    if renew is not None and cert_days is not None and renew >= cert_days:
        located.error(
            ("pki", "renew_before_days"),
            f"pki.renew_before_days ({renew}) must be less than pki.cert_lifetime_days "
            f"({cert_days}): every certificate would be due at once, and every render would "
            "issue new keys",
        )
    # Only a lifetime written out is a contradiction: the default one is capped by a short
    # CA's not-after (no churn; plan warns to rotate the CA), as docs/pki.md describes.
    if cert is not None and ca_days is not None and cert > ca_days:
        located.error(
            ("pki", "cert_lifetime_days"),
            f"pki.cert_lifetime_days ({cert_days}) is longer than pki.ca_lifetime_days "
            f"({ca_days}): no certificate can outlive the CA that signs it",
        )


def check_resolved(
    located: Located,
    spec: SiteSpec,
    site: Site,
    base_dir: Path,
    indices: Indices | None = None,
    partial: bool = False,
) -> None:
    """Checks on the resolved site; `partial` (a spec of the valid parts only) skips the
    warnings, which would describe a site the file does not define."""
    indices = indices or Indices.identity(spec)
    index_of = {node.name: indices.nodes[i] for i, node in enumerate(spec.nodes)}
    _check_node_paths(located, spec, site, base_dir, index_of)
    _check_rollout(located, spec, site)
    if len(site.nodes) == 1 and not partial:
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
    _check_client_ids(located, site)
    _check_link_overrides(located, spec, site, indices)
    if spec.templates is not None:
        templates = base_dir / spec.templates
        if templates.exists() and not templates.is_dir():
            located.error(("templates",), f"templates path '{spec.templates}' is not a directory")
        elif not templates.is_dir():
            located.error(("templates",), f"templates directory '{spec.templates}' does not exist")
    if partial:
        return
    used_regions = {node.region for node in site.nodes}
    for region in spec.regions:
        if region not in used_regions:
            located.error(
                ("regions", region), f"region '{region}' has no nodes", key=True, severity="warning"
            )
    plaintext = [node.name for node in site.nodes if not node.tls]
    if plaintext and len(site.nodes) > 1:
        located.error(
            ("defaults",) if ("defaults",) in located.values else (),
            f"TLS is off for {len(plaintext)} node(s): cluster links will carry the cluster "
            "password in clear (set `tls: true` in production)",
            severity="warning",
        )


def _check_client_ids(located: Located, site: Site) -> None:
    """Client ids must be unique and LOT-safe; walked node by node, keeping only the ids
    (999,000 at 1,000 nodes), and the first duplicate's pair found again when reported.
    What the format and the names already prove (lotdeploy.clientids) is not checked id by
    id: the common case holds no id at all, and memory grows with the node count."""
    if not site.client_ids_unique and _duplicate_client_id(located, site):
        return
    if site.client_ids_plain:
        return
    for source in site.nodes:
        for target, _, client_id, _, _ in site.link_rows(source):
            try:
                lot_safe(client_id, NAME_MAX_BYTES)
            except ValueError as exc:
                located.error(
                    ("client_id_format",), f"CLIENT_ID of {source.name}->{target.name} {exc}"
                )
                return


def _duplicate_client_id(located: Located, site: Site) -> bool:
    """Report the first client id two links share (True if there is one)."""
    seen: set[str] = set()
    for source in site.nodes:
        for target, _, client_id, _, _ in site.link_rows(source):
            if client_id not in seen:
                seen.add(client_id)
                continue
            a, b = next(
                (link.source, link.target) for link in site.links if link.client_id == client_id
            )
            located.error(
                ("client_id_format",),
                f"CLIENT_ID '{client_id}' is used by links {a}->{b} and "
                f"{source.name}->{target.name}; client ids must be unique (include {{node}} "
                "and {peer})",
            )
            return True
    return False


def _check_link_overrides(located: Located, spec: SiteSpec, site: Site, indices: Indices) -> None:
    nodes = {node.name for node in site.nodes}
    regions = set(site.regions)
    seen: dict[frozenset[str], int] = {}
    for position_in_spec, override in enumerate(spec.links):
        index = indices.links[position_in_spec]
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
        kinds = {
            "node" if n in nodes else "region" for n in (a, b) if (n in nodes) != (n in regions)
        }
        if kinds == {"node", "region"}:
            located.error(
                ("links", index, "between"),
                f"links[{index}] joins a node and a region ({a}, {b}): name two nodes or two "
                "regions (a node-region pair would be ignored)",
            )
        pair = frozenset((a, b))
        if pair in seen:
            located.error(
                ("links", index, "between"),
                f"links[{seen[pair]}] already sets the validity between {a} and {b}",
            )
        seen.setdefault(pair, index)


def _source(located: Located, node_index: int, region: str, block: str, key: str) -> Path_ | None:
    """Where the value of `block.key` that a node uses is written (None: the built-in)."""
    data = located.data if isinstance(located.data, dict) else {}
    raw_nodes, raw_regions = data.get("nodes"), data.get("regions")
    nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
    regions: dict[Any, Any] = raw_regions if isinstance(raw_regions, dict) else {}
    layers: list[tuple[Path_, Any]] = [
        (("nodes", node_index), nodes[node_index] if node_index < len(nodes) else None),
        (("regions", region), regions.get(region)),
        (("defaults",), data.get("defaults")),
    ]
    for path, layer in layers:
        sub = layer.get(block) if isinstance(layer, dict) else None
        if isinstance(sub, dict) and sub.get(key) is not None:
            return (*path, block, key)
    return None


def _check_node_paths(
    located: Located, spec: SiteSpec, site: Site, base_dir: Path, index_of: dict[str, int]
) -> None:
    """Per node, no two spec paths may name the same file: one would silently replace the
    other (bundle files), or a directory would be written inside the other."""
    reported: set[tuple[Path_, str]] = set()

    def report(node: Node, first: tuple[str, str], second: tuple[str, str], why: str) -> None:
        (block_a, key_a), (block_b, key_b) = first, second
        index = index_of[node.name]
        path_b = _source(located, index, node.region, block_b, key_b)
        path_a = _source(located, index, node.region, block_a, key_a)
        where = path_b or path_a or ("nodes", index)
        message = f"{block_b}.{key_b} and {block_a}.{key_a} {why}"
        if (where, message) not in reported:
            reported.add((where, message))
            located.error(where, message)

    for node in site.nodes:
        broker = node.broker
        files = [("cert_file", broker.cert_file), ("key_file", broker.key_file)]
        files.append(("ca_file", broker.ca_file))
        for i, (key_a, name_a) in enumerate(files):
            for key_b, name_b in files[i + 1 :]:
                if name_a == name_b:
                    report(
                        node,
                        ("broker", key_a),
                        ("broker", key_b),
                        f"are both '{name_a}': each TLS file needs its own name",
                    )
        if paths_overlap(broker.tls_dir, broker.release_dir):
            report(
                node,
                ("broker", "tls_dir"),
                ("broker", "release_dir"),
                f"overlap ('{broker.release_dir}', '{broker.tls_dir}'): they must be separate "
                "directories, neither inside the other",
            )
        if broker.docker is not None and broker.broker_tls_dir is None:
            # the container sees the project volume only: a TLS directory elsewhere on the
            # host would be written and never read
            report(
                node,
                ("docker", "volume_dir"),
                ("broker", "tls_dir"),
                f"disagree: '{broker.tls_dir}' is outside the docker volume "
                f"'{broker.docker.volume_dir}', so the broker's container cannot read it",
            )
        local = [
            ("ssh", "key", node.ssh.key),
            ("ssh", "known_hosts", node.ssh.known_hosts),
            ("broker", "admin_password_file", broker.admin_password_file),
        ]
        named = [(b, k, os.path.normpath(base_dir / p)) for b, k, p in local if p is not None]
        for i, (block_a, key_a, path_a) in enumerate(named):
            for block_b, key_b, path_b in named[i + 1 :]:
                if path_a == path_b:
                    report(
                        node,
                        (block_a, key_a),
                        (block_b, key_b),
                        "name the same file: each needs its own",
                    )


def _check_rollout(located: Located, spec: SiteSpec, site: Site) -> None:
    """Every name a `rollout:` section uses must select something (as --limit would)."""
    section = getattr(spec, "rollout", None)
    if section is None:
        return
    names = {n.name for n in site.nodes}
    words = names | {n.region for n in site.nodes} | {t for n in site.nodes for t in n.tags}
    if section.canary is not None and section.canary not in names:
        located.error(("rollout", "canary"), f"rollout.canary: no node named '{section.canary}'")
    seen: dict[str, int] = {}
    for index, wave in enumerate(section.waves or ()):
        for position, word in enumerate(wave.select):
            if word not in words:
                located.error(
                    ("rollout", "waves", index, "select", position),
                    f"rollout.waves[{index}].select: '{word}' is no node, region or tag",
                )
        name = wave.name or f"wave{index + 1}"
        if name in seen:
            located.error(
                ("rollout", "waves", index, "name"),
                f"rollout.waves[{index}]: wave name '{name}' is used by waves[{seen[name]}] too",
            )
        seen.setdefault(name, index)
