"""Make a plan: read the workspace's facts, then desired -> diff against observed (pure).

This is the only module of the plan package that reads anything (the state document and
the public PKI files, never the passphrase); everything after it is pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lotdeploy.model import Site
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.plan.desired import CredentialFacts, desired_state
from lotdeploy.plan.diff import Plan, build_plan
from lotdeploy.plan.live import Refresh
from lotdeploy.plan.observed import Observed
from lotdeploy.plan.pki import pki_changes
from lotdeploy.routesecret import plan_notes, site_choices, stored_nodes
from lotdeploy.secret import SENSITIVE
from lotdeploy.sitefacts import bind_site
from lotdeploy.state import State, StateStore
from lotdeploy.workspace import Workspace


def credential_facts(state: State) -> CredentialFacts:
    """Which credential versions the brokers must accept now, from the rotation phase."""
    rotation = state.rotation("creds")
    accepted: tuple[int, ...] = (state.credential_version,)
    retired = None
    if rotation is not None:
        old, new = int(rotation.old), int(rotation.new)
        accepted = (old, new) if rotation.phase < 3 else (new,)
        retired = old if rotation.phase == 3 else None
    return CredentialFacts(state.credential_version, state.credential_generated, accepted, retired)


def first_password_change(site: Site, credentials: CredentialFacts) -> list[Change]:
    """The explicit step render/apply perform before any route can be written."""
    if credentials.generated or not site.link_count:
        return []
    return [
        Change(
            "create",
            "credential",
            "cluster-password",
            reason="generated on first render, kept encrypted in the workspace",
            attrs=(Attr("value", SENSITIVE),),
        )
    ]


def make_plan(
    site: Site,
    workspace: Workspace,
    now: datetime | None = None,
    only: set[str] | None = None,
    refresh: Refresh | None = None,
) -> Plan:
    """The plan for `site` against the workspace's state (for the nodes in `only`).

    `refresh` (what the live nodes showed: apply's refresh, `plan --refresh`) replaces what
    the state recorded as differing on each node read, so the plan restores what drifted;
    its findings are shown apart from the changes.
    """
    now = now or datetime.now(UTC)
    state = StateStore(workspace).read()
    site = bind_site(site, state)  # adopted routes, a take-over's phase (lotdeploy.sitefacts)
    if refresh is not None:
        apply_refresh(state, refresh)
    credentials = credential_facts(state)
    extra = first_password_change(site, credentials)
    observed = Observed.from_state(state)
    pki, warnings = pki_changes(site, workspace, now, observed.files)
    extra.extend(pki)
    passwords = site_choices(site, state)
    plan = build_plan(
        site.name,
        site.digest(),
        desired_state(site, credentials, stored_nodes(passwords)),
        observed,
        extra,
        warnings + resume_warnings(state) + rollout_warnings(state),
    )
    writing = {n for n, step in plan.steps.items() if step.routes_add}
    plan.warnings.extend(plan_notes(passwords, writing))
    plan.site_file = str(Path(site.source).resolve())
    plan.workspace_id = workspace.identity()
    if refresh is not None:
        plan.refreshed = True
        plan.unread = sorted(refresh.errors)
        plan.drift = {
            node: [f for f in found if f != "never applied"]
            for node, found in sorted(refresh.findings.items())
            if any(f != "never applied" for f in found)
        }
    return plan.restricted(only)


def apply_refresh(state: State, refresh: Refresh) -> None:
    """`state` as the live read showed it: each node read gets the drift found there (a
    clean node none, whatever an earlier refresh-only recorded)."""
    for node in refresh.read:
        record = state.nodes.get(node)
        if record is not None:
            record.drift = dict(refresh.drift.get(node, {}))


def rollout_warnings(state: State) -> list[str]:
    """Say where a rollout stands when one is paused, interrupted or stopped (rollout.md)."""
    record = state.rollout
    if record is None:
        return []
    names = [str(w.get("name")) for w in record.waves]
    where = f"after wave {names[record.done - 1]}" if record.done else "before its first wave"
    what = {"paused": "is paused", "running": "was interrupted", "failed": "stopped"}.get(
        record.status, record.status
    )
    return [
        f"a rollout {what} {where} ({record.done} of {len(names)} waves done): apply "
        "--continue goes on, lotdeploy rollback undoes it"
        + (f"; it stopped because {record.reason}" if record.reason else "")
    ]


def resume_warnings(state: State) -> list[str]:
    """Say so when a node's journal holds steps an interrupted apply did not finish."""
    return [
        f"node {name}: an earlier apply was interrupted there ({', '.join(record.pending)} "
        "pending); the next apply does it first"
        for name, record in sorted(state.nodes.items())
        if record.pending
    ]
