"""Build a plan: desired routes (compiled from the site) diffed against known state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.compiler.routes import node_route_settings
from lotdeploy.model import Site
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.plan.state import KnownState
from lotdeploy.secret import SENSITIVE

#: route attribute -> LOT key, in the order the plan shows them
SHOWN = (
    ("broker_address", "BROKER_ADDRESS"),
    ("broker_port", "BROKER_PORT"),
    ("client_id", "CLIENT_ID"),
    ("username", "USERNAME"),
    ("password_version", "PASSWORD"),
    ("message_validity_sec", "MESSAGE_VALIDITY_SEC"),
    ("use_tls", "USE_TLS"),
)


@dataclass
class Plan:
    site: str
    site_digest: str
    node_count: int
    region_count: int
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: node -> region, for grouping site → region → node
    regions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "update": 0, "delete": 0, "replace": 0}
        for change in self.changes:
            counts[change.action] += 1
        return counts

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)


def _display(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if key == "password_version":
        return SENSITIVE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _attrs(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[Attr, ...]:
    empty: dict[str, Any] = {}
    old_values, new_values = before or empty, after or empty
    attrs = []
    for key, label in SHOWN:
        old, new = old_values.get(key), new_values.get(key)
        if before is not None and after is not None and old != new and key == "password_version":
            attrs.append(Attr(label, f"{SENSITIVE} (rotated)", SENSITIVE))
        else:
            attrs.append(Attr(label, _display(key, new), _display(key, old)))
    return tuple(attrs)


def desired_routes(site: Site, password_version: int) -> dict[str, dict[str, dict[str, Any]]]:
    desired: dict[str, dict[str, dict[str, Any]]] = {}
    for node in site.nodes:
        routes = {}
        for settings in node_route_settings(site, node, password_version):
            routes[settings["name"]] = {**settings, "password_version": password_version}
        desired[node.name] = routes
    return desired


def route_changes(
    site: Site, desired: dict[str, dict[str, dict[str, Any]]], known: KnownState
) -> list[Change]:
    changes: list[Change] = []
    region_of = {node.name: node.region for node in site.nodes}
    for node_name in sorted(set(desired) | set(known.routes)):
        want = desired.get(node_name, {})
        have = known.routes.get(node_name, {})
        region = region_of.get(node_name, "(removed)")
        for name in sorted(set(want) | set(have)):
            after, before = want.get(name), have.get(name)
            if before is None and after is not None:
                changes.append(
                    Change(
                        "create",
                        "route",
                        name,
                        node_name,
                        region,
                        _reason(after),
                        _attrs(None, after),
                    )
                )
            elif after is None and before is not None:
                reason = (
                    "node removed from the site" if node_name not in desired else "peer removed"
                )
                changes.append(
                    Change("delete", "route", name, node_name, region, reason, _attrs(before, None))
                )
            elif after is not None and before is not None and _differs(before, after):
                attrs = tuple(
                    a for a in _attrs(before, after) if a.changed or "rotated" in (a.after or "")
                )
                changes.append(Change("update", "route", name, node_name, region, "", attrs))
    return changes


def _differs(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return any(before.get(key) != after.get(key) for key, _ in SHOWN)


def _reason(settings: dict[str, Any]) -> str:
    return f"{settings['link_class']} link to {settings['peer']}"


def build_plan(
    site: Site,
    known: KnownState,
    password_version: int,
    extra_changes: Iterable[Change] = (),
    warnings: Iterable[str] = (),
) -> Plan:
    plan = Plan(
        site=site.name,
        site_digest=site.digest(),
        node_count=len(site.nodes),
        region_count=len({node.region for node in site.nodes}),
        regions={node.name: node.region for node in site.nodes},
    )
    plan.changes.extend(extra_changes)
    plan.changes.extend(route_changes(site, desired_routes(site, password_version), known))
    plan.warnings.extend(warnings)
    return plan
