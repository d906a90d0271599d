"""Where `verify --failover` and `verify --load` may run, and how a broker is stopped and
started for a failover rehearsal.

Both exercises disturb a cluster on purpose: a failover stops a broker, a load probe fills
the links. So they run on their own only where that harms nobody: a lab made by `lotdeploy
lab up` (its state beside the site file names the same nodes at the same addresses), and,
for the load probe, a site whose every node is on loopback. Anywhere else the operator must
name the site (`--confirm-site NAME`), which nobody types by accident.

Stopping a broker: on a lab, `lotdeploy.lab.control.kill_broker` (SIGKILL, as a failing host)
and `revive_broker`; elsewhere the operator's stop and start commands, run over the node's
SSH transport (default: the vendor image's systemd unit, an ASSUMPTION per
docs/coreflux-interface.md §4).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lotdeploy.apply.engine import TransportFactory
from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node, Site
from lotdeploy.transport.base import Transport, opened

SiteKind = Literal["lab", "loopback", "other"]
DEFAULT_STOP_COMMAND = "systemctl stop coreflux-broker"
DEFAULT_START_COMMAND = "systemctl start coreflux-broker"


def lab_dir_of(site: Site, site_file: Path) -> Path | None:
    """The lab directory when `site_file` is a lab's site spec: a lab state beside it whose
    nodes are the site's, at the same addresses. None otherwise."""
    from lotdeploy.lab import labstate

    directory = site_file.resolve().parent
    try:
        state = labstate.load(directory)
    except LotdeployError:
        return None
    if state is None:
        return None
    lab = {n.name: n.address for n in state.nodes}
    mine = {n.name: n.address for n in site.nodes}
    return directory if lab == mine else None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def site_kind(site: Site, site_file: Path) -> SiteKind:
    """A lab, a site entirely on loopback (every address, SSH host and admin host), or other."""
    if lab_dir_of(site, site_file) is not None:
        return "lab"
    hosts = [h for n in site.nodes for h in (n.address, n.ssh.host, n.broker.admin_host)]
    return "loopback" if hosts and all(_loopback(h) for h in hosts) else "other"


def require_allowed(
    what: str, site: Site, site_file: Path, allowed: tuple[SiteKind, ...], confirm: str | None
) -> SiteKind:
    """The site's kind, when `what` may run on it; LotdeployError saying how otherwise."""
    kind = site_kind(site, site_file)
    if kind in allowed or confirm == site.name:
        return kind
    if confirm is not None:
        raise LotdeployError(
            f"--confirm-site {confirm!r} does not name this site ({site.name!r}): {what} "
            "not started"
        )
    where = " or ".join({"lab": "a lab", "loopback": "a loopback site"}[k] for k in allowed)
    raise LotdeployError(
        f"{what} disturbs a running cluster and runs on its own only on {where}; site "
        f"{site.name!r} is {'a loopback site' if kind == 'loopback' else 'neither'}. To run it "
        f"anyway, name the site: --confirm-site {site.name}"
    )


@dataclass(frozen=True)
class LabControl:
    """Kill and revive a lab node's broker (`lotdeploy lab kill` / `revive`)."""

    lab_dir: Path

    def stop(self, node: str) -> None:
        from lotdeploy.lab import control

        control.kill_broker(self.lab_dir, node)

    def start(self, node: str) -> None:
        from lotdeploy.lab import control

        control.revive_broker(self.lab_dir, node)


@dataclass(frozen=True)
class CommandControl:
    """Stop and start a node's broker with the operator's commands, over its transport."""

    site: Site
    transports: TransportFactory
    stop_command: str = DEFAULT_STOP_COMMAND
    start_command: str = DEFAULT_START_COMMAND

    def _run(self, node: str, command: str) -> None:
        target: Node = next(n for n in self.site.nodes if n.name == node)
        transport: Transport = self.transports(target)
        with opened(transport):
            transport.run(command, timeout=120)

    def stop(self, node: str) -> None:
        self._run(node, self.stop_command)

    def start(self, node: str) -> None:
        self._run(node, self.start_command)
