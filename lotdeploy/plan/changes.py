"""What a plan is made of: changes to resources, each one line in the output.

A plan is a diff between desired state (built from the spec: lotdeploy.plan.desired) and
observed state (what the workspace recorded after the last apply; later also what live
nodes report: lotdeploy.plan.observed). Every change carries its `key` (which resource)
and its `payload` (the desired value, secrets by reference only), so apply can execute a
plan and a saved plan can be read back; `attrs` are only what people are shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from lotdeploy.protocol import CLUSTER_KEY_ORDER
from lotdeploy.secret import SENSITIVE

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


def _attribute(key: str) -> str:
    """The route attribute a CLUSTER_CONFIG key comes from (the password: its version)."""
    return "password_version" if key == "PASSWORD" else key.lower()


#: (route attribute, LOT key) in the order the plan shows them: the protocol's key table
SHOWN: tuple[tuple[str, str], ...] = tuple(
    (_attribute(key), key)
    for key in CLUSTER_KEY_ORDER
    if _attribute(key)
    in {
        "broker_address",
        "broker_port",
        "client_id",
        "username",
        "password_version",
        "message_validity_sec",
        "use_tls",
    }
)


def display(key: str, value: Any) -> str | None:
    """How a route attribute is shown: never the password (only whether it changes)."""
    if value is None:
        return None
    if key == "password_version":
        return SENSITIVE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def shown_password(attrs: Mapping[str, Any]) -> str:
    """A route's PASSWORD as a plan shows it: never the value; the broker secret it reads,
    where it reads one (lotdeploy.routesecret)."""
    secret = attrs.get("password_secret")
    return f'GET SECRET "{secret}"' if secret else SENSITIVE


def route_attrs(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> tuple[Attr, ...]:
    """The shown attributes of a route change; for an update, only those that change."""
    empty: dict[str, Any] = {}
    old_values, new_values = before or empty, after or empty
    attrs = []
    for key, label in SHOWN:
        old, new = old_values.get(key), new_values.get(key)
        if key == "password_version":
            moved = old_values.get("password_secret", "") != new_values.get("password_secret", "")
            if before is not None and after is not None:
                if old == new and not moved:
                    continue
                rotated = " (rotated)" if old != new else ""
                attrs.append(
                    Attr(label, shown_password(new_values) + rotated, shown_password(old_values))
                )
                continue
            attrs.append(
                Attr(
                    label,
                    shown_password(new_values) if new is not None else None,
                    shown_password(old_values) if old is not None else None,
                )
            )
            continue
        if before is not None and after is not None:
            if old == new:
                continue
            if old is None:  # a hand-made route an import adopted may leave a key unset
                attrs.append(Attr(label, display(key, new), "(unset)"))
                continue
        attrs.append(Attr(label, display(key, new), display(key, old)))
    return tuple(attrs)


@dataclass(slots=True, unsafe_hash=True)
class Change:
    """One change to one resource. Identity is (action, kind, name, node, region, reason);
    what is shown (`attrs`) and carried (`payload`, `before`) does not take part.

    Immutable by convention, not `frozen=True`: a frozen dataclass's __init__ sets every
    field through object.__setattr__, five times the cost of this one (1.5 s of a
    1,000-node plan, which makes 999,000 of them).
    """

    action: Action
    kind: str  # "route", "certificate", "ca", "credential", ...
    name: str
    node: str | None = None  # None: site-level (CA, shared credential)
    region: str | None = None
    reason: str = ""
    #: shown attributes; empty for route changes, whose attributes are made when shown
    attrs: tuple[Attr, ...] = field(default=(), compare=False)
    #: the desired value apply needs (e.g. a DesiredRoute); None for deletions and steps
    payload: Any = field(default=None, compare=False)
    #: the recorded attributes a route update or deletion starts from
    before: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def shown(self) -> tuple[Attr, ...]:
        """The attributes people are shown (made on demand: a 200-node plan has 39,800
        route changes, and most are never shown one by one)."""
        if self.attrs or self.kind != "route":
            return self.attrs
        after = self.payload.attrs() if self.payload is not None else None
        return route_attrs(self.before, after)

    @property
    def marker(self) -> str:
        return MARKERS[self.action]

    @property
    def key(self) -> str:
        """Which resource: `kind/node/name` (`kind//name` for site-level ones)."""
        return f"{self.kind}/{self.node or ''}/{self.name}"

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.region or "", self.node or "", self.kind, self.name)
