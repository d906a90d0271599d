"""One node's SSH settings as OpenSSH options: shared by the inventory and the OpenSSH
port forward, so Ansible and lotdeploy's own forward reach a node exactly the same way.

Host keys are checked strictly against the site's known_hosts (StrictHostKeyChecking=yes,
UserKnownHostsFile=<file>), for the node and for its jump host alike: the jump is a
ProxyCommand carrying the same options, because OpenSSH's ProxyJump would check the jump
host against the user's defaults instead. Paths are absolute (resolved from the site file's
directory) so the inventory works from any directory. No secret is ever part of it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node, Site


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

    def strict_args(self) -> list[str]:
        """Host keys from the site's known_hosts only, never a prompt (node and jump host)."""
        return [
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


def _local(site: Site, path: Path) -> str:
    path = path.expanduser()
    return str(path if path.is_absolute() else (Path(site.base_dir) / path).resolve())


def ssh_options(site: Site, node: Node) -> SshOptions:
    ssh = node.ssh
    if ssh.jump is not None and "," in ssh.jump:
        raise LotdeployError(
            f"node {node.name}: jump {ssh.jump!r}: only one jump host is supported"
        )
    known = (
        _local(site, ssh.known_hosts)
        if ssh.known_hosts is not None
        else str(Path("~/.ssh/known_hosts").expanduser())
    )
    return SshOptions(
        host=ssh.host,
        port=ssh.port,
        user=ssh.user,
        key=_local(site, ssh.key) if ssh.key is not None else None,
        known_hosts=known,
        jump=ssh.jump,
    )
