"""What a plan is made of: changes to resources, each one line in the output.

A plan is a diff between desired state (compiled from the spec) and known state (what the
workspace recorded after the last apply; later also what live nodes report). Every layer
that wants something done (routes, certificates, credentials) contributes Changes; the
plan renderer groups them site → region → node and closes with a summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Action = Literal["create", "update", "delete", "replace"]
MARKERS: dict[str, str] = {"create": "+", "update": "~", "delete": "-", "replace": "-/+"}


class Attr(NamedTuple):
    """One attribute of a resource. Sensitive values are never held here, only "(sensitive)".

    A NamedTuple, not a dataclass: a 200-node plan holds ~280,000 of them.
    """

    name: str
    after: str | None
    before: str | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str  # "route", "certificate", "ca", "credential", ...
    name: str
    node: str | None = None  # None: site-level (CA, shared credential)
    region: str | None = None
    reason: str = ""
    attrs: tuple[Attr, ...] = field(default=())

    @property
    def marker(self) -> str:
        return MARKERS[self.action]

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.region or "", self.node or "", self.kind, self.name)
