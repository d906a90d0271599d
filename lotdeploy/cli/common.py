"""What every command that takes a site shares: the SITE argument, --workspace, loading, and
the passphrase prompt.

Imports of the spec (pydantic) and the workspace happen inside the functions, so a command
module can be imported (for its `--help`) without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from lotdeploy.apply.drift import DriftReport
    from lotdeploy.model import Site
    from lotdeploy.node.session import Sessions
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a plan is built and written: its million
    objects (1,000 nodes) are acyclic and all survive, so every collection would only
    re-scan them (1.3 s of such a plan); reference counting still frees the rest at once.
    What survives the block is frozen (like the loaded site) before collecting resumes,
    or the first young collection would scan all of it."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


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
    loaded, workspace = load(site), open_workspace(site, workspace_dir)
    bind(loaded, workspace)
    return loaded, workspace


def bind(loaded: LoadedSite, workspace: Workspace) -> Site:
    """The site as lotdeploy works with it: bound to its workspace's facts (adopted routes,
    a take-over's phase: lotdeploy.sitefacts), from here on for the whole command. Reads
    the state only (no passphrase)."""
    from lotdeploy.sitefacts import bind_site
    from lotdeploy.state import StateStore

    loaded.site = bind_site(loaded.site, StateStore(workspace).read())
    return loaded.site


def refuse_missing_broker_keys(site: Any, workspace: Any) -> None:
    """Plan fails, naming node and key, when a broker doctor (or a first apply) asked lacks
    a CLUSTER_CONFIG key the site's routes need, or the secret store its
    `password_source: secret-store` asks for."""
    from lotdeploy.errors import LotdeployError
    from lotdeploy.state import StateStore

    names = {n.name for n in site.nodes}
    asked = [
        (name, record)
        for name, record in sorted(StateStore(workspace).read().nodes.items())
        if record.broker and name in names
    ]
    if not asked:
        return  # no broker facts recorded: doctor (and its MQTT client stack) is not loaded
    from lotdeploy.doctor import BrokerFacts, key_problems

    problems: list[str] = []
    for name, record in asked:
        try:
            facts = BrokerFacts.from_json(record.broker)
        except ValueError:
            continue  # an older or damaged record: doctor records it again
        problems += key_problems(facts, site, site.node(name))
    from lotdeploy.routesecret import problems as password_problems
    from lotdeploy.routesecret import site_choices

    problems += password_problems(site_choices(site, StateStore(workspace).read()))
    if problems:
        raise LotdeployError(
            "; ".join(problems) + " (what lotdeploy doctor found; see docs/doctor.md)"
        )


def node_sessions(site: Site, accept_new_host_keys: bool, kind: str | None = None) -> Sessions:
    """How this command reaches the nodes: the chosen transport (`--transport`, else the
    site's `transport:`; strict host keys, opt-in to accept new ones), each node's
    connection and admin session opened once and shared by every phase. Use it as a context
    manager: leaving it closes them."""
    from lotdeploy.node.session import Sessions
    from lotdeploy.transport import transport_factory

    return Sessions(site, transport_factory(site, accept_new_host_keys, kind))


def cluster_logins(site: Site, workspace: Workspace, need: bool) -> dict[str, Secret] | None:
    """Each cluster user brokers must accept now -> its password, for a refresh's login
    checks. Without `need` (plan, drift), only when the secret store can be opened without
    a prompt (LOTDEPLOY_PASSPHRASE set): else None, and the users are not checked."""
    import os

    from lotdeploy.credentials import password_secret_name
    from lotdeploy.model import username_for_version
    from lotdeploy.plan.make import credential_facts
    from lotdeploy.state import StateStore
    from lotdeploy.workspace import PASSPHRASE_ENV

    if not site.link_count:
        return {}
    if not workspace.secrets_path.exists():
        return None  # nothing rendered yet: no cluster user exists anywhere
    if not need and not os.environ.get(PASSPHRASE_ENV):
        return None
    store = workspace.secrets()
    facts = credential_facts(StateStore(workspace).read())
    logins: dict[str, Secret] = {}
    for version in facts.accepted_versions:
        password = store.get(password_secret_name(version))
        if password is None:
            continue
        for base in sorted({n.username for n in site.nodes}):
            logins[username_for_version(base, version)] = password
    return logins


def read_live(
    site: Any,
    workspace: Any,
    only: set[str] | None,
    accept_new_host_keys: bool,
    parallelism: int = 10,
    strict: bool = True,
    transport: str | None = None,
    need_logins: bool = False,
    sessions: Sessions | None = None,
) -> DriftReport:
    """A refresh: what the live nodes show (lotdeploy.apply.drift). `strict`: a node that
    cannot be read is an error naming it (a saved plan must not guess); else it is said,
    and planned from its record as it is. `sessions`: the command's, so the phases after
    the refresh reuse its connections (else its own, closed afterwards)."""
    from lotdeploy.apply.drift import read_drift
    from lotdeploy.errors import LotdeployError

    with contextlib.ExitStack() as stack:
        if sessions is None:
            sessions = stack.enter_context(node_sessions(site, accept_new_host_keys, transport))
        report = read_drift(
            site,
            workspace,
            sessions,
            parallelism,
            only,
            cluster_logins(site, workspace, need_logins),
        )
    if strict and report.errors:
        raise LotdeployError(
            "cannot read the live nodes: "
            + "; ".join(f"node {n}: {e}" for n, e in sorted(report.errors.items()))
        )
    return report
