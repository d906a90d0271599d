"""The resolved site: every setting decided (node > region > defaults > built-in), and the
topology (which node links to which, with what validity).

Pure data, built from a validated SiteSpec; everything downstream (compiler, PKI, plan,
apply, the lab) reads this, never the raw spec.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Literal, overload

from lotdeploy import clientids, protocol
from lotdeploy.ownership import OWN_PREFIX, Adoption, Ownership
from lotdeploy.profiles import DEFAULT_PROFILE, DockerLayout, ProfileName, broker_path
from lotdeploy.protocol import DEFAULT_PORT as DEFAULT_PORT
from lotdeploy.protocol import DEFAULT_TLS_PORT as DEFAULT_TLS_PORT

# Built-in defaults, the bottom of the precedence chain (the broker's own: broker.protocol).
DEFAULT_REGION = "default"
DEFAULT_VALIDITY_IN_REGION = 30  # vendor: 30-60 s for standard operational data
DEFAULT_VALIDITY_CROSS_REGION = 120  # vendor: 60-300 s for long or unreliable links
DEFAULT_USERNAME = "cluster"
#: Every route lotdeploy creates carries this prefix. Which routes lotdeploy may touch on a
#: node is decided in one place: `Site.ownership` (lotdeploy.ownership), these and the
#: hand-made routes an import adopted.
ROUTE_PREFIX = OWN_PREFIX

LinkClass = Literal["in-region", "cross-region", "override"]


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int = 22
    user: str = "root"
    key: Path | None = None
    known_hosts: Path | None = None
    jump: str | None = None


@dataclass(frozen=True)
class BrokerAccess:
    """How lotdeploy reaches a node's broker and where its files live; defaults: the vendor's."""

    admin_host: str = protocol.DEFAULT_ADMIN_HOST
    admin_port: int = protocol.DEFAULT_ADMIN_PORT
    admin_user: str = protocol.DEFAULT_ADMIN_USER
    admin_password_file: Path | None = None
    admin_password_env: str | None = None
    tls_dir: str = protocol.DEFAULT_TLS_DIR
    cert_file: str = protocol.DEFAULT_CERT_FILE
    key_file: str = protocol.DEFAULT_KEY_FILE
    ca_file: str = protocol.DEFAULT_CA_FILE
    release_dir: str = protocol.DEFAULT_RELEASE_DIR
    reload_command: str = protocol.DEFAULT_RELOAD_COMMAND
    #: how the broker is installed (lotdeploy.profiles); the paths above are resolved
    profile: ProfileName = DEFAULT_PROFILE
    #: the docker profile's settings (None on any other profile)
    docker: DockerLayout | None = None

    @property
    def broker_tls_dir(self) -> str | None:
        """`tls_dir` as the broker itself sees it (inside its container on a docker node;
        None: outside the container's volume)."""
        return broker_path(self.docker, self.tls_dir)


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    port: int
    region: str
    tls: bool
    username: str
    message_validity_sec: int
    cross_region_message_validity_sec: int
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    tags: tuple[str, ...]
    ssh: SshTarget
    broker: BrokerAccess
    #: What its peers' routes connect with when that is not `port`/`tls`: set only while a
    #: TLS take-over is in its accept phase (the node serves TLS, its peers still come in
    #: plain; lotdeploy.sitefacts). None: `port` and `tls`.
    peer_port: int | None = None
    peer_tls: bool | None = None
    #: Where its routes take the cluster password from (lotdeploy.routesecret): "auto",
    #: "secret-store" or "inline"; None: the default (auto), left out of the digest
    password_source: str | None = None
    #: BROKER_PORT and USE_TLS of the routes that lead to this node (`peer_*`, else `port`
    #: and `tls`): plain fields, made once, since plan and render read them for every route
    route_port: int = field(init=False, repr=False, compare=False)
    route_tls: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        port = self.port if self.peer_port is None else self.peer_port
        object.__setattr__(self, "route_port", port)
        object.__setattr__(self, "route_tls", self.tls if self.peer_tls is None else self.peer_tls)


#: Node fields that exist only in a site bound to workspace facts, left out of the
#: description (and digest) when unset, so every other site's digest stays what it was.
_BOUND_NODE_FIELDS = ("peer_port", "peer_tls")
#: Node settings added after sites were first digested: left out when unset, likewise.
_OPTIONAL_NODE_FIELDS = ("password_source",)
#: Node fields derived from others: never described.
_DERIVED_NODE_FIELDS = ("route_port", "route_tls")


@dataclass(frozen=True)
class Link:
    """One directed cluster link: a route on `source` connecting to `target`."""

    source: str
    target: str
    route_name: str
    client_id: str
    message_validity_sec: int
    link_class: LinkClass


@dataclass(frozen=True)
class PkiPolicy:
    key_type: str = "ecdsa-p256"
    cert_lifetime_days: int = 397
    ca_lifetime_days: int = 3650
    renew_before_days: int | None = None


@dataclass(frozen=True)
class WavePolicy:
    """One explicit wave: node, region or tag names (resolved by lotdeploy.rollout.waves)."""

    name: str
    select: tuple[str, ...]
    max_fail_percentage: int | None = None


@dataclass(frozen=True)
class RolloutPolicy:
    """The site's `rollout:` section. Not part of the site digest: how a change is rolled
    out is not what the nodes run."""

    enabled: bool = False  # the site has a rollout: section
    canary: str | None = None
    waves: tuple[WavePolicy, ...] = ()
    max_fail_percentage: int = 0
    max_failed_nodes: int | None = None
    rollback: str = "auto"
    gate_timeout_sec: int = 30
    confirm_timeout_sec: int | None = None


#: The client id format a site gets when it names none.
DEFAULT_CLIENT_ID_FORMAT = "{node}-to-{peer}"


@dataclass(frozen=True)
class Mesh:
    """The topology's rule: which node links to which, and how each link is named and timed.

    Links are not stored (999,000 at 1,000 nodes): every link's route name, client id and
    validity are pure functions of (source, target) and this rule, made when asked for.
    """

    #: every node links to every other node (the only topology for now)
    full: bool = True
    client_id_format: str = DEFAULT_CLIENT_ID_FORMAT
    #: validity overrides in spec order: (the two node or region names, seconds)
    overrides: tuple[tuple[tuple[str, ...], int], ...] = ()
    #: hand-made routes lotdeploy took over (`lotdeploy import`): (source, peer) ->
    #: (route name, client id) they keep, and the other hand-made route names it owns on
    #: each node (to remove). Empty unless the site is bound to its workspace's facts
    #: (lotdeploy.sitefacts.bind_site).
    adopted: Adoption = field(default_factory=lambda: Adoption())


#: One link without its source: (target node, route name, client id, validity, class).
LinkRow = tuple[Node, str, str, int, LinkClass]


class Links(Sequence[Link]):
    """`Site.links`: every link, sorted by (source, target), made node by node as it is
    iterated; only indexing holds them all. Equal to a tuple of the same links."""

    __slots__ = ("_site",)

    def __init__(self, site: Site) -> None:
        self._site = site

    def __iter__(self) -> Iterator[Link]:
        site = self._site
        for source in site.nodes:
            name = source.name
            for target, route, client, validity, link_class in site.link_rows(source):
                yield Link(name, target.name, route, client, validity, link_class)

    def __len__(self) -> int:
        return self._site.link_count

    def __bool__(self) -> bool:
        return self._site.link_count > 0

    @overload
    def __getitem__(self, index: int) -> Link: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Link, ...]: ...

    def __getitem__(self, index: int | slice) -> Link | tuple[Link, ...]:
        return self._site.all_links[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Links | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} links of site {self._site.name}>"


