"""Plan entries for the PKI (issuances with their reasons, CA rotation steps) and the
cluster credential (rotation phases), plus their warnings.

Read only public certificates and the state document: plan never needs the passphrase.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from lotdeploy.model import Site
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.plan.credentials import credential_changes
from lotdeploy.rotation import LABELS
from lotdeploy.workspace import Workspace

if TYPE_CHECKING:  # cryptography stays unloaded for sites without TLS
    from lotdeploy.pki.status import CertReport


def pki_changes(
    site: Site,
    workspace: Workspace,
    now: datetime,
    recorded: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
) -> tuple[list[Change], list[str]]:
    """Changes of kind "ca"/"certificate" (TLS nodes only) and "credential" (rotation phases),
    plus one-line warnings. `recorded` (node -> file -> {sha256}, from the state) finds the
    certificates issued for a node that it does not run yet."""
    changes, warnings = credential_changes(site, workspace)
    if not site.tls_nodes:
        return changes, warnings
    # Imported here: a site without TLS never loads cryptography (~50 ms of every plan).
    from lotdeploy.pki.issue import expected_sans
    from lotdeploy.pki.reports import pki_reports, report_warning

    view, reports = pki_reports(site, workspace, now)
    policy = site.pki
    if view.active is None:
        changes.append(
            Change(
                "create",
                "ca",
                "site CA",
                reason="missing",
                attrs=(
                    Attr("key_type", policy.key_type),
                    Attr("lifetime_days", str(policy.ca_lifetime_days)),
                ),
            )
        )
    rotation = view.rotation
    if rotation is not None:
        label = f"{LABELS['ca']} phase {rotation.phase}"
        done = rotation.applied_nodes()
        bundle_step = {1: "trust old+new CA", 3: "drop the old CA"}.get(rotation.phase)
        if bundle_step:
            for node in site.tls_nodes:
                if node.name not in done:
                    changes.append(
                        Change(
                            "update",
                            "ca",
                            node.broker.ca_file,
                            node=node.name,
                            region=node.region,
                            reason=f"{label}: {bundle_step}",
                            attrs=(Attr("trusted", ",".join(view.trusted)),),
                        )
                    )
        if not rotation.pending(n.name for n in site.tls_nodes):
            warnings.append(
                f"{label} is applied on every node: run `lotdeploy certs rotate-ca "
                f"{site.source}` to continue"
            )
    nodes = {n.name: n for n in site.tls_nodes}
    for report in reports:
        if report.needs_action and report.status != "missing":
            warnings.append(report_warning(report))
        if report.role != "node" or not report.reissue:
            continue
        node = nodes[report.name]
        sans = ",".join(expected_sans(node))
        changes.append(
            Change(
                "create" if report.status == "missing" else "replace",
                "certificate",
                node.broker.cert_file,
                node=node.name,
                region=node.region,
                reason=report.reason,
                attrs=(
                    Attr("sans", sans, ",".join(report.sans) if report.sans else None),
                    Attr("key_type", policy.key_type),
                    Attr("issuer", view.issuing or "(new CA)"),
                ),
            )
        )
    changes.extend(_certificates_not_on_node(site, reports, recorded or {}, changes))
    return changes, warnings


def _certificates_not_on_node(
    site: Site,
    reports: list[CertReport],
    recorded: Mapping[str, Mapping[str, Mapping[str, str]]],
    changes: list[Change],
) -> list[Change]:
    """A certificate in the workspace that differs from the one state says the node has.

    Apply issues what is due for every node before its first step, so after an apply that
    left nodes out (--limit, a rollout wave, a failed node) their new certificates are no
    longer due; without this, the next plan would say "No changes" and they would keep the
    old ones (through phase 2 of a CA rotation, one the old CA signed)."""
    planned = {c.node for c in changes if c.kind == "certificate"}
    nodes = {n.name: n for n in site.tls_nodes}
    found = []
    for report in reports:
        node = nodes.get(report.name) if report.role == "node" else None
        if node is None or not report.sha256 or node.name in planned:
            continue
        have = recorded.get(node.name, {}).get(node.broker.cert_file, {}).get("sha256")
        if have is None or have == report.sha256:
            continue
        found.append(
            Change(
                "update",
                "certificate",
                node.broker.cert_file,
                node=node.name,
                region=node.region,
                reason="issued, not yet on the node",
                attrs=(Attr("serial", report.serial),),
            )
        )
    return found
