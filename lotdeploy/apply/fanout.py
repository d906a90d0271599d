"""One way to do a read-only job on many nodes: open each node's transport, run the job,
always close, concurrently up to `parallelism`; a node's failure is its error text."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node
from lotdeploy.secret import scrub
from lotdeploy.transport.base import Transport

T = TypeVar("T")


def on_nodes(
    nodes: Iterable[Node],
    transports: Callable[[Node], Transport],
    job: Callable[[Node, Transport], T],
    parallelism: int = 10,
) -> dict[str, T | str]:
    """node name -> the job's result, or the error (a str) that stopped it on that node."""
    chosen = list(nodes)

    def one(node: Node) -> tuple[str, T | str]:
        try:
            transport = transports(node)
            transport.connect()
            try:
                return node.name, job(node, transport)
            finally:
                transport.close()
        except (LotdeployError, OSError) as exc:
            return node.name, scrub(str(exc))

    if not chosen:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(chosen)))) as pool:
        return dict(pool.map(one, chosen))