@dataclass(frozen=True)
class Site:
    name: str
    source: Path
    nodes: tuple[Node, ...]  # sorted by name: output never depends on spec order
    regions: tuple[str, ...]
    pki: PkiPolicy
    templates_dir: Path | None = None
    base_dir: Path = Path(".")  # where relative paths in the spec start; not part of digest
    mesh: Mesh = Mesh()
    rollout: RolloutPolicy = RolloutPolicy()
    #: how lotdeploy reaches the nodes (lotdeploy.transport.KINDS); not part of the digest:
    #: the same site means the same node state whichever transport delivers it
    transport: str = "openssh"
    ansible_vault_password_file: Path | None = None
    ansible_python_interpreter: str = "/usr/bin/python3"
    #: the site as its spec says, when this one is bound to workspace facts (adopted
    #: routes, a take-over's phase: lotdeploy.sitefacts); not part of equality or digest
    spec_site: Site | None = field(default=None, compare=False, repr=False)
    #: what the binding was made from (lotdeploy.sitefacts), to bind again only on change
    facts_key: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def ownership(self) -> Ownership:
        """Which routes lotdeploy may touch on each node (the one rule: lotdeploy.ownership)."""
        return self.mesh.adopted.ownership

    def node(self, name: str) -> Node:
        return self._nodes_by_name[name]

    @cached_property
    def _nodes_by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    @property
    def links(self) -> Links:
        """Every link, sorted by (source, target); made as iterated (see `Links`)."""
        return Links(self)

    @cached_property
    def all_links(self) -> tuple[Link, ...]:
        """Every link at once (O(routes) memory: for the rare caller that indexes them)."""
        return tuple(self.links)

    @cached_property
    def link_count(self) -> int:
        if not self.mesh.full:
            return 0
        names: dict[str, int] = {}
        for node in self.nodes:
            names[node.name] = names.get(node.name, 0) + 1
        return len(self.nodes) ** 2 - sum(count * count for count in names.values())

    def links_from(self, source: str) -> tuple[Link, ...]:
        """The links whose route runs on `source`, sorted by target (the last node asked
        for is kept: render and plan ask for each node's links more than once in a row)."""
        last = self.__dict__.get("_last_links_from")
        if last is not None and last[0] == source:
            links: tuple[Link, ...] = last[1]
            return links
        links = tuple(
            Link(source, target.name, route, client, validity, link_class)
            for node in self.nodes
            if node.name == source
            for target, route, client, validity, link_class in self.link_rows(node)
        )
        self.__dict__["_last_links_from"] = (source, links)
        return links

    def link_rows(self, source: Node) -> Iterator[LinkRow]:
        """The links of `source` (one of `nodes`), sorted by target, as plain tuples:
        what plan and render walk, node by node, without making Link objects."""
        if not self.mesh.full:
            return
        pairs, route_names = self._link_rules
        fmt = self.mesh.client_id_format
        name, region = source.name, source.region
        adopted = self.mesh.adopted.links.get(name) if self.mesh.adopted else None
        in_region, cross_region = (
            source.message_validity_sec,
            source.cross_region_message_validity_sec,
        )
        for target in self.nodes:
            peer = target.name
            if peer == name:
                continue
            if fmt == DEFAULT_CLIENT_ID_FORMAT:
                client = f"{name}-to-{peer}"
            else:
                client = fmt.format(
                    node=name, peer=peer, site=self.name, region=region, peer_region=target.region
                )
            route = route_names[peer]
            if adopted:  # a hand-made route lotdeploy took over keeps its name and client id
                kept = adopted.get(peer)
                if kept is not None:
                    route, client = kept
            # Node-pair override > region-pair override > the source's link-class setting.
            found = pairs.get(frozenset((name, peer))) if pairs else None
            if found is None and pairs:
                found = pairs.get(frozenset((region, target.region)))
            if found is not None:
                yield target, route, client, found, "override"
            elif region == target.region:
                yield target, route, client, in_region, "in-region"
            else:
                yield target, route, client, cross_region, "cross-region"

    @cached_property
    def _link_rules(self) -> tuple[dict[frozenset[str], int], dict[str, str]]:
        pairs: dict[frozenset[str], int] = {}
        for between, validity in self.mesh.overrides:
            pairs.setdefault(frozenset(between), validity)  # the first one written wins
        return pairs, {node.name: route_name_for(node.name) for node in self.nodes}

    @cached_property
    def client_ids_unique(self) -> bool:
        """No two links can share a client id: proven from the format and the names
        (lotdeploy.clientids), so the spec checks need not hold all the ids at once."""
        return clientids.unique_by_construction(self.mesh.client_id_format, self._client_id_values)

    @cached_property
    def client_ids_plain(self) -> bool:
        """Every link's client id is a plain word that fits (safe wherever it goes):
        proven once, so neither the spec checks nor the compiler check each id."""
        return clientids.plain_by_construction(self.mesh.client_id_format, self._client_id_values)

    @property
    def _client_id_values(self) -> dict[str, list[str]]:
        names = [node.name for node in self.nodes]
        regions = sorted({node.region for node in self.nodes})
        return {
            "node": names,
            "peer": names,
            "site": [self.name],
            "region": regions,
            "peer_region": regions,
        }

    @property
    def tls_nodes(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.tls)

    @cached_property
    def _digest(self) -> str:
        """sha256 of `canonical_json(self.describe())`, fed node by node: the links' part
        of that text is made one source node at a time, never as one document."""
        rest = canonical_json(self._describe_without_links())
        digest = hashlib.sha256(b'{"links":[')
        encode = encode_basestring_ascii
        # each peer's `"name","route",` is the same in every row that links to it
        adopted = bool(self.mesh.adopted)
        peers = {
            name: f"{encode(name)},{encode(route)}," for name, route in self._link_rules[1].items()
        }
        separator = ""
        for source in self.nodes:
            head = f"[{encode(source.name)},"
            if adopted:  # route names that differ per source: each row written out
                rows = [
                    f"{head}{encode(target.name)},{encode(route)},{encode(client)},"
                    f'{_json_int(validity)},"{link_class}"]'
                    for target, route, client, validity, link_class in self.link_rows(source)
                ]
            else:
                rows = [
                    f"{head}{peers[target.name]}{encode(client)},{_json_int(validity)},"
                    f'"{link_class}"]'
                    for target, _, client, validity, link_class in self.link_rows(source)
                ]
            if rows:
                digest.update((separator + ",".join(rows)).encode())
                separator = ","
        digest.update(b"],")
        digest.update(rest[1:].encode())
        return digest.hexdigest()

    def digest(self) -> str:
        """sha256 of the resolved model: what the site *means*, not how it was written."""
        return self._digest

    def _describe_without_links(self) -> dict[str, Any]:
        return {
            "site": self.name,
            "nodes": [_node_data(node) for node in self.nodes],
            "regions": list(self.regions),
            "pki": plain_data(self.pki),
            "templates": self.templates_dir.name if self.templates_dir else None,
        }

    def describe(self) -> dict[str, Any]:
        """The resolved model as plain data (its canonical JSON is what `digest` hashes)."""
        rest = self._describe_without_links()
        return {
            "site": rest.pop("site"),
            "nodes": rest.pop("nodes"),
            # tuples, not asdict(): 39,800 links in a 200-node mesh
            "links": [
                (
                    k.source,
                    k.target,
                    k.route_name,
                    k.client_id,
                    k.message_validity_sec,
                    k.link_class,
                )
                for k in self.links
            ],
            **rest,
        }


