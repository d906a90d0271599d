"""From a surveyed cluster, the site spec and workspace records that reproduce it (pure).

What `lotdeploy import` writes (docs/adopt.md):

* **The site spec**: the nodes (named by the input site, by `--name`, by the client ids
  the routes carry (`Node1-to-Node2`), else `node1..`), their regions (the input site's, or
  `--region`), and per node what its peers' routes say about it (the target decides):
  TLS, port; the cluster user (the credential most routes log in with); validity per link
  class where most links agree, a `links` override for each link that does not (the larger
  of its two directions where they differ).
* **The adopted routes** (`State.adopted`): per link, the hand-made route lotdeploy keeps,
  under its name and client id; the other hand-made routes it takes over to remove, each
  with the reason (a second route to one peer, a route to no node of the cluster).
* **The node records**: each kept route as it runs (its attributes; a password other than
  the cluster's as version 0, which the plan replaces), the removals without attributes,
  the cluster user where the broker accepts its login (where it refuses it: a drift entry,
  so the plan creates it).
* **The cluster credential**: its password goes encrypted into the workspace's store.

So the first plan shows exactly what `audit` found wrong that an apply can put right, and
nothing for a cluster that is consistent.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.adopt.findings import credential_of, view
from lotdeploy.adopt.survey import Credential, LiveRoute, Member, Survey
from lotdeploy.model import (
    DEFAULT_REGION,
    DEFAULT_USERNAME,
    DEFAULT_VALIDITY_CROSS_REGION,
    DEFAULT_VALIDITY_IN_REGION,
)
from lotdeploy.protocol import DEFAULT_PORT, DEFAULT_TLS_PORT
from lotdeploy.state import AdoptedRoutes, NodeRecord

_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,47}")
_FROM_TO = re.compile(r"(.+)-to-(.+)")
#: Settings import decides from what runs: taken out of the input site wherever they are.
DECIDED = ("tls", "port", "username", "message_validity_sec", "cross_region_message_validity_sec")


@dataclass
class Imported:
    """What an import writes: the spec (plain data), the workspace's records, the password."""

    spec: dict[str, Any]
    adopted: dict[str, AdoptedRoutes]
    records: dict[str, NodeRecord]
    credential: Credential | None
    #: said to the operator: what import left alone, and why
    notes: list[str] = field(default_factory=list)


def node_names(found: Survey, given: dict[str, str]) -> dict[str, str]:
    """member -> node name: `given` (by address or member name), else what the client ids
    say (`X-to-Y` on routes from the member at X to the one at Y, when every vote agrees
    and the names are valid and distinct), else node1.. in address order."""
    members = found.members
    named = {m.name: given[m.name] for m in members if m.name in given}
    named |= {m.name: given[m.address] for m in members if m.address in given}
    votes: dict[str, Counter[str]] = {m.name: Counter() for m in members}
    for node in found.nodes.values():
        for route in node.routes:
            code = route.code
            match = _FROM_TO.fullmatch(code.client_id or "") if code is not None else None
            target = found.member_at(code.broker_address) if code is not None else None
            if match is None or target is None:
                continue
            votes[route.node][match.group(1)] += 1
            votes[target.name][match.group(2)] += 1
    guessed = {
        name: next(iter(count))
        for name, count in votes.items()
        if len(count) == 1 and _NODE_NAME.fullmatch(next(iter(count)))
    }
    if len(set(guessed.values())) == len(guessed) == len(members):
        return {m.name: named.get(m.name, guessed[m.name]) for m in members}
    out = dict(named)
    ordered = sorted(members, key=lambda m: _address_key(m.address))
    for index, member in enumerate(ordered, start=1):
        if member.name not in out:
            out[member.name] = f"node{index}"
    return out


def _address_key(address: str) -> tuple[int, Any]:
    try:
        return (0, ipaddress.ip_address(address))
    except ValueError:
        return (1, address)


def region_of(member: Member, regions: dict[str, str], name: str) -> str:
    """`--region REGION=ADDRESS|CIDR|NAME` mapping (target -> region) -> the member's
    region (the first target that matches it); `default` when none does."""
    for target, region in regions.items():
        if matches(member, target, name):
            return region
    return DEFAULT_REGION


def matches(member: Member, target: str, name: str) -> bool:
    """Whether `target` (an address, a network, a node name) names the member."""
    if target in (member.address, name, member.name):
        return True
    try:
        return ipaddress.ip_address(member.address) in ipaddress.ip_network(target, strict=False)
    except ValueError:
        return False


