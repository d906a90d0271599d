"""How lotdeploy reaches a node: one small interface (`base.Transport`: connect, run, put,
get, forward, close) and one registered kind per way in, chosen in one place (`chosen`).

A kind owns both halves of reaching a node: the node channel every command runs over (a
factory of Transports) and, optionally, a files phase that delivers every node's release at
once (Ansible's playbook run); without one, apply delivers over each node's channel. Adding
a transport is one module with a `transport_kind()` and one line in `KINDS` (docs/transport.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lotdeploy.model import Site
    from lotdeploy.transport.base import TransportFactory

#: name -> "module:function" giving its TransportKind (imported only when chosen)
KINDS: dict[str, str] = {
    "ssh": "lotdeploy.transport.ssh:transport_kind",
    "ansible": "lotdeploy.ansible.deliver:transport_kind",
    "openssh": "lotdeploy.transport.openssh:transport_kind",
}


@dataclass(frozen=True)
class TransportKind:
    name: str
    #: (site, accept new host keys) -> how to reach each node
    factory: Callable[[Site, bool], TransportFactory]
    #: (accept new host keys) -> a FilesPhase (lotdeploy.apply.engine) delivering every
    #: node's files at once; None: over each node's channel
    files_phase: Callable[[bool], Any] | None = None


def chosen(site: Site, override: str | None = None) -> TransportKind:
    """The transport of this run: `--transport`, else the site's `transport:`."""
    name = override or site.transport
    target = KINDS.get(name)
    if target is None:
        raise ValueError(f"unknown transport {name!r} (known: {', '.join(sorted(KINDS))})")
    module, _, function = target.partition(":")
    kind: TransportKind = getattr(importlib.import_module(module), function)()
    return kind


def transport_factory(
    site: Site, accept_new_host_keys: bool = False, override: str | None = None
) -> TransportFactory:
    """How to reach each node of `site` with the chosen transport (without the sessions a
    command shares: lotdeploy.cli.common.node_sessions wraps this)."""
    return chosen(site, override).factory(site, accept_new_host_keys)
