"""What each node should run: one MQTT_CLUSTER route per peer, as a LOT tree (pure)."""

from __future__ import annotations

from typing import Any

from lotdeploy.lot.ast import Block, Bool, Int, Route, Setting, Str, Value
from lotdeploy.model import Link, Node, Site, username_for_version
from lotdeploy.protocol import CLUSTER_CONFIG_BLOCK, CLUSTER_KEY_ORDER, ROUTE_TYPE
from lotdeploy.secret import Secret

__all__ = ["ROUTE_FILE", "ROUTE_TYPE", "node_route_settings", "route_settings", "route_tree"]

ROUTE_FILE = "routes.lot"


def route_settings(link: Link, peer: Node, credential_version: int = 1) -> dict[str, Any]:
    """The route's attributes, password excluded; used by the plan, the template and the AST.

    The peer decides port, TLS and username: the route must match what the *target*
    broker listens on and accepts. A credential rotation moves routes to a new user
    (`cluster_v2`), so the username depends on the active credential version.
    """
    return {
        "name": link.route_name,
        "peer": peer.name,
        "peer_region": peer.region,
        "link_class": link.link_class,
        "broker_address": peer.address,
        "broker_port": peer.port,
        "client_id": link.client_id,
        "username": username_for_version(peer.username, credential_version),
        "message_validity_sec": link.message_validity_sec,
        "use_tls": peer.tls,
    }


def route_tree(settings: dict[str, Any], password: Secret) -> Route:
    """The route as a LOT tree: the documented keys, in the protocol's emit order.

    Integers in the vendor's single-quoted form; USE_TLS only when true (its absence is off).
    """
    values: dict[str, Value | None] = {
        "BROKER_ADDRESS": Str(settings["broker_address"]),
        "BROKER_PORT": Int(settings["broker_port"], quoted=True),
        "CLIENT_ID": Str(settings["client_id"]),
        "USERNAME": Str(settings["username"]),
        "PASSWORD": Str(password.reveal()),
        "MESSAGE_VALIDITY_SEC": Int(settings["message_validity_sec"], quoted=True),
        "USE_TLS": Bool(True) if settings["use_tls"] else None,
    }
    entries = tuple(
        Setting(key, value) for key in CLUSTER_KEY_ORDER if (value := values.get(key)) is not None
    )
    return Route(settings["name"], ROUTE_TYPE, (Block(CLUSTER_CONFIG_BLOCK, None, entries),))


def node_route_settings(
    site: Site, node: Node, credential_version: int = 1
) -> list[dict[str, Any]]:
    return [
        route_settings(link, site.node(link.target), credential_version)
        for link in site.links_from(node.name)
    ]
