"""What a verify run found, as plain data: one `Check` per thing proven (or not), per node and
per link, and the run's metadata. No I/O here: the runner fills it in, the CLI, the report,
the Prometheus file and the rollout gate read it.

A check's subject is a node name (`eu1`) or a directed link (`eu1 → us2`: probes published on
eu1's broker, expected on us2's). Every reason is in words an operator can act on, and is
scrubbed of every secret before it is stored here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "inconclusive"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "inconclusive")
#: Node checks, in the order they are shown.
NODE_KINDS = ("ssh", "release", "tls", "routes")
#: Link checks: the source's route to the target (connection, health), then the probes.
LINK_KINDS = ("route", "link")
#: Exercises beyond the probes (`verify --failover`, `--load`): shown apart, pass or fail.
EXERCISE_KINDS = (
    "failover-outage",
    "failover-clients",
    "failover-catch-up",
    "failover-rejoin",
    "load",
)
ARROW = " → "


def link_subject(source: str, target: str) -> str:
    return f"{source}{ARROW}{target}"


def split_subject(subject: str) -> tuple[str, str] | None:
    """(source, target) of a link subject, None for a node subject."""
    source, arrow, target = subject.partition(ARROW)
    return (source, target) if arrow else None


@dataclass(frozen=True)
class Check:
    """One thing verify proved, disproved, or could not decide."""

    subject: str
    kind: str
    status: Status
    reason: str = ""
    #: link checks of kind "link": median latency (ms), probes sent, received once, lost, extra
    latency_ms: float | None = None
    sent: int | None = None
    received: int | None = None
    loss: int | None = None
    duplicates: int | None = None
    #: the link's configured MESSAGE_VALIDITY_SEC (link checks)
    validity_sec: int | None = None
    #: tls checks: days until the node's certificate expires
    days_left: int | None = None
    #: load checks: offered rate and achieved throughput (messages/s), delay p95 and max (ms)
    rate: float | None = None
    #: load checks: messages a second the source's broker took (<= rate)
    accepted_rate: float | None = None
    throughput: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    @property
    def link(self) -> tuple[str, str] | None:
        return split_subject(self.subject)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Check:
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in fields})


@dataclass(frozen=True)
class Advice:
    """A link whose MESSAGE_VALIDITY_SEC looks too short for what was measured on it."""

    source: str
    target: str
    latency_ms: float
    validity_sec: int
    needed_sec: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Advice:
        return cls(
            str(doc["source"]),
            str(doc["target"]),
            float(doc["latency_ms"]),
            int(doc["validity_sec"]),
            int(doc["needed_sec"]),
            str(doc["message"]),
        )


@dataclass(frozen=True)
class NodeInfo:
    name: str
    region: str
    address: str


@dataclass
class VerifyResult:
    site: str
    run_id: str
    started_at: str  # ISO 8601, UTC
    seconds: float = 0.0
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    #: the nodes whose own checks ran (all of `nodes` unless verify was limited)
    checked: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)
    topic_prefix: str = ""
    probes_per_link: int = 0
    timeout: float = 0.0
    reconnect_allowance: float = 5.0
    #: node -> the cluster monitoring topics its broker published (topic -> payload text):
    #: shown and exported, never a check (their format is not documented)
    monitoring: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check passed (an inconclusive check is not a pass)."""
        return all(c.ok for c in self.checks)

    def problems(self) -> list[Check]:
        """Every check that did not pass, failed or inconclusive."""
        return [c for c in self.checks if not c.ok]

    def failed_subjects(self) -> set[str]:
        return {c.subject for c in self.problems()}

    def link_checks(self) -> list[Check]:
        return [c for c in self.checks if c.kind == "link"]

    def exercise_checks(self) -> list[Check]:
        return [c for c in self.checks if c.kind in EXERCISE_KINDS]

    def latency(self) -> dict[tuple[str, str], float]:
        """(source, target) -> median latency in ms, for links where probes arrived."""
        found = {}
        for check in self.link_checks():
            pair = check.link
            if pair is not None and check.latency_ms is not None:
                found[pair] = check.latency_ms
        return found

    def failed_nodes(self) -> set[str]:
        """The nodes to blame: those with a node check that did not pass; those all of whose
        inbound links, or all of whose outbound links, did not pass (a wrong password on a
        node fails everything into it, not one link); and, for any other link that did not
        pass, both of its ends (one link alone cannot tell which side is wrong)."""
        blamed = {c.subject for c in self.problems() if c.link is None}
        bad_links = {c.link for c in self.problems() if c.link is not None}
        all_links = {c.link for c in self.checks if c.link is not None}
        for name in self.nodes:
            inbound = {pair for pair in all_links if pair[1] == name}
            outbound = {pair for pair in all_links if pair[0] == name}
            for group in (inbound, outbound):
                if len(group) >= 2 and group <= bad_links:
                    blamed.add(name)
        for pair in bad_links:
            if pair is not None and pair[0] not in blamed and pair[1] not in blamed:
                blamed |= set(pair)
        return blamed

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "counts": self.counts(),
            "topic_prefix": self.topic_prefix,
            "probes_per_link": self.probes_per_link,
            "timeout": self.timeout,
            "reconnect_allowance": self.reconnect_allowance,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "checked": self.checked,
            "failed_nodes": sorted(self.failed_nodes()),
            "checks": [c.to_json() for c in self.checks],
            "advice": [a.to_json() for a in self.advice],
            "monitoring": {n: dict(sorted(t.items())) for n, t in sorted(self.monitoring.items())},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VerifyResult:
        return cls(
            site=str(doc["site"]),
            run_id=str(doc["run_id"]),
            started_at=str(doc["started_at"]),
            seconds=float(doc.get("seconds", 0.0)),
            nodes={
                str(n["name"]): NodeInfo(str(n["name"]), str(n["region"]), str(n["address"]))
                for n in doc.get("nodes", [])
            },
            checked=[str(n) for n in doc.get("checked", [])],
            checks=[Check.from_json(c) for c in doc.get("checks", [])],
            advice=[Advice.from_json(a) for a in doc.get("advice", [])],
            topic_prefix=str(doc.get("topic_prefix", "")),
            probes_per_link=int(doc.get("probes_per_link", 0)),
            timeout=float(doc.get("timeout", 0.0)),
            reconnect_allowance=float(doc.get("reconnect_allowance", 5.0)),
            monitoring={
                str(node): {str(t): str(v) for t, v in topics.items()}
                for node, topics in (doc.get("monitoring") or {}).items()
                if isinstance(topics, dict)
            },
        )
