"""The diff: desired state against observed state gives a Plan (pure, no I/O).

Route changes come from comparing each node's desired routes with the recorded ones;
workspace steps (the first password, the CA, certificates, rotation phases) come in as
changes already made by their layers. From all of them, each node's `NodeSteps` say what
apply will do there: which files to write, which routes to remove and add, which broker
users to create or remove, and whether the node's reload command runs.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import groupby
from operator import attrgetter
from typing import Any

from lotdeploy.compiler import ROUTE_FILE
from lotdeploy.plan.changes import SHOWN, Action, Attr, Change
from lotdeploy.plan.desired import DesiredRoute, NodeDesired, file_path
from lotdeploy.plan.observed import Observed
from lotdeploy.secret import SENSITIVE

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
    #: files lotdeploy wrote at paths the site no longer uses: [path, sha256 it wrote];
    #: removed after the new ones are in place, and only while they still hold that content
    files_remove: list[list[str]] = field(default_factory=list)
    #: a release directory the site moved away from (its releases and `current`, if ours)
    old_release_dir: str | None = None
    #: new route name -> the route it replaces (same peer, another name: a take-over's
    #: renaming): added and Connected before the old one goes, so the link is never down
    routes_replace: dict[str, str] = field(default_factory=dict)
    #: broker secrets a refresh found missing from the broker's store, set again (the
    #: secrets of routes being added are set with them anyway)
    secrets_set: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.files
            or self.routes_remove
            or self.routes_add
            or self.users_create
            or self.users_remove
            or self.reload
            or self.files_remove
            or self.old_release_dir
            or self.secrets_set
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "files": self.files,
            "routes_remove": self.routes_remove,
            "routes_add": self.routes_add,
            "users_create": self.users_create,
            "users_remove": self.users_remove,
            "reload": self.reload,
        }
        if self.files_remove:
            doc["files_remove"] = self.files_remove
        if self.old_release_dir:
            doc["old_release_dir"] = self.old_release_dir
        if self.routes_replace:
            doc["routes_replace"] = dict(sorted(self.routes_replace.items()))
        if self.secrets_set:
            doc["secrets_set"] = self.secrets_set
        return doc


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
    #: nodes the refresh could not read (planned from their records as they are)
    unread: list[str] = field(default_factory=list)
    #: the workspace the plan was made in (Workspace.identity): a saved plan applies there only
    workspace_id: str = ""
    #: the digest a saved plan carried (lotdeploy.plan.document.plan_digest); "" when fresh
    digest: str = field(default="", compare=False)
    #: which document it was read from: "plan" (payloads and attributes) or "reference"
    document: str = field(default="", compare=False)

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
        drift = observed.drift.get(node_name)
        region = node.region if node else "(removed)"
        if not have and not drift:  # nothing recorded (a first plan): every route is created
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
                if drift and drift.get(f"route/{name}") == "missing":
                    reason = f"missing on the broker: put back ({reason})"
                changes.append(
                    Change("create", "route", name, node_name, region, reason, (), route)
                )
            elif route is None and before is not None:
                reason = "node removed from the site" if node is None else "peer removed"
                if not before:
                    reason = observed.removals.get(node_name, {}).get(
                        name, "on the broker, not in the site (lotdeploy's prefix: removed)"
                    )
                changes.append(
                    Change("delete", "route", name, node_name, region, reason, (), None, before)
                )
            elif route is not None and before is not None:
                kind = drift.get(f"route/{name}") if drift else None
                if not before or kind == "changed":
                    reason = (
                        "its code on the broker differs from what lotdeploy applied"
                        if before
                        else "on the broker already, with code lotdeploy did not record"
                    )
                    changes.append(
                        Change(
                            "update", "route", name, node_name, region, reason, (), route, before
                        )
                    )
                elif _differs(before, route.attrs()):
                    changes.append(
                        Change("update", "route", name, node_name, region, "", (), route, before)
                    )
    return changes


def file_changes(desired: Mapping[str, NodeDesired], observed: Observed) -> list[Change]:
    """What differs in the files a node has, by their paths on the node: a file the site
    now puts elsewhere or names otherwise, a mode, a file a refresh found missing or changed,
    and a `current` that no longer points at the release apply left. A node never applied
    gets all its files anyway, shown by its other changes; none of these lines."""
    changes: list[Change] = []
    for name in sorted(desired):
        node = desired[name]
        recorded = observed.files.get(name)
        # no files recorded: a record from before files were recorded (nothing to say), or,
        # with its paths recorded, a node an import adopted: none of lotdeploy's files is
        # there yet (its TLS files are new; its route file comes with its first release)
        adopted = not recorded and name in observed.paths
        if name not in observed.applied or not (recorded or adopted):
            continue
        recorded = recorded or {}
        paths = observed.paths.get(name) or dict(node.paths)
        drift = observed.drift.get(name, {})
        have = {file_path(paths, f): (f, entry) for f, entry in recorded.items()}
        want = {node.path_of(f.name): (f.name, f"{f.mode:04o}") for f in node.files}
        moved_from = {posixpath.basename(p): p for p in set(have) - set(want)}
        for path in sorted(set(want) | set(have)):
            if path in want and path not in have:
                file_name = want[path][0]
                if adopted and file_name == ROUTE_FILE:
                    continue
                old = moved_from.get(file_name)
                reason = f"moved from {old}" if old else "new in the site"
                changes.append(Change("create", "file", path, name, node.region, reason))
            elif path in have and path not in want:
                reason = "no longer in the site: removed if it still holds what lotdeploy wrote"
                changes.append(Change("delete", "file", path, name, node.region, reason))
            else:
                file_name, mode = want[path]
                kind = drift.get(f"file/{file_name}")
                recorded_mode = have[path][1].get("mode")
                if kind:
                    reason = f"{kind} on the node since lotdeploy wrote it"
                    action: Action = "create" if kind == "missing" else "update"
                    changes.append(Change(action, "file", path, name, node.region, reason))
                elif recorded_mode != mode:
                    reason = f"mode {recorded_mode} -> {mode}"
                    changes.append(Change("update", "file", path, name, node.region, reason))
        current = posixpath.join(dict(node.paths)["release_dir"], "current")
        if "release" in drift:
            reason = (
                "`current` points at another release than apply left"
                if drift["release"] == "changed"
                else "`current` is missing on the node"
            )
            changes.append(Change("update", "release", current, name, node.region, reason))
        elif "timer" in drift:
            reason = "an earlier apply's confirm-or-revert timer is still armed: disarmed"
            changes.append(Change("update", "release", current, name, node.region, reason))
    return changes


def user_changes(desired: Mapping[str, NodeDesired], observed: Observed) -> list[Change]:
    """Cluster users a refresh found the broker refusing (created, or given their password,
    again) or holding rights they do not need (taken away). A first apply's users are
    steps of the node, not changes of their own."""
    changes: list[Change] = []
    for name in sorted(desired):
        node = desired[name]
        wanted = {u.username for u in node.users}
        for key, kind in sorted(observed.drift.get(name, {}).items()):
            what, _, user = key.partition("/")
            if what == "user" and kind == "refused" and user in wanted:
                reason = "the broker refuses its login: removed, or given another password"
                changes.append(Change("create", "user", user, name, node.region, reason))
            elif what == "user" and kind == "rights" and user in wanted:
                reason = "it holds broker rights a cluster user does not need: taken away"
                changes.append(Change("update", "user", user, name, node.region, reason))
    return changes


def secret_changes(desired: Mapping[str, NodeDesired], observed: Observed) -> list[Change]:
    """The broker secrets a node's routes read their password from (lotdeploy.routesecret)
    that no route recorded there read before, or that a refresh found missing from the
    broker's store: set by apply before those routes are added (and set again before every
    later add, the same value). Shown without their value."""
    changes: list[Change] = []
    for name in sorted(desired):
        node = desired[name]
        wanted = sorted({r.password_secret for r in node.routes if r.password_secret})
        if not wanted:
            continue
        have = {
            attrs.get("password_secret")
            for attrs in observed.routes.get(name, {}).values()
            if attrs
        }
        drift = observed.drift.get(name, {})
        for secret in wanted:
            missing = drift.get(f"secret/{secret}") == "missing"
            if secret not in have or missing:
                reason = (
                    "missing from the broker's secret store: set again"
                    if missing and secret in have
                    else "the routes read the cluster password from the broker's secret store"
                )
                changes.append(
                    Change(
                        "create",
                        "secret",
                        secret,
                        name,
                        node.region,
                        reason,
                        (Attr("value", SENSITIVE),),
                    )
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
    return any(before.get(key) != after.get(key) for key, _ in SHOWN) or before.get(
        "password_secret", ""
    ) != after.get("password_secret", "")


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
        step.routes_replace = _renamed(mine)
        drift = observed.drift.get(name, {})
        step.secrets_set = [
            c.name
            for c in mine
            if c.kind == "secret" and drift.get(f"secret/{c.name}") == "missing"
        ]
        if node is not None:
            known = name in observed.applied
            tls_changed = site_tls or any(c.kind in TLS_KINDS for c in mine)
            # a file moved, renamed, changed on the node or `current` moved: the release
            # goes out again (apply compares each file with what the node has)
            files_changed = any(c.kind in ("file", "release") for c in mine)
            for file in node.files:
                if (
                    not known
                    or files_changed
                    or (file.role == "routes" and (step.routes_add or step.routes_remove))
                    or (file.role != "routes" and tls_changed)
                ):
                    step.files.append(file.name)
            step.reload = any(f.broker_reads and f.name in step.files for f in node.files)
            recorded = observed.users.get(name)
            refused = {
                c.name for c in mine if c.kind == "user" and c.action in ("create", "update")
            }
            if not known:
                step.users_create = [u.username for u in node.users]
            elif recorded is not None or refused:
                step.users_create = [
                    u.username
                    for u in node.users
                    if u.username in refused
                    or (recorded is not None and u.username not in recorded)
                ]
            step.users_remove = [u for u in node.retired_users if recorded is None or u in recorded]
            if known:
                _removals(step, node, observed, mine)
        if step:
            steps[name] = step
    return steps


def _renamed(changes: list[Change]) -> dict[str, str]:
    """new route -> old route, where a node's route to a peer is deleted and one to the
    same peer created under another name (a take-over renaming adopted routes)."""
    gone = {
        str(c.before.get("peer")): c.name
        for c in changes
        if c.kind == "route" and c.action == "delete" and c.before and c.before.get("peer")
    }
    return {
        c.name: gone[c.payload.peer]
        for c in changes
        if c.kind == "route"
        and c.action == "create"
        and isinstance(c.payload, DesiredRoute)
        and c.payload.peer in gone
    }


def _removals(
    step: NodeSteps, node: NodeDesired, observed: Observed, changes: list[Change]
) -> None:
    """What of lotdeploy's own the node keeps at paths the site left: those files (with the
    digest lotdeploy wrote, so a file changed since is left alone) and the old release
    directory."""
    recorded = observed.files.get(node.name, {})
    paths = observed.paths.get(node.name) or dict(node.paths)
    by_path = {file_path(paths, f): entry for f, entry in recorded.items()}
    in_release = paths["release_dir"] + "/"  # those go with the old release directory
    for change in changes:
        if (
            change.kind == "file"
            and change.action == "delete"
            and change.name in by_path
            and not change.name.startswith(in_release)
        ):
            step.files_remove.append([change.name, by_path[change.name].get("sha256", "")])
    if paths["release_dir"] != dict(node.paths)["release_dir"]:
        step.old_release_dir = paths["release_dir"]


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
    plan.changes.extend(file_changes(desired, observed))
    plan.changes.extend(user_changes(desired, observed))
    plan.changes.extend(secret_changes(desired, observed))
    plan.warnings.extend(warnings)
    plan.steps = node_steps(desired, observed, plan.changes)
    return plan
