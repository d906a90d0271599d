"""One node's SSH settings as OpenSSH options: shared by the inventory and the OpenSSH
port forward, so Ansible and lotdeploy's own forward reach a node exactly the same way.

Host keys are checked strictly against the site's known_hosts (StrictHostKeyChecking=yes,
UserKnownHostsFile=<file>), for the node and for its jump host alike: the jump is a
ProxyCommand carrying the same options, because OpenSSH's ProxyJump would check the jump
host against the user's defaults instead. Paths are absolute (resolved from the site file's
directory) so the inventory works from any directory. No secret is ever part of it.

Where each setting comes from is decided once, here, for every transport (`resolve`): the
spec's value, else the ssh config's for the host (~/.ssh/config then /etc/ssh/ssh_config, or
one explicit file), else the built-in default. The SSH transport logs in with the result;
OpenSSH and Ansible get it as explicit options. All three therefore reach a node as the
same user, on the same port, checked against the same known_hosts, through the same jump.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node, Site, SshTarget

#: The model's built-in defaults: a value equal to one of them counts as "the spec is
#: silent", so the ssh config's Port/User for the host applies (the model keeps no None).
DEFAULT_SSH_PORT: int = SshTarget(host="-").port
DEFAULT_SSH_USER: str = SshTarget(host="-").user


class SshSettingsError(LotdeployError):
    """A setting that cannot be resolved (an unreadable ssh config, a jump chain); `cause`
    says why, without the node, which the transport adds."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def literal(value: str) -> str:
    """`value` as ssh reads it literally where it expands %-tokens (ProxyCommand, whose
    result a shell runs; UserKnownHostsFile; IdentityFile): `%` doubled. Without it a jump
    user `%r` becomes the node's user name inside ProxyCommand's shell command: a site
    value would choose code to run on the controller (older OpenSSH did not refuse such
    user names)."""
    return value.replace("%", "%%")


def split_jump(jump: str) -> tuple[str, str, str]:
    """ "[user@]host[:port]" (IPv6 in brackets) -> (user, host, port), "" where not given."""
    user, _, hostport = jump.rpartition("@")
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    return user, host, port


@dataclass(frozen=True)
class SshOptions:
    host: str
    port: int
    user: str
    key: str | None
    known_hosts: str
    jump: str | None  # "[user@]host[:port]" as in the spec
    config: str | None = None  # the one ssh config file to read (-F); None: ssh's own

    def strict_args(self) -> list[str]:
        """Host keys from the site's known_hosts only, never a prompt (node and jump host)."""
        config = ["-F", self.config] if self.config is not None else []
        return [
            *config,
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={literal(self.known_hosts)}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ]

    def common_args(self) -> list[str]:
        """-o options for every ssh to the node (not host, port, user or key)."""
        args = self.strict_args()
        if self.key is not None:
            args += ["-o", "IdentitiesOnly=yes"]
        if self.jump is not None:
            args += ["-o", f"ProxyCommand={shlex.join(self.proxy_command())}"]
        return args

    def proxy_command(self) -> list[str]:
        assert self.jump is not None
        user, host, port = split_jump(self.jump)
        command = ["ssh", *self.strict_args(), "-p", literal(port or "22")]
        command += ["-l", literal(user or self.user)]
        if self.key is not None:
            command += ["-o", "IdentitiesOnly=yes", "-i", literal(self.key)]
        return [*command, "-W", "%h:%p", literal(host)]

    def argv(self) -> list[str]:
        """`ssh` with everything up to (not including) the remote command."""
        args = ["ssh", *self.common_args(), "-p", str(self.port), "-l", self.user]
        if self.key is not None:
            args += ["-i", literal(self.key)]
        return [*args, self.host]


