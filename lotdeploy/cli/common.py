"""What every command that takes a site shares: the SITE argument, --workspace, loading, and
the passphrase prompt.

Imports of the spec (pydantic) and the workspace happen inside the functions, so a command
module can be imported (for its `--help`) without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from lotdeploy.secret import Secret
    from lotdeploy.spec import LoadedSite
    from lotdeploy.workspace import Workspace

site_argument = click.argument("site", type=click.Path(path_type=Path, dir_okay=False))


def directory_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """A directory option as a Path; an empty one is refused (Path("") would mean `.`)."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return Path(value)


workspace_option = click.option(
    "--workspace",
    "workspace_dir",
    type=click.Path(file_okay=False),
    default=None,
    callback=directory_option,
    help="Workspace directory (default: .lotdeploy/ beside the site file).",
)


def load(site: Path) -> LoadedSite:
    """Load and validate the site; print its warnings (file:line:col) on stderr."""
    import gc

    from lotdeploy.spec import load_site

    loaded = load_site(site)
    # The loaded site and spec live for the whole command and hold no garbage: keep the
    # cyclic collector from re-scanning them at every young collection. Objects made
    # afterwards are collected as usual.
    gc.freeze()
    for warning in loaded.warnings:
        click.echo(str(warning), err=True)
    return loaded


def ask_passphrase(prompt: str, confirm: bool) -> str:
    """The terminal prompt behind the workspace's passphrase (hidden; typed twice if new)."""
    entered: str = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return entered


def prompting_passphrase(creating: bool) -> Secret:
    """LOTDEPLOY_PASSPHRASE, else a prompt on a terminal: the CLI's passphrase provider."""
    from lotdeploy.workspace import passphrase_from_environment

    return passphrase_from_environment(creating, prompt=ask_passphrase)


def open_workspace(site: Path, workspace_dir: Path | None) -> Workspace:
    """The site's workspace, asking for the passphrase on a terminal when it is needed."""
    from lotdeploy.workspace import Workspace

    return Workspace.for_site(site, workspace_dir, passphrase_provider=prompting_passphrase)


def open_site(site: Path, workspace_dir: Path | None) -> tuple[LoadedSite, Workspace]:
    return load(site), open_workspace(site, workspace_dir)
