"""Run one of the shipped playbooks through ansible-runner, and read what it did per host.

The private data directory is `<workspace>/ansible/`:

    ansible.cfg          the settings of every run (pipelining, ControlPersist, no retry files)
    inventory/hosts.yml  `lotdeploy inventory` of the run's nodes (no secret)
    inventory/run.yml    the run's per-host variables (release id, file names; no secret)
    bundles/<node>/      the files to deliver (TLS key included): 0600 in a 0700 directory,
                         written just before the run, removed after it, also when it fails
    artifacts/<ident>/   ansible-runner's artifacts of each run, kept (stdout, job_events/)
    runs.jsonl           one line per run: ident, playbook, nodes, status, per-host result

Secret-bearing tasks in the playbooks are `no_log` (and `diff: false`), so the events, the
artifacts and `--check --diff` output carry no secret value; the secret files themselves
never leave `bundles/`. Host failures are mapped to their node with Ansible's own message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lotdeploy.ansible import PLAYBOOKS
from lotdeploy.errors import LotdeployError
from lotdeploy.fsutil import UnreadableFile, atomic_write, parse_json, read_regular_file
from lotdeploy.guard import CONTROL_DIR_ENV as GUARD_CONTROL_DIR
from lotdeploy.guard import shim
from lotdeploy.secret import dumps, scrub

#: Bound of one whole playbook run, in seconds.
RUN_TIMEOUT = 900
#: How many runs' artifacts stay in the private data directory.
KEEP_ARTIFACTS = 30


def ansible_cfg(forks: int = 10, pipelining: bool = True, control_persist: bool = True) -> str:
    """The settings every run uses (and `export-ansible` ships): what makes Ansible fast
    (pipelining; one SSH connection per host reused across tasks; no fact gathering is in the
    playbooks themselves) and what keeps it strict (host keys checked, no retry files)."""
    ssh_args = "-o ControlMaster=auto -o ControlPersist=60s" if control_persist else ""
    return (
        "# Written by lotdeploy (docs/ansible.md): the lotdeploy playbooks, fast and strict.\n"
        "[defaults]\n"
        f"forks = {forks}\n"
        "host_key_checking = True\n"
        "retry_files_enabled = False\n"
        "interpreter_python = auto_silent\n"
        "gathering = explicit\n"
        "timeout = 10\n"
        "nocolor = True\n"
        "\n[ssh_connection]\n"
        f"pipelining = {pipelining}\n"
        f"ssh_args = {ssh_args}\n"
    )


@dataclass
class HostResult:
    """What one playbook run did on one host."""

    node: str
    ok: bool = True
    unreachable: bool = False
    error: str | None = None
    failed_task: str | None = None
    changed_tasks: list[str] = field(default_factory=list)
    #: the last result of each task that is not no_log (registered facts, e.g. stdout)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: bool = False

    @property
    def changed(self) -> int:
        return len(self.changed_tasks)


@dataclass
class PlaybookRun:
    ident: str
    playbook: str
    artifact_dir: Path
    rc: int
    status: str
    hosts: dict[str, HostResult]
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())


EventSink = Callable[[str, str, str], None]  # (node, task, status)


def _message(res: dict[str, Any]) -> str:
    """Ansible's own words for a failure, short: the last lines of its message (where
    OpenSSH puts "Host key verification failed.") and of the task's stderr."""
    if res.get("censored"):
        return "a task that handles secrets failed (its output is hidden: no_log)"
    parts = []
    for key in ("msg", "stderr", "module_stderr"):
        lines = [line.strip() for line in str(res.get(key) or "").splitlines() if line.strip()]
        lines = [line for line in lines if not set(line) <= {"@"}]
        if lines:
            parts.append(" | ".join(lines[-3:])[-400:])
        if key != "msg" and lines:
            break
    return scrub("; ".join(parts)) or "failed"


