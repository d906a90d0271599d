"""Rollouts on the command line: `apply` wave by wave (docs/rollout.md), and `rollback`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lotdeploy.cli.common import load, open_workspace, transport_factory, workspace_option
from lotdeploy.cli.deploy import Progress, _options, limit_options, ssh_options
from lotdeploy.exitstatus import ExitStatus

if TYPE_CHECKING:
    from lotdeploy.model import Node, Site
    from lotdeploy.plan.diff import Plan
    from lotdeploy.rollout.gate import Gate, GateResult
    from lotdeploy.rollout.run import RolloutEvent
    from lotdeploy.transport.base import Transport
    from lotdeploy.workspace import Workspace


def make_gate(
    site: Site, workspace: Workspace, transports: Callable[[Node], Transport], parallelism: int
) -> Gate:
    """The gate after each wave: `lotdeploy verify` (lotdeploy.rollout.gate.verify_gate);
    LOTDEPLOY_GATE=routes picks the minimal route gate instead (no probe user needed)."""
    import os

    from lotdeploy.rollout.gate import route_gate, verify_gate

    timeout = float(site.rollout.gate_timeout_sec)
    if os.environ.get("LOTDEPLOY_GATE") == "routes":
        return route_gate(site, workspace, transports, timeout, parallelism)
    return verify_gate(site, workspace, transports, timeout, parallelism)


class RolloutPrinter:
    """Wave, gate and rollback events: lines for people, JSON lines with --json."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: RolloutEvent) -> None:
        from lotdeploy.secret import dumps, scrub

        if self.as_json:
            sys.stdout.write(dumps(event.to_json()) + "\n")
            sys.stdout.flush()
            return
        took = f" ({event.seconds:.1f}s)" if event.seconds is not None else ""
        nodes = f" [{', '.join(event.nodes)}]" if event.nodes and event.status == "start" else ""
        label = {"restore-gate": "restore check", "pause": "paused", "done": "rollout"}.get(
            event.kind, event.kind
        )
        line = f"== {label} {event.wave}: {event.status}{took}{nodes}"
        if event.detail:
            line += f": {scrub(event.detail)}"
        click.echo(line, err=event.status == "fail")


def apply_rollout(
    site: Site,
    workspace: Workspace,
    only: set[str] | None,
    as_json: bool,
    parallelism: int,
    accept_new_host_keys: bool,
    pause_after: str | None,
    resume: bool,
    fresh: Plan,
    confirm: Callable[[], None],
) -> int:
    """`apply` as a rollout; the exit status."""
    from lotdeploy.apply.engine import apply_plan
    from lotdeploy.errors import SecretStoreError
    from lotdeploy.plan.make import make_plan
    from lotdeploy.render import prepare_workspace
    from lotdeploy.rollout.catchup import files_behind, with_catchup
    from lotdeploy.rollout.restore import restore_node
    from lotdeploy.rollout.run import resume_rollout, run_rollout, start_rollout
    from lotdeploy.rollout.waves import compute_waves
    from lotdeploy.secret import dumps
    from lotdeploy.state import NodeRecord, StateStore
    from lotdeploy.transport.base import opened

    state = StateStore(workspace).read()
    standing = state.rollout
    under_way = standing is not None and standing.status in ("paused", "running")
    try:
        chosen = only if only is not None else {n.name for n in site.nodes}
        behind = files_behind(site, workspace, chosen)
    except SecretStoreError:  # nothing was ever applied: the plan has it all
        behind = {}
    extra = sorted(set(behind) - set(fresh.steps))
    if extra and not as_json:
        click.echo(
            f"Behind on files the workspace already holds (not due any more, not yet on the "
            f"node): {', '.join(extra)}; the rollout writes them."
        )
    idle = not fresh.steps and not extra and not any(r.pending for r in state.nodes.values())
    if not resume and not under_way and idle:
        if as_json:
            click.echo(dumps({"event": "summary", "changed": [], "failed": []}))
        else:
            click.echo("No changes. Every node matches the site.")
        return 0
    confirm()
    if resume:
        record = resume_rollout(site, workspace, pause_after)
    else:
        record = start_rollout(site, workspace, compute_waves(site, only), pause_after)
    if not as_json:
        names = " → ".join(f"{w['name']} ({len(w['nodes'])})" for w in record.waves)
        click.echo(f"Rollout {record.id}: {names}; from wave {record.done + 1}.")
    transports = transport_factory(site, accept_new_host_keys)

    def apply_wave(nodes: set[str]) -> Any:
        prepare_workspace(site, workspace, datetime.now(UTC))  # what apply does first
        plan = with_catchup(
            make_plan(site, workspace, only=nodes), files_behind(site, workspace, nodes)
        )
        with Progress(as_json, sorted(plan.steps)) as progress:
            return apply_plan(site, workspace, plan, transports, progress, parallelism, only=nodes)

    def restore(name: str, before: NodeRecord) -> Any:
        with opened(transports(site.node(name))) as transport:
            return restore_node(site, workspace, transport, name, before=before)

    result = run_rollout(
        site,
        workspace,
        record,
        apply_wave,
        make_gate(site, workspace, transports, parallelism),
        restore,
        RolloutPrinter(as_json),
        parallelism,
    )
    if as_json:
        click.echo(dumps({"event": "summary", "rollout": result.to_json()}))
    else:
        _say(result)
    return 0 if result.ok else int(ExitStatus.ERROR)


