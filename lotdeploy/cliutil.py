"""What every command that takes a site shares: the SITE argument, --workspace, loading.

Kept apart from cli.py so command groups living beside their layer (pki, lab) use the same
pieces without importing the top-level CLI.
"""

from __future__ import annotations

from pathlib import Path

import click

from lotdeploy.spec import LoadedSite, load_site
from lotdeploy.workspace import Workspace

site_argument = click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
workspace_option = click.option(
    "--workspace",
    "workspace_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Workspace directory (default: .lotdeploy/ beside the site file).",
)


def load(site: Path) -> LoadedSite:
    """Load and validate the site; print its warnings (file:line:col) on stderr."""
    loaded = load_site(site)
    for warning in loaded.warnings:
        click.echo(str(warning), err=True)
    return loaded


def open_site(site: Path, workspace_dir: Path | None) -> tuple[LoadedSite, Workspace]:
    return load(site), Workspace.for_site(site, workspace_dir)