def _node_data(node: Node) -> dict[str, Any]:
    """A node as plain data; the fields of a bound site only when set (see Node)."""
    data: dict[str, Any] = plain_data(node)
    for name in (*_BOUND_NODE_FIELDS, *_OPTIONAL_NODE_FIELDS):
        if data.get(name) is None:
            data.pop(name, None)
    for name in _DERIVED_NODE_FIELDS:
        data.pop(name, None)
    broker = data["broker"]
    if broker["profile"] == DEFAULT_PROFILE and broker["docker"] is None:
        # a host install as before profiles existed: its digest stays what it was
        del broker["profile"], broker["docker"]
    return data


def plain_data(value: Any) -> Any:
    """`dataclasses.asdict` for what goes into `canonical_json` (the same JSON text), without
    its deep copy of every leaf: the site's values are immutable, and asdict of 1,000 nodes
    cost a plan 0.16 ms a node."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: plain_data(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if isinstance(value, dict):
        return {key: plain_data(item) for key, item in value.items()}
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _json_int(value: int) -> str:
    return int.__repr__(value) if type(value) is int else json.dumps(value)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def route_name_for(peer: str) -> str:
    """`lotdeploy_<peer>`, a bare LOT identifier (docs/coreflux-interface.md §1)."""
    return ROUTE_PREFIX + peer.replace("-", "_")


def username_for_version(base: str, version: int) -> str:
    """`cluster` for version 1, `cluster_v2`, `cluster_v3`... after credential rotations."""
    return base if version <= 1 else f"{base}_v{version}"
