"""`lotdeploy certs ...` and `lotdeploy creds ...`: the operator's PKI and credential commands.

Thin wrappers over `lotdeploy.pki.operations` and `lotdeploy.credentials`. LotdeployErrors
propagate to the entry point, which prints them on one line (ExitStatus.ERROR). `certs list`
exits ExitStatus.CHANGES when anything needs action, for cron and CI.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from lotdeploy.cli.common import open_site, site_argument, workspace_option
from lotdeploy.cli.term import print_table
from lotdeploy.credentials import CredentialState, advance_creds_rotation
from lotdeploy.exitstatus import ExitStatus
from lotdeploy.model import Site, username_for_version
from lotdeploy.pki.ca import ca_id
from lotdeploy.pki.operations import advance_ca_rotation, ensure_ca, rotate_certs
from lotdeploy.pki.reports import pki_reports, report_warning
from lotdeploy.pki.status import CertReport
from lotdeploy.rotation import LABELS, Rotation, load_rotation
from lotdeploy.secret import dumps
from lotdeploy.workspace import Workspace


def utcnow() -> datetime:
    """The one clock of these commands (tests replace it)."""
    return datetime.now(UTC)


def _open(site: Path, workspace_dir: Path | None) -> tuple[Site, Workspace]:
    loaded, workspace = open_site(site, workspace_dir)
    return loaded.site, workspace


@click.group()
def certs() -> None:
    """Cluster PKI: the site CA and one certificate per TLS node.

    \b
    Example:
      lotdeploy certs init site.yaml
      lotdeploy certs list site.yaml
    """


@certs.command("init")
@site_argument
@workspace_option
def certs_init(site: Path, workspace_dir: Path | None) -> None:
    """Create the site CA now (otherwise the first render does).

    The CA key goes into the encrypted secret store (passphrase from LOTDEPLOY_PASSPHRASE or a
    prompt); it is never written to a node bundle nor shown.

    \b
    Example:
      LOTDEPLOY_PASSPHRASE=... lotdeploy certs init site.yaml
    """
    the_site, workspace = _open(site, workspace_dir)
    with workspace.lock("certs init"):
        cert, created = ensure_ca(the_site, workspace, utcnow())
    verb = "created" if created else "already exists:"
    click.echo(
        f"site CA {verb} {cert.subject.rfc4514_string()} serial {ca_id(cert)}, "
        f"not after {cert.not_valid_after_utc:%Y-%m-%d}"
    )
    if created:
        click.echo(f"its key is kept encrypted in {workspace.secrets_path}")


def _ca_missing_report() -> CertReport:
    return CertReport("ca", "ca", "missing", "no CA yet: run `lotdeploy certs init`")


def _rotation_json(rotation: Rotation | None) -> dict[str, object] | None:
    return rotation.to_json() if rotation else None


@certs.command("list")
@site_argument
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def certs_list(ctx: click.Context, site: Path, workspace_dir: Path | None, as_json: bool) -> None:
    """Show the CA and every node certificate with expiry and status.

    Status is one of: ok, renew soon, expired, SAN mismatch, wrong CA, key type changed,
    missing. Exits 2 when anything needs action. Needs no passphrase.

    \b
    Example (cron):
      lotdeploy certs list site.yaml --json || alert "cluster certificates need action"
    """
    the_site, workspace = _open(site, workspace_dir)
    now = utcnow()
    if not the_site.tls_nodes:
        if as_json:
            click.echo(dumps({"certificates": [], "needs_action": False, "rotation": None}))
        else:
            click.echo("no node of this site uses TLS: no certificates to manage")
        return
    view, reports = pki_reports(the_site, workspace, now)
    if view.active is None:
        reports.insert(0, _ca_missing_report())
    needs_action = any(r.needs_action for r in reports)
    if as_json:
        doc = {
            "now": now.isoformat(timespec="seconds"),
            "certificates": [r.to_json() for r in reports],
            "needs_action": needs_action,
            "rotation": _rotation_json(view.rotation),
        }
        click.echo(dumps(doc, indent=2))
    else:
        _print_table(reports)
        if view.rotation is not None:
            pending = view.rotation.pending(n.name for n in the_site.tls_nodes)
            click.echo(
                f"\n{LABELS['ca']} in phase {view.rotation.phase}; not applied yet on: "
                f"{', '.join(pending) or 'none'}"
            )
        for report in reports:
            if report.needs_action:
                click.echo(f"warning: {report_warning(report)}", err=True)
    if needs_action:
        ctx.exit(ExitStatus.CHANGES)


def _print_table(reports: list[CertReport]) -> None:
    header = ("NAME", "ROLE", "STATUS", "DAYS", "NOT AFTER", "SERIAL", "SUBJECT", "SANS")
    rows = [
        (
            r.name,
            r.role,
            r.status,
            "" if r.days_left is None else str(r.days_left),
            f"{r.not_after:%Y-%m-%d}" if r.not_after else "",
            r.serial[:16],
            r.subject,
            ",".join(r.sans),
        )
        for r in reports
    ]
    print_table(header, rows)


@certs.command("rotate")
@site_argument
@workspace_option
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
def certs_rotate(site: Path, workspace_dir: Path | None, nodes: tuple[str, ...]) -> None:
    """Reissue node certificates now (new keys), whatever their expiry.

    `lotdeploy plan` then shows them; they reach a node when its bundle is deployed there.
    The CA does not change.

    \b
    Example:
      lotdeploy certs rotate site.yaml --node eu1
    """
    the_site, workspace = _open(site, workspace_dir)
    with workspace.lock("certs rotate"):
        issued_now = rotate_certs(the_site, workspace, utcnow(), nodes)
    for issued in issued_now:
        click.echo(
            f"node {issued.node}: new certificate serial {issued.serial}, "
            f"not after {issued.not_after:%Y-%m-%d}"
        )
    click.echo(f"next: lotdeploy plan {site}, then deploy the new bundles to these nodes")


PHASE_TEXT = {
    "ca": {
        1: "every node trusts the old and the new CA (certificates unchanged)",
        2: "node certificates are reissued under the new CA (both CAs still trusted)",
        3: "the old CA is dropped from every node's trust bundle",
    },
    "creds": {
        1: "every broker accepts the new cluster user/password beside the old one",
        2: "routes switch to the new user/password",
        3: "the old user is removed from every broker",
    },
}


def _report_rotation(kind: str, rotation: Rotation | None, site: str, command: str) -> None:
    if rotation is None:
        click.echo(f"{LABELS[kind]} finished")
        return
    click.echo(f"{LABELS[kind]} phase {rotation.phase} of 3: {PHASE_TEXT[kind][rotation.phase]}")
    click.echo(
        f"next: lotdeploy plan {site}, deploy the phase on every node, "
        f"then `{command} {site}` again"
    )


def _status(kind: str, rotation: Rotation | None, nodes: list[str]) -> None:
    if rotation is None:
        click.echo(f"no {LABELS[kind]} in progress")
        return
    pending = rotation.pending(nodes)
    click.echo(
        f"{LABELS[kind]} phase {rotation.phase} of 3 ({rotation.old} -> {rotation.new}): "
        f"{PHASE_TEXT[kind][rotation.phase]}"
    )
    click.echo(f"not applied yet on: {', '.join(pending) or 'none (ready for the next phase)'}")


@certs.command("rotate-ca")
@site_argument
@workspace_option
@click.option("--status", "show_status", is_flag=True, help="Show the phase; change nothing.")
def certs_rotate_ca(site: Path, workspace_dir: Path | None, show_status: bool) -> None:
    """Replace the site CA in three phases, without a moment where links are refused.

    Run it once per phase, after the previous phase is deployed on every node (it refuses to go
    on before that). Phase 1: trust old+new CA. Phase 2: reissue node certificates under the
    new CA. Phase 3: drop the old CA. A fourth run finishes.

    \b
    Example:
      lotdeploy certs rotate-ca site.yaml && lotdeploy plan site.yaml
    """
    the_site, workspace = _open(site, workspace_dir)
    if show_status:
        _status("ca", load_rotation(workspace, "ca"), [n.name for n in the_site.tls_nodes])
        return
    with workspace.lock("certs rotate-ca"):
        rotation = advance_ca_rotation(the_site, workspace, utcnow())
    _report_rotation("ca", rotation, str(site), "lotdeploy certs rotate-ca")


@click.group()
def creds() -> None:
    """The shared cluster credential (user and password the routes carry).

    \b
    Example:
      lotdeploy creds rotate site.yaml
    """


@creds.command("rotate")
@site_argument
@workspace_option
@click.option("--status", "show_status", is_flag=True, help="Show the phase; change nothing.")
def creds_rotate(site: Path, workspace_dir: Path | None, show_status: bool) -> None:
    """Roll out a new cluster user and password in three phases; links are never refused.

    Phase 1: every broker accepts the new user. Phase 2: routes switch to it. Phase 3: the
    old user is removed. Run once per phase, after the phase is deployed on every node; a
    fourth run finishes (the old password leaves the secret store).

    \b
    Example:
      lotdeploy creds rotate site.yaml && lotdeploy plan site.yaml
    """
    the_site, workspace = _open(site, workspace_dir)
    if show_status:
        _status("creds", load_rotation(workspace, "creds"), [n.name for n in the_site.nodes])
        return
    with workspace.lock("creds rotate"):
        rotation = advance_creds_rotation(the_site, workspace, utcnow())
    _report_rotation("creds", rotation, str(site), "lotdeploy creds rotate")
    if rotation is not None and rotation.phase == 2:
        version = CredentialState.load(workspace).active_version
        users = sorted({username_for_version(n.username, version) for n in the_site.nodes})
        click.echo(f"routes now use user {', '.join(users)} (password: (sensitive))")