def _majority(values: list[Any], default: Any, prefer: Any = None) -> Any:
    """The most common value (ties: `prefer` when among them, else the smallest)."""
    if not values:
        return default
    counts = Counter(values)
    top = max(counts.values())
    best = sorted(v for v, c in counts.items() if c == top)
    return prefer if prefer in best else best[0]


def _kept(routes: list[LiveRoute], credential: Credential | None, shared: set[str]) -> LiveRoute:
    """Of a link's routes, the one lotdeploy keeps: Connected first, then the cluster's
    credential, then a client id no other route has, then the name."""

    def rank(route: LiveRoute) -> tuple[bool, bool, bool, str]:
        code = route.code
        client = code.client_id if code is not None else None
        return (
            route.connection not in (None, "Connected"),
            credential_of(route) != credential,
            client in shared,
            route.name,
        )

    return min(routes, key=rank)


def infer(
    found: Survey,
    names: dict[str, str],
    regions: dict[str, str],
    input_spec: dict[str, Any] | None = None,
    site_name: str = "imported",
    keep_strays: bool = False,
    now: str = "",
) -> Imported:
    """Everything an import writes, from the survey (see the module doc). `names`: member
    -> node name (node_names); `regions`: node name -> region; `input_spec`: the site file
    the cluster was read through (its access settings are kept)."""
    seen = view(found)
    credential = seen.credential
    ids = Counter(
        r.code.client_id for r in [*seen.member_routes, *seen.strays] if r.code and r.code.client_id
    )
    shared = {client for client, count in ids.items() if count > 1}
    adopted: dict[str, AdoptedRoutes] = {names[m.name]: AdoptedRoutes() for m in found.members}
    kept: dict[tuple[str, str], LiveRoute] = {}
    for (source, target), routes in sorted(seen.links.items()):
        keep = _kept(routes, credential, shared)
        kept[source, target] = keep
        taken = adopted[names[source]]
        taken.routes[names[target]] = keep.name
        if keep.code is not None and keep.code.client_id:
            taken.client_ids[names[target]] = keep.code.client_id
        for other in routes:
            if other is not keep:
                taken.remove[other.name] = (
                    f"a second route to {names[target]} beside {keep.name}: every message went "
                    "twice"
                )
    notes: list[str] = []
    for route in seen.strays:
        code = route.code
        assert code is not None
        where = f"{code.broker_address}:{code.broker_port}"
        if keep_strays:
            notes.append(
                f"node {names[route.node]} route {route.name} goes to {where}, no node of the "
                "cluster: left alone (--keep-strays)"
            )
        else:
            adopted[names[route.node]].remove[route.name] = (
                f"goes to {where}, no node of the cluster"
            )
    for route in seen.unreadable:
        notes.append(
            f"node {names[route.node]} route {route.name}: its code could not be read as one "
            "MQTT_CLUSTER route: left alone"
        )

    by_name = {names[m.name]: m for m in found.members}
    region = {name: regions.get(name, DEFAULT_REGION) for name in by_name}
    # the target decides: TLS and port from the routes that lead to each node
    incoming: dict[str, list[LiveRoute]] = {name: [] for name in by_name}
    for (_, target), route in kept.items():
        incoming[names[target]].append(route)
    every = [r.code for r in kept.values() if r.code is not None]
    cluster_tls = _majority([c.use_tls for c in every], False, True)
    tls = {
        name: _majority([r.code.use_tls for r in routes if r.code], cluster_tls, True)
        for name, routes in incoming.items()
    }
    ports = {
        name: _majority(
            [r.code.broker_port for r in routes if r.code and r.code.use_tls == tls[name]],
            by_name[name].port if not tls[name] else DEFAULT_TLS_PORT,
        )
        for name, routes in incoming.items()
    }
    default_tls = _majority(list(tls.values()), False, True)
    username = credential.username if credential is not None else DEFAULT_USERNAME

    # validity: the class default the one most routes have; per unordered pair the larger
    # of its directions, and a `links` override for every pair whose value differs
    pair_value: dict[tuple[str, str], int | None] = {}
    for a, b in {tuple(sorted((names[s], names[t]))) for s, t in kept}:
        values = [
            r.code.message_validity_sec
            for (s, t), r in kept.items()
            if {names[s], names[t]} == {a, b} and r.code and r.code.message_validity_sec
        ]
        pair_value[a, b] = max(values) if values else None
    said = [
        (names[s], names[t], r.code.message_validity_sec)
        for (s, t), r in kept.items()
        if r.code and r.code.message_validity_sec
    ]
    in_region = [v for a, b, v in said if region[a] == region[b]]
    cross = [v for a, b, v in said if region[a] != region[b]]
    validity_in = _majority(in_region, DEFAULT_VALIDITY_IN_REGION)
    validity_cross = _majority(cross, DEFAULT_VALIDITY_CROSS_REGION)
    overrides = [
        {"between": [a, b], "message_validity_sec": v}
        for (a, b), v in sorted(pair_value.items())
        if v is not None and v != (validity_in if region[a] == region[b] else validity_cross)
    ]
    link_class = {
        pair: "override" if any(o["between"] == list(pair) for o in overrides) else "in-region"
        for pair in pair_value
    }

    spec = _spec(
        input_spec,
        site_name,
        by_name,
        region,
        {
            "tls": default_tls,
            "username": username,
            "message_validity_sec": validity_in,
            "cross_region_message_validity_sec": validity_cross,
        },
        tls,
        ports,
        overrides,
    )

    records: dict[str, NodeRecord] = {}
    for name, member in by_name.items():
        record = NodeRecord(applied_at=now or None)
        for (source, target), route in kept.items():
            if names[source] != name or route.code is None:
                continue
            peer = names[target]
            pair = (min(name, peer), max(name, peer))
            cls = link_class.get(pair, "in-region")
            if cls != "override" and region[name] != region[peer]:
                cls = "cross-region"
            record.routes[route.name] = _attrs(route, peer, region[peer], cls, credential)
        for removed in adopted[name].remove:
            record.routes[removed] = {}
        surveyed = found.nodes[member.name]
        if credential is not None and credential in surveyed.logins:
            if surveyed.logins[credential]:
                record.users = [credential.username]
            else:
                record.drift[f"user/{credential.username}"] = "refused"
        if record.routes or record.users or record.drift:
            records[name] = record
    adopted = {n: a for n, a in adopted.items() if a.routes or a.remove}
    return Imported(spec, adopted, records, credential, notes)


