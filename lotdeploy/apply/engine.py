"""Carry out a plan: files on every node, then users, then routes, then retired users.

Order across nodes: the nodes run concurrently (bounded by `parallelism`); each node goes
through files, the capability check and users on its own, and the routes start only when
every node is through, because a route on one node logs in with a user that must already
exist on its *target* (retired users, likewise, after every route). A node that
fails a step is reported with the cause and left out of the later phases; the others go
on. After every node step the state document records what that node now has, so an
interrupted run (Ctrl-C, a lost node, a killed controller) leaves state true to the nodes,
and steps that were started but not confirmed stay in the node's journal (`pending`) for
the next run to do first.

Nothing is connected when the plan has nothing to do: a no-op apply touches no node.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lotdeploy.apply import activate
from lotdeploy.apply.events import Event, Reporter, silent
from lotdeploy.credentials import broker_users, password_secret_name
from lotdeploy.doctor import needs_remove_before_add
from lotdeploy.errors import BrokerError, LotdeployError, SecretStoreError
from lotdeploy.model import Site
from lotdeploy.node import release
from lotdeploy.plan.desired import NodeDesired, desired_state
from lotdeploy.plan.diff import NodeSteps, Plan
from lotdeploy.plan.make import credential_facts
from lotdeploy.protocol import named_rights
from lotdeploy.render import ROUTE_FILE, Bundle, iter_bundles, prepare_workspace
from lotdeploy.rotation import mark_phase_applied
from lotdeploy.routesecret import site_choices, stored_nodes
from lotdeploy.secret import Secret, scrub
from lotdeploy.sitefacts import bind_site
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport, TransportFactory
from lotdeploy.workspace import Workspace

#: One step of `_Run.chain`: its name, the nodes it is for (None: all), the work on a node.
Step = tuple[str, set[str] | None, Callable[[str], str | None]]
#: The files phase of a run for its nodes: deliver each bundle, record it, reload where
#: needed (None: `_files` over each node's transport; lotdeploy.ansible.deliver: a playbook).
FilesPhase = Callable[["_Run", list[str], dict[str, Bundle], dict[str, NodeSteps]], None]


@dataclass
class NodeOutcome:
    node: str
    ok: bool = True
    error: str | None = None
    failed_step: str | None = None
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reloaded: bool = False
    uploaded: bool = False


@dataclass
class ApplyResult:
    outcomes: dict[str, NodeOutcome] = field(default_factory=dict)

    @property
    def failed(self) -> list[NodeOutcome]:
        return [o for o in self.outcomes.values() if not o.ok]

    @property
    def touched(self) -> bool:
        return bool(self.outcomes)


class _Run:
    """One apply: the open transports, the bundles, and the state after every step."""

    def __init__(
        self,
        site: Site,
        workspace: Workspace,
        transports: TransportFactory,
        reporter: Reporter,
        parallelism: int,
        connect_timeout: float = 15.0,
        keep_timers: dict[str, str] | None = None,
    ) -> None:
        self.site = site
        #: how long a node's routes may take to report Connected after they are added
        self.connect_timeout = connect_timeout
        #: node -> the confirm-or-revert timer this run armed there (every other is disarmed)
        self.keep_timers = keep_timers or {}
        self.workspace = workspace
        self.store = StateStore(workspace)
        self.factory = transports
        self.report = reporter
        self.parallelism = max(1, parallelism)
        self.open: dict[str, Transport] = {}
        self.result = ApplyResult()

    # -- plumbing --------------------------------------------------------------------------

    def transport(self, name: str) -> Transport:
        if name not in self.open:
            started = time.monotonic()
            self.report(Event(name, "connect", "start"))
            transport = self.factory(self.site.node(name))
            transport.connect()
            self.open[name] = transport
            self.report(Event(name, "connect", "ok", seconds=time.monotonic() - started))
        return self.open[name]

    def close(self) -> None:
        for transport in self.open.values():
            with contextlib.suppress(LotdeployError):
                transport.close()
        self.open.clear()

    def alive(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.result.outcomes[n].ok]

    def each(self, step: str, names: list[str], work: Callable[[str], str | None]) -> None:
        """Run `work(node)` for every node concurrently; record failures by node."""
        self.chain(names, (step, None, work))

    def chain(self, names: list[str], *steps: Step) -> None:
        """Run `steps` one after another on each node, the nodes concurrently: a node goes on
        to its next step without waiting for the others (none of these steps needs another
        node's), and a failed step ends that node's chain. A step's set of nodes: it runs
        only on those (None: on all)."""
        names = self.alive(names)
        if not names:
            return

        def run_chain(name: str) -> None:
            for step, only, work in steps:
                if (only is None or name in only) and not self._one(name, step, work):
                    return

        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(names))) as pool:
            list(pool.map(run_chain, names))

    def _one(self, name: str, step: str, work: Callable[[str], str | None]) -> bool:
        started = time.monotonic()
        self.report(Event(name, step, "start"))
        try:
            detail = work(name)
        except (LotdeployError, OSError) as exc:
            self.failed(name, step, str(exc), time.monotonic() - started)
            return False
        self.done(name, step, detail, time.monotonic() - started)
        return True

    def failed(self, name: str, step: str, error: str, seconds: float) -> None:
        """Node `name` failed `step`: it is left out of the later phases."""
        outcome = self.result.outcomes[name]
        outcome.ok = False
        outcome.failed_step = step
        outcome.error = scrub(error)
        outcome.seconds += seconds
        self.report(Event(name, step, "fail", outcome.error, seconds))

    def done(self, name: str, step: str, detail: str | None, seconds: float) -> None:
        """Node `name` did `step` (`detail` "skip": it had nothing to do)."""
        outcome = self.result.outcomes[name]
        outcome.seconds += seconds
        outcome.steps.append(step)
        shown = "" if detail in (None, "skip") else detail
        self.report(Event(name, step, "skip" if detail == "skip" else "ok", shown, seconds))

    def record(self, name: str, change: Callable[[NodeRecord], None]) -> None:
        with self.store.transaction() as state:
            change(state.nodes.setdefault(name, NodeRecord()))


def apply_plan(
    site: Site,
    workspace: Workspace,
    plan: Plan,
    transports: TransportFactory,
    reporter: Reporter = silent,
    parallelism: int = 10,
    now: datetime | None = None,
    only: set[str] | None = None,
    files_phase: FilesPhase | None = None,
    connect_timeout: float = 15.0,
    keep_timers: dict[str, str] | None = None,
) -> ApplyResult:
    """Do what `plan` says on its nodes (those in `only`, when given). `files_phase`
    delivers the files of all nodes at once (default: `_files` per node, over its own transport,
    chained with the steps after it); everything after it is the same for all.

    A node's routes step ends only when the broker reports every route it added Connected
    (bounded by `connect_timeout`; 0: not waited for). `keep_timers`: the confirm-or-revert
    timer each node keeps (lotdeploy.rollout.confirm); any other found there is disarmed
    before its files change."""
    now = now or datetime.now(UTC)
    state = StateStore(workspace).read()
    site = bind_site(site, state)  # the links as the plan made them (lotdeploy.sitefacts)
    pending = {n: set(r.pending) for n, r in state.nodes.items() if r.pending}
    targets = sorted(
        name
        for name in (set(plan.steps) | set(pending))
        if name in {n.name for n in site.nodes} and (only is None or name in only)
    )
    run = _Run(site, workspace, transports, reporter, parallelism, connect_timeout, keep_timers)
    if not targets:
        return run.result
    for name in targets:
        run.result.outcomes[name] = NodeOutcome(name)
    steps = {name: plan.steps.get(name) or NodeSteps(name) for name in targets}
    for name in targets:  # an interrupted run's reload is done first, whatever else changed
        if "reload" in pending.get(name, set()):
            steps[name].reload = True

    prepare_workspace(site, workspace, now)  # what the plan reported: password, CA, certs
    bundles: dict[str, Bundle] = {
        b.node: b for b in iter_bundles(site, workspace, now) if b.node in set(targets)
    }
    credentials = credential_facts(StateStore(workspace).read())
    desired = desired_state(site, credentials, stored_nodes(site_choices(site, state)))
    users = broker_users(workspace, {n.username for n in site.nodes}) if site.links else {}
    secrets = _broker_secrets(workspace, desired)

    with run.store.transaction() as current:  # the journal: what this run starts
        for name in targets:
            record = current.nodes.setdefault(name, NodeRecord())
            record.pending = sorted(
                {*record.pending, "activate", *(["reload"] if steps[name].reload else [])}
            )
    try:
        # files, capabilities and users need nothing of another node: each node goes through
        # them without waiting for the others (the routes, which log in to their targets with
        # the users, wait until every node is through)
        per_node: list[Step] = [
            (
                "cleanup",
                {n for n in targets if steps[n].files_remove or steps[n].old_release_dir},
                lambda n: _cleanup(run, n, steps[n]),
            ),
            (
                "capabilities",
                {n for n in targets if not _known_broker(run, n)},
                lambda n: _capabilities(run, n),
            ),
            (
                "users",
                {n for n in targets if steps[n].users_create},
                lambda n: _users(
                    run, n, {u: users[u] for u in steps[n].users_create if u in users}
                ),
            ),
        ]
        if files_phase is None:  # over each node's own transport, first in its chain
            files: Step = ("files", None, lambda n: _files(run, n, bundles[n], steps[n]))
            run.chain(targets, files, *per_node)
        else:  # one phase for all the nodes (a playbook run), then the rest per node
            files_phase(run, targets, bundles, steps)
            run.chain(targets, *per_node)
        run.each(
            "routes",
            [
                n
                for n in targets
                if steps[n].routes_add or steps[n].routes_remove or steps[n].secrets_set
            ],
            lambda n: _routes(
                run, n, bundles[n], steps[n], _secrets_for(desired[n], steps[n], secrets)
            ),
        )
        if run.connect_timeout > 0:
            awaited = {n: _awaited(desired[n], steps[n]) for n in targets}
            run.each(
                "connected",
                [n for n in targets if awaited[n]],
                lambda n: _connected(run, n, awaited[n]),
            )
        run.each(
            "retire",
            [n for n in targets if steps[n].users_remove],
            lambda n: _retire(run, n, steps[n].users_remove),
        )
        run.each("record", targets, lambda n: _finish(run, n, desired[n].routes, now))
    finally:
        run.close()
    _mark_rotations(run, site, workspace, only)
    return run.result


# -- the steps ---------------------------------------------------------------------------


def record_files(
    run: _Run, name: str, bundle: Bundle, rid: str, previous: str | None, reloaded: bool = False
) -> None:
    """State after a node's files are in place: what it has, the release before, and (when
    the reload rode along in the same command) no reload pending."""

    paths = release.NodePaths.of(run.site.node(name)).to_json()

    def files(record: NodeRecord) -> None:
        record.files = {f.name: {"sha256": f.sha256, "mode": f"{f.mode:04o}"} for f in bundle.files}
        record.paths = paths
        if previous != rid:
            record.previous_release = previous
        record.release = rid
        # what a refresh found amiss with the files is what this release put right
        record.drift = {
            k: v for k, v in record.drift.items() if not (k == "release" or k.startswith("file/"))
        }
        if reloaded:
            record.pending = [p for p in record.pending if p != "reload"]

    run.record(name, files)


def clear_pending_reload(run: _Run, name: str) -> None:
    run.record(name, lambda r: setattr(r, "pending", [p for p in r.pending if p != "reload"]))


def _files(run: _Run, name: str, bundle: Bundle, steps: NodeSteps) -> str | None:
    """The node's release, TLS files and reload: one command (lotdeploy.node.release.deploy),
    the release on its stdin."""
    node = run.site.node(name)
    if not steps.files and not steps.reload:
        return "skip"
    outcome = run.result.outcomes[name]
    rid = release.release_id(bundle)
    done = release.deploy(
        run.transport(name),
        node,
        bundle,
        rid,
        force_reload=steps.reload,
        keep_timer=run.keep_timers.get(name),
    )
    outcome.uploaded = done.uploaded
    # the files are in place: recorded before a failed reload is reported
    record_files(run, name, bundle, rid, done.previous, reloaded=done.reload_error is None)
    if done.reload_error is not None:
        raise done.reload_error
    outcome.reloaded = done.reloaded
    clear_pending_reload(run, name)
    said = "uploaded" if outcome.uploaded else "already on the node"
    return f"release {rid} ({said}{', reloaded' if outcome.reloaded else ''})"


def _cleanup(run: _Run, name: str, steps: NodeSteps) -> str:
    """What lotdeploy left at paths the site no longer uses: its files there (only while
    they hold what it wrote) and its old release directory."""
    kept = release.remove_old(
        run.transport(name), run.site.node(name), steps.files_remove, steps.old_release_dir
    )
    removed = len(steps.files_remove) - len(kept)
    detail = f"{removed} old file(s) removed"
    if steps.old_release_dir:
        detail += f", old release directory {steps.old_release_dir} cleared"
    if kept:
        detail += f"; kept (changed since lotdeploy wrote them): {', '.join(kept)}"
    return detail


def _known_broker(run: _Run, name: str) -> bool:
    return bool(StateStore(run.workspace).read().nodes.get(name, NodeRecord()).broker)


def _capabilities(run: _Run, name: str) -> str:
    """Before the first activation on a node: ask its broker what activation needs (the
    light part of doctor's probe), record it, and refuse to go on when it lacks a key the
    site's routes need."""
    from lotdeploy.apply.checkup import capabilities_node
    from lotdeploy.doctor import key_problems
    from lotdeploy.routesecret import choose

    node = run.site.node(name)
    facts = capabilities_node(run.site, node, run.transport(name))
    run.record(name, lambda r: setattr(r, "broker", facts.to_json()))
    problems = key_problems(facts, run.site, node)
    problem = choose(node, facts.to_json()).problem
    if problem:
        problems.append(problem)
    if problems:
        raise BrokerError(name, "; ".join(p.removeprefix(f"node {name}: ") for p in problems))
    return f"{facts.reply_format} replies"


def _users(run: _Run, name: str, users: dict[str, Secret]) -> str:
    """Create (or re-key) the node's cluster users; on a broker with the named rights
    model, also take away every right flag they hold (a link needs none), in one more
    batch of commands."""
    node = run.site.node(name)
    facts = run.store.read().nodes.get(name, NodeRecord()).broker
    with activate.admin_session(run.site, node, run.transport(name)) as client:
        done = activate.ensure_users(client, users)
        if named_rights(facts):
            client.revoke_rights(done)

    def record(r: NodeRecord) -> None:
        r.users = sorted(set(r.users) | set(done))
        r.drift = {k: v for k, v in r.drift.items() if k.removeprefix("user/") not in done}

    run.record(name, record)
    return ", ".join(done)


def _broker_secrets(workspace: Workspace, desired: dict[str, NodeDesired]) -> dict[str, Secret]:
    """Broker secret name -> the password it holds, for every secret a desired route reads
    (lotdeploy.routesecret); the workspace's store is opened only when there is one."""
    versions = {
        route.password_secret: route.password_version
        for node in desired.values()
        for route in node.routes
        if route.password_secret
    }
    if not versions:
        return {}
    store = workspace.secrets()
    found: dict[str, Secret] = {}
    for secret, version in versions.items():
        value = store.get(password_secret_name(version))
        if value is None:
            raise SecretStoreError(
                f"the secret store has no cluster password v{version}: restore the secret "
                "store that belongs to this workspace"
            )
        found[secret] = value
    return found


def _secrets_for(
    node: NodeDesired, steps: NodeSteps, secrets: dict[str, Secret]
) -> dict[str, Secret]:
    """The broker secrets the routes a node adds read (set before they are added), and
    those a refresh found missing from its broker's store (set again)."""
    adding = set(steps.routes_add)
    return {
        r.password_secret: secrets[r.password_secret]
        for r in node.routes
        if (r.name in adding or r.password_secret in steps.secrets_set)
        and r.password_secret in secrets
    }


def _awaited(node: NodeDesired, steps: NodeSteps) -> list[str]:
    """The routes apply waits to see Connected: those it added, and those that read a
    broker secret it set again (whether a running route reads it again is the broker's:
    the wait proves it, or apply says which route did not connect)."""
    again = set(steps.secrets_set)
    rereading = [r.name for r in node.routes if r.password_secret in again]
    return [*steps.routes_add, *(r for r in rereading if r not in steps.routes_add)]


def _routes(
    run: _Run, name: str, bundle: Bundle, steps: NodeSteps, secrets: dict[str, Secret]
) -> str:
    """The node's routes: the broker secrets they read first (the routes would not
    connect without them), then removals and adds."""
    node = run.site.node(name)
    route_file = next(f for f in bundle.files if f.name == ROUTE_FILE)
    texts = activate.route_texts(route_file.data().decode())
    add = {r: texts[r] for r in steps.routes_add if r in texts}
    facts = StateStore(run.workspace).read().nodes.get(name, NodeRecord()).broker
    # where a re-add is not known to be refused, a changed route is added in place (a
    # refusal then removes and adds it): what the broker did is recorded for the next run
    remove_first = needs_remove_before_add(facts.get("readd"))
    remove = [r for r in steps.routes_remove if r not in add or remove_first]
    with activate.admin_session(run.site, node, run.transport(name)) as client:
        done = activate.set_secrets(client, secrets) if secrets else []
        learned = activate.apply_routes(
            client,
            name,
            remove,
            add,
            remove_first,
            run.site.ownership.of(name),
            steps.routes_replace,
            run.connect_timeout,
            learn=facts.get("readd") not in ("reject", "overwrite"),
        )
    if learned != "unknown" and learned != facts.get("readd"):
        run.record(name, lambda r: r.broker.update(readd=learned))
    said = f"secret {', '.join(done)} set, " if done else ""
    return f"{said}{len(add)} added, {len(set(remove) - set(add))} removed"


def _connected(run: _Run, name: str, added: list[str]) -> str:
    """Apply converged only when the links are up: wait (bounded) until the broker reports
    each route this run added Connected, once every node's routes are in. Routes to a peer
    that failed in this run are not waited for (that failure is the peer's to report)."""
    peers = {link.route_name: link.target for link in run.site.links_from(name)}
    failed = {n for n, o in run.result.outcomes.items() if not o.ok}
    wait = sorted(r for r in added if peers.get(r) not in failed)
    skipped = (
        f"; {len(added) - len(wait)} to a failed peer not waited for"
        if len(wait) < len(added)
        else ""
    )
    if not wait:
        return "skip" if not skipped else skipped.lstrip("; ")
    node = run.site.node(name)
    with activate.admin_session(run.site, node, run.transport(name)) as client:
        return activate.wait_connected(client, name, wait, run.connect_timeout) + skipped


def _retire(run: _Run, name: str, users: list[str]) -> str:
    node = run.site.node(name)
    with activate.admin_session(run.site, node, run.transport(name)) as client:
        removed = activate.remove_users(client, users)

    def record(r: NodeRecord) -> None:
        r.users = sorted(set(r.users) - set(removed))

    run.record(name, record)
    return ", ".join(removed)


def _finish(run: _Run, name: str, routes: Iterable[Any], now: datetime) -> str:
    def record(r: NodeRecord) -> None:
        r.routes = {route.name: route.attrs() for route in routes}
        r.pending = [p for p in r.pending if p != "activate"]
        r.applied_at = now.isoformat(timespec="seconds")
        # every route and user of the node is now what the site says
        r.drift = {
            k: v for k, v in r.drift.items() if not k.startswith(("route/", "user/", "secret/"))
        }

    with run.store.transaction() as state:
        record(state.nodes.setdefault(name, NodeRecord()))
        state.site_digest = run.site.digest()
    return "skip"


def _mark_rotations(run: _Run, site: Site, workspace: Workspace, only: set[str] | None) -> None:
    """A rotation phase is applied on a node once everything of this run succeeded there,
    or when the plan had nothing to do on a chosen node that was applied before (it runs
    the phase already). A node left out by --limit/--exclude is never marked."""
    state = StateStore(workspace).read()
    for kind, nodes in (("creds", site.nodes), ("ca", site.tls_nodes)):
        rotation = state.rotation(kind)
        if rotation is None:
            continue
        for node in nodes:
            outcome = run.result.outcomes.get(node.name)
            done = outcome is not None and outcome.ok
            untouched = (
                outcome is None
                and (only is None or node.name in only)
                and node.name in state.nodes
                and not state.nodes[node.name].pending
            )
            if done or untouched:
                mark_phase_applied(workspace, kind, node.name, rotation.phase)  # type: ignore[arg-type]
