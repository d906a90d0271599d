"""Plan entries for the PKI (issuances with their reasons, CA rotation steps) and the
cluster credential (rotation phases), plus their warnings.

Read only public certificates and the state document: plan never needs the passphrase.
"""

from __future__ import annotations

from datetime import datetime

from lotdeploy.model import Site
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.plan.credentials import credential_changes
from lotdeploy.rotation import LABELS
from lotdeploy.workspace import Workspace


def pki_changes(site: Site, workspace: Workspace, now: datetime) -> tuple[list[Change], list[str]]:
    """Changes of kind "ca"/"certificate" (TLS nodes only) and "credential" (rotation phases),
    plus one-line warnings."""
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
    return changes, warnings
