"""The diff: desired state against observed state gives a Plan (pure, no I/O).

Route changes come from comparing each node's desired routes with the recorded ones;
workspace steps (the first password, the CA, certificates, rotation phases) come in as
changes already made by their layers. From all of them, each node's `NodeSteps` say what
apply will do there: which files to write, which routes to remove and add, which broker
users to create or remove, and whether the node's reload command runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import groupby
from operator import attrgetter
from typing import Any

from lotdeploy.plan.changes import SHOWN, Change
from lotdeploy.plan.desired import DesiredRoute, NodeDesired
from lotdeploy.plan.observed import Observed

#: changes of these kinds touch a node's TLS files
TLS_KINDS = frozenset({"certificate", "ca"})


@dataclass
class NodeSteps:
    """What apply does on one node to carry out the plan."""

    node: str
    files: list[str] = field(default_factory=list)
    routes_remove: list[str] = field(default_factory=list)
    routes_add: list[str] = field(default_factory=list)
    users_create: list[str] = field(default_factory=list)
    users_remove: list[str] = field(default_factory=list)
    reload: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.files
            or self.routes_remove
            or self.routes_add
            or self.users_create
            or self.users_remove
            or self.reload
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "routes_remove": self.routes_remove,
            "routes_add": self.routes_add,
            "users_create": self.users_create,
            "users_remove": self.users_remove,
            "reload": self.reload,
        }


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
    #: the state serial the plan was made against (a saved plan refuses a moved state)
    state_serial: int = 0
    #: node -> what apply does there (only nodes with something to do)
    steps: dict[str, NodeSteps] = field(default_factory=dict)
    #: the site file the plan was made from (a saved plan names what it applies to)
    site_file: str = ""
    #: the nodes chosen by --limit/--exclude (None: every node)
    only: list[str] | None = None
    #: made with `--refresh`: live nodes were read, and `drift` is what they showed
    refreshed: bool = False
    drift: dict[str, list[str]] = field(default_factory=dict)

    def restricted(self, only: set[str] | None) -> Plan:
        """This plan for the chosen nodes only (site-level steps stay: they serve all)."""
        if only is None:
            return self
        return replace(
            self,
            changes=[c for c in self.changes if c.node is None or c.node in only],
            steps={n: s for n, s in self.steps.items() if n in only},
            drift={n: d for n, d in self.drift.items() if n in only},
            only=sorted(only),
        )

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "update": 0, "delete": 0, "replace": 0}
        for change in self.changes:
            counts[change.action] += 1
        return counts

    @property
    def has_changes(self) -> bool:
        """Something to do: a change, or (after --refresh) a node to restore."""
        return bool(self.changes or self.steps)


def route_changes(desired: Mapping[str, NodeDesired], observed: Observed) -> list[Change]:
    """Create, update and delete per route, nodes and routes in name order."""
    changes: list[Change] = []
    # one reason string per (link class, peer), shared by every node's route to that peer
    reasons: dict[tuple[str, str], str] = {}
    for node_name in sorted(set(desired) | set(observed.routes)):
        node = desired.get(node_name)
        want: dict[str, DesiredRoute] = {r.name: r for r in node.routes} if node else {}
        have = observed.routes.get(node_name, {})
        region = node.region if node else "(removed)"
        if not have:  # nothing recorded (a first plan): every route is created
            for name, created in sorted(want.items()):
                reason = reasons.get((created.link_class, created.peer))
                if reason is None:
                    reason = f"{created.link_class} link to {created.peer}"
                    reasons[created.link_class, created.peer] = reason
                changes.append(
                    Change("create", "route", name, node_name, region, reason, (), created)
                )
            continue
        for name in sorted(set(want) | set(have)):
            route, before = want.get(name), have.get(name)
            if before is None and route is not None:
                reason = f"{route.link_class} link to {route.peer}"
                changes.append(
                    Change("create", "route", name, node_name, region, reason, (), route)
                )
            elif route is None and before is not None:
                reason = "node removed from the site" if node is None else "peer removed"
                changes.append(
                    Change("delete", "route", name, node_name, region, reason, (), None, before)
                )
            elif route is not None and before is not None and _differs(before, route.attrs()):
                changes.append(
                    Change("update", "route", name, node_name, region, "", (), route, before)
                )
    return changes


_PLACE = attrgetter("region", "node")
_KIND_NAME = attrgetter("kind", "name")


def node_change_groups(changes: Iterable[Change]) -> list[tuple[str, str, list[Change]]]:
    """The node-level changes as (region, node, its changes) in the order plans show them:
    exactly `sorted(..., key=Change.sort_key)` (stable), cut at each node. A node's changes
    are grouped first and only sorted among themselves (sorting 999,000 keys cost a
    1,000-node plan a second)."""
    groups: dict[tuple[str, str], list[Change]] = {}
    for (region, node), run in groupby((c for c in changes if c.node is not None), key=_PLACE):
        groups.setdefault((region or "", node), []).extend(run)
    return [
        (region, node, sorted(groups[region, node], key=_KIND_NAME))
        for region, node in sorted(groups)
    ]


def _differs(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    return any(before.get(key) != after.get(key) for key, _ in SHOWN)


def node_steps(
    desired: Mapping[str, NodeDesired], observed: Observed, changes: Iterable[Change]
) -> dict[str, NodeSteps]:
    """Each node's apply steps, from the changes that concern it.

    A node with no record at all gets everything. Otherwise the route file is rewritten when
    a route changes, the TLS files when its certificate or CA bundle changes (a new site CA
    changes every TLS node's bundle), and the reload runs when the broker reads a file that
    changes. Users: those recorded on the node are not created again; nodes recorded before
    users were recorded are taken to have them.
    """
    by_node: dict[str, list[Change]] = {}
    site_tls = False
    for change in changes:
        if change.node is None:
            site_tls = site_tls or change.kind == "ca"
        else:
            by_node.setdefault(change.node, []).append(change)
    steps: dict[str, NodeSteps] = {}
    for name in sorted(set(desired) | set(observed.routes)):
        node = desired.get(name)
        step = NodeSteps(name)
        mine = by_node.get(name, [])
        for change in mine:
            if change.kind != "route":
                continue
            if change.action in ("delete", "update", "replace"):
                step.routes_remove.append(change.name)
            if change.action != "delete":
                step.routes_add.append(change.name)
        if node is not None:
            known = name in observed.applied
            tls_changed = site_tls or any(c.kind in TLS_KINDS for c in mine)
            for file in node.files:
                if not known or (
                    (file.role == "routes" and (step.routes_add or step.routes_remove))
                    or (file.role != "routes" and tls_changed)
                ):
                    step.files.append(file.name)
            step.reload = any(f.broker_reads and f.name in step.files for f in node.files)
            recorded = observed.users.get(name)
            if not known:
                step.users_create = [u.username for u in node.users]
            elif recorded is not None:
                step.users_create = [u.username for u in node.users if u.username not in recorded]
            step.users_remove = [u for u in node.retired_users if recorded is None or u in recorded]
        if step:
            steps[name] = step
    return steps


def build_plan(
    site_name: str,
    site_digest: str,
    desired: Mapping[str, NodeDesired],
    observed: Observed,
    extra_changes: Iterable[Change] = (),
    warnings: Iterable[str] = (),
) -> Plan:
    """diff(desired, observed) plus the workspace's own steps -> Plan (pure)."""
    plan = Plan(
        site=site_name,
        site_digest=site_digest,
        node_count=len(desired),
        region_count=len({node.region for node in desired.values()}),
        regions={name: node.region for name, node in desired.items()},
        state_serial=observed.serial,
    )
    plan.changes.extend(extra_changes)
    plan.changes.extend(route_changes(desired, observed))
    plan.warnings.extend(warnings)
    plan.steps = node_steps(desired, observed, plan.changes)
    return plan
