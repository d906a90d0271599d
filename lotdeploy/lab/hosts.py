"""The hosts of the lab: files (keys, known_hosts, sshd configs) and processes (sshd, broker,
delayer, proxy). Processes are tracked by pid + start time, so `down` never kills a stranger
whose pid happens to be reused, and found again by command line after a crashed `up`."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import lotdeploy
from lotdeploy import profiles, protocol
from lotdeploy.errors import LabError
from lotdeploy.fsutil import atomic_write
from lotdeploy.lab.labstate import LabState, Node
from lotdeploy.lab.run import run
from lotdeploy.secret import Secret

SSHD = "/usr/sbin/sshd"
# A lab node looks like a vendor install: the broker's default paths.
NODE_TLS_DIR = protocol.DEFAULT_TLS_DIR
NODE_RELEASE_DIR = protocol.DEFAULT_RELEASE_DIR
NODE_RUN_DIR = "/run/coreflux"
BROKER_MODULE = "lotdeploy.lab.broker"
PROJECT_ROOT = Path(lotdeploy.__file__).resolve().parent.parent

# In root mode each node sees its own directory at these paths (bind mounts in the mount
# namespace `ip netns exec` gives every process it starts); the host keeps them empty.
# Everything apply may write on a node is private to it: the broker's directories under
# /opt/coreflux and /etc/coreflux, lotdeploy's release directory, the run directory.
# Outer directories come first: a nested one (tls in /opt/coreflux) is bound on top.
NODE_MOUNTS = {
    "opt": "/opt/coreflux",
    "etc": "/etc/coreflux",
    "tls": NODE_TLS_DIR,
    "release": NODE_RELEASE_DIR,
    "run": NODE_RUN_DIR,
}


#: A node in the docker layout (`lab up --profile NODE=docker`) sees its project volume
#: twice, as a docker host does: at the volume's host directory (where lotdeploy writes,
#: over ssh) and at the container's project directory (where its broker reads).
DOCKER = profiles.DockerLayout()
DOCKER_MOUNTS = (DOCKER.volume_dir, DOCKER.project_dir)
#: The TLS directory as the docker node's broker reads it (the container's side).
DOCKER_BROKER_TLS_DIR = (
    profiles.broker_path(DOCKER, profiles.defaults("docker", DOCKER).tls_dir) or ""
)
#: The stand-in `docker` command's module (lotdeploy/lab/docker.py).
DOCKER_MODULE = "lotdeploy.lab.docker"


def docker_mounts(layout: Layout, node: Node) -> dict[str, Path]:
    """Mount target -> the node's volume directory, for a docker-layout node (else none)."""
    if node.profile != "docker":
        return {}
    return dict.fromkeys(DOCKER_MOUNTS, layout.node_sub(node.name, "project"))


def write_docker_cli(layout: Layout, state: LabState, node: Node, broker: list[str]) -> None:
    """The docker node's stand-in `docker` (DIR/nodes/<node>/bin/docker, first on its ssh
    PATH) and what it restarts: the node's broker, as `lab up` starts it."""
    node_dir = layout.node_dir(node.name).resolve()
    container = {
        "name": DOCKER.container,
        "argv": broker,
        "log": str(node_dir / "broker.log"),
        "cwd": str(node_dir / "broker"),
        "pid_file": str(node_dir / "run" / "broker.pid"),
        "lab_id": state.lab_id,
    }
    atomic_write(node_dir / "container.json", json.dumps(container, indent=2) + "\n")
    script = (
        "#!/bin/sh\n"
        "# The lab's stand-in for the docker CLI on a docker-layout node (lotdeploy lab up\n"
        "# --profile): `docker restart NAME` restarts this node's lab broker.\n"
        f"PYTHONPATH={shlex.quote(str(PROJECT_ROOT))} exec {shlex.quote(sys.executable)} "
        f'-m {DOCKER_MODULE} --node-dir {shlex.quote(str(node_dir))} "$@"\n'
    )
    atomic_write(node_dir / "bin" / "docker", script, mode=0o755)


def is_lab_broker(pid: int, node_dir: Path) -> bool:
    """Is `pid` the lab broker of the node whose directory is `node_dir`?"""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    return BROKER_MODULE in cmd and str(node_dir.resolve() / "broker") in cmd


def nested_mountpoints() -> list[tuple[str, str]]:
    """(outer mount, path inside it) for each mount that lies within another: the node's
    copy of the outer directory needs that path as a mountpoint."""
    found = []
    for what, target in NODE_MOUNTS.items():
        for outer, outer_target in NODE_MOUNTS.items():
            if outer != what and target.startswith(outer_target.rstrip("/") + "/"):
                found.append((outer, target[len(outer_target.rstrip("/")) + 1 :]))
    return found


