"""Confirm or revert (deploy-rs's "magic rollback"), for the node's side of an activation.

Before apply switches a node, `arm` starts a timer on the node itself (a detached shell,
`setsid`, no controller needed afterwards). Once apply is done there, `confirm` opens a
*fresh* SSH connection and a fresh broker admin session through it (what the next apply,
and the operator, will need) and only then writes the confirm marker. When the timer
fires without the marker, and `current` still points at the release this apply installed,
the node puts itself back: `current` to the previous release, the previous release's TLS
files into the broker's TLS directory (temporary name, rename), the reload command, and a
report `release_dir/last-revert` saying why. The next rollout reads (and clears) it and
shows it.

What it covers: everything on the node's disk and the reload — the part that can lock the
controller out (a certificate or CA the broker or the admin path rejects, a reload that
leaves the broker down, a node lost half-way through its switch). What it does not: the
broker's routes and users, which live in the broker and are changed through its command
channel; the node holds no admin password, so it cannot undo them alone. When the
controller reaches the node again, `lotdeploy rollback` (or the automatic rollback of the
rollout) puts them back. Nor does it cover what lotdeploy does not manage (sshd, the
firewall, the address).
"""

from __future__ import annotations

import posixpath
import secrets
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lotdeploy.apply import activate
from lotdeploy.apply.engine import ApplyResult, FilesPhase, NodeOutcome, apply_plan
from lotdeploy.apply.events import Event, Reporter
from lotdeploy.errors import LotdeployError
from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.model import Node, Site
from lotdeploy.node.release import (
    CONFIRM_DIR,
    RELEASES,
    FileEntry,
    NodePaths,
    check_timers,
    deploy_script,
    parse_timers,
    release_id,
    timers_script,
)
from lotdeploy.node.session import for_each_name, fresh_transport
from lotdeploy.plan.diff import Plan
from lotdeploy.render import MANIFEST, ROUTE_FILE, iter_bundles
from lotdeploy.secret import scrub
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport, TransportFactory, opened
from lotdeploy.values import check_bundle_name
from lotdeploy.workspace import Workspace

#: how long (s) the timer waits for apply to switch the node before it gives up (no switch)
SWITCH_WAIT = 900
REPORT = "last-revert"


def _q(text: str) -> str:
    return shlex.quote(text)


@dataclass(frozen=True)
class Armed:
    node: str
    token: str
    previous: str
    new: str
    timeout: int


def revert_script(
    node: Node,
    previous: str,
    new: str,
    token: str,
    timeout: int,
    entries: Sequence[FileEntry],
) -> str:
    """The node-side timer (pure: a shell script text). Going back is the deploy script of
    the previous release with nothing sent (lotdeploy.node.release.deploy_script): the
    release must be whole, the TLS files that differ are placed, `current` moves last, the
    reload runs when a TLS file changed."""
    paths = NodePaths.of(node)
    marker = posixpath.join(paths.release_dir, CONFIRM_DIR, token)
    report = posixpath.join(paths.release_dir, REPORT)
    link = posixpath.join(RELEASES, new)
    back = deploy_script(
        paths,
        previous,
        entries,
        keep_timer=None,
        reload_command=node.broker.reload_command,
        force_reload=False,
        source=None,
        timers=False,  # this timer is the one firing
    )
    lines = [  # wait (bounded) for apply's switch, then give it `timeout` seconds
        "i=0",
        f'while [ "$(readlink {_q(paths.current)})" != {_q(link)} ]; do',
        f"  i=$((i+1)); [ $i -gt {SWITCH_WAIT} ] && {{ rm -f {_q(marker)}.*; exit 0; }}",
        "  sleep 1",
        "done",
        f"sleep {int(timeout)}",
        # one rename decides, atomically: confirm renamed the script first, or the timer does
        f"mv -T {_q(marker + '.sh')} {_q(marker + '.firing')} 2>/dev/null || "
        f"{{ rm -f {_q(marker)}.*; exit 0; }}",
        f'[ "$(readlink {_q(paths.current)})" = {_q(link)} ] || '
        f"{{ rm -f {_q(marker)}.*; exit 0; }}",
        f"out=$(sh -c {_q(back)} 2>&1 </dev/null); rc=$?",
        "r=$(printf '%s\\n' \"$out\" | sed -n 's/^lotdeploy-reload-status=//p')",
        "why=$(printf '%s\\n' \"$out\" | sed -n 's/^lotdeploy-error: //p')",
        'if [ "$rc" = 0 ]; then',
        f'  done="went back to release {previous} (files, TLS files, reload '
        '${r:+exit }${r:-not needed})"',
        "else",
        f'  done="could not go back to release {previous}: $why"',
        "fi",
        f"printf '%s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ): release {new} was not confirmed "
        f"within {int(timeout)} s of its switch (the controller could not reach the node and "
        f'its broker again); $done; routes and users wait for lotdeploy rollback" > '
        f"{_q(report)}",
        f"rm -f {_q(marker)}.*",
    ]
    return "\n".join(lines) + "\n"


