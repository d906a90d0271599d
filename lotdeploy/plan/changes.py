"""What a plan is made of: changes to resources, each one line in the output.

A plan is a diff between desired state (built from the spec: lotdeploy.plan.desired) and
observed state (what the workspace recorded after the last apply; later also what live
nodes report: lotdeploy.plan.observed). Every change carries its `key` (which resource)
and its `payload` (the desired value, secrets by reference only), so apply can execute a
plan and a saved plan can be read back; `attrs` are only what people are shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

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
    #: the desired value apply needs (e.g. a DesiredRoute); None for deletions and steps
    payload: Any = field(default=None, compare=False)

    @property
    def marker(self) -> str:
        return MARKERS[self.action]

    @property
    def key(self) -> str:
        """Which resource: `kind/node/name` (`kind//name` for site-level ones)."""
        return f"{self.kind}/{self.node or ''}/{self.name}"

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.region or "", self.node or "", self.kind, self.name)