class PrivateDataDir:
    """`<workspace>/ansible`: created 0700; see the module docstring for its layout."""

    def __init__(self, workspace_root: Path) -> None:
        self.root = Path(workspace_root) / "ansible"

    def prepare(self, forks: int) -> None:
        for sub in ("", "inventory", "artifacts"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        atomic_write(self.root / "ansible.cfg", ansible_cfg(forks), 0o600)

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @contextlib.contextmanager
    def secret_files(
        self, files: dict[str, list[tuple[str, bytes, int]]], vault: Path | None = None
    ) -> Iterator[Path]:
        """bundles/<node>/<name> for the run (mode 0600, directories 0700; vault-encrypted
        with `vault`); always removed afterwards. A `bundles` that is a symbolic link (only
        the workspace's owner could plant one) is refused, never followed or emptied."""
        self._remove_bundles()
        try:
            write_secret_files(self.bundles, files, vault)
            yield self.bundles
        finally:
            self._remove_bundles()

    def _remove_bundles(self) -> None:
        try:
            info = os.lstat(self.bundles)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):  # a link or a file: not what a run leaves
            raise LotdeployError(
                f"{self.bundles}: is not the directory runs write; refusing to remove it "
                "or to write secret files there (remove it by hand)"
            )
        shutil.rmtree(self.bundles, ignore_errors=True)

    def runs(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every recorded run, oldest first (what `lotdeploy ansible-runs` lists), and one
        line per record that is not one (a torn last line, an edit), naming file and line.
        The log is read by fsutil's bounded reader: never a hang, never a traceback."""
        path = self.root / RUN_LOG
        try:
            raw = read_regular_file(path, RUN_LOG_MAX_BYTES)
        except UnreadableFile as exc:
            if exc.missing:
                return [], []
            raise LotdeployError(f"{path}: {exc.about('the run log')}") from None
        found: list[dict[str, Any]] = []
        skipped: list[str] = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                found.append(_run_record(parse_json(line)))
            except (UnreadableFile, ValueError) as exc:
                why = exc.reason if isinstance(exc, UnreadableFile) else str(exc)
                skipped.append(f"{path}:{number}: skipped: the line {why}")
        return found, skipped

    def _record(self, run: PlaybookRun, nodes: list[str]) -> None:
        line = dumps(
            {
                "ident": run.ident,
                "playbook": run.playbook,
                "artifacts": str(run.artifact_dir),
                "nodes": nodes,
                "status": run.status,
                "rc": run.rc,
                "seconds": round(run.seconds, 3),
                "hosts": {
                    n: {
                        "ok": h.ok,
                        "changed": h.changed,
                        "error": h.error,
                        "failed_task": h.failed_task,
                    }
                    for n, h in sorted(run.hosts.items())
                },
            }
        )
        fd = os.open(self.root / RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(line + "\n")
        kept = sorted(
            (p for p in (self.root / "artifacts").iterdir() if p.is_dir()), key=lambda p: p.name
        )
        for old in kept[:-KEEP_ARTIFACTS]:
            shutil.rmtree(old, ignore_errors=True)


#: One line per run (`PrivateDataDir.runs`); a year of runs is a few MB.
RUN_LOG = "runs.jsonl"
RUN_LOG_MAX_BYTES = 256 * 1024 * 1024


def _run_record(doc: Any) -> dict[str, Any]:
    """A run record as `_record` writes it, checked field by field (ValueError: what is
    wrong), so a listing never trips over a hand-edited or torn line."""
    if not isinstance(doc, dict):
        raise ValueError("is not a JSON object")
    for key in ("ident", "status", "artifacts"):
        if not isinstance(doc.get(key), str):
            raise ValueError(f"has no text {key!r}")
    nodes, hosts = doc.get("nodes", []), doc.get("hosts", {})
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ValueError("has no list of node names")
    if not isinstance(hosts, dict) or not all(isinstance(h, dict) for h in hosts.values()):
        raise ValueError("has no host results")
    return doc


def plain_directory(path: Path, mode: int) -> None:
    """`path` as a directory of its own: created with `mode`, or one that is there (never a
    symbolic link, which would send what is written into it elsewhere)."""
    try:
        path.mkdir(mode=mode)
        os.chmod(path, mode)
    except FileExistsError:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
            why = f"is {what}; refusing to write into it"
            raise OSError(errno.ENOTDIR, why, str(path)) from None


def write_secret_files(
    directory: Path, files: dict[str, list[tuple[str, bytes, int]]], vault: Path | None = None
) -> None:
    """DIR/<node>/<name>, each file private (0600) from creation and renamed into place
    (`atomic_write`: never through a link planted there) in 0700 directories that are no
    symbolic links (Ansible Vault with `vault`)."""
    password = None
    if vault is not None:
        from lotdeploy.ansible.vault import vault_password

        password = vault_password(vault)
    plain_directory(directory, 0o700)
    for node, entries in files.items():
        plain_directory(directory / node, 0o700)
        for name, data, _mode in entries:
            if password is not None:
                from lotdeploy.ansible.vault import encrypt

                data = encrypt(data, password)
            # private from creation, renamed over the old one (a link there is replaced,
            # never followed): an interrupted export leaves the old file or the new, whole
            atomic_write(directory / node / name, data, 0o600, dir_mode=0o700)


def _close_masters(control_dir: Path) -> None:
    """End the SSH control masters of a run (ControlPersist would keep them a minute)."""
    from lotdeploy.transport.openssh import exit_masters

    exit_masters(control_dir)
    shutil.rmtree(control_dir, ignore_errors=True)


def run_playbook(
    pdd: PrivateDataDir,
    playbook: str,
    inventory: str,
    nodes: list[str],
    *,
    run_vars: dict[str, dict[str, Any]] | None = None,
    files: dict[str, list[tuple[str, bytes, int]]] | None = None,
    forks: int = 10,
    check: bool = False,
    diff: bool = False,
    accept_new_host_keys: bool = False,
    on_event: EventSink | None = None,
    settings: dict[str, str] | None = None,
    hide_env: list[str] | None = None,
    vault_password_file: Path | None = None,
) -> PlaybookRun:
    """Run `playbook` (one of the shipped ones) on `nodes` and say what it did per host."""
    try:
        import ansible_runner
    except ImportError:
        raise LotdeployError(
            "the Ansible transport needs ansible-runner and ansible-core: "
            "pip install 'lotdeploy[ansible]' (docs/ansible.md)"
        ) from None

    from lotdeploy.ansible.inventory import vars_text

    pdd.prepare(forks)
    atomic_write(pdd.root / "inventory" / "hosts.yml", inventory, 0o600)
    # The run's variables, lotdeploy_bundles included, as inventory variables tagged
    # !unsafe: ansible-runner's extravars would be templated (a workspace path holding
    # `{{ ... }}` would run on the controller).
    per_host = {"all": {"vars": {"lotdeploy_bundles": str(pdd.bundles)}, "hosts": run_vars or {}}}
    atomic_write(pdd.root / "inventory" / "run.yml", vars_text(per_host), 0o600)
    ident = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{Path(playbook).stem}-{secrets.token_hex(3)}"
    hosts = {n: HostResult(n) for n in nodes}
    started = time.monotonic()
    # a short directory: a unix socket path has at most 107 bytes
    control_dir = Path(tempfile.mkdtemp(prefix="ld-cp-", dir="/tmp"))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    real = shutil.which("ansible-playbook", path=path)
    if real is not None:  # ansible-playbook (and its SSH masters) stop with lotdeploy
        shim(str(pdd.root / "guard-bin"), "ansible-playbook", real)
        path = f"{pdd.root / 'guard-bin'}{os.pathsep}{path}"
    env = {
        "PATH": path,
        GUARD_CONTROL_DIR: str(control_dir),
        "ANSIBLE_CONFIG": str(pdd.root / "ansible.cfg"),
        "ANSIBLE_HOME": str(pdd.root / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(pdd.root / ".ansible" / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless told otherwise; then
        # Ansible passes StrictHostKeyChecking=no ahead of the inventory's =yes (OpenSSH
        # takes the first value) and a changed host key is accepted. Never.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        **(settings or {}),
    }
    # ansible-runner records the environment of the run in its artifacts (`command`): no
    # secret may be in it. Blank the passphrase, the admin password variables, and any
    # variable holding a value lotdeploy knows to be secret.
    for name, value in os.environ.items():
        if name in {"LOTDEPLOY_PASSPHRASE", *(hide_env or [])} or (value and scrub(value) != value):
            env[name] = ""
    if accept_new_host_keys:  # OpenSSH takes the first value: this wins over the inventory's
        base = (settings or {}).get(
            "ANSIBLE_SSH_ARGS", "-o ControlMaster=auto -o ControlPersist=60s"
        )
        env["ANSIBLE_SSH_ARGS"] = f"{base} -o StrictHostKeyChecking=accept-new"
    task_of: dict[str, str] = {}

    def handle(event: dict[str, Any]) -> bool:
        kind = str(event.get("event", ""))
        data = event.get("event_data") or {}
        host = str(data.get("host") or "")
        task = str(data.get("task") or "")
        if kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            task_of[str(data.get("task_uuid", ""))] = task
            return True
        if host not in hosts:
            return True
        result = hosts[host]
        result.seen = True
        res = data.get("res") or {}
        if kind == "runner_on_start" and on_event is not None:
            on_event(host, task, "start")
        elif kind == "runner_on_ok":
            if res.get("changed"):
                result.changed_tasks.append(task)
            if not res.get("censored"):
                result.results[task] = res
            if on_event is not None:
                on_event(host, task, "changed" if res.get("changed") else "ok")
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            result.failed_task, result.error = task, _message(res)
            if on_event is not None:
                on_event(host, task, "failed")
        elif kind == "runner_on_unreachable":
            result.unreachable = True
            result.failed_task, result.error = task, "unreachable: " + _message(res)
            if on_event is not None:
                on_event(host, task, "unreachable")
        return True

    words = ["--check"] if check else []
    words += ["--diff"] if diff else []
    if vault_password_file is not None:
        words += ["--vault-password-file", str(Path(vault_password_file).resolve())]
    cmdline = shlex.join(words)
    try:
        with pdd.secret_files(files or {}, vault_password_file):
            runner = ansible_runner.run(
                private_data_dir=str(pdd.root),
                project_dir=str(PLAYBOOKS),
                playbook=playbook,
                inventory=str(pdd.root / "inventory"),
                limit=",".join(nodes),
                envvars=env,
                ident=ident,
                artifact_dir=str(pdd.root / "artifacts"),
                forks=forks,
                cmdline=cmdline or None,
                quiet=True,
                event_handler=handle,
                timeout=RUN_TIMEOUT,
                suppress_env_files=True,
            )
    except Exception as exc:  # ansible-runner's own failure to start: never a traceback
        raise LotdeployError(
            f"ansible-runner could not run {playbook}: {scrub(str(exc))}"
        ) from None
    finally:
        _close_masters(control_dir)
    stats = runner.stats or {}
    judge_hosts(hosts, stats, str(runner.status), runner.rc)
    run = PlaybookRun(
        ident=ident,
        playbook=playbook,
        artifact_dir=pdd.root / "artifacts" / ident,
        rc=int(runner.rc if runner.rc is not None else -1),
        status=str(runner.status),
        hosts=hosts,
        seconds=time.monotonic() - started,
        stats=stats,
    )
    pdd._record(run, nodes)
    return run


def judge_hosts(
    hosts: dict[str, HostResult], stats: dict[str, Any], status: str, rc: int | None
) -> None:
    """Each host's outcome from the run's recap (`stats`) and its end: failed when the recap
    says so, or when there is no recap and the run did not succeed (killed or timed out
    before the play ended: never a success for a host it had started on)."""
    for name, result in hosts.items():
        failed = name in (stats.get("failures") or {}) or name in (stats.get("dark") or {})
        if not stats and (status != "successful" or rc != 0):
            result.ok = False
            result.error = (
                result.error or f"ansible-runner {status} (rc {rc}) before the play finished"
            )
        elif failed:
            result.ok = False
            result.error = result.error or "failed (see the run's artifacts)"
        elif not result.seen and rc == 0:
            result.ok = True
        elif not result.seen:
            result.ok = False
            result.error = f"ansible-runner {status} (rc {rc}) before the host ran"
        else:
            result.error = None
            result.failed_task = None
