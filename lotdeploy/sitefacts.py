"""The site as lotdeploy works with it: the spec, bound to its workspace's facts.

Two facts of the workspace change what the nodes must run, beyond what the spec says:

* **Adopted routes** (`State.adopted`, written by `lotdeploy import`): a link lotdeploy took
  over from a hand-made cluster keeps the route's name and client id, so lotdeploy manages
  it in place instead of adding its own beside it; the other hand-made routes it owns on a
  node (duplicates, strays) are its to remove. From a take-over's renaming phase 2 on
  (`names` rotation), the links take lotdeploy's names and the old ones are removed.
* **A TLS take-over in its accept phase** (`tls` rotation, phase 1): a node the site puts on
  TLS gets its certificate and opens its TLS listener, while its peers' routes still come
  in plain on the port they used (`Rotation.detail["ports"]`); phase 2 moves them.

`bind_site` makes the one Site every layer reads (the plan, render, apply, the refresh,
verify, rollback): their links carry those names and ports, and `Site.ownership` says which
routes lotdeploy may touch. A site with no such facts is returned as it is. Pure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lotdeploy.model import Site
from lotdeploy.ownership import Adoption
from lotdeploy.state import State
from lotdeploy.values import NAME_MAX_BYTES, Role, problem

#: The take-over's phase from which adopted routes carry lotdeploy's names.
RENAMED_FROM_PHASE = 2
#: The TLS take-over's phase in which peers still come in plain.
TLS_ACCEPT_PHASE = 1


def bind_site(site: Site, state: State) -> Site:
    """`site` (as its spec says, or bound before) bound to the facts `state` holds now."""
    base = site.spec_site or site
    adoption = adoption_of(base, state)
    plain = plain_ports(base, state)
    if not adoption and not plain:
        return base
    key = (adoption.key, tuple(sorted(plain.items())))
    if site.spec_site is not None and site.facts_key == key:
        return site
    nodes = tuple(
        replace(node, peer_port=plain[node.name], peer_tls=False) if node.name in plain else node
        for node in base.nodes
    )
    return replace(
        base,
        nodes=nodes,
        mesh=replace(base.mesh, adopted=adoption),
        spec_site=base,
        facts_key=key,
    )


def applied_names(state: State) -> dict[tuple[str, str], str]:
    """(node, peer) -> the name of the route lotdeploy last gave `node` to `peer` (its
    record). What a check of the links as applied looks for: during a take-over's renaming
    the nodes of later waves still run the old names (the site's links have the new)."""
    return {
        (node, str(attrs["peer"])): route
        for node, record in state.nodes.items()
        for route, attrs in record.routes.items()
        if attrs and attrs.get("peer")
    }


def plain_ports(site: Site, state: State) -> dict[str, int]:
    """node -> the plain port its peers still use (a TLS take-over's accept phase)."""
    rotation = state.rotation("tls")
    if rotation is None or rotation.phase != TLS_ACCEPT_PHASE:
        return {}
    ports: dict[str, Any] = rotation.detail.get("ports", {})
    return {node.name: int(ports[node.name]) for node in site.nodes if node.name in ports}


def adoption_of(site: Site, state: State) -> Adoption:
    """The adopted routes of `state` for the site's nodes, made consistent: a kept name
    never collides with another route's on its node, a kept client id is LOT-safe and
    unique in the cluster (else the link takes the site's own, and the plan shows it)."""
    if not state.adopted:
        return Adoption()
    names = {node.name for node in site.nodes}
    renamed = _phase(state, "names") >= RENAMED_FROM_PHASE
    removals: dict[str, set[str]] = {}
    wanted: dict[tuple[str, str], tuple[str, str]] = {}
    for node, record in state.adopted.items():
        if node not in names:
            continue
        removals.setdefault(node, set()).update(record.remove)
        for peer, route in record.routes.items():
            if renamed or peer not in names or peer == node:
                removals[node].add(route)
                continue
            client = record.client_ids.get(peer, "")
            wanted[node, peer] = (route, client)
    # what each link would be called by the site's own rule (lotdeploy_<peer>, the format)
    own: dict[tuple[str, str], tuple[str, str]] = {
        (source.name, target.name): (route, client)
        for source in site.nodes
        for target, route, client, _, _ in site.link_rows(source)
    }
    resolved = _resolve(wanted, own, removals)
    links: dict[str, dict[str, tuple[str, str]]] = {}
    for (source, peer), kept in resolved.items():
        links.setdefault(source, {})[peer] = kept
    return Adoption(
        links,
        {node: frozenset(found) for node, found in removals.items() if found},
    )


def _phase(state: State, kind: str) -> int:
    rotation = state.rotation(kind)
    return rotation.phase if rotation is not None else 0


def _resolve(
    wanted: dict[tuple[str, str], tuple[str, str]],
    own: dict[tuple[str, str], tuple[str, str]],
    removals: dict[str, set[str]],
) -> dict[tuple[str, str], tuple[str, str]]:
    """(route name, client id) each adopted link keeps.

    A name is dropped (the route goes to the node's removals) when another link on its
    node gets it: lotdeploy's own name of a link not adopted, or an adopted one taken
    first in (source, peer) order. A client id is dropped for the site's format when it is
    not LOT-safe, or when another link of the cluster has it: of links sharing one, a link
    whose id is its format id keeps it, else the first in order."""
    taken: dict[str, set[str]] = {}
    for (source, peer), (route, _) in own.items():
        if (source, peer) not in wanted:
            taken.setdefault(source, set()).add(route)
    names: dict[tuple[str, str], str] = {}
    for link, (route, _) in sorted(wanted.items()):
        if link not in own:
            continue  # not a link of the site
        used = taken.setdefault(link[0], set())
        if route in used:
            removals.setdefault(link[0], set()).add(route)
            continue
        used.add(route)
        names[link] = route
    ids = {link: client for link, (_, client) in own.items()}
    hand_made: set[tuple[str, str]] = set()
    for link in names:
        client = wanted[link][1]
        if (
            client
            and client != ids[link]
            and problem(client, Role.LOT_STRING, NAME_MAX_BYTES) is None
        ):
            ids[link] = client
            hand_made.add(link)
    for _ in range(len(hand_made) + 1):  # each round drops at least one hand-made id
        sharing: dict[str, list[tuple[str, str]]] = {}
        for link, client in ids.items():
            sharing.setdefault(client, []).append(link)
        dropped = False
        for group in sharing.values():
            if len(group) < 2:
                continue
            losers = [link for link in sorted(group) if link in hand_made]
            if len(losers) == len(group):
                losers = losers[1:]
            for link in losers:
                ids[link] = own[link][1]
                hand_made.discard(link)
                dropped = True
        if not dropped:
            break
    return {link: (route, ids[link]) for link, route in names.items()}
