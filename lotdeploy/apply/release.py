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
import io
import posixpath
import secrets
import shlex
import tarfile
from dataclasses import dataclass

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


@dataclass(frozen=True)
class NodeFacts:
    """What one command tells about a node before apply changes anything on it."""

    current: str | None  # the release `current` points at
    has_release: bool  # the release being applied is complete on the node already
    tls_owner: str | None  # uid:gid of the broker's tls_dir (None: the directory is missing)
    tls_digests: dict[str, str]  # sha256 of the TLS files there now

    def changed_tls(self, bundle: Bundle, names: list[str]) -> list[str]:
        return sorted(
            f.name
            for f in bundle.files
            if f.name in names and self.tls_digests.get(f.name) != f.sha256
        )


def node_facts(
    transport: Transport,
    node: Node,
    rid: str,
    tls_names: list[str],
    bundle: Bundle | None = None,
) -> NodeFacts:
    """With `bundle`, the release counts as present only if every file in it still has the
    bundle's content (a hand-edited release is uploaded again)."""
    paths = NodePaths.of(node)
    tls = " ".join(_q(posixpath.join(paths.tls_dir, n)) for n in tls_names)
    check = f"test -f {_q(posixpath.join(paths.release(rid), MANIFEST))}"
    if bundle is not None:
        sums = "\n".join(
            f"{f.sha256}  {posixpath.join(paths.release(rid), f.name)}" for f in bundle.all_files()
        )
        check = f"printf '%s\\n' {_q(sums)} | sha256sum -c --status - 2>/dev/null"
    script = (
        f"echo current=$(readlink {_q(paths.current)} 2>/dev/null || true); "
        f"{check} && echo has=1; "
        f"echo owner=$(stat -c %u:%g {_q(paths.tls_dir)} 2>/dev/null || true); "
        + (f"cd / && sha256sum {tls} 2>/dev/null | sed 's/^/sum=/'; " if tls_names else "")
        + "true"
    )
    out = transport.run(script, timeout=30).stdout
    current = owner = None
    has = False
    digests: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "current" and value.strip():
            name = posixpath.basename(value.strip())
            current = name if name.isalnum() else None
        elif key == "has":
            has = True
        elif key == "owner" and value.strip():
            owner = value.strip()
        elif key == "sum":
            digests.update(_sha256sum_lines(value))
    return NodeFacts(current, has, owner, digests)


def _sha256sum_lines(text: str) -> dict[str, str]:
    """`sha256sum` output as file name -> digest."""
    found = {}
    for line in text.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64:
            found[posixpath.basename(path.strip())] = digest
    return found


def file_digests(transport: Transport, directory: str, names: list[str]) -> dict[str, str]:
    """sha256 of each named file in `directory` on the node (missing ones left out)."""
    if not names:
        return {}
    paths = " ".join(_q(posixpath.join(directory, n)) for n in names)
    out = transport.run(f"sha256sum {paths} 2>/dev/null || true", timeout=30).stdout
    return _sha256sum_lines(out)


def _archive(bundle: Bundle) -> bytes:
    """The release as one tar (one upload, however many files), modes as in the bundle."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in bundle.all_files():
            data = file.data()
            info = tarfile.TarInfo(file.name)
            info.size = len(data)
            info.mode = file.mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def install_release(
    transport: Transport, node: Node, bundle: Bundle, rid: str, facts: NodeFacts, tls: list[str]
) -> None:
    """Upload release `rid` (unless complete there), switch `current` to it, and place the
    TLS files that changed; one upload and one command. On any failure the previous
    release stays current and the broker's files stay as they were."""
    paths = NodePaths.of(node)
    if tls and facts.tls_owner is None:
        raise TransportError(
            node.name, f"{paths.tls_dir}: the broker's TLS directory does not exist on the node"
        )
    staging = posixpath.join(paths.releases, f".{rid}.{secrets.token_hex(4)}.tmp")
    archive = staging + ".tar"
    steps = ["set -e", f"mkdir -p {_q(paths.releases)}"]
    if not facts.has_release:
        transport.run(f"mkdir -p {_q(paths.releases)}", timeout=30)
        transport.put(_archive(bundle), archive, 0o600)
        names = " ".join(_q(posixpath.join(staging, f.name)) for f in bundle.all_files())
        steps += [
            f"rm -rf {_q(staging)}",
            f"mkdir -m 0700 {_q(staging)}",
            f"tar -x --no-same-owner -p -f {_q(archive)} -C {_q(staging)}",
            f"rm -f {_q(archive)}",
            f"sync {names}",
            f"rm -rf {_q(paths.release(rid))}",
            f"mv -T {_q(staging)} {_q(paths.release(rid))}",
            f"sync {_q(paths.releases)}",
        ]
    if facts.current != rid:
        link = paths.current + ".new"
        steps += [
            f"ln -sfn {_q(posixpath.join(RELEASES, rid))} {_q(link)}",
            f"mv -Tf {_q(link)} {_q(paths.current)}",
            f"sync {_q(paths.release_dir)}",
        ]
    if tls:
        uid, _, gid = (facts.tls_owner or "0:0").partition(":")
        modes = {f.name: f.mode for f in bundle.files}
        for name in tls:
            source = posixpath.join(paths.release(rid), name)
            temporary = posixpath.join(paths.tls_dir, f".{name}.lotdeploy.tmp")
            steps += [
                f"install -m {modes[name]:04o} -o {uid} -g {gid} {_q(source)} {_q(temporary)}",
                f"sync {_q(temporary)}",
                f"mv -f {_q(temporary)} {_q(posixpath.join(paths.tls_dir, name))}",
            ]
        steps.append(f"sync {_q(paths.tls_dir)}")
    keep = sorted({x for x in (rid, facts.current) if x})
    patterns = " ".join(f"-e {_q(x)}" for x in keep)
    older = max(KEEP_RELEASES - len(keep), 0)  # how many older releases stay for rollback
    steps.append(
        f"cd {_q(paths.releases)} && ls -1t | grep -v -x {patterns} "
        f"| tail -n +{older + 1} | xargs -r rm -rf --"
    )
    try:
        transport.run("\n".join(steps), timeout=120)
    except TransportError:
        transport.run(f"rm -rf {_q(staging)} {_q(archive)}", check=False, timeout=30)
        raise


def run_reload(transport: Transport, node: Node, timeout: float = 120.0) -> None:
    """The node's reload/restart command (a site setting): the broker re-reads its files."""
    transport.run(node.broker.reload_command, timeout=timeout)
