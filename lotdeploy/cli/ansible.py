"""`lotdeploy inventory`, `export-ansible`, `ansible-runs`: the Ansible side of lotdeploy."""

from __future__ import annotations

from pathlib import Path

import click

from lotdeploy.cli.common import bind, load, open_workspace, workspace_option


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Write to FILE (else stdout)."
)
def inventory(site: Path, out: Path | None) -> None:
    """Print the site as an Ansible YAML inventory: groups per region, site and tag.

    Host vars reach each node the way apply does (host, port, user, key, jump; host keys
    checked strictly against the site's known_hosts) and name its broker paths. No secret.

    \b
    Example:
      lotdeploy inventory site.yaml --out hosts.yml && ansible-inventory -i hosts.yml --list
    """
    from lotdeploy.ansible.inventory import inventory_text
    from lotdeploy.errors import LotdeployError
    from lotdeploy.fsutil import write_output

    text = inventory_text(load(site).site)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            write_output(out, text, 0o644)
        except OSError as exc:
            raise LotdeployError(f"{out}: cannot write the inventory: {exc.strerror}") from None
        click.echo(f"inventory: {out}")


@click.command("export-ansible")
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@workspace_option
@click.option(
    "--vault-password-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Encrypt the secret files with Ansible Vault (default: the site's ansible setting).",
)
def export_ansible(
    site: Path, directory: Path, workspace_dir: Path | None, vault_password_file: Path | None
) -> None:
    """Write inventory, playbooks, bundles and a README into DIRECTORY for plain Ansible.

    Plain `ansible-playbook` or AWX then deploys the files without lotdeploy.

    \b
    Example:
      lotdeploy export-ansible site.yaml out/ && ansible-playbook -i out/inventory out/deploy.yml
    """
    from lotdeploy.ansible.export import export, without_admin_password
    from lotdeploy.ansible.vault import vault_file

    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    bind(loaded, workspace)
    vault = vault_password_file or vault_file(loaded.site)
    with workspace.lock("export-ansible"):
        nodes = export(loaded.site, workspace, directory, vault)
    missing = without_admin_password(loaded.site)
    if missing:
        click.echo(
            f"warning: the site names no admin password for {', '.join(missing)}: activation "
            "takes lotdeploy_admin_passwords.<node> from extra variables (an AWX credential)",
            err=True,
        )
    click.echo(
        f"export-ansible: {len(nodes)} node(s) in {directory}"
        + (" (secret files vault-encrypted)" if vault else "")
        + f"; see {directory / 'README.md'}"
    )


@click.command("ansible-runs")
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
def ansible_runs(site: Path, workspace_dir: Path | None) -> None:
    """List the ansible-runner runs of this site's workspace and where their artifacts are.

    \b
    Example:
      lotdeploy ansible-runs site.yaml
    """
    from lotdeploy.ansible.runner import PrivateDataDir
    from lotdeploy.workspace import Workspace

    workspace = Workspace.for_site(site, workspace_dir)
    runs, skipped = PrivateDataDir(workspace.root).runs()
    for line in skipped:
        click.echo(f"warning: {line}", err=True)
    for run in runs:
        failed = sorted(n for n, h in run.get("hosts", {}).items() if not h.get("ok"))
        click.echo(
            f"{run['ident']}  {run['status']:<10} {len(run.get('nodes', []))} node(s)"
            + (f", failed: {', '.join(failed)}" if failed else "")
            + f"  {run['artifacts']}"
        )
