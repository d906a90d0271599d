"""The status of every CA and node certificate of a site: what `certs list` shows and what
the plan's PKI changes are made from. Reads only public certificates and the state document
(never the passphrase).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from cryptography import x509

from lotdeploy.model import Site
from lotdeploy.pki.inventory import CaView, Inventory, ca_view
from lotdeploy.pki.issue import expected_sans
from lotdeploy.pki.status import CertReport, ca_report, node_report
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