def arm(
    transport: Transport,
    node: Node,
    previous: str,
    new: str,
    timeout: int,
    files: Mapping[str, Mapping[str, str]] | None = None,
) -> Armed:
    """Start the node-side timer before apply switches `node` from `previous` to `new`, in
    one command: every older timer there is disarmed first (proven: none is left armed or
    firing), so one timer belongs to one switch and none of an interrupted run reverts this
    one; the script arrives on that command's stdin. `files` (name -> sha256, mode: what
    the state records the node runs now, i.e. release `previous`) saves reading its
    manifest from the node."""
    paths = NodePaths.of(node)
    if files is None:
        raw = transport.get(posixpath.join(paths.release(previous), MANIFEST))
        if raw is None:
            raise LotdeployError(
                f"node {node.name}: release {previous} has no manifest to revert to"
            )
        try:  # from the node: read as strictly as any file lotdeploy reads back
            files = parse_json(raw)["files"]
        except (UnreadableFile, KeyError, TypeError):
            raise LotdeployError(
                f"node {node.name}: release {previous} has a damaged manifest to revert to"
            ) from None
    try:
        entries = [
            FileEntry(str(name), str(entry["sha256"]), int(str(entry["mode"]), 8))
            for name, entry in files.items()
        ]
        for entry in entries:  # they go into a script: plain names only
            if entry.name != ROUTE_FILE and check_bundle_name(entry.name) is not None:
                raise ValueError(entry.name)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise LotdeployError(
            f"node {node.name}: release {previous} has a damaged manifest to revert to"
        ) from None
    token = secrets.token_hex(8)
    directory = posixpath.join(paths.release_dir, CONFIRM_DIR)
    script = posixpath.join(directory, f"{token}.sh")
    out = transport.run(
        f"mkdir -p -m 0700 {_q(directory)}; "
        + timers_script(paths, None, disarm=True)
        # (only the timer goes to the background: a background list would read no stdin)
        + f"umask 077; cat > {_q(script)} && chmod 0700 {_q(script)} && "
        f"{{ setsid nohup sh {_q(script)} </dev/null >/dev/null 2>&1 & }}",
        timeout=30,
        input=revert_script(node, previous, new, token, timeout, entries).encode(),
    ).stdout
    armed, firing, _ = parse_timers(out, token)
    check_timers(node.name, armed, firing, paths)
    return Armed(node.name, token, previous, new, timeout)


def confirm(site: Site, armed: Armed, fresh: Transport) -> None:
    """Over a fresh connection: reach the broker's admin session, then write the marker.
    Raises (naming the node) when either fails: the node then reverts on its own."""
    node = site.node(armed.node)
    paths = NodePaths.of(node)
    fresh.connect()
    try:
        with activate.admin_session(site, node, fresh) as client:
            client.list_routes()
        marker = posixpath.join(paths.release_dir, CONFIRM_DIR, armed.token)
        link = posixpath.join(RELEASES, armed.new)
        out = fresh.run(
            f"mv -T {_q(marker + '.sh')} {_q(marker + '.ok')} 2>/dev/null && "
            f"readlink {_q(paths.current)} || echo late",
            timeout=30,
        ).stdout.strip()
        if out != link:
            raise LotdeployError(
                f"node {armed.node}: confirmed too late: its timer of {armed.timeout} s had "
                f"fired and it went back to release {armed.previous} (a longer "
                "rollout.confirm_timeout_sec gives apply more time)"
            )
    finally:
        fresh.close()


def take_report(transport: Transport, node: Node) -> str | None:
    """The node's report of a revert it did on its own (read once, then removed)."""
    path = posixpath.join(NodePaths.of(node).release_dir, REPORT)
    raw = transport.get(path)
    if raw is None:
        return None
    transport.run(f"rm -f {_q(path)}", timeout=30)
    return scrub(raw.decode(errors="replace").strip())


