"""`lotdeploy status`: what each node's broker runs now, asked live."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lotdeploy.cli.common import bind, load, node_sessions, open_workspace, workspace_option
from lotdeploy.cli.deploy import _options, limit_options, ssh_options
from lotdeploy.exitstatus import ExitStatus

if TYPE_CHECKING:
    from lotdeploy.apply.status import NodeStatus
    from lotdeploy.model import Site


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable status on stdout.")
@_options(limit_options + ssh_options)
def status(
    site: Path,
    workspace_dir: Path | None,
    as_json: bool,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
) -> None:
    """Ask each node's broker which routes it runs, and whether each is connected.

    Exit 1 when a node cannot be asked, 2 when a route the site expects is not Connected
    or is missing on its broker (listed as `missing`); other routes are shown, not judged.

    \b
    Example:
      lotdeploy status site.yaml
    """
    from lotdeploy.apply.status import read_status
    from lotdeploy.broker.monitoring import topic_lines
    from lotdeploy.cli.term import print_table
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes

    loaded = load(site)
    bind(loaded, open_workspace(site, workspace_dir))  # which routes the site expects
    only = select_nodes(loaded.site, limit, exclude)
    with node_sessions(loaded.site, accept_new_host_keys) as sessions:
        results = read_status(loaded.site, sessions, parallelism, only)
    missing = expected_missing(loaded.site, results)
    down = routes_down(loaded.site, results)
    if as_json:
        click.echo(
            dumps(
                {
                    name: {**s.to_json(), "missing": missing.get(name, [])}
                    for name, s in sorted(results.items())
                }
            )
        )
    else:
        rows = [
            [name, str(r.get("name")), str(r.get("connection")), str(r.get("health"))]
            for name, s in sorted(results.items())
            for r in s.routes
        ] + [
            [name, route, "missing", "-"]
            for name, gone in sorted(missing.items())
            for route in gone
        ]
        if rows:
            print_table(["node", "route", "connection", "health"], rows)
        for line in topic_lines({n: s.monitoring for n, s in results.items()}):
            click.echo(scrub(line))
        for name, s in sorted(results.items()):
            if s.error:
                click.echo(scrub(f"{name}: error: {s.error}"), err=True)
    if any(s.error for s in results.values()):
        sys.exit(ExitStatus.ERROR)
    if down or any(missing.values()):
        sys.exit(ExitStatus.CHANGES)


def routes_down(site: Site, results: dict[str, NodeStatus]) -> bool:
    """Whether a route the site gives a node is listed there but not Connected. Routes that
    are not the site's (another type, made by hand) are shown, not judged; a listing with no
    connection state (a 1.x broker) is unknown, not down."""
    for name, status in results.items():
        wanted = {row[1] for row in site.link_rows(site.node(name))}
        for route in status.routes:
            state = route.get("connection")
            if str(route.get("name")) in wanted and state is not None and state != "Connected":
                return True
    return False


def expected_missing(site: Site, results: dict[str, NodeStatus]) -> dict[str, list[str]]:
    """node -> the routes the site gives it that its broker does not list (nodes that
    could not be asked are left out: their error says so)."""
    missing: dict[str, list[str]] = {}
    for name, status in results.items():
        if status.error is not None:
            continue
        listed = {str(r.get("name")) for r in status.routes}
        node = site.node(name)
        wanted = [row[1] for row in site.link_rows(node)]
        gone = sorted(r for r in wanted if r not in listed)
        if gone:
            missing[name] = gone
    return missing
