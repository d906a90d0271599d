"""Desired state: what every node should have, built by pure functions from the site.

Per node: its routes (the attributes, the password only as a reference to the workspace's
secret store), the files of its bundle (name, mode, what they hold, whether the broker
reads them), and the broker users it must accept. Nothing here reads a file, a clock or a
secret value: `workspace facts` (credential version, rotation phases) are passed in, so
the same inputs always give the same desired state and tests need no workspace.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from lotdeploy.compiler import ROUTE_FILE
from lotdeploy.credentials import password_secret_name
from lotdeploy.model import Node, Site, username_for_version
from lotdeploy.routesecret import broker_secret_name

FileRole = Literal["routes", "ca-bundle", "certificate", "private-key"]


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Names a secret in the workspace's store; a plan carries these, never the value."""

    name: str


class DesiredRoute(NamedTuple):
    """One MQTT_CLUSTER route a node should run (the target decides port, TLS, user).

    A NamedTuple, not a frozen dataclass: a 1,000-node plan makes 999,000 of them, and a
    frozen dataclass takes four times as long to construct (one object.__setattr__ a field).
    """

    name: str
    peer: str
    peer_region: str
    link_class: str
    broker_address: str
    broker_port: int
    client_id: str
    username: str
    message_validity_sec: int
    use_tls: bool
    password_version: int
    #: the broker secret the route reads its password from (`GET SECRET`); "" inline
    #: (lotdeploy.routesecret). Absent from records made before the secret store was used.
    password_secret: str = ""

    @property
    def password(self) -> SecretRef:
        return SecretRef(password_secret_name(self.password_version))

    def attrs(self) -> dict[str, Any]:
        """The attributes recorded in state and compared by the plan (no secret value);
        `password_secret` only when set, so an inline route's record is what it always was."""
        attrs = dict(zip(self._fields, self, strict=True))
        if not self.password_secret:
            del attrs["password_secret"]
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> DesiredRoute:
        return cls(
            *[attrs[key] if key != "password_secret" else attrs.get(key, "") for key in cls._fields]
        )


@dataclass(frozen=True, slots=True)
class DesiredFile:
    """One file of a node's bundle. Its bytes are made at render/apply time, not here."""

    name: str
    mode: int
    role: FileRole
    #: the content carries a secret (the route file's password, the private key)
    secret: bool
    #: the broker reads it at start: a change needs the node's reload command
    broker_reads: bool


@dataclass(frozen=True, slots=True)
class DesiredUser:
    """A broker user every target broker must accept (the cluster credential)."""

    username: str
    password: SecretRef


@dataclass(frozen=True, slots=True)
class NodeDesired:
    name: str
    region: str
    routes: tuple[DesiredRoute, ...]
    files: tuple[DesiredFile, ...]
    users: tuple[DesiredUser, ...]
    #: users to remove from this broker (the last phase of a credential rotation)
    retired_users: tuple[str, ...] = ()
    #: where the files land: {"release_dir", "tls_dir"} (part of what the node must run)
    paths: tuple[tuple[str, str], ...] = ()

    def path_of(self, file_name: str) -> str:
        """Where file `file_name` of the bundle lives on the node."""
        return file_path(dict(self.paths), file_name)


def node_paths(node: Node) -> dict[str, str]:
    """The node's directories as the state records them (`NodeRecord.paths`)."""
    return {
        "release_dir": node.broker.release_dir.rstrip("/") or "/",
        "tls_dir": node.broker.tls_dir,
    }


def file_path(paths: dict[str, str], file_name: str) -> str:
    """A bundle file's path on the node: the route file in the `current` release, the TLS
    files in the broker's TLS directory."""
    if file_name == ROUTE_FILE:
        return posixpath.join(paths["release_dir"], "current", file_name)
    return posixpath.join(paths["tls_dir"], file_name)


@dataclass(frozen=True, slots=True)
class CredentialFacts:
    """What the workspace records about the cluster credential (no secret value)."""

    active_version: int = 1
    generated: bool = False
    #: versions every broker must accept now (old and new during a rotation's phases 1-2)
    accepted_versions: tuple[int, ...] = (1,)
    #: version whose users leave the brokers now (phase 3 of a rotation)
    retired_version: int | None = None


def node_routes(
    site: Site, node: Node, version: int, stored: bool = False
) -> tuple[DesiredRoute, ...]:
    """The node's routes, one per peer, in the site's link order; `stored`: they read the
    password from the node's broker secret store (lotdeploy.routesecret)."""
    secret = broker_secret_name(version) if stored else ""
    return tuple(
        DesiredRoute(
            route,
            peer.name,
            peer.region,
            link_class,
            peer.address,
            peer.route_port,
            client_id,
            username_for_version(peer.username, version),
            validity,
            peer.route_tls,
            version,
            secret,
        )
        for peer, route, client_id, validity, link_class in site.link_rows(node)
    )


def node_files(node: Node) -> tuple[DesiredFile, ...]:
    """The bundle's files: the route file, and for TLS nodes the CA bundle, cert and key."""
    files = [DesiredFile(ROUTE_FILE, 0o600, "routes", secret=True, broker_reads=False)]
    if node.tls:
        files += [
            DesiredFile(node.broker.ca_file, 0o644, "ca-bundle", secret=False, broker_reads=True),
            DesiredFile(
                node.broker.cert_file, 0o644, "certificate", secret=False, broker_reads=True
            ),
            DesiredFile(node.broker.key_file, 0o600, "private-key", secret=True, broker_reads=True),
        ]
    return tuple(files)


def node_users(site: Site, credentials: CredentialFacts) -> tuple[DesiredUser, ...]:
    """Users a broker must accept: every base username the site's nodes log in with, for
    every credential version accepted now."""
    bases = sorted({n.username for n in site.nodes})
    return tuple(
        DesiredUser(username_for_version(base, version), SecretRef(password_secret_name(version)))
        for version in credentials.accepted_versions
        for base in bases
    )


def desired_state(
    site: Site, credentials: CredentialFacts, stored: frozenset[str] = frozenset()
) -> dict[str, NodeDesired]:
    """Every node's desired state (pure); the nodes in `stored` have routes that read the
    password from their broker's secret store (lotdeploy.routesecret.stored_nodes)."""
    users = node_users(site, credentials) if site.link_count else ()
    retired: tuple[str, ...] = ()
    if credentials.retired_version is not None:
        retired = tuple(
            username_for_version(base, credentials.retired_version)
            for base in sorted({n.username for n in site.nodes})
        )
    return {
        node.name: NodeDesired(
            node.name,
            node.region,
            node_routes(site, node, credentials.active_version, node.name in stored),
            node_files(node),
            users,
            retired,
            tuple(sorted(node_paths(node).items())),
        )
        for node in site.nodes
    }


def desired_routes(
    site: Site, password_version: int, stored: frozenset[str] = frozenset()
) -> dict[str, dict[str, dict[str, Any]]]:
    """node -> route name -> recorded attributes: the shape state keeps after an apply."""
    return {
        node.name: {
            r.name: r.attrs()
            for r in node_routes(site, node, password_version, node.name in stored)
        }
        for node in site.nodes
    }
