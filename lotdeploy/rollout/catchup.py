"""Files a node is behind on, whatever the plan says.

The plan sees a certificate change only while the certificate is due; apply issues the due
certificates of *every* node before its first step (render.prepare_workspace). So once the
first wave of a CA rotation's phase 2 ran, the later waves' new certificates are already in
the workspace and no longer due: a plan of those nodes alone shows nothing, and they would
keep their old certificates. Before each wave the rollout compares the bundle each node of
the wave would get with the files the state records for it, and adds a files step (and a
reload, for TLS files) where they differ.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lotdeploy.model import Site
from lotdeploy.plan.diff import NodeSteps, Plan
from lotdeploy.render import ROUTE_FILE, iter_bundles
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.workspace import Workspace


def files_behind(
    site: Site, workspace: Workspace, nodes: set[str], now: datetime | None = None
) -> dict[str, list[str]]:
    """node -> names of its bundle files whose sha256 differs from what state records."""
    records = StateStore(workspace).read().nodes
    behind: dict[str, list[str]] = {}
    for bundle in iter_bundles(site, workspace, now or datetime.now(UTC)):
        if bundle.node not in nodes:
            continue
        have = records.get(bundle.node, NodeRecord()).files
        stale = sorted(
            f.name for f in bundle.files if have.get(f.name, {}).get("sha256") != f.sha256
        )
        if stale:
            behind[bundle.node] = stale
    return behind


def with_catchup(plan: Plan, behind: dict[str, list[str]]) -> Plan:
    """The plan with a files step for every node that is behind (a reload for TLS files)."""
    for node, names in behind.items():
        steps = plan.steps.setdefault(node, NodeSteps(node))
        steps.files = sorted(set(steps.files) | set(names))
        if any(name != ROUTE_FILE for name in names):
            steps.reload = True
    return plan