#: What a freshly installed Debian node gives root as ~/.bashrc (base-files).
STOCK_BASHRC = Path("/usr/share/base-files/dot.bashrc")


def shell_startup_mounts(layout: Layout, user: str) -> dict[str, Path]:
    """A node's login user gets a stock ~/.bashrc, not the host's: sshd runs every remote
    command through bash, which reads ~/.bashrc even when not interactive. The host's may
    start anything (on the development machines, pyenv init: 0.19 s of CPU per command,
    against 2 ms for a stock node), and the lab's nodes share the host's CPUs, so it
    distorted every apply on the lab (docs/lab.md). Mount target -> the lab's copy; empty
    when the user has no ~/.bashrc to cover."""
    try:
        home = Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        return {}
    target = home / ".bashrc"
    if not target.is_file():
        return {}
    copy = layout.root / "node-home" / ".bashrc"
    if not copy.exists():
        stock = STOCK_BASHRC.read_text() if STOCK_BASHRC.is_file() else ""
        atomic_write(copy, stock or "# a lab node's ~/.bashrc (lotdeploy lab)\n", mode=0o644)
    return {str(target): copy}


_MOUNT_SCRIPT = (
    'set -e; while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"'
)


@dataclass(frozen=True)
class Layout:
    """Where every file of a lab lives, relative to its directory."""

    root: Path

    @property
    def site(self) -> Path:
        return self.root / "site.yaml"

    @property
    def client_key(self) -> Path:
        return self.root / "keys" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def password_file(self) -> Path:
        return self.root / "secrets" / "admin-password"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def node_sub(self, node: str, what: str) -> Path:
        return self.node_dir(node) / what


# -- files ------------------------------------------------------------------------------------


def ensure_key(path: Path, comment: str, node: str = "lab") -> str:
    """An ed25519 key pair at `path` (kept across `up` runs); returns the public key line."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            node=node,
        )
    os.chmod(path, 0o600)
    return path.with_suffix(".pub").read_text().strip()


def ensure_admin_password(layout: Layout) -> Secret:
    """The lab brokers' admin password, generated once, stored 0600, referenced by site.yaml."""
    path = layout.password_file
    if path.exists():
        return Secret(path.read_text().strip())
    secret = Secret(secrets.token_urlsafe(24))
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write(path, secret.reveal() + "\n", mode=0o600)
    return secret


def write_known_hosts(layout: Layout, state: LabState, host_keys: dict[str, str]) -> None:
    """One line per node so clients can use StrictHostKeyChecking=yes from the first login."""
    lines = []
    for node in state.nodes:
        key = " ".join(host_keys[node.name].split()[:2])
        host = node.address if node.ssh_port == 22 else f"[{node.address}]:{node.ssh_port}"
        lines.append(f"{host} {key}")
    atomic_write(layout.known_hosts, "\n".join(lines) + "\n")


