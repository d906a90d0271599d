"""`lotdeploy rollback`: put nodes back on an earlier release, then check the links."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from lotdeploy.cli.common import bind, load, node_sessions, open_workspace, workspace_option
from lotdeploy.cli.deploy import _options, limit_options, ssh_options
from lotdeploy.cli.rolling import _gate_line, make_gate
from lotdeploy.exitstatus import ExitStatus


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
@click.option(
    "--to",
    "release",
    metavar="RELEASE",
    help="The release id to go back to (default: each node's previous release, or what "
    "the node ran before the rollout under way).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON summary on stdout.")
@_options(limit_options + ssh_options)
def rollback(
    site: Path,
    workspace_dir: Path | None,
    release: str | None,
    as_json: bool,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
) -> None:
    """Put nodes back on an earlier release: files, TLS files, routes, users; then check it.

    Without --limit: the nodes a paused, interrupted or stopped rollout changed, or else
    every node. Each goes to the release given by --to, to what it ran before the rollout,
    or to its previous release. The state records the release restored, so the next plan
    shows the way back forward.

    \b
    Examples:
      lotdeploy rollback site.yaml --limit us
      lotdeploy rollback site.yaml --limit eu1 --to 3f2a9c1b7d4e5f60
    """

    from lotdeploy.errors import LotdeployError
    from lotdeploy.node.session import for_each_name
    from lotdeploy.rollout.restore import RestoreOutcome, restore_node, safe_error
    from lotdeploy.rollout.run import changed_since
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes
    from lotdeploy.state import NodeRecord, StateStore
    from lotdeploy.transport.base import opened

    if release is not None and not (release.isalnum() and release.isascii() and len(release) <= 64):
        raise click.BadParameter("a release id is a short hex string", param_hint="--to")
    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    the_site = bind(loaded, workspace)
    with workspace.lock("rollback"), contextlib.ExitStack() as stack:
        only = select_nodes(the_site, limit, exclude)
        state = StateStore(workspace).read()
        standing = state.rollout
        before: dict[str, NodeRecord] = {}
        if standing is not None:
            before = {n: NodeRecord.from_json(r, n) for n, r in standing.before.items()}
        if only is not None:
            chosen = sorted(only)
        elif before:
            chosen = sorted(
                n for n, b in before.items() if changed_since(b, state.nodes.get(n, NodeRecord()))
            )
        else:
            chosen = sorted(n.name for n in the_site.nodes if n.name in state.nodes)
        transports = stack.enter_context(node_sessions(the_site, accept_new_host_keys))

        def one(name: str) -> RestoreOutcome:
            snapshot = before.get(name) if release is None else None
            try:
                with opened(transports(the_site.node(name))) as transport:
                    return restore_node(
                        the_site, workspace, transport, name, target=release, before=snapshot
                    )
            except (LotdeployError, OSError) as exc:
                return RestoreOutcome(name, ok=False, to_release=release, error=safe_error(exc))

        outcomes = list(for_each_name(chosen, one, parallelism).values())
        restored = frozenset(o.node for o in outcomes if o.ok)
        lost = frozenset(o.node for o in outcomes if not o.ok)
        checked = None
        if restored:  # the gate reuses the restore's connections
            checked = make_gate(the_site, workspace, transports, parallelism)(restored, lost)
        if standing is not None and not lost:
            with StateStore(workspace).transaction() as current:
                rollout = current.rollout
                if rollout is not None and (only is None or set(rollout.before) <= restored):
                    current.rollout = None  # the rollout is undone
    if as_json:
        click.echo(
            dumps(
                {
                    "event": "rollback",
                    "restored": [o.to_json() for o in outcomes],
                    "check": checked.to_json() if checked else None,
                }
            )
        )
    else:
        if not chosen:
            click.echo("Nothing to roll back.")
        for outcome in outcomes:
            if outcome.ok:
                click.echo(
                    scrub(
                        f"{outcome.node}: {outcome.from_release} -> {outcome.to_release}: "
                        f"{outcome.detail}"
                    )
                )
            else:
                click.echo(scrub(f"{outcome.node}: rollback failed: {outcome.error}"), err=True)
        if checked is not None:
            _gate_line("Restore verified", "Restore NOT verified", checked)
    if lost or (checked is not None and not checked.ok):
        sys.exit(ExitStatus.ERROR)
