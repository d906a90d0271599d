"""The `lotdeploy` command line. Thin: parse options, call the pipeline, print, exit.

Exit status: 0 success, 1 any error, usage errors included (one line per problem, never a
traceback for anything a user can cause), 2 "changes present" / "action needed" where a
command documents it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from lotdeploy import __version__
from lotdeploy.cliutil import load, site_argument, workspace_option
from lotdeploy.errors import LotdeployError, SpecError
from lotdeploy.secret import scrub
from lotdeploy.term import interactive


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lotdeploy")
def cli() -> None:
    """Compile, plan and deploy Coreflux MQTT_CLUSTER meshes from one site spec.

    \b
    Example:
      lotdeploy init mysite && lotdeploy plan mysite/site.yaml
    """


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite an existing site.yaml.")
def init(directory: Path, force: bool) -> None:
    """Write a commented example site.yaml (two regions, TLS on) into DIRECTORY.

    \b
    Example:
      lotdeploy init plant-a && lotdeploy validate plant-a/site.yaml
    """
    from lotdeploy.compiler.templates import builtin_templates_dir
    from lotdeploy.fsutil import atomic_write

    target = directory / "site.yaml"
    if target.exists() and not force:
        raise LotdeployError(f"{target} already exists (use --force to overwrite)")
    example = (builtin_templates_dir() / "example-site.yaml").read_text()
    try:
        atomic_write(target, example)
    except OSError as exc:
        raise LotdeployError(f"{target}: cannot write: {exc.strerror}") from None
    click.echo(f"wrote {target}; next: lotdeploy plan {target}")


@cli.command()
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
        f"region(s), {len(s.links)} routes, TLS on {tls}/{len(s.nodes)} nodes"
    )


@cli.command()
@site_argument
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
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
    from lotdeploy.workspace import Workspace

    loaded = load(site)
    the_workspace = Workspace.for_site(site, workspace_dir)
    with the_workspace.lock("render"):
        result = write_bundles(loaded.site, the_workspace, out)
    removed = f", removed {len(result.removed)} stale node dir(s)" if result.removed else ""
    click.echo(
        f"rendered {result.routes} routes for {result.nodes} nodes into {out} "
        f"({result.files} files{removed})"
    )


@cli.command()
@site_argument
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan on stdout.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there are no changes, 2 when there are, 1 on error.",
)
def plan(site: Path, workspace_dir: Path | None, as_json: bool, detailed_exitcode: bool) -> None:
    """Show what apply would change: grouped site → region → node, + ~ - markers.

    Never needs the passphrase; secret values show as (sensitive).

    \b
    Examples:
      lotdeploy plan site.yaml
      lotdeploy plan site.yaml --json --detailed-exitcode > plan.json
    """
    from lotdeploy.plan.document import to_json
    from lotdeploy.plan.make import make_plan
    from lotdeploy.plan.text import format_text
    from lotdeploy.workspace import Workspace

    loaded = load(site)
    the_plan = make_plan(loaded.site, Workspace.for_site(site, workspace_dir))
    if as_json:
        click.echo(to_json(the_plan), nl=False)
    else:
        click.echo(scrub(format_text(the_plan, colour=interactive())), nl=False)
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(2)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def lint(files: tuple[Path, ...]) -> None:
    """Parse LOT files and check their routes; errors as FILE:LINE:COL: message.

    \b
    Example:
      lotdeploy lint build/*/routes.lot
    """
    from lotdeploy.lot import lint_file

    errors = 0
    for path in files:
        for diagnostic in lint_file(path):
            click.echo(scrub(str(diagnostic)), err=diagnostic.severity == "error")
            errors += diagnostic.severity == "error"
    if errors:
        sys.exit(1)
    click.echo(f"{len(files)} file(s) ok")


@cli.command()
def schema() -> None:
    """Print the site spec's JSON Schema (for editors and CI).

    \b
    Example:
      lotdeploy schema > site.schema.json
    """
    from lotdeploy.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@cli.command()
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


def _register_subcommands() -> None:
    """Command groups that live beside their layer (lab, PKI); imported here, once."""
    from lotdeploy.lab.cli import lab
    from lotdeploy.pki.commands import certs, creds

    for group in (lab, certs, creds):
        cli.add_command(group)


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns every user-caused error into one clean line and exit 1."""
    _register_subcommands()
    try:
        # Without standalone mode, click *returns* a command's ctx.exit(code) (certs list: 2).
        code = cli.main(args=argv, prog_name="lotdeploy", standalone_mode=False)
    except SpecError as exc:
        for diagnostic in exc.diagnostics:
            click.echo(scrub(str(diagnostic)), err=True)
        sys.exit(1)
    except LotdeployError as exc:
        click.echo(f"lotdeploy: error: {scrub(str(exc))}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("lotdeploy: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # Usage errors exit 1, not click's 2: `plan --detailed-exitcode` and `certs list`
        # use 2 to mean "changes / action needed", which a typo must never fake.
        exc.show()
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("lotdeploy: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # a bug: say so plainly, still without secrets
        click.echo(f"lotdeploy: internal error: {type(exc).__name__}: {scrub(str(exc))}", err=True)
        if os.environ.get("LOTDEPLOY_DEBUG"):
            click.echo(scrub(traceback.format_exc()), err=True)
        else:
            click.echo("(set LOTDEPLOY_DEBUG=1 for a traceback; please report it)", err=True)
        sys.exit(70)
    if isinstance(code, int) and code:
        sys.exit(code)