@dataclass(frozen=True)
class Hop:
    """One SSH server to log in to (the node, or its jump host), settings decided."""

    label: str  # "198.18.0.11:22", for messages
    host: str  # the address connected to (the ssh config's HostName, else the name)
    port: int
    user: str
    key_files: tuple[str, ...]  # from the ssh config, when the spec names no key
    name: str = ""  # the name as written (the spec's host, the jump's); "": `host`

    @property
    def known_hosts_name(self) -> str:
        """The name paramiko and OpenSSH look the host up under in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Resolved:
    """How to reach one node, every setting decided (spec > ssh config > default)."""

    hop: Hop
    jump: Hop | None
    proxy_command: str | None  # the ssh config's ProxyCommand, when there is no jump
    known_hosts: Path


def load_ssh_config(path: Path | None) -> paramiko.SSHConfig:
    """The ssh config: `path` alone when given, else ~/.ssh/config then /etc/ssh/ssh_config
    (as OpenSSH: the first value found for an option wins)."""
    paths = (
        [path]
        if path is not None
        else [Path("~/.ssh/config").expanduser(), Path("/etc/ssh/ssh_config")]
    )
    config = paramiko.SSHConfig()
    for candidate in paths:
        if path is None and not candidate.is_file():
            continue
        try:
            with open(candidate) as fh:
                config.parse(fh)
        except (OSError, UnicodeDecodeError, ValueError, paramiko.SSHException) as exc:
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SshSettingsError(f"cannot read ssh config {candidate}: {cause}") from None
    return config


def local_path(path: Path | str, base_dir: Path | None) -> Path:
    """A path of the spec: `~` expanded, relative ones from the site file's directory."""
    path = Path(path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _hop(
    config: paramiko.SSHConfig,
    name: str,
    port: int | None,
    user: str | None,
    *,
    spec_port: int,
    spec_user: str,
) -> tuple[Hop, dict[str, Any]]:
    """Settings of one hop: explicit values, else the ssh config's, else the spec's."""
    found = config.lookup(name)
    hostname = str(found.get("hostname", name))
    if port is None:
        port = (
            int(found["port"]) if spec_port == DEFAULT_SSH_PORT and "port" in found else spec_port
        )
    if user is None:
        user = (
            str(found["user"]) if spec_user == DEFAULT_SSH_USER and "user" in found else spec_user
        )
    key_files = tuple(
        str(Path(k).expanduser())
        for k in found.get("identityfile", [])
        if Path(k).expanduser().is_file()
    )
    return Hop(f"{hostname}:{port}", hostname, port, user, key_files, name), dict(found)


def resolve(
    target: SshTarget, config: paramiko.SSHConfig, base_dir: Path | None = None
) -> Resolved:
    """Decide host, port, user, jump and known_hosts of one node (spec > ssh config >
    defaults); the one place every transport takes them from."""
    hop, found = _hop(config, target.host, None, None, spec_port=target.port, spec_user=target.user)
    if target.known_hosts is not None:
        known_hosts = local_path(target.known_hosts, base_dir)
    elif found.get("userknownhostsfile"):
        known_hosts = Path(str(found["userknownhostsfile"]).split()[0]).expanduser()
    else:
        known_hosts = Path("~/.ssh/known_hosts").expanduser()
    jump = target.jump or found.get("proxyjump")
    if jump is not None and str(jump).lower() == "none":
        jump = None
    proxy_command = None
    if jump is None and found.get("proxycommand") and str(found["proxycommand"]).lower() != "none":
        proxy_command = str(found["proxycommand"])
    jump_hop = None
    if jump is not None:
        jump = str(jump)
        if "," in jump:
            raise SshSettingsError(f"jump {jump!r}: only one jump host is supported")
        juser, jhost, jport_text = split_jump(jump)
        try:
            jport = int(jport_text) if jport_text else None
        except ValueError:
            raise SshSettingsError(f"jump {jump!r}: the port is not a number") from None
        # user@ given: it; else the jump host's ssh config User; else the node's user
        jump_hop, _ = _hop(
            config, jhost, jport, juser or None, spec_port=DEFAULT_SSH_PORT, spec_user=hop.user
        )
    return Resolved(hop, jump_hop, proxy_command, known_hosts)


def _absolute(path: Path) -> str:
    """So the inventory works from any directory."""
    return str(path if path.is_absolute() else path.resolve())


def _jump_text(jump: Hop) -> str:
    host = f"[{jump.name}]" if ":" in jump.name else jump.name
    return f"{jump.user}@{host}:{jump.port}"


def ssh_options(site: Site, node: Node, ssh_config: Path | None = None) -> SshOptions:
    """The node's settings, resolved as the SSH transport resolves them, as OpenSSH options.
    The host stays the name the spec gives (OpenSSH applies the config's HostName and the
    rest of its `Host` block itself); port, user, known_hosts and jump are explicit."""
    try:
        found = resolve(node.ssh, load_ssh_config(ssh_config), Path(site.base_dir))
    except SshSettingsError as exc:
        raise LotdeployError(f"node {node.name}: {exc.cause}") from None
    key = node.ssh.key
    return SshOptions(
        host=node.ssh.host,
        port=found.hop.port,
        user=found.hop.user,
        key=_absolute(local_path(key, Path(site.base_dir))) if key is not None else None,
        known_hosts=_absolute(found.known_hosts),
        jump=_jump_text(found.jump) if found.jump is not None else None,
        config=str(ssh_config) if ssh_config is not None else None,
    )
