"""The resolved site: every setting decided (node > region > defaults > built-in), and the
topology (which node links to which, with what validity).

Pure data, built from a validated SiteSpec; everything downstream (compiler, PKI, plan,
apply, the lab) reads this, never the raw spec.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from lotdeploy import protocol
from lotdeploy.protocol import DEFAULT_PORT as DEFAULT_PORT
from lotdeploy.protocol import DEFAULT_TLS_PORT as DEFAULT_TLS_PORT

# Built-in defaults, the bottom of the precedence chain (the broker's own: broker.protocol).
DEFAULT_REGION = "default"
DEFAULT_VALIDITY_IN_REGION = 30  # vendor: 30-60 s for standard operational data
DEFAULT_VALIDITY_CROSS_REGION = 120  # vendor: 60-300 s for long or unreliable links
DEFAULT_USERNAME = "cluster"
#: Every route lotdeploy creates carries this prefix: only such routes are ever removed.
ROUTE_PREFIX = "lotdeploy_"

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
class Site:
    name: str
    source: Path
    nodes: tuple[Node, ...]  # sorted by name: output never depends on spec order
    links: tuple[Link, ...]  # sorted by (source, target)
    regions: tuple[str, ...]
    pki: PkiPolicy
    templates_dir: Path | None = None
    base_dir: Path = Path(".")  # where relative paths in the spec start; not part of digest

    def node(self, name: str) -> Node:
        return self._nodes_by_name[name]

    @cached_property
    def _nodes_by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    def links_from(self, source: str) -> tuple[Link, ...]:
        return self._links_by_source.get(source, ())

    @cached_property
    def _links_by_source(self) -> dict[str, tuple[Link, ...]]:
        grouped: dict[str, list[Link]] = {}
        for link in self.links:
            grouped.setdefault(link.source, []).append(link)
        return {name: tuple(links) for name, links in grouped.items()}

    @property
    def tls_nodes(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.tls)

    @cached_property
    def _digest(self) -> str:
        return hashlib.sha256(canonical_json(self.describe()).encode()).hexdigest()

    def digest(self) -> str:
        """sha256 of the resolved model: what the site *means*, not how it was written."""
        return self._digest

    def describe(self) -> dict[str, Any]:
        return {
            "site": self.name,
            "nodes": [asdict(node) for node in self.nodes],
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
            "regions": list(self.regions),
            "pki": asdict(self.pki),
            "templates": self.templates_dir.name if self.templates_dir else None,
        }


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def route_name_for(peer: str) -> str:
    """`lotdeploy_<peer>`, a bare LOT identifier (docs/coreflux-interface.md §1)."""
    return ROUTE_PREFIX + peer.replace("-", "_")


def username_for_version(base: str, version: int) -> str:
    """`cluster` for version 1, `cluster_v2`, `cluster_v3`... after credential rotations."""
    return base if version <= 1 else f"{base}_v{version}"
