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
from collections.abc import Sequence
from dataclasses import dataclass, field

from lotdeploy.model import Node
from lotdeploy.render import MANIFEST, Bundle
from lotdeploy.secret import scrub
from lotdeploy.transport.base import Transport, TransportError, command_label

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
    #: sha256 of the files asked for in the `current` release (`release_names`)
    release_digests: dict[str, str] = field(default_factory=dict)
    #: `prepare`: why `mkdir -p releases/` failed (exit status, stderr), None if it did not
    mkdir_failure: tuple[int, str] | None = None

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
    *,
    release_names: Sequence[str] = (),
    prepare: bool = False,
) -> NodeFacts:
    """With `bundle`, the release counts as present only if every file in it still has the
    bundle's content (a hand-edited release is uploaded again). `release_names`: also the
    sha256 of those files in the `current` release (what drift compares). `prepare`: also
    create `releases/` (what an upload needs), in the same command: one round trip, not two.
    """
    paths = NodePaths.of(node)
    tls = " ".join(_q(posixpath.join(paths.tls_dir, n)) for n in tls_names)
    check = f"test -f {_q(posixpath.join(paths.release(rid), MANIFEST))}"
    if bundle is not None:
        sums = "\n".join(
            f"{f.sha256}  {posixpath.join(paths.release(rid), f.name)}" for f in bundle.all_files()
        )
        check = f"printf '%s\\n' {_q(sums)} | sha256sum -c --status - 2>/dev/null"
    in_current = " ".join(_q(posixpath.join(paths.current, n)) for n in release_names)
    mkdir = (
        f"m=$(mkdir -p {_q(paths.releases)} 2>&1) || "
        "{ echo mkdir=$?; printf '%s\\n' \"$m\" | sed 's/^/mkdirerr=/'; }; "
        if prepare
        else ""
    )
    script = (
        mkdir + f"echo current=$(readlink {_q(paths.current)} 2>/dev/null || true); "
        f"{check} && echo has=1; "
        f"echo owner=$(stat -c %u:%g {_q(paths.tls_dir)} 2>/dev/null || true); "
        + (f"cd / && sha256sum {tls} 2>/dev/null | sed 's/^/sum=/'; " if tls_names else "")
        + (f"sha256sum {in_current} 2>/dev/null | sed 's/^/rsum=/'; " if release_names else "")
        + "true"
    )
    out = transport.run(script, timeout=30).stdout
    current = owner = None
    has = False
    digests: dict[str, str] = {}
    in_release: dict[str, str] = {}
    mkdir_status: int | None = None
    mkdir_errors: list[str] = []
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
        elif key == "rsum":
            in_release.update(_sha256sum_lines(value))
        elif key == "mkdir" and value.strip().isdigit():
            mkdir_status = int(value)
        elif key == "mkdirerr" and value.strip():
            mkdir_errors.append(value.strip())
    failure = None
    if mkdir_status is not None:
        failure = (mkdir_status, " | ".join(mkdir_errors[-3:])[-400:])
    return NodeFacts(current, has, owner, digests, in_release, failure)


def _sha256sum_lines(text: str) -> dict[str, str]:
    """`sha256sum` output as file name -> digest."""
    found = {}
    for line in text.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64:
            found[posixpath.basename(path.strip())] = digest
    return found


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
    transport: Transport,
    node: Node,
    bundle: Bundle,
    rid: str,
    facts: NodeFacts,
    tls: list[str],
    *,
    reload: bool = False,
) -> TransportError | None:
    """Upload release `rid` (unless complete there), switch `current` to it, and place the
    TLS files that changed; one upload and one command. On any failure the previous
    release stays current and the broker's files stay as they were (and this raises).

    `reload`: run the node's reload command at the end of that same command, once everything
    is in place (one round trip, not two). Its failure does not undo the release: it is
    returned (the error `run_reload` would raise), for the caller to record the files first.
    `facts` must come from `node_facts(..., prepare=True)` when the release is uploaded.
    """
    paths = NodePaths.of(node)
    if tls and facts.tls_owner is None:
        raise TransportError(
            node.name, f"{paths.tls_dir}: the broker's TLS directory does not exist on the node"
        )
    staging = posixpath.join(paths.releases, f".{rid}.{secrets.token_hex(4)}.tmp")
    archive = staging + ".tar"
    steps = ["set -e", f"mkdir -p {_q(paths.releases)}"]
    if not facts.has_release:
        if facts.mkdir_failure is not None:
            status, why = facts.mkdir_failure
            label = command_label(f"mkdir -p {paths.releases}")
            raise TransportError(
                node.name,
                scrub(f"`{label}` exited with status {status}: {why or 'no output on stderr'}"),
            )
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
        f"cd {_q(paths.releases)} && ls -1t | grep -x '[0-9a-f]\\{{16\\}}' | grep -v -x {patterns} "
        f"| tail -n +{older + 1} | xargs -r rm -rf --"
    )
    if reload:
        # after `set +e` a failing reload does not count as a failed install; its status and
        # stderr come back on marked lines (its stdout is dropped, as `run` hides it)
        steps += [
            "set +e",
            f"r=$( (eval {_q(node.broker.reload_command)}) 2>&1 >/dev/null ); s=$?",
            f"echo {_RELOAD_MARK}status=$s",
            f"printf '%s\\n' \"$r\" | sed 's/^/{_RELOAD_MARK}err=/'",
            "exit 0",
        ]
    try:
        out = transport.run("\n".join(steps), timeout=120 + (RELOAD_TIMEOUT if reload else 0))
    except TransportError:
        transport.run(f"rm -rf {_q(staging)} {_q(archive)}", check=False, timeout=30)
        raise
    return _reload_outcome(node, out.stdout) if reload else None


#: Marks the reload's lines in the output of a combined install-and-reload command.
_RELOAD_MARK = "lotdeploy-reload-"
RELOAD_TIMEOUT = 120.0


def _reload_outcome(node: Node, stdout: str) -> TransportError | None:
    """The error `run_reload` would have raised for the reload inside an install, or None."""
    status: int | None = None
    errors: list[str] = []
    for line in stdout.splitlines():
        if line.startswith(_RELOAD_MARK + "status="):
            value = line.removeprefix(_RELOAD_MARK + "status=").strip()
            status = int(value) if value.isdigit() else None
        elif line.startswith(_RELOAD_MARK + "err=") and line.strip() != _RELOAD_MARK + "err=":
            errors.append(line.removeprefix(_RELOAD_MARK + "err=").strip())
    label = command_label(node.broker.reload_command)
    if status is None:
        return TransportError(node.name, f"`{label}`: no exit status came back from the node")
    if status == 0:
        return None
    tail = scrub(" | ".join(e for e in errors[-3:] if e)[-400:]) or "no output on stderr"
    return TransportError(node.name, f"`{label}` exited with status {status}: {tail}")


def run_reload(transport: Transport, node: Node, timeout: float = RELOAD_TIMEOUT) -> None:
    """The node's reload/restart command (a site setting): the broker re-reads its files."""
    transport.run(node.broker.reload_command, timeout=timeout)
