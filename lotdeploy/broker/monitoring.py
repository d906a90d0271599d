"""The cluster monitoring topics a broker may publish, read when it does, never required.

The vendor's cluster page names `$SYS/broker/cluster/status`, `/nodes` and `/sync`; the
vendor's newer tooling lists `$SYS/Coreflux/Cluster/{Role,IsLeader,Leader,Term,Members,
Status}` (retained). Whether a given build publishes either, and in what format, is UNKNOWN
(docs/coreflux-interface.md §3). So verify, status and doctor read both subtrees for a
moment after subscribing (retained state arrives at once), show whatever came as it came,
and decide nothing on it: links are proven by probes, routes by `-listRoutes`.

Only an admin may subscribe to `$SYS`; a refused subscription simply reads as nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lotdeploy.protocol import (
    CLUSTER_MONITORING_FILTERS,
    COREFLUX_CLUSTER_TOPIC,
    SEED_CLUSTER_TOPIC,
)
from lotdeploy.secret import scrub

#: Longest payload text kept per topic (they are shown in tables and label values).
MAX_TEXT = 300
#: Seconds to wait for the first retained message, and for a pause that ends the reading.
READ_TIMEOUT = 1.5
QUIET = 0.3

Scheme = Literal["seed", "coreflux", "both", "none"]


class TopicReader(Protocol):
    """What reading needs of an admin session: `BrokerClient.read_topics` (async) or the
    same method of a `SyncBrokerClient` (blocking)."""

    def read_topics(
        self, filters: list[str], timeout: float = ..., quiet: float = ..., limit: int = ...
    ) -> Any: ...


@dataclass(frozen=True)
class ClusterTopics:
    """topic -> payload text, as one broker published them (scrubbed, shortened)."""

    values: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> Scheme:
        seed = any(t.startswith(SEED_CLUSTER_TOPIC + "/") for t in self.values)
        coreflux = any(t.startswith(COREFLUX_CLUSTER_TOPIC + "/") for t in self.values)
        return (
            "both"
            if seed and coreflux
            else "seed"
            if seed
            else ("coreflux" if coreflux else "none")
        )

    def __bool__(self) -> bool:
        return bool(self.values)

    def to_json(self) -> dict[str, str]:
        return dict(sorted(self.values.items()))

    def lines(self) -> list[str]:
        """`topic: payload` per topic, sorted, for terminals."""
        return [f"{topic}: {text}" for topic, text in sorted(self.values.items())]

    def samples(self) -> list[tuple[str, str, float]]:
        """(topic, field, value) for every number or boolean in the payloads: a bare value
        (field ""), the top-level fields of a JSON object, the length of a JSON list
        (field "count"). For Prometheus; texts go to `infos`."""
        out: list[tuple[str, str, float]] = []
        for topic, text in sorted(self.values.items()):
            out += [(topic, name, value) for name, value in _numbers(text)]
        return out

    def infos(self) -> list[tuple[str, str, str]]:
        """(topic, field, text) for every short text value (a status word, a role)."""
        out: list[tuple[str, str, str]] = []
        for topic, text in sorted(self.values.items()):
            out += [(topic, name, value) for name, value in _texts(text)]
        return out


def from_payloads(payloads: dict[str, bytes]) -> ClusterTopics:
    """ClusterTopics from what `read_topics` returned (empty payloads are cleared topics)."""
    values = {}
    for topic, payload in payloads.items():
        if not payload:
            continue
        text = scrub(payload.decode("utf-8", errors="replace").strip())
        values[topic] = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    return ClusterTopics(values)


async def read_cluster_topics(
    client: TopicReader, timeout: float = READ_TIMEOUT, quiet: float = QUIET
) -> ClusterTopics:
    """Both monitoring subtrees of one broker, over an open (async) admin session."""
    payloads = await client.read_topics(list(CLUSTER_MONITORING_FILTERS), timeout, quiet)
    return from_payloads(payloads)


def read_cluster_topics_sync(
    client: TopicReader, timeout: float = READ_TIMEOUT, quiet: float = QUIET
) -> ClusterTopics:
    """The same over a `SyncBrokerClient`."""
    return from_payloads(client.read_topics(list(CLUSTER_MONITORING_FILTERS), timeout, quiet))


def shown_cluster_topics(client: TopicReader, timeout: float = READ_TIMEOUT) -> dict[str, str]:
    """For `status` and the like over a `SyncBrokerClient`: topic -> text, or {} when the
    broker publishes none or they cannot be read (never an error: they decide nothing)."""
    from lotdeploy.errors import LotdeployError

    try:
        return read_cluster_topics_sync(client, timeout).to_json()
    except LotdeployError:
        return {}


def topic_lines(by_node: dict[str, dict[str, str]]) -> list[str]:
    """`node: topic: text` for every node that published monitoring topics, and a heading;
    [] when none did."""
    lines = [
        f"  {node}: {topic}: {text}"
        for node, topics in sorted(by_node.items())
        for topic, text in sorted(topics.items())
    ]
    if not lines:
        return []
    return ["Cluster monitoring topics, as each broker publishes them (informational):", *lines]


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return 1.0 if value.strip().lower() == "true" else 0.0
    return None


def _numbers(text: str) -> list[tuple[str, float]]:
    doc = _parsed(text)
    if isinstance(doc, list):
        return [("count", float(len(doc)))]
    if isinstance(doc, dict):
        found = []
        for key, value in doc.items():
            if isinstance(value, list):
                found.append((f"{key}_count", float(len(value))))
            elif (number := _number(value)) is not None:
                found.append((str(key), number))
        return found
    number = _number(doc)
    return [("", number)] if number is not None else []


def _texts(text: str) -> list[tuple[str, str]]:
    doc = _parsed(text)
    if isinstance(doc, dict):
        return [
            (str(key), value[:80])
            for key, value in doc.items()
            if isinstance(value, str) and value and _number(value) is None
        ]
    if isinstance(doc, str) and doc and _number(doc) is None:
        return [("", doc[:80])]
    return []
