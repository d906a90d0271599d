"""The files phase of `lotdeploy apply --transport ansible`: one deploy.yml run for the
nodes of the run (a wave's nodes, when a rollout passes `only=`), through ansible-runner.

The same end state as `lotdeploy.apply.engine._files` (the SSH transport sets it): the
release under `release_dir/releases/<id>` (the same id), `current` switched atomically, the
TLS files placed with the bundle's modes and the TLS directory's owner, the reload only when
one of them changed (or an interrupted run left it pending). State is recorded by the same
helpers. Each host's failure fails that node only, with Ansible's message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lotdeploy.ansible.inventory import inventory_text
from lotdeploy.ansible.runner import PlaybookRun, PrivateDataDir, run_playbook
from lotdeploy.ansible.vault import vault_file
from lotdeploy.apply.engine import FilesPhase, _Run, clear_pending_reload, record_files
from lotdeploy.apply.events import Event
from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node, Site
from lotdeploy.node import release
from lotdeploy.plan.diff import NodeSteps
from lotdeploy.render import ROUTE_FILE, Bundle
from lotdeploy.transport import TransportKind
from lotdeploy.transport.base import Transport, TransportFactory

READ_TASK = "Read what the node has"
RELOAD_TASK = "Reload the broker"


def run_vars(bundle: Bundle, force_reload: bool) -> dict[str, object]:
    """The per-host variables deploy.yml needs for `bundle` (names and digests, no secret)."""
    rid = release.release_id(bundle)
    return {
        "lotdeploy_release": rid,
        "lotdeploy_release_sums": [f"{f.sha256}  {f.name}" for f in bundle.all_files()],
        "lotdeploy_tls_files": [
            {"name": f.name, "mode": f"{f.mode:04o}", "sha256": f.sha256}
            for f in bundle.files
            if f.name != ROUTE_FILE
        ],
        "lotdeploy_force_reload": force_reload,
    }


def bundle_files(bundle: Bundle) -> list[tuple[str, bytes, int]]:
    """What goes to bundles/<node>/: the release as one tar, and each TLS file."""
    tls = [(f.name, f.data(), f.mode) for f in bundle.files if f.name != ROUTE_FILE]
    return [("release.tar", release._archive(bundle), 0o600), *tls]


def previous_release(run: PlaybookRun, node: str) -> str | None:
    out = run.hosts[node].results.get(READ_TASK, {}).get("stdout_lines") or []
    for line in out:
        if line.startswith("current="):
            name = line.removeprefix("current=").strip().rsplit("/", 1)[-1]
            return name if name.isalnum() else None
    return None


@dataclass
class AnsibleFiles:
    """A FilesPhase: the deploy playbook through ansible-runner."""

    accept_new_host_keys: bool = False
    settings: dict[str, str] | None = None
    #: the last run (for the CLI to show where its artifacts are)
    last: PlaybookRun | None = None

    def __call__(
        self,
        run: _Run,
        targets: list[str],
        bundles: dict[str, Bundle],
        steps: dict[str, NodeSteps],
    ) -> None:
        names = run.alive(targets)
        todo = [n for n in names if steps[n].files or steps[n].reload]
        for name in names:
            if name not in todo:
                run.done(name, "files", "skip", 0.0)
        if not todo:
            return
        started = time.monotonic()
        for name in todo:
            run.report(Event(name, "files", "start"))

        def progress(node: str, task: str, status: str) -> None:
            if status == "start":
                run.report(Event(node, "files", "start", f"ansible: {task}"))

        try:
            played = self._play(run, todo, bundles, steps, progress)
        except LotdeployError as exc:  # the runner itself failed: every node of the run
            for name in todo:
                run.failed(name, "files", str(exc), time.monotonic() - started)
            return
        self.last = played
        seconds = time.monotonic() - started
        for name in todo:
            host = played.hosts[name]
            if not host.ok:
                where = f" (task {host.failed_task!r})" if host.failed_task else ""
                run.failed(name, "files", f"ansible{where}: {host.error}", seconds)
                continue
            rid = release.release_id(bundles[name])
            outcome = run.result.outcomes[name]
            out = host.results.get(READ_TASK, {}).get("stdout_lines") or []
            outcome.uploaded = "has=1" not in out
            outcome.reloaded = RELOAD_TASK in host.changed_tasks
            record_files(run, name, bundles[name], rid, previous_release(played, name))
            clear_pending_reload(run, name)
            done = "uploaded" if outcome.uploaded else "already on the node"
            detail = f"release {rid} ({done}{', reloaded' if outcome.reloaded else ''})"
            run.done(name, "files", f"{detail}; ansible run {played.ident}", seconds)

    def _play(
        self,
        run: _Run,
        todo: list[str],
        bundles: dict[str, Bundle],
        steps: dict[str, NodeSteps],
        progress: Callable[[str, str, str], None],
    ) -> PlaybookRun:
        site = run.site
        return run_playbook(
            PrivateDataDir(run.workspace.root),
            "deploy.yml",
            inventory_text(site, [site.node(n) for n in todo]),
            todo,
            run_vars={n: run_vars(bundles[n], steps[n].reload) for n in todo},
            files={n: bundle_files(bundles[n]) for n in todo},
            forks=run.parallelism,
            accept_new_host_keys=self.accept_new_host_keys,
            on_event=progress,
            settings=self.settings,
            vault_password_file=vault_file(site),
            hide_env=[
                n.broker.admin_password_env for n in site.nodes if n.broker.admin_password_env
            ],
        )


def ansible_files(accept_new_host_keys: bool = False) -> FilesPhase:
    return AnsibleFiles(accept_new_host_keys)


def transport_kind() -> TransportKind:
    """`transport: ansible`: the files through one ansible-runner playbook run for all the
    nodes of a run (a wave's nodes in a rollout), everything else over OpenSSH with the
    inventory's options (the same connection Ansible uses)."""
    from lotdeploy.transport.openssh import OpenSshTransport
    from lotdeploy.transport.sshopts import ssh_options

    def factory(site: Site, accept_new_host_keys: bool) -> TransportFactory:
        def make(node: Node) -> Transport:
            return OpenSshTransport(
                node.name, ssh_options(site, node), accept_new_host_keys=accept_new_host_keys
            )

        return make

    return TransportKind("ansible", factory, files_phase=ansible_files)