def _attrs(
    route: LiveRoute, peer: str, peer_region: str, link_class: str, credential: Credential | None
) -> dict[str, Any]:
    """The route as the state records what lotdeploy applied (no password: its version, 1
    for the cluster's, 0 for another, which the plan replaces)."""
    code = route.code
    assert code is not None
    attrs: dict[str, Any] = {
        "name": route.name,
        "peer": peer,
        "peer_region": peer_region,
        "link_class": link_class,
        "broker_address": code.broker_address or "",
        "broker_port": code.broker_port or 0,
        "client_id": code.client_id or "",
        "username": code.username or "",
        "use_tls": code.use_tls,
        "password_version": 1 if credential_of(route) == credential else 0,
    }
    if code.message_validity_sec is not None:
        attrs["message_validity_sec"] = code.message_validity_sec
    return attrs


#: Keys of the input site (top level) an import keeps as they are.
_KEPT_TOP = ("pki", "rollout", "transport", "ansible", "templates", "client_id_format", "topology")


def _spec(
    input_spec: dict[str, Any] | None,
    site_name: str,
    members: dict[str, Member],
    region: dict[str, str],
    defaults: dict[str, Any],
    tls: dict[str, bool],
    ports: dict[str, int],
    overrides: list[dict[str, Any]],
) -> dict[str, Any]:
    """The site spec as plain data (YAML order: site, defaults, regions, nodes, links)."""
    source = input_spec or {}
    old_nodes = {str(n.get("name")): n for n in source.get("nodes", []) if isinstance(n, dict)}
    kept_defaults = {k: v for k, v in (source.get("defaults") or {}).items() if k not in DECIDED}
    if defaults["username"] == DEFAULT_USERNAME:
        del defaults["username"]
    out: dict[str, Any] = {"site": source.get("site", site_name)}
    out["defaults"] = {**defaults, **kept_defaults}
    regions_in = source.get("regions") or {}
    out["regions"] = {
        r: {k: v for k, v in (regions_in.get(r) or {}).items() if k not in DECIDED}
        for r in sorted(set(region.values()) | set(regions_in))
    }
    nodes = []
    for name in sorted(members):
        member = members[name]
        entry: dict[str, Any] = {"name": name, "address": member.address}
        entry["region"] = region[name]
        if tls[name] != defaults["tls"]:
            entry["tls"] = tls[name]
        if ports[name] != (DEFAULT_TLS_PORT if tls[name] else DEFAULT_PORT):
            entry["port"] = ports[name]
        for key, value in old_nodes.get(name, {}).items():
            if key not in DECIDED and key not in ("name", "address", "region"):
                entry[key] = value
        nodes.append(entry)
    out["nodes"] = nodes
    if overrides:
        out["links"] = overrides
    for key in _KEPT_TOP:
        if key in source:
            out[key] = source[key]
    return out
