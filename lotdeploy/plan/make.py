"""Assemble a plan from every layer: credentials, PKI, routes (against known state)."""

from __future__ import annotations

from datetime import UTC, datetime

from lotdeploy.credentials import CredentialState
from lotdeploy.model import Site
from lotdeploy.pki.plan import pki_changes
from lotdeploy.plan.build import Plan, build_plan
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.plan.state import KnownState
from lotdeploy.secret import SENSITIVE
from lotdeploy.workspace import Workspace


def make_plan(site: Site, workspace: Workspace, now: datetime | None = None) -> Plan:
    now = now or datetime.now(UTC)
    credentials = CredentialState.load(workspace)
    known = KnownState.load(workspace)
    extra: list[Change] = []
    warnings: list[str] = []
    if not credentials.generated and site.links:
        extra.append(
            Change(
                "create",
                "credential",
                "cluster-password",
                reason="generated on first render, kept encrypted in the workspace",
                attrs=(Attr("value", SENSITIVE),),
            )
        )
    pki, pki_warnings = pki_changes(site, workspace, now)
    extra.extend(pki)
    warnings.extend(pki_warnings)
    return build_plan(site, known, credentials.active_version, extra, warnings)
