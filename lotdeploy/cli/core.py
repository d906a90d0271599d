"""The site commands: init, validate, render, plan, lint, schema, graph.

Each imports the layer it drives inside its body, so `validate` never loads the compiler,
cryptography or the lab.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lotdeploy.cli.common import (
    bind,
    collector_paused,
    directory_option,
    load,
    open_workspace,
    read_live,
    refuse_missing_broker_keys,
    site_argument,
    workspace_option,
)
from lotdeploy.errors import LotdeployError
from lotdeploy.exitstatus import ExitStatus
from lotdeploy.secret import scrub


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite an existing site.yaml.")
def init(directory: Path, force: bool) -> None:
    """Write a commented example site.yaml (two regions, TLS on) into DIRECTORY.

    \b
    Example:
      lotdeploy init plant-a && lotdeploy validate plant-a/site.yaml
    """
    from lotdeploy.compiler.templates import builtin_templates_dir
    from lotdeploy.fsutil import write_output

    target = directory / "site.yaml"
    if (target.exists() or target.is_symlink()) and not force:
        raise LotdeployError(f"{target} already exists (use --force to overwrite)")
    example = (builtin_templates_dir() / "example-site.yaml").read_text()
    try:
        write_output(target, example)
    except OSError as exc:
        raise LotdeployError(f"{target}: cannot write: {exc.strerror}") from None
    click.echo(f"wrote {target}; next: lotdeploy plan {target}")


@click.command()
@site_argument
def validate(site: Path) -> None:
    """Check a site spec; print a one-line summary or every error (file:line:col).

    \b
    Example:
      lotdeploy validate site.yaml
    """
    loaded = load(site)
    s = loaded.site
    tls = sum(1 for n in s.nodes if n.tls)
    click.echo(
        f"{site}: ok: site {s.name}, {len(s.nodes)} nodes in {len({n.region for n in s.nodes})} "
        f"region(s), {s.link_count} routes, TLS on {tls}/{len(s.nodes)} nodes"
    )


@click.command()
@site_argument
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    required=True,
    callback=directory_option,
    help="Output directory; one subdirectory per node.",
)
@workspace_option
def render(site: Path, out: Path, workspace_dir: Path | None) -> None:
    """Write each node's bundle to OUT/<node>/: routes.lot, TLS files, manifest.json.

    Needs the workspace passphrase (LOTDEPLOY_PASSPHRASE or a prompt): the cluster password
    is generated on first use and kept encrypted in the workspace.

    \b
    Example:
      LOTDEPLOY_PASSPHRASE=... lotdeploy render site.yaml --out build/
    """
    from lotdeploy.render import write_bundles

    loaded = load(site)
    the_workspace = open_workspace(site, workspace_dir)
    bind(loaded, the_workspace)
    with the_workspace.lock("render"):
        result = write_bundles(loaded.site, the_workspace, out)
    removed = f", removed {len(result.removed)} stale node dir(s)" if result.removed else ""
    click.echo(
        f"rendered {result.routes} routes for {result.nodes} nodes into {out} "
        f"({result.files} files{removed})"
    )


@click.command()
@site_argument
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan on stdout.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there are no changes, 2 when there are, 1 on error.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also save the plan to FILE, for `lotdeploy apply FILE` (no secret in it).",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Also read the live nodes (over SSH and the command channel): plan to restore what "
    "drifted, and list the drift apart. Without it the plan is made offline, from the "
    "recorded state (its header says which); apply reads the nodes before it changes "
    "anything either way.",
)
@click.option(
    "--accept-new-host-keys",
    is_flag=True,
    help="With --refresh: accept and record unknown SSH host keys.",
)
@click.option("--limit", multiple=True, metavar="NAMES", help="Only these nodes, regions or tags.")
@click.option(
    "--exclude", multiple=True, metavar="NAMES", help="Leave out these nodes, regions or tags."
)
def plan(
    site: Path,
    workspace_dir: Path | None,
    as_json: bool,
    detailed_exitcode: bool,
    out_file: Path | None,
    refresh: bool,
    accept_new_host_keys: bool,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
) -> None:
    """Show what deploying the site would change, grouped site → region → node.

    Offline by default: made from the recorded state, no node read, no passphrase needed;
    secret values show as (sensitive). `--refresh` reads the nodes (users' logins are
    checked when LOTDEPLOY_PASSPHRASE is set). The plan is also kept as the workspace's
    latest plan: a bare `lotdeploy apply` in the site's directory applies exactly it (or
    refuses, saying what moved since).

    \b
    Examples:
      lotdeploy plan site.yaml
      lotdeploy plan site.yaml --json --detailed-exitcode > plan.json
      lotdeploy plan site.yaml --out release.plan
      lotdeploy plan site.yaml --refresh
    """
    from lotdeploy.apply.saved import LATEST
    from lotdeploy.cli.term import interactive
    from lotdeploy.plan.document import iter_json, write_plan, write_reference
    from lotdeploy.plan.make import make_plan
    from lotdeploy.plan.text import iter_text
    from lotdeploy.selection import select_nodes

    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    bind(loaded, workspace)
    only = select_nodes(loaded.site, limit, exclude)
    refuse_missing_broker_keys(loaded.site, workspace)
    live = read_live(loaded.site, workspace, only, accept_new_host_keys) if refresh else None
    for note in live.notes if live is not None else []:
        click.echo(f"note: {note}", err=True)
    with collector_paused():
        the_plan = make_plan(loaded.site, workspace, only=only, refresh=live)
        # what the plan is kept as (and --out saves) names this workspace: given once
        keep = the_plan.has_changes or workspace.root.exists() or out_file is not None
        if keep:
            the_plan.workspace_id = workspace.identity(create=True)
        if as_json:
            write = sys.stdout.write  # buffered; 40,000 click.echo calls cost 0.4 s
            for piece in iter_json(the_plan):
                write(piece)
        else:
            for piece in iter_text(the_plan, colour=interactive()):
                click.echo(scrub(piece), nl=False)
        if out_file is not None:
            write_plan(the_plan, out_file)
        # what a bare `lotdeploy apply` applies; a plan without changes too, so an older one
        # is never what a bare apply finds after `plan` said "No changes"
        if keep:
            with workspace.lock("plan"):
                write_reference(the_plan, workspace.root / LATEST)
    if (workspace.root / "verify").is_dir():  # the last verify's validity advice
        from lotdeploy.verify.output import plan_advice

        for line in plan_advice(loaded.site, workspace):
            click.echo(scrub(line), err=True)
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(ExitStatus.CHANGES)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--password-secret",
    is_flag=True,
    help="The routes read PASSWORD with GET SECRET on purpose (password_source: the "
    "broker's secret store): one note instead of a warning per route.",
)
def lint(files: tuple[Path, ...], password_secret: bool) -> None:
    """Parse LOT files and check their routes; errors as FILE:LINE:COL: message.

    \b
    Example:
      lotdeploy lint build/*/routes.lot
    """
    from lotdeploy.lot import lint_file

    errors = 0
    for path in files:
        for diagnostic in lint_file(path, password_secret=password_secret):
            click.echo(scrub(str(diagnostic)), err=diagnostic.severity == "error")
            errors += diagnostic.severity == "error"
    if errors:
        sys.exit(ExitStatus.ERROR)
    click.echo(f"{len(files)} file(s) ok")


@click.command()
def schema() -> None:
    """Print the site spec's JSON Schema (for editors and CI).

    \b
    Example:
      lotdeploy schema > site.schema.json
    """
    from lotdeploy.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@click.command()
@site_argument
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True
)
def graph(site: Path, fmt: str) -> None:
    """Print the topology: nodes grouped by region, links labelled with their validity.

    \b
    Examples:
      lotdeploy graph site.yaml
      lotdeploy graph site.yaml --format dot | dot -Tsvg > mesh.svg
    """
    from lotdeploy import graph as graphs

    loaded = load(site)
    click.echo(
        graphs.mermaid(loaded.site) if fmt == "mermaid" else graphs.dot(loaded.site), nl=False
    )
