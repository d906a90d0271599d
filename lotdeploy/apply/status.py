"""`lotdeploy status`: each node's broker, asked live which routes it runs and how they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lotdeploy.apply.activate import admin_session
from lotdeploy.broker.monitoring import shown_cluster_topics
from lotdeploy.model import Node, Site
from lotdeploy.node.session import on_nodes
from lotdeploy.selection import chosen_nodes
from lotdeploy.transport.base import Transport, TransportFactory


@dataclass
class NodeStatus:
    node: str
    routes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: the cluster monitoring topics the broker published (topic -> text): shown, never judged
    monitoring: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"routes": self.routes, "error": self.error}
        if self.monitoring:
            doc["monitoring"] = self.monitoring
        return doc


def read_status(
    site: Site, transports: TransportFactory, parallelism: int = 10, only: set[str] | None = None
) -> dict[str, NodeStatus]:
    """`-listRoutes` of every chosen node's broker (concurrently, bounded)."""
    nodes = chosen_nodes(site, only)
    monitoring: dict[str, dict[str, str]] = {}

    def job(node: Node, transport: Transport) -> list[dict[str, Any]]:
        with admin_session(site, node, transport) as client:
            listing = client.listed_at_connect()  # the -listRoutes sent on connect
            listed = listing if listing is not None else client.list_routes()
            routes = sorted(listed, key=lambda r: str(r.get("name")))
            monitoring[node.name] = shown_cluster_topics(client)
            return routes

    results = on_nodes(nodes, transports, job, parallelism)
    return {
        name: NodeStatus(name, error=found)
        if isinstance(found, str)
        else NodeStatus(name, routes=found, monitoring=monitoring.get(name, {}))
        for name, found in results.items()
    }
