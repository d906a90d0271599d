"""The node's side of apply: releases, the `current` link, the TLS files, the reload.

On the node, under the broker's `release_dir` (default /opt/lotdeploy):

    releases/<id>/     one directory per release: the bundle's files and its manifest
    current -> releases/<id>

A release is uploaded to a temporary directory, every file fsync-ed, then renamed into
place; `current` is switched by renaming a new link over it, so a reader (or a crash)
sees the old release or the new one, never half of one. The last `KEEP_RELEASES` stay for
rollback. The TLS files the broker reads are then placed into its `tls_dir` the same way
(temporary name, mode and owner set, fsync, rename), and only those that changed; the
node's reload command runs only when one of them did. A failure at any point leaves the
previous release current and the broker's files as they were.

Every command is built with shlex.quote from validated paths (lotdeploy.values); no secret
is ever on a command line: secrets travel as file contents over SFTP.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
import shlex
from dataclasses import dataclass
from typing import Any

from lotdeploy.model import Node
from lotdeploy.render import MANIFEST, Bundle
from lotdeploy.transport.base import Transport, TransportError

KEEP_RELEASES = 3
RELEASES = "releases"
CURRENT = "current"


def release_id(bundle: Bundle) -> str:
    """A release is named by its manifest (which lists every file's sha256)."""
    return hashlib.sha256(bundle.manifest.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NodePaths:
    release_dir: str
    tls_dir: str

    @classmethod
    def of(cls, node: Node) -> NodePaths:
        return cls(node.broker.release_dir.rstrip("/") or "/", node.broker.tls_dir)

    @property
    def releases(self) -> str:
        return posixpath.join(self.release_dir, RELEASES)

    @property
    def current(self) -> str:
        return posixpath.join(self.release_dir, CURRENT)

    def release(self, rid: str) -> str:
        return posixpath.join(self.releases, rid)


def _q(text: str) -> str:
    return shlex.quote(text)


def live_manifest(transport: Transport, node: Node) -> dict[str, Any] | None:
    """The manifest of the node's current release; None when it has none (or a damaged one,
    which apply then simply replaces)."""
    raw = transport.get(posixpath.join(NodePaths.of(node).current, MANIFEST), 1024 * 1024)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def current_release(transport: Transport, node: Node) -> str | None:
    """The release id `current` points at, None when there is no current release."""
    paths = NodePaths.of(node)
    result = transport.run(f"readlink {_q(paths.current)} || true", timeout=20)
    target = result.stdout.strip()
    name = posixpath.basename(target) if target else ""
    return name if name.isalnum() else None


def upload_release(transport: Transport, node: Node, bundle: Bundle) -> tuple[str, bool]:
    """Make sure release `release_id(bundle)` is complete on the node; (id, uploaded now)."""
    paths = NodePaths.of(node)
    rid = release_id(bundle)
    final = paths.release(rid)
    have = transport.run(f"test -f {_q(posixpath.join(final, MANIFEST))}", check=False)
    if have.ok:
        return rid, False
    staging = posixpath.join(paths.releases, f".{rid}.{secrets.token_hex(4)}.tmp")
    transport.run(
        f"mkdir -p {_q(paths.releases)} && rm -rf {_q(paths.releases)}/.*.tmp "
        f"&& mkdir -m 0700 {_q(staging)}",
        timeout=30,
    )
    try:
        for file in bundle.all_files():  # the manifest last: a complete release has one
            transport.put(file.data(), posixpath.join(staging, file.name), file.mode)
        names = " ".join(_q(posixpath.join(staging, f.name)) for f in bundle.all_files())
        transport.run(
            f"sync {names} && rm -rf {_q(final)} && mv -T {_q(staging)} {_q(final)} "
            f"&& sync {_q(paths.releases)}",
            timeout=60,
        )
    except TransportError:
        transport.run(f"rm -rf {_q(staging)}", check=False, timeout=30)
        raise
    return rid, True


def switch_current(transport: Transport, node: Node, rid: str) -> None:
    """Point `current` at release `rid` in one rename."""
    paths = NodePaths.of(node)
    link = paths.current + ".new"
    transport.run(
        f"ln -sfn {_q(posixpath.join(RELEASES, rid))} {_q(link)} "
        f"&& mv -Tf {_q(link)} {_q(paths.current)} && sync {_q(paths.release_dir)}",
        timeout=30,
    )


def live_digests(transport: Transport, directory: str, names: list[str]) -> dict[str, str]:
    """sha256 of each named file in `directory` on the node (missing files left out)."""
    if not names:
        return {}
    paths = " ".join(_q(posixpath.join(directory, n)) for n in names)
    result = transport.run(f"cd / && sha256sum {paths} 2>/dev/null || true", timeout=30)
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64:
            found[posixpath.basename(path.strip())] = digest
    return found


def place_tls_files(
    transport: Transport, node: Node, bundle: Bundle, rid: str, tls_names: list[str]
) -> list[str]:
    """Install the TLS files of release `rid` into the broker's tls_dir; the names changed.

    Each goes to a temporary name with its mode and the owner of tls_dir (the broker's),
    is fsync-ed, then renamed over the old one. Unchanged files are not touched.
    """
    if not tls_names:
        return []
    paths = NodePaths.of(node)
    wanted = {f.name: f for f in bundle.files if f.name in tls_names}
    have = live_digests(transport, paths.tls_dir, sorted(wanted))
    changed = [name for name, f in sorted(wanted.items()) if have.get(name) != f.sha256]
    if not changed:
        return []
    probe = transport.run(f"stat -c %u:%g {_q(paths.tls_dir)}", check=False, timeout=20)
    if not probe.ok:
        raise TransportError(
            node.name, f"{paths.tls_dir}: the broker's TLS directory does not exist on the node"
        )
    owner = probe.stdout.strip()
    steps = []
    for name in changed:
        file = wanted[name]
        source = posixpath.join(paths.release(rid), name)
        temporary = posixpath.join(paths.tls_dir, f".{name}.lotdeploy.tmp")
        target = posixpath.join(paths.tls_dir, name)
        steps.append(
            f"install -m {file.mode:04o} -o {owner.split(':')[0]} -g {owner.split(':')[1]} "
            f"{_q(source)} {_q(temporary)} && sync {_q(temporary)} "
            f"&& mv -f {_q(temporary)} {_q(target)}"
        )
    transport.run(" && ".join(steps) + f" && sync {_q(paths.tls_dir)}", timeout=60)
    return changed


def run_reload(transport: Transport, node: Node, timeout: float = 120.0) -> None:
    """The node's reload/restart command (a site setting): the broker re-reads its files."""
    transport.run(node.broker.reload_command, timeout=timeout)


def prune_releases(transport: Transport, node: Node, keep: tuple[str, ...]) -> None:
    """Remove all but the newest KEEP_RELEASES releases (never one in `keep`)."""
    paths = NodePaths.of(node)
    listing = transport.run(f"ls -1t {_q(paths.releases)} 2>/dev/null || true", timeout=20)
    names = [n for n in listing.stdout.split() if n.isalnum()]
    drop = [n for n in names[KEEP_RELEASES:] if n not in keep]
    if drop:
        victims = " ".join(_q(paths.release(n)) for n in drop)
        transport.run(f"rm -rf {victims}", timeout=60)


def list_releases(transport: Transport, node: Node) -> list[str]:
    """Release ids on the node, newest first."""
    paths = NodePaths.of(node)
    listing = transport.run(f"ls -1t {_q(paths.releases)} 2>/dev/null || true", timeout=20)
    return [n for n in listing.stdout.split() if n.isalnum()]
