"""`lotdeploy status`: each node's broker, asked live which routes it runs and how they are."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.apply.activate import admin_session
from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node, Site
from lotdeploy.secret import scrub
from lotdeploy.transport.base import Transport

TransportFactory = Callable[[Node], Transport]


@dataclass
class NodeStatus:
    node: str
    routes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"routes": self.routes, "error": self.error}


def read_status(
    site: Site, transports: TransportFactory, parallelism: int = 10, only: set[str] | None = None
) -> dict[str, NodeStatus]:
    """`-listRoutes` of every chosen node's broker (concurrently, bounded)."""
    nodes = [n for n in site.nodes if only is None or n.name in only]

    def one(node: Node) -> NodeStatus:
        status = NodeStatus(node.name)
        try:
            transport = transports(node)
            transport.connect()
            try:
                with admin_session(site, node, transport) as client:
                    status.routes = sorted(client.list_routes(), key=lambda r: str(r.get("name")))
            finally:
                transport.close()
        except (LotdeployError, OSError) as exc:
            status.error = scrub(str(exc))
        return status

    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(nodes) or 1))) as pool:
        return {s.node: s for s in pool.map(one, nodes)}