def _say(result: Any) -> None:
    from lotdeploy.secret import scrub

    words = {
        "complete": "Rollout complete",
        "paused": "Rollout paused",
        "failed": "Rollout stopped",
        "rolled-back": "Rollout stopped and rolled back",
    }[result.status]
    done = sum(1 for w in result.waves if w.ok)
    click.echo(f"\n{words}: {done} wave(s) passed their gate in this run.")
    if result.reason:
        click.echo(scrub(f"  why: {result.reason}"), err=True)
    for outcome in result.rolled_back:
        if outcome.ok:
            click.echo(
                scrub(
                    f"  rolled back {outcome.node}: {outcome.from_release} -> "
                    f"{outcome.to_release} ({outcome.detail})"
                )
            )
        else:
            click.echo(scrub(f"  could not roll back {outcome.node}: {outcome.error}"), err=True)
    if result.restore_gate is not None:
        _gate_line("  restore verified", "  restore NOT verified", result.restore_gate)
    if result.hint:
        click.echo(scrub(f"  {result.hint}"))


def _gate_line(good: str, bad: str, gate: GateResult) -> None:
    from lotdeploy.secret import scrub

    if gate.ok:
        click.echo(f"{good}: {gate.checked} check(s) passed in {gate.seconds:.1f}s")
    else:
        click.echo(f"{bad}:", err=True)
        for problem in gate.problems:
            click.echo(scrub(f"    {problem.describe()}"), err=True)


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
    from concurrent.futures import ThreadPoolExecutor

    from lotdeploy.errors import LotdeployError
    from lotdeploy.rollout.restore import RestoreOutcome, restore_node, safe_error
    from lotdeploy.rollout.run import changed_since
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes
    from lotdeploy.state import NodeRecord, StateStore
    from lotdeploy.transport.base import opened

    if release is not None and not (release.isalnum() and release.isascii() and len(release) <= 64):
        raise click.BadParameter("a release id is a short hex string", param_hint="--to")
    loaded = load(site)
    the_site = loaded.site
    workspace = open_workspace(site, workspace_dir)
    with workspace.lock("rollback"):
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
        transports = transport_factory(the_site, accept_new_host_keys)

        def one(name: str) -> RestoreOutcome:
            snapshot = before.get(name) if release is None else None
            try:
                with opened(transports(the_site.node(name))) as transport:
                    return restore_node(
                        the_site, workspace, transport, name, target=release, before=snapshot
                    )
            except (LotdeployError, OSError) as exc:
                return RestoreOutcome(name, ok=False, to_release=release, error=safe_error(exc))

        outcomes: list[RestoreOutcome] = []
        if chosen:
            with ThreadPoolExecutor(max_workers=min(parallelism, len(chosen))) as pool:
                outcomes = list(pool.map(one, chosen))
        restored = frozenset(o.node for o in outcomes if o.ok)
        lost = frozenset(o.node for o in outcomes if not o.ok)
        checked = None
        if restored:
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
