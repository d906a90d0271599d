"""Where a node's routes take the cluster password from: their code, or the broker's store.

A literal `WITH PASSWORD "..."` is republished by the broker on `$SYS/Coreflux/Routes/<Name>`
(docs/coreflux-interface.md §3), so anyone who may read `$SYS` reads it. A broker with a
secret store (`-setSecret NAME=value`, encrypted at rest) lets a route say
`WITH PASSWORD GET SECRET "NAME"` instead, and the code it republishes holds no password.
The vendor documents that form for MQTT_BRIDGE routes only: for MQTT_CLUSTER it is an
**assumption** (docs/coreflux-interface.md §1), which is why it is a setting
(`password_source`) and used only where the broker is known to have a store.

`password_source` per node (node > region > defaults):

* `auto` (default): the store where `lotdeploy doctor` found one on the node's broker;
  inline where it found none, or has not asked yet (the plan says so where routes are
  written). Apply's own first check does not ask: the move to the store is a change the
  operator sees in a plan after running doctor, never a surprise of a second apply;
* `secret-store`: the store, always; a broker known to lack one fails plan and apply,
  naming the node;
* `inline`: the password in the route code (lotdeploy's behaviour before the store).

The store holds one secret per credential version (`lotdeploy_cluster_v<N>`), so during a
credential rotation the old and the new password are both there, as both users are.
Pure: the facts come in from the state document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from lotdeploy.model import Node, Site
from lotdeploy.state import State

PasswordSource = Literal["auto", "secret-store", "inline"]
PASSWORD_SOURCES: tuple[str, ...] = get_args(PasswordSource)
DEFAULT_PASSWORD_SOURCE: PasswordSource = "auto"
#: Every broker secret lotdeploy sets starts with this (its route prefix's spelling).
BROKER_SECRET_PREFIX = "lotdeploy_cluster_v"


def broker_secret_name(version: int) -> str:
    """The broker secret holding credential version `version` (a LOT-safe identifier)."""
    return f"{BROKER_SECRET_PREFIX}{int(version)}"


@dataclass(frozen=True)
class PasswordChoice:
    """What a node's routes do with the cluster password, and why (in the operator's words)."""

    node: str
    setting: PasswordSource
    #: the routes read `GET SECRET` from the node's own broker store
    store: bool
    why: str
    #: the setting cannot be met (secret-store asked, the broker has none): plan and apply fail
    problem: str | None = None
    #: nothing known about the broker yet (auto falls back to inline, and says so)
    unknown: bool = False


def node_setting(node: Node) -> PasswordSource:
    value = node.password_source or DEFAULT_PASSWORD_SOURCE
    return value if value in PASSWORD_SOURCES else DEFAULT_PASSWORD_SOURCE  # type: ignore[return-value]


def choose(node: Node, facts: Mapping[str, Any] | None) -> PasswordChoice:
    """The choice for one node, from its setting and what its broker's facts say
    (`BrokerFacts.to_json()`; None or {}: nothing recorded)."""
    setting = node_setting(node)
    has_store = facts.get("secret_store") if facts else None
    if setting == "inline":
        return PasswordChoice(node.name, setting, False, "password_source: inline")
    if setting == "secret-store":
        if has_store is False:
            return PasswordChoice(
                node.name,
                setting,
                True,
                "password_source: secret-store",
                problem=f"node {node.name}: password_source is secret-store, but its broker "
                "has no secret store (-listSecrets is unknown there): set password_source: "
                "inline or auto for it, or upgrade the broker",
            )
        return PasswordChoice(node.name, setting, True, "password_source: secret-store")
    if has_store is True:
        return PasswordChoice(node.name, setting, True, "the broker has a secret store (auto)")
    if has_store is False:
        return PasswordChoice(
            node.name, setting, False, "the broker has no secret store (auto): inline"
        )
    return PasswordChoice(
        node.name,
        setting,
        False,
        "not known whether the broker has a secret store (auto): inline until "
        "`lotdeploy doctor` has asked it",
        unknown=True,
    )


def choices(site: Site, broker_facts: Mapping[str, Mapping[str, Any]]) -> dict[str, PasswordChoice]:
    """node -> its choice; `broker_facts`: node -> its recorded facts (State.nodes[n].broker)."""
    return {node.name: choose(node, broker_facts.get(node.name)) for node in site.nodes}


def site_choices(site: Site, state: State) -> dict[str, PasswordChoice]:
    """`choices` from the facts the state document records for each node's broker."""
    return choices(site, {name: record.broker for name, record in state.nodes.items()})


def stored_nodes(choice: Mapping[str, PasswordChoice]) -> frozenset[str]:
    """The nodes whose routes read the password from their broker's store."""
    return frozenset(name for name, c in choice.items() if c.store)


def plan_notes(choice: Mapping[str, PasswordChoice], writing: Iterable[str]) -> list[str]:
    """What the plan says about the password source: the nodes in `writing` (whose routes
    this plan adds) that get the password inline only because their broker was never asked
    (one line for all)."""
    unknown = sorted(name for name in set(writing) if name in choice and choice[name].unknown)
    if not unknown:
        return []
    shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
    return [
        f"password_source auto: not known yet whether the brokers of {shown} have a secret "
        "store, so their routes carry the cluster password in their code; run `lotdeploy "
        "doctor` to ask, and the next plan moves them to the store where there is one"
    ]


def problems(choice: Mapping[str, PasswordChoice]) -> list[str]:
    return [c.problem for _, c in sorted(choice.items()) if c.problem]
