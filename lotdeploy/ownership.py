"""Which routes lotdeploy may touch on a node: the one rule, used everywhere.

A broker runs routes lotdeploy made (named `lotdeploy_<peer>`), and often routes someone
wrote by hand. lotdeploy changes or removes a route only when it owns it: its own prefix,
or a hand-made route `lotdeploy import` took over on that node (`Adoption`: the routes it
keeps under their names, and the duplicates and strays it is to remove). Apply's
activation, the refresh's detection of extra routes, rollback, verify and status all ask
`Site.ownership` (an `Ownership`); nothing else decides it. Everything here is pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

#: The prefix of every route lotdeploy names itself (model.route_name_for).
OWN_PREFIX = "lotdeploy_"


@dataclass(frozen=True)
class Ownership:
    """`owns(node, route)`: whether lotdeploy may change or remove `route` on `node`."""

    #: node -> hand-made route names lotdeploy took over there (kept or to remove)
    adopted: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def owns(self, node: str, route: str) -> bool:
        return route.startswith(OWN_PREFIX) or route in self.adopted.get(node, ())

    def of(self, node: str) -> NodeOwnership:
        """The rule for one node, for code that handles one broker."""
        return NodeOwnership(self, node)


@dataclass(frozen=True)
class NodeOwnership:
    """`Ownership.owns` for one node: `owns(route)`."""

    ownership: Ownership
    node: str

    def owns(self, route: str) -> bool:
        return self.ownership.owns(self.node, route)

    def __call__(self, route: str) -> bool:
        return self.owns(route)


#: Only lotdeploy's own routes (a site with nothing adopted), for all nodes and for one.
PREFIX_ONLY = Ownership()
PREFIX_ONLY_NODE = NodeOwnership(PREFIX_ONLY, "")


@dataclass(frozen=True, eq=False)
class Adoption:
    """Hand-made routes lotdeploy manages in place (from the workspace's `adopted` record).

    `links`: source -> peer -> (route name, client id) the link keeps; `removals`: source ->
    other hand-made route names lotdeploy owns there (duplicates, strays: to remove).
    Equality and hash by content (a Site holds it)."""

    links: Mapping[str, Mapping[str, tuple[str, str]]] = field(default_factory=dict)
    removals: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.links or self.removals)

    @cached_property
    def key(self) -> tuple[object, ...]:
        return (
            tuple(
                (source, tuple(sorted(peers.items())))
                for source, peers in sorted(self.links.items())
            ),
            tuple(
                (source, tuple(sorted(names))) for source, names in sorted(self.removals.items())
            ),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Adoption) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @cached_property
    def ownership(self) -> Ownership:
        owned: dict[str, set[str]] = {}
        for source, peers in self.links.items():
            owned.setdefault(source, set()).update(route for route, _ in peers.values())
        for source, names in self.removals.items():
            owned.setdefault(source, set()).update(names)
        return Ownership({node: frozenset(names) for node, names in owned.items()})
