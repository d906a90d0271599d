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
    bind,
    load,
    node_sessions,
    open_workspace,
    read_live,
    refuse_missing_broker_keys,
    workspace_option,
)
from lotdeploy.exitstatus import ExitStatus

if TYPE_CHECKING:
    from lotdeploy.apply.events import Event
    from lotdeploy.model import Site
    from lotdeploy.node.session import Sessions
    from lotdeploy.plan.live import Refresh

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
    type=click.Choice(["ssh", "ansible", "openssh"]),
    default=None,
    help="How to reach the nodes: openssh (the ssh command, its connection kept between "
    "commands), ssh (fabric/paramiko, a connection per command) or ansible (ansible-runner "
    "playbooks, OpenSSH for the command channel); default: the site's `transport:`, else "
    "openssh.",
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
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=True,
    show_default=True,
    metavar="[=BOOL]",
    help="Read every node before changing anything (files, `current`, TLS files, the "
    "broker's routes and users) and plan against what it runs, so what drifted is put back "
    "in the same run. --refresh=false plans from the recorded state only (faster; what "
    "changed by hand on a node stays as it is).",
)
@click.option(
    "--refresh-only",
    is_flag=True,
    help="Read every node and record what it runs into the state (showing each entry it "
    "records); change nothing on a node. The next plan then shows what putting it back takes.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0, 3600),
    default=15.0,
    show_default=True,
    metavar="SECONDS",
    help="How long apply waits for the routes it added or changed to report Connected "
    "before it calls the node failed (0: do not wait).",
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
@click.option(
    "--abandon-rollout",
    is_flag=True,
    help="Drop the rollout that is paused or was interrupted (its waves stay as applied; "
    "`lotdeploy rollback` undoes them), then apply as asked.",
)
@_options([*limit_options, *ssh_options, transport_option])
def apply(
    target: Path | None,
    workspace_dir: Path | None,
    auto_approve: bool,
    as_json: bool,
    refresh: bool,
    refresh_only: bool,
    connect_timeout: float,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
    transport: str | None,
    pause_after: str | None = None,
    resume: bool = False,
    abandon_rollout: bool = False,
) -> None:
    """Make every node run what the site describes: files, broker users, routes.

    Reads every node first (refresh) and plans against what it runs; exits 0 only when
    every node took its changes and every route it added reports Connected.

    TARGET is a site spec (plan, show, ask, apply) or a saved plan (`plan --out FILE`),
    applied exactly or refused when stale, edited, or made for another workspace. Without
    TARGET: the latest plan that `lotdeploy plan` saved in ./.lotdeploy/ (run from the
    site's directory).

    \b
    Examples:
      lotdeploy plan site.yaml && lotdeploy apply
      lotdeploy apply site.yaml --auto-approve --json
      lotdeploy plan site.yaml --out release.plan && lotdeploy apply release.plan
      lotdeploy apply site.yaml --refresh-only --auto-approve
      lotdeploy apply site.yaml --pause-after canary && lotdeploy apply site.yaml --continue
    """
    from lotdeploy.apply.engine import ApplyResult, NodeOutcome, apply_plan
    from lotdeploy.apply.saved import LATEST, require_fresh
    from lotdeploy.cli.term import interactive
    from lotdeploy.plan.document import read_plan
    from lotdeploy.plan.make import make_plan
    from lotdeploy.plan.text import iter_text
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import chosen_nodes, select_nodes
    from lotdeploy.transport import chosen

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
        if refresh_only:
            raise click.UsageError("--refresh-only takes the site spec, not a saved plan")
    else:
        site_file, source = target, str(target)  # type: ignore[assignment]
    if refresh_only and (resume or pause_after or abandon_rollout):
        raise click.UsageError("--refresh-only changes no node: no rollout options with it")
    loaded = load(site_file)
    workspace = open_workspace(site_file, workspace_dir)
    site = bind(loaded, workspace)
    kind = chosen(site, transport)
    # one session per node for the whole command: the refresh, every phase of the apply
    # and, in a rollout, every wave and gate reuse its connection and admin session
    with workspace.lock("apply"), node_sessions(site, accept_new_host_keys, transport) as sessions:
        only = (
            set(saved.only)
            if saved is not None and saved.only
            else select_nodes(site, limit, exclude)
        )
        refuse_missing_broker_keys(site, workspace)
        if not refresh_only:
            _rollout_standing(workspace, resume, abandon_rollout, as_json)
        live = None
        if refresh or refresh_only:  # what the nodes run, before anything changes
            if not refresh_only:
                # every chosen node is read or changed: the SSH handshakes start now, in the
                # background. A node with a record overlaps the opening of the secret store
                # (its passphrase prompt too) and the state; one never applied, which the
                # refresh skips, everything up to its first change (--refresh=false: no node
                # unasked)
                sessions.warm(chosen_nodes(site, only), parallelism)
            live = _refresh(site, workspace, sessions, parallelism, only, as_json)
        if refresh_only:
            _record_refresh(workspace, live, as_json, auto_approve)
            return
        fresh = make_plan(site, workspace, only=only, refresh=live)
        fresh.workspace_id = workspace.identity(create=True)
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
                sessions,
                kind,
                connect_timeout,
            )
            if code:
                sys.exit(code)
            return
        # a node the refresh could not read is never reported as converged
        unread = {n: e for n, e in (live.errors if live is not None else {}).items()}
        if not fresh.steps and not _pending(workspace) and not unread:
            if as_json:
                click.echo(dumps({"event": "summary", "changed": [], "failed": []}))
            elif saved is None:
                pass  # the plan just shown ends with "No changes", saying what it read
            elif live is not None:
                click.echo("No changes. Every node runs what the site says (read live).")
            else:
                click.echo(
                    "No changes. Every node matches the recorded state (not read: --refresh=false)."
                )
            return
        started = time.monotonic()
        result = ApplyResult()
        files_phase = None
        if fresh.steps or _pending(workspace):
            if saved is None:
                _confirm(auto_approve)
            if kind.files_phase is not None:
                files_phase = kind.files_phase(accept_new_host_keys)
            with Progress(as_json, sorted(fresh.steps)) as progress:
                result = apply_plan(
                    site,
                    workspace,
                    fresh,
                    sessions,
                    progress,
                    parallelism,
                    only=only,
                    files_phase=files_phase,
                    connect_timeout=connect_timeout,
                )
        for node, error in sorted(unread.items()):
            if node not in result.outcomes:
                result.outcomes[node] = NodeOutcome(
                    node, False, f"could not be read: {error}", "refresh"
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


def _rollout_standing(workspace: Any, resume: bool, abandon: bool, as_json: bool) -> None:
    """A rollout that is paused or was interrupted owns the site until it is continued or
    abandoned: any other apply is refused (it would bypass the waves and their gates)."""
    from lotdeploy.errors import LotdeployError
    from lotdeploy.state import StateStore

    store = StateStore(workspace)
    record = store.read().rollout
    if record is None or record.status not in ("paused", "running"):
        if abandon:
            raise click.UsageError("--abandon-rollout: no rollout is paused or under way")
        return
    if resume:
        return
    names = [str(w.get("name")) for w in record.waves]
    where = f"after wave {names[record.done - 1]}" if record.done else "before its first wave"
    what = "paused" if record.status == "paused" else "was interrupted"
    if not abandon:
        raise LotdeployError(
            f"a rollout {what} {where} ({record.done} of {len(names)} waves done; rollout "
            f"{record.id}): `lotdeploy apply SITE --continue` goes on with it, "
            "`--abandon-rollout` drops it (`lotdeploy rollback` undoes its waves); any other "
            "apply would go around its waves and gates, so nothing was applied"
        )
    with store.transaction() as state:
        state.rollout = None
    message = f"abandoned rollout {record.id} ({what} {where}); its waves stay as applied"
    from lotdeploy.secret import dumps

    click.echo(
        dumps({"event": "rollout-abandoned", "rollout": record.id}) if as_json else message,
        err=not as_json,
    )


def _refresh(
    site: Site,
    workspace: Any,
    sessions: Sessions,
    parallelism: int,
    only: set[str] | None,
    as_json: bool,
) -> Refresh:
    """Read every chosen node, as drift does: what drifted is planned back. A node that
    cannot be read is said, and planned from its record as it is (its steps then fail
    there, naming the cause)."""
    from lotdeploy.secret import dumps, scrub

    live = read_live(
        site, workspace, only, False, parallelism, strict=False, need_logins=True, sessions=sessions
    )
    findings = {
        node: [f for f in found if f != "never applied"]
        for node, found in sorted(live.findings.items())
    }
    if as_json:
        drifted = [f"{n}: {f}" for n, found in findings.items() for f in found]
        click.echo(dumps({"event": "refresh", "drifted": drifted, "errors": live.errors}))
    else:
        read = len(live.read)
        drifted_nodes = sum(1 for found in findings.values() if found)
        click.echo(
            f"refresh: {read} node(s) read, {drifted_nodes} drifted"
            + (f", {len(live.errors)} could not be read" if live.errors else ""),
            err=True,
        )
        for node, found in findings.items():
            for finding in found:
                click.echo(scrub(f"refresh: {node}: {finding}"), err=True)
        for node, error in sorted(live.errors.items()):
            click.echo(scrub(f"refresh: {node}: could not be read: {error}"), err=True)
    return live


def _record_refresh(
    workspace: Any, live: Refresh | None, as_json: bool, auto_approve: bool
) -> None:
    """`apply --refresh-only`: record what the nodes run into the state, entry by entry."""
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.state import StateStore

    assert live is not None
    store = StateStore(workspace)
    state = store.read()
    entries = [
        (node, key, kind)
        for node in sorted(live.read)
        for key, kind in sorted(live.drift.get(node, {}).items())
        if state.nodes[node].drift.get(key) != kind
    ]
    cleared = [
        (node, key)
        for node in sorted(live.read)
        for key in sorted(state.nodes[node].drift)
        if key not in live.drift.get(node, {})
    ]
    if not entries and not cleared:
        message = "No changes to record. The state says what every node read runs."
        click.echo(dumps({"event": "summary", "recorded": []}) if as_json else message)
        if live.errors:
            sys.exit(ExitStatus.ERROR)
        return
    if not as_json:
        click.echo("Refresh-only: the state will record, and change no node:")
        for node, key, kind in entries:
            click.echo(scrub(f"  ~ node {node}: {key}: {kind}"))
        for node, key in cleared:
            click.echo(scrub(f"  ~ node {node}: {key}: as applied again (drift cleared)"))
    _confirm(auto_approve)
    with store.transaction() as current:  # the record stays what apply did; drift beside it
        for node in live.read:
            record = current.nodes.get(node)
            if record is not None:
                record.drift = dict(live.drift.get(node, {}))
    recorded = [f"{n}: {k}: {v}" for n, k, v in entries] + [
        f"{n}: {k}: cleared" for n, k in cleared
    ]
    if as_json:
        click.echo(dumps({"event": "summary", "recorded": recorded}))
    else:
        click.echo(
            f"\nRecorded {len(recorded)} entr{'y' if len(recorded) == 1 else 'ies'}: "
            "`lotdeploy plan` now shows what putting them back takes."
        )
    if live.errors:
        sys.exit(ExitStatus.ERROR)


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
@click.option(
    "--force",
    is_flag=True,
    help="Break the lock even while its holder runs (a run that hangs; it and the next run "
    "may then overlap).",
)
def force_unlock(lock_id: str, site: Path, workspace_dir: Path | None, force: bool) -> None:
    """Break the workspace lock of a run that hangs (LOCK_ID as the refusal showed it).

    A run that died needs nothing (the kernel released its lock). A lock whose holder is
    alive is refused, naming the holder, unless --force: stop that run first.

    \b
    Example:
      lotdeploy force-unlock 3f2a9c1b7d4e site.yaml
    """
    from lotdeploy.secret import scrub

    record = open_workspace(site, workspace_dir).force_unlock(lock_id, force)
    click.echo(scrub(f"removed the lock held as: {record}"))


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
    the command channel; names every missing, extra or changed route and file, and (with
    LOTDEPLOY_PASSPHRASE set) every cluster user the broker no longer lets log in.

    \b
    Example:
      lotdeploy drift site.yaml || alert "cluster drifted"
    """
    from lotdeploy.apply.drift import DriftReport
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes

    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    bind(loaded, workspace)
    only = select_nodes(loaded.site, limit, exclude)
    report = read_live(
        loaded.site,
        workspace,
        only,
        accept_new_host_keys,
        parallelism,
        strict=False,
        transport=transport,
    )
    assert isinstance(report, DriftReport)
    if as_json:
        click.echo(dumps(report.to_json()))
    else:
        for node, findings in sorted(report.findings.items()):
            for finding in findings:
                click.echo(scrub(f"{node}: {finding}"))
        for node, error in sorted(report.errors.items()):
            click.echo(scrub(f"{node}: error: {error}"), err=True)
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
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
    bind(loaded, workspace)
    only = select_nodes(loaded.site, limit, exclude)
    with (
        workspace.lock("doctor"),
        node_sessions(loaded.site, accept_new_host_keys, transport) as sessions,
    ):
        results = run_doctor(loaded.site, workspace, sessions, parallelism, only)
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
