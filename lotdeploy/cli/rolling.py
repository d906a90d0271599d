"""`apply` as a rollout (docs/rollout.md): waves, gates, pause/continue, on the terminal.

Kept apart from cli/deploy.py, which imports it lazily (deploy passes its Progress in)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

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
    progress: Callable[[bool, list[str]], Any],
    live: Any = None,
    sessions: Any = None,
    kind: Any = None,
    connect_timeout: float = 15.0,
) -> int:
    """`apply` as a rollout; the exit status."""
    from lotdeploy.apply.engine import apply_plan
    from lotdeploy.plan.make import make_plan
    from lotdeploy.render import prepare_workspace
    from lotdeploy.rollout.confirm import apply_confirmed
    from lotdeploy.rollout.restore import restore_node
    from lotdeploy.rollout.run import resume_rollout, run_rollout, start_rollout
    from lotdeploy.rollout.waves import compute_waves
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.state import NodeRecord, StateStore
    from lotdeploy.transport.base import opened

    state = StateStore(workspace).read()
    standing = state.rollout
    under_way = standing is not None and standing.status in ("paused", "running")
    idle = not fresh.steps and not any(r.pending for r in state.nodes.values())
    # a node the refresh could not read is planned from its record: never "No changes"
    # for it. With changes, the waves go on (a wave that meets the node fails there and is
    # rolled back, as any failed wave) and the rollout is never reported complete.
    unread = dict(live.errors) if live is not None else {}
    if unread and not resume and not under_way and idle:
        if as_json:
            failed = [
                {"node": n, "step": "refresh", "error": f"could not be read: {e}"}
                for n, e in sorted(unread.items())
            ]
            click.echo(dumps({"event": "summary", "changed": [], "failed": failed}))
        for node, error in sorted(unread.items()):
            click.echo(f"  node {node}: could not be read: {scrub(error)}", err=True)
        click.echo(
            "Nothing to roll out on the nodes read; the unread ones are not known to match "
            "(bring them back, or leave them out with --exclude).",
            err=True,
        )
        return int(ExitStatus.ERROR)
    if not resume and not under_way and idle:
        if as_json:
            click.echo(dumps({"event": "summary", "changed": [], "failed": []}))
        else:
            click.echo(
                "No changes. The live nodes run what the site says."
                if live is not None
                else "No changes. The site matches the recorded state."
            )
        return 0
    if resume and only is not None:
        raise click.UsageError(
            "--continue goes on with the waves the rollout recorded: no --limit/--exclude"
        )
    confirm()
    if resume:
        record = resume_rollout(site, workspace, pause_after)
    else:
        record = start_rollout(site, workspace, compute_waves(site, only), pause_after)
    if not as_json:
        names = " → ".join(f"{w['name']} ({len(w['nodes'])})" for w in record.waves)
        click.echo(f"Rollout {record.id}: {names}; from wave {record.done + 1}.")
    # every wave, gate, confirmation and rollback reuses the command's node sessions, and
    # the chosen transport delivers the files (Ansible's playbook for `transport: ansible`)
    transports = sessions
    files_phase = kind.files_phase(accept_new_host_keys) if kind and kind.files_phase else None

    def plan_for(nodes: set[str]) -> Plan:
        return make_plan(site, workspace, only=nodes, refresh=live)

    def apply_wave(nodes: set[str]) -> Any:
        prepare_workspace(site, workspace, datetime.now(UTC))  # what apply does first
        plan = plan_for(nodes)
        timeout = site.rollout.confirm_timeout_sec
        with progress(as_json, sorted(set(plan.steps) | (nodes if timeout else set()))) as reporter:
            if timeout:  # confirm or revert: lotdeploy.rollout.confirm
                return apply_confirmed(
                    site,
                    workspace,
                    plan_for,
                    transports,
                    reporter,
                    parallelism,
                    nodes,
                    timeout,
                    connect_timeout,
                    files_phase,
                )
            return apply_plan(
                site,
                workspace,
                plan,
                transports,
                reporter,
                parallelism,
                only=nodes,
                files_phase=files_phase,
                connect_timeout=connect_timeout,
            )

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
    if result.status == "complete":  # complete means converged: nothing left to do anywhere
        left = sorted(make_plan(site, workspace, only=only).steps)
        if left:
            result.status = "failed"
            result.reason = (
                f"the plan still shows changes on {', '.join(left)} after the last wave "
                "(`lotdeploy plan` shows them)"
            )
        elif unread:
            result.status = "failed"
            result.reason = (
                f"{', '.join(sorted(unread))} could not be read before the rollout, so it is "
                "not known to run what the site says"
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
