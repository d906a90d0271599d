"""`lotdeploy apply`, `drift`, `doctor` and `force-unlock`: the commands that reach nodes."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lotdeploy.cli.common import (
    load,
    open_workspace,
    read_live,
    refuse_missing_broker_keys,
    transport_factory,
    workspace_option,
)
from lotdeploy.exitstatus import ExitStatus

if TYPE_CHECKING:
    from lotdeploy.apply.events import Event
    from lotdeploy.model import Site

limit_options = [
    click.option(
        "--limit",
        multiple=True,
        metavar="NAMES",
        help="Only these nodes, regions or tags (repeat, or comma-separate).",
    ),
    click.option(
        "--exclude",
        multiple=True,
        metavar="NAMES",
        help="Leave out these nodes, regions or tags.",
    ),
]
ssh_options = [
    click.option(
        "--accept-new-host-keys",
        is_flag=True,
        help="Accept and record unknown SSH host keys (a changed key is still refused).",
    ),
    click.option(
        "--parallelism",
        type=click.IntRange(1, 200),
        default=10,
        show_default=True,
        help="Nodes worked on at once.",
    ),
]

transport_option = click.option(
    "--transport",
    type=click.Choice(["ssh", "ansible"]),
    default=None,
    help="How to reach the nodes: ssh (fabric) or ansible (ansible-runner playbooks, OpenSSH "
    "for the command channel); default: the site's `transport:`, else ssh.",
)


def _options(options: list[Any]) -> Callable[[Any], Any]:
    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


class Progress:
    """Per-node progress: a live table on a terminal, one line per finished step otherwise,
    JSON lines with --json. Never shows a secret (events carry none; scrubbed anyway)."""

    def __init__(self, as_json: bool, nodes: list[str]) -> None:
        from lotdeploy.cli.term import interactive

        self.as_json = as_json
        self.lock = threading.Lock()
        self.rows: dict[str, tuple[str, str, str]] = {n: ("waiting", "", "") for n in nodes}
        self.live: Any = None
        if not as_json and interactive() and nodes:
            from rich.live import Live

            from lotdeploy.terminal import rich_console

            self.live = Live(
                self._table(), refresh_per_second=8, transient=False, console=rich_console()
            )

    def _table(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("node", "step", "status", "detail"):
            table.add_column(column)
        styles = {"ok": "green", "fail": "red", "start": "yellow", "skip": "dim"}
        for node, (step, status, detail) in self.rows.items():  # Text: never markup
            table.add_row(node, step, Text(status, style=styles.get(status, "")), Text(detail))
        return table

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, event: Event) -> None:
        from lotdeploy.secret import dumps, scrub

        with self.lock:
            if self.as_json:
                sys.stdout.write(dumps(event.to_json()) + "\n")
                sys.stdout.flush()
                return
            self.rows[event.node] = (event.step, event.status, scrub(event.detail))
            if self.live is not None:
                self.live.update(self._table())
            elif event.status in ("ok", "fail") and event.step != "record":
                took = f" ({event.seconds:.1f}s)" if event.seconds is not None else ""
                detail = f": {scrub(event.detail)}" if event.detail else ""
                click.echo(f"{event.node}: {event.step} {event.status}{took}{detail}")


def _confirm(auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("refusing to apply without a confirmation: pass --auto-approve")
    if not click.confirm("Apply these changes?", default=False):
        raise click.exceptions.Abort()


@click.command()
@click.argument("target", required=False, type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
@click.option("--auto-approve", is_flag=True, help="Do not ask before applying (for CI).")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events on stdout.")
@click.option(
    "--refresh",
    is_flag=True,
    help="Read every node first, as `lotdeploy drift` does, and put back what drifted: a "
    "route removed or changed on a broker, a file missing or changed on a node (the state "
    "forgets it, so the plan creates it again). Only with a site spec, not a saved plan.",
)
@click.option(
    "--pause-after",
    metavar="WAVE",
    help="Roll out wave by wave (docs/rollout.md) and pause once WAVE (name or number) "
    "passed its gate; `--continue` promotes the rest.",
)
@click.option(
    "--continue",
    "resume",
    is_flag=True,
    help="Go on with the rollout that paused (or was interrupted), from its next wave.",
)
@_options([*limit_options, *ssh_options, transport_option])
def apply(
    target: Path | None,
    workspace_dir: Path | None,
    auto_approve: bool,
    as_json: bool,
    refresh: bool,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
    transport: str | None,
    pause_after: str | None = None,
    resume: bool = False,
) -> None:
    """Make every node run what the site describes: files, broker users, routes.

    TARGET is a site spec (plan, show, ask, apply) or a saved plan (`plan --out FILE`),
    applied exactly or refused when stale. Without TARGET: the latest plan that `lotdeploy
    plan` saved in ./.lotdeploy/ (run from the site's directory).

    \b
    Examples:
      lotdeploy plan site.yaml && lotdeploy apply
      lotdeploy apply site.yaml --auto-approve --json
      lotdeploy plan site.yaml --out release.plan && lotdeploy apply release.plan
      lotdeploy drift site.yaml || lotdeploy apply site.yaml --refresh --auto-approve
      lotdeploy apply site.yaml --pause-after canary && lotdeploy apply site.yaml --continue
    """
    from lotdeploy.apply.engine import apply_plan
    from lotdeploy.apply.saved import LATEST, require_fresh
    from lotdeploy.cli.term import interactive
    from lotdeploy.plan.document import read_plan
    from lotdeploy.plan.make import make_plan
    from lotdeploy.plan.text import iter_text
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes

    saved = None
    if target is None:
        latest = (workspace_dir or Path(".lotdeploy")) / LATEST
        if not latest.exists():
            raise click.UsageError(
                "no SITE or saved plan given, and no latest plan in ./.lotdeploy/: "
                "run `lotdeploy plan SITE` from the site's directory first"
            )
        saved, source = read_plan(latest), str(latest)
    elif _looks_like_plan(target):
        saved, source = read_plan(target), str(target)
    if saved is not None:
        site_file = Path(saved.site_file)
        if limit or exclude:
            raise click.UsageError("--limit/--exclude are fixed in a saved plan; plan again")
        if refresh:
            raise click.UsageError(
                "--refresh reads the nodes and changes the plan: give the site spec, not a "
                "saved plan"
            )
    else:
        site_file, source = target, str(target)  # type: ignore[assignment]
    loaded = load(site_file)
    site = loaded.site
    workspace = open_workspace(site_file, workspace_dir)
    with workspace.lock("apply"):
        only = (
            set(saved.only)
            if saved is not None and saved.only
            else select_nodes(site, limit, exclude)
        )
        refuse_missing_broker_keys(site, workspace)
        live = None
        if saved is not None and saved.refreshed:  # a refreshed plan is checked live again
            live = read_live(site, workspace, only, accept_new_host_keys)[:2]
        elif refresh:
            live = _refresh(site, workspace, accept_new_host_keys, parallelism, only, as_json)
        fresh = make_plan(site, workspace, only=only, live=live)
        if saved is not None:
            require_fresh(saved, fresh, source)
        elif not as_json:
            for piece in iter_text(fresh, colour=interactive()):
                click.echo(scrub(piece), nl=False)
        if resume or pause_after or site.rollout.enabled:  # wave by wave: docs/rollout.md
            from lotdeploy.cli.rolling import apply_rollout

            code = apply_rollout(
                site,
                workspace,
                only,
                as_json,
                parallelism,
                accept_new_host_keys,
                pause_after,
                resume,
                fresh,
                lambda: _confirm(auto_approve or saved is not None),
                Progress,
                live,
            )
            if code:
                sys.exit(code)
            return
        if not fresh.steps and not _pending(workspace):
            if as_json:
                click.echo(dumps({"event": "summary", "changed": [], "failed": []}))
            else:
                click.echo("No changes. Every node matches the site.")
            return
        if saved is None:
            _confirm(auto_approve)
        started = time.monotonic()
        kind = transport or site.transport
        files_phase = None
        if kind == "ansible":
            from lotdeploy.ansible.deliver import AnsibleFiles

            files_phase = AnsibleFiles(accept_new_host_keys)
        with Progress(as_json, sorted(fresh.steps)) as progress:
            result = apply_plan(
                site,
                workspace,
                fresh,
                transport_factory(site, accept_new_host_keys, kind),
                progress,
                parallelism,
                only=only,
                files_phase=files_phase,
            )
        if files_phase is not None and files_phase.last is not None and not as_json:
            click.echo(f"ansible-runner artifacts: {files_phase.last.artifact_dir}")
    seconds = time.monotonic() - started
    changed = sorted(n for n, o in result.outcomes.items() if o.ok)
    failed = result.failed
    if as_json:
        click.echo(
            dumps(
                {
                    "event": "summary",
                    "changed": changed,
                    "failed": [
                        {"node": o.node, "step": o.failed_step, "error": o.error} for o in failed
                    ],
                    "seconds": round(seconds, 3),
                }
            )
        )
    else:
        reloaded = sum(1 for o in result.outcomes.values() if o.reloaded)
        click.echo(
            f"\nApply {'failed' if failed else 'complete'}: {len(changed)} node(s) changed "
            f"({reloaded} reloaded), {len(failed)} failed, in {seconds:.1f}s."
        )
        for outcome in failed:
            click.echo(
                f"  node {outcome.node}: {outcome.failed_step} failed: {outcome.error}", err=True
            )
    if failed:
        sys.exit(ExitStatus.ERROR)


def _refresh(
    site: Site,
    workspace: Any,
    accept_new_host_keys: bool,
    parallelism: int,
    only: set[str] | None,
    as_json: bool,
) -> tuple[dict[str, list[str]], dict[str, dict[str, set[str]]]]:
    """`apply --refresh`: read every node as drift does; what drifted is planned again
    (the plan forgets it from what was recorded). A node that cannot be read is said, and
    planned from the state as it is."""
    from lotdeploy.secret import dumps, scrub

    findings, stale, errors = read_live(
        site, workspace, only, accept_new_host_keys, parallelism, strict=False
    )
    if as_json:
        drifted = [f"{n}: {f}" for n, found in sorted(findings.items()) for f in found]
        click.echo(dumps({"event": "refresh", "drifted": drifted, "errors": errors}))
    else:
        for node, found in sorted(findings.items()):
            for finding in found:
                click.echo(scrub(f"refresh: {node}: {finding}: put back by this apply"))
        for node, error in sorted(errors.items()):
            click.echo(scrub(f"refresh: {node}: could not be read: {error}"), err=True)
    return findings, stale


def _looks_like_plan(path: Path) -> bool:
    """A saved plan is JSON with our format marker; a site spec is YAML. Anything but a
    regular file is neither (fsutil: a FIFO is never opened), and loading it says so."""
    from lotdeploy.fsutil import UnreadableFile, read_prefix

    try:
        head = read_prefix(path, 200)
    except UnreadableFile:
        return False
    return head.lstrip().startswith(b"{") and b"lotdeploy-plan" in head


def _pending(workspace: Any) -> bool:
    from lotdeploy.state import StateStore

    return any(r.pending for r in StateStore(workspace).read().nodes.values())


@click.command("force-unlock")
@click.argument("lock_id")
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
def force_unlock(lock_id: str, site: Path, workspace_dir: Path | None) -> None:
    """Break the workspace lock of a run that hangs (LOCK_ID as the refusal showed it).

    A run that died needs nothing (the kernel released its lock). If the holder still
    runs, it and the next run may overlap: stop it first.

    \b
    Example:
      lotdeploy force-unlock 3f2a9c1b7d4e site.yaml
    """
    record = open_workspace(site, workspace_dir).force_unlock(lock_id)
    click.echo(f"removed the lock held as: {record}")


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable findings on stdout.")
@_options([*limit_options, *ssh_options, transport_option])
def drift(
    site: Path,
    workspace_dir: Path | None,
    as_json: bool,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
    transport: str | None,
) -> None:
    """Compare what the nodes run with what was applied: exit 0 clean, 2 drift, 1 error.

    Reads each node's current release and TLS files over SSH and its broker's routes over
    the command channel; names every missing, extra or changed route and file.

    \b
    Example:
      lotdeploy drift site.yaml || alert "cluster drifted"
    """
    from lotdeploy.apply.drift import read_drift
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes

    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    only = select_nodes(loaded.site, limit, exclude)
    report = read_drift(
        loaded.site,
        workspace,
        transport_factory(loaded.site, accept_new_host_keys, transport),
        parallelism,
        only,
    )
    if as_json:
        click.echo(dumps(report.to_json()))
    else:
        for node, findings in sorted(report.findings.items()):
            for finding in findings:
                click.echo(scrub(f"{node}: {finding}"))
        for node, error in sorted(report.errors.items()):
            click.echo(scrub(f"{node}: error: {error}"), err=True)
        click.echo(report.summary())
    if report.errors:
        sys.exit(ExitStatus.ERROR)
    if report.drifted:
        sys.exit(ExitStatus.CHANGES)


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable findings on stdout.")
@_options([*limit_options, *ssh_options, transport_option])
def doctor(
    site: Path,
    workspace_dir: Path | None,
    as_json: bool,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
    transport: str | None,
) -> None:
    """Ask each node's broker which of lotdeploy's assumptions hold for it, and record it.

    Reply format, -requestId echo, what re-adding a route does (on a scratch route,
    removed afterwards), the CLUSTER_CONFIG keys it offers, whether route code shows the
    password, and hygiene (factory admin password, anonymous logins). Exit 1 when a node
    cannot be checked or lacks a key the site needs.

    \b
    Example:
      lotdeploy doctor site.yaml --json
    """
    from lotdeploy.apply.checkup import run_doctor
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes

    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    only = select_nodes(loaded.site, limit, exclude)
    with workspace.lock("doctor"):
        results = run_doctor(
            loaded.site,
            workspace,
            transport_factory(loaded.site, accept_new_host_keys, transport),
            parallelism,
            only,
        )
    bad = False
    if as_json:
        click.echo(dumps({name: r.to_json() for name, r in sorted(results.items())}))
    for name, result in sorted(results.items()):
        bad = bad or result.error is not None or any(f.severity == "error" for f in result.findings)
        if as_json:
            continue
        if result.error is not None:
            click.echo(scrub(f"{name}: error: {result.error}"), err=True)
            continue
        for finding in result.findings:
            click.echo(scrub(f"{name}: {finding.severity}: {finding.check}: {finding.message}"))
    if not as_json:
        click.echo(
            f"doctor: {len(results)} node(s) checked" + (", problems found" if bad else ", ok")
        )
    if bad:
        sys.exit(ExitStatus.ERROR)