#: The PATH sshd gives a root session (OpenSSH's default), after a node's own bin/.
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sshd_config(layout: Layout, state: LabState, node: Node, listen_port: int) -> str:
    """Key-only sshd for one node: its own host key, the lab's authorized key, no PAM; a
    docker-layout node's sessions find its stand-in `docker` first on their PATH."""
    authorized = layout.root / "keys" / "authorized_keys"
    path = []
    if node.profile == "docker":
        bin_dir = layout.node_sub(node.name, "bin").resolve()
        path = [f"SetEnv PATH={bin_dir}:{SESSION_PATH}"]
    return "\n".join(
        [
            *path,
            "# generated by `lotdeploy lab up`",
            f"ListenAddress {node.address}:{listen_port}",
            f"HostKey {layout.node_sub(node.name, 'ssh_host_ed25519_key')}",
            f"AuthorizedKeysFile {authorized}",
            "PidFile none",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {state.user}",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "AllowTcpForwarding yes",
            "MaxStartups 100:30:200",
            "LogLevel INFO",  # a connection that ended early says how (reset, timeout)
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


# -- processes --------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def alive(state: LabState, role: str) -> bool:
    """Is the process started for `role` still the same running process?"""
    pid = state.pids.get(role)
    if not pid:
        return False
    started = state.pids.get(f"{role}@start")
    now = start_time(pid)
    if now is None or (started is not None and started != now):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remember(state: LabState, role: str, pid: int) -> None:
    state.pids[role] = pid
    state.pids[f"{role}@start"] = start_time(pid) or 0


def forget(state: LabState, role: str) -> None:
    state.pids.pop(role, None)
    state.pids.pop(f"{role}@start", None)


def spawn(argv: Sequence[str], log: Path, lab_id: str, cwd: Path | None = None) -> int:
    """Start a daemon detached from our terminal and session (it outlives `lab up`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["LOTDEPLOY_LAB"] = lab_id
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(PROJECT_ROOT), env.get("PYTHONPATH", "")] if p
    )
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            raise LabError(f"cannot start {argv[0]}: {exc.strerror}") from None
    return proc.pid


def in_node(
    ns: str,
    binds: dict[str, Path],
    argv: Sequence[str],
    files: dict[str, Path] | None = None,
) -> list[str]:
    """argv run inside namespace `ns` with the node's directories bind-mounted (and `files`:
    mount target -> source, e.g. shell_startup_mounts)."""
    pairs: list[str] = []
    for what, target in NODE_MOUNTS.items():
        pairs += [str(binds[what]), target]
    for target, source in (files or {}).items():
        pairs += [str(source), target]
    return ["ip", "netns", "exec", ns, "sh", "-c", _MOUNT_SCRIPT, "lab-node", *pairs, "--", *argv]


class BrokerListen(NamedTuple):
    """Where a node's lab broker listens: plain MQTT (the command channel) and TLS."""

    plain_bind: str
    tls_bind: str
    port: int
    tls_port: int
    tls_dir: str


def broker_argv(layout: Layout, node: Node, listen: BrokerListen) -> list[str]:
    return [
        sys.executable,
        "-m",
        BROKER_MODULE,
        "--bind",
        listen.plain_bind,
        "--port",
        str(listen.port),
        "--tls-bind",
        listen.tls_bind,
        "--tls-port",
        str(listen.tls_port),
        "--cert",
        f"{listen.tls_dir}/{protocol.DEFAULT_CERT_FILE}",
        "--key",
        f"{listen.tls_dir}/{protocol.DEFAULT_KEY_FILE}",
        "--ca",
        f"{listen.tls_dir}/{protocol.DEFAULT_CA_FILE}",
        "--admin-user",
        protocol.DEFAULT_ADMIN_USER,
        "--admin-password-file",
        str(layout.password_file.resolve()),
        "--state-dir",
        str(layout.node_sub(node.name, "broker").resolve()),
        "--node-name",
        node.name,
        *node.broker_args,
    ]


def wait_ready(
    log: Path,
    offset: int,
    *,
    node: str,
    timeout: float = 20.0,
    pid_check: tuple[LabState, str] | None = None,
) -> None:
    """Poll the broker's log (from `offset`) for its `ready` line; bounded in time.

    In root mode its plain listener is on the node's own loopback, out of the host's reach,
    so the line the broker prints once listening is the readiness signal in both modes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(log, "rb") as fh:
            fh.seek(offset)
            if b'"event": "ready"' in fh.read():
                return
        if pid_check is not None and not alive(*pid_check):
            break
        time.sleep(0.05)
    tail = ""
    if log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()
        tail = f"; last log line: {lines[-1]}" if lines else ""
    raise LabError(f"node {node}: lab broker did not come up{tail}")


def wait_port(
    host: str,
    port: int,
    *,
    node: str,
    what: str,
    timeout: float = 10.0,
    pid_check: tuple[LabState, str] | None = None,
    log: Path | None = None,
) -> None:
    """Poll until `host:port` accepts TCP (bounded); name the node and the log on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if pid_check is not None and not alive(*pid_check):
            break
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()
        tail = f"; last log line: {lines[-1]}" if lines else ""
    raise LabError(f"node {node}: {what} did not come up on {host}:{port}{tail}")


def lab_processes(lab_dir: Path) -> list[int]:
    """Our processes of this lab found by command line (after a crash, before pids were saved).

    A process counts only if its command line names this lab's directory AND is one of the
    kinds the lab starts (sshd, or a lotdeploy.lab module) or an SSH master kept to its
    nodes by `transport: openssh` (the default: `ssh ... ControlPersist=...` with the lab's
    key and known_hosts), which would otherwise outlive the lab by its idle timeout.
    """
    needle = str(lab_dir.resolve()) + "/"
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        kept_master = cmd.startswith("ssh ") and "ControlPersist=" in cmd
        if needle in cmd and ("sshd" in cmd or "lotdeploy.lab." in cmd or kept_master):
            found.append(int(entry.name))
    return found


def stop_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, wait (bounded), then SIGKILL whatever is left."""
    pids = [p for p in set(pids) if p > 1 and p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if _running(p)]
        if left:
            time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:  # reap our own children if any (tests, bench)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def recorded_pids(state: LabState) -> list[int]:
    """Pids in the state that still belong to the process we started (start time matches)."""
    return [state.pids[r] for r in list(state.pids) if "@" not in r and alive(state, r)]
