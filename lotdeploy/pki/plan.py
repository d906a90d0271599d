"""What `plan` shows for the PKI: issuances with their reasons, rotation steps, warnings.

Pure with respect to the passphrase: reads only public certificates and metadata.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from cryptography import x509

from lotdeploy.credentials import credential_changes
from lotdeploy.model import Site
from lotdeploy.pki.inventory import CaView, Inventory, ca_view
from lotdeploy.pki.issue import expected_sans
from lotdeploy.pki.rotation import LABELS
from lotdeploy.pki.status import CertReport, ca_report, node_report
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.workspace import Workspace


def pki_reports(site: Site, workspace: Workspace, now: datetime) -> tuple[CaView, list[CertReport]]:
    """Status of every trusted CA and every TLS node's certificate (what `certs list` shows)."""
    view = ca_view(workspace)
    inventory = Inventory(workspace)
    reports: list[CertReport] = []
    cas: dict[str, x509.Certificate] = {ident: inventory.load_ca(ident) for ident in view.trusted}
    for ident, cert in cas.items():
        role = "ca"
        if view.rotation is not None and len(cas) > 1:
            role = "ca (old)" if ident == view.rotation.old else "ca (new)"
        report = ca_report(cert, site.pki, now, role)
        if role == "ca (old)" and report.status != "ok":
            # Being replaced already: its expiry is what the rotation is for.
            detail = report.detail.split(":")[0] + " (being rotated out)"
            report = replace(report, status="ok", detail=detail)
        reports.append(report)
    issuing = cas.get(view.issuing) if view.issuing else None
    for node in site.tls_nodes:
        if issuing is None:
            reports.append(
                CertReport(
                    node.name, "node", "missing", "no CA yet", reissue=True, reason="missing"
                )
            )
            continue
        reports.append(
            node_report(
                node.name,
                inventory.load_node_cert(node.name),
                expected_sans(node),
                issuing,
                site.pki,
                now,
                view.rotation.phase if view.rotation else None,
            )
        )
    return view, reports


def report_warning(report: CertReport) -> str:
    """The one-line warning for a report that needs action (same words in list and plan)."""
    what = "site CA" if report.role.startswith("ca") else f"certificate of node {report.name}"
    if report.status == "missing":
        return f"{what} is missing"
    return f"{what}: {report.status}: {report.detail}"


def pki_changes(site: Site, workspace: Workspace, now: datetime) -> tuple[list[Change], list[str]]:
    """Changes of kind "ca"/"certificate" (TLS nodes only) and "credential" (rotation phases),
    plus one-line warnings."""
    changes, warnings = credential_changes(site, workspace)
    if not site.tls_nodes:
        return changes, warnings
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