def describe_failure(exc: BaseException) -> str:
    return scrub(str(exc)) if isinstance(exc, LotdeployError) else scrub(repr(exc))


def apply_confirmed(
    site: Site,
    workspace: Workspace,
    plan_for: Callable[[set[str]], Plan],
    transports: TransportFactory,
    reporter: Reporter,
    parallelism: int,
    only: set[str],
    timeout: int,
    connect_timeout: float = 15.0,
    files_phase: FilesPhase | None = None,
) -> ApplyResult:
    """apply_plan with confirm-or-revert around every node whose release changes.

    First, a node that reverted itself since the last run says so (its report becomes an
    event) and the controller finishes that revert (routes, users, state: restore_node on
    the release the node went back to). Then each switching node is armed, the plan is
    applied, and each armed node is confirmed over a fresh connection; a node that cannot
    be confirmed fails with the reason, and goes back by itself when its timer fires."""
    from lotdeploy.rollout.restore import node_releases, restore_node

    new_ids = {
        b.node: release_id(b)
        for b in iter_bundles(site, workspace, datetime.now(UTC))
        if b.node in only
    }
    armed: dict[str, Armed] = {}
    unarmed: dict[str, str] = {}
    known = StateStore(workspace).read().nodes
    deployed = sorted(n for n in only if known.get(n, NodeRecord()).release is not None)

    def since_last_run(name: str) -> None:  # 1. what happened since the last run
        node = site.node(name)
        try:
            with opened(transports(node)) as transport:
                report = take_report(transport, node)
                if report:
                    reporter(Event(name, "reverted", "fail", report))
                    current, _ = node_releases(transport, site, name)
                    restore_node(site, workspace, transport, name, target=current)
        except (LotdeployError, OSError) as exc:
            unarmed[name] = describe_failure(exc)
            reporter(Event(name, "arm", "fail", unarmed[name]))

    for_each_name(deployed, since_last_run, parallelism)
    plan = plan_for(only)  # after any restore: the state is true to the nodes again
    known = StateStore(workspace).read().nodes

    def arm_node(name: str) -> None:  # 2. arm every node this apply switches
        record = known.get(name, NodeRecord())
        steps = plan.steps.get(name)
        if name in unarmed or record.release is None or steps is None or not steps.files:
            return
        if new_ids.get(name) in (None, record.release):
            return
        node = site.node(name)
        try:
            with opened(transports(node)) as transport:
                armed[name] = arm(
                    transport, node, record.release, new_ids[name], timeout, record.files or None
                )
            reporter(Event(name, "arm", "ok", f"reverts itself in {timeout} s unless confirmed"))
        except (LotdeployError, OSError) as exc:
            unarmed[name] = describe_failure(exc)
            reporter(Event(name, "arm", "fail", unarmed[name]))

    for_each_name(deployed, arm_node, parallelism)
    if len(unarmed) < len(only):
        plan = plan.restricted(only - set(unarmed)) if unarmed else plan
        result = apply_plan(
            site,
            workspace,
            plan,
            transports,
            reporter,
            parallelism,
            only=only - set(unarmed),
            files_phase=files_phase,
            connect_timeout=connect_timeout,
            keep_timers={name: a.token for name, a in armed.items()},
        )
    else:
        result = ApplyResult()
    for name, why in unarmed.items():  # never switched without its safety net
        result.outcomes[name] = NodeOutcome(name, False, f"not armed: {why}", "arm")

    def confirm_node(name: str) -> None:  # 3. every armed node, each over a new connection
        token = armed[name]
        outcome = result.outcomes.setdefault(name, NodeOutcome(name))
        try:
            confirm(site, token, fresh_transport(transports, site.node(name)))
            reporter(Event(name, "confirm", "ok", "confirmed over a fresh connection"))
        except (LotdeployError, OSError) as exc:
            why = (
                f"not confirmed over a fresh connection ({describe_failure(exc)}); the node "
                f"goes back to release {token.previous} by itself within {timeout} s"
            )
            if outcome.ok:
                outcome.ok, outcome.failed_step, outcome.error = False, "confirm", why
            reporter(Event(name, "confirm", "fail", why))
            with StateStore(workspace).transaction() as state:  # the next apply looks first
                record = state.nodes.setdefault(name, NodeRecord())
                record.pending = sorted({*record.pending, "activate"})

    for_each_name(sorted(armed), confirm_node, parallelism)
    return result
