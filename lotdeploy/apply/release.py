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
#: Where confirm-or-revert timers keep their scripts (lotdeploy.rollout.confirm): an armed
#: timer is `<token>.sh`, one firing `<token>.firing`, one disarmed `<token>.disarmed`.
CONFIRM_DIR = ".confirm"
#: What lotdeploy names a release directory (its id), and an upload's temporaries.
RELEASE_NAME = "[0-9a-f]" * 16


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

    @classmethod
    def where(cls, recorded: dict[str, str], node: Node) -> NodePaths:
        """Where a record's files are: the paths it recorded, else (older records) the
        node's paths now."""
        now = cls.of(node)
        return cls(
            recorded.get("release_dir", now.release_dir), recorded.get("tls_dir", now.tls_dir)
        )

    def to_json(self) -> dict[str, str]:
        return {"release_dir": self.release_dir, "tls_dir": self.tls_dir}

    @property
    def releases(self) -> str:
        return posixpath.join(self.release_dir, RELEASES)

    @property
    def current(self) -> str:
        return posixpath.join(self.release_dir, CURRENT)

    @property
    def timers(self) -> str:
        return posixpath.join(self.release_dir, CONFIRM_DIR)

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
    #: confirm-or-revert timers still armed (with `prepare`: those it could not disarm)
    armed: tuple[str, ...] = ()
    #: timers putting the node back right now
    firing: tuple[str, ...] = ()
    #: `prepare`: how many older timers it disarmed
    disarmed: int = 0
    #: `releases/` is a symbolic link (never followed: nothing is written through it)
    releases_symlink: bool = False

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
    paths: NodePaths | None = None,
    keep_timer: str | None = None,
) -> NodeFacts:
    """With `bundle`, the release counts as present only if every file in it still has the
    bundle's content (a hand-edited release is uploaded again). `release_names`: also the
    sha256 of those files in the `current` release (what drift compares). `prepare`: also
    create `releases/` (what an upload needs) and disarm every confirm-or-revert timer but
    `keep_timer` (a timer belongs to one switch: an older one would revert this apply), in
    the same command: one round trip, not two. `paths`: read there instead of the node's
    paths now (drift reads where apply wrote).
    """
    paths = paths or NodePaths.of(node)
    tls = " ".join(_q(posixpath.join(paths.tls_dir, n)) for n in tls_names)
    check = f"test -f {_q(posixpath.join(paths.release(rid), MANIFEST))}"
    if bundle is not None:
        sums = "\n".join(
            f"{f.sha256}  {posixpath.join(paths.release(rid), f.name)}" for f in bundle.all_files()
        )
        check = f"printf '%s\\n' {_q(sums)} | sha256sum -c --status - 2>/dev/null"
    in_current = " ".join(_q(posixpath.join(paths.current, n)) for n in release_names)
    mkdir = (
        f"[ -L {_q(paths.releases)} ] && echo relsymlink=1; "
        f"m=$(mkdir -p {_q(paths.releases)} 2>&1) || "
        "{ echo mkdir=$?; printf '%s\\n' \"$m\" | sed 's/^/mkdirerr=/'; }; "
        if prepare
        else ""
    )
    script = (
        mkdir
        + timers_script(paths, keep_timer, disarm=prepare)
        + f"echo current=$(readlink {_q(paths.current)} 2>/dev/null || true); "
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
    armed, firing, disarmed = parse_timers(out, keep_timer)
    symlinked = False
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "relsymlink":
            symlinked = True
        elif key == "current" and value.strip():
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
    return NodeFacts(
        current,
        has,
        owner,
        digests,
        in_release,
        failure,
        tuple(armed),
        tuple(firing),
        disarmed,
        symlinked,
    )


def timers_script(paths: NodePaths, keep: str | None, disarm: bool) -> str:
    """Shell that lists the node's confirm-or-revert timers (`timer=<file>`), and with
    `disarm` first disarms every armed one but `keep` (`disarmed=1` each): the timer finds
    its script gone when it wakes and exits without touching anything."""
    keep_file = f"{keep}.sh" if keep else "-"
    disarming = (
        'for f in *.sh; do [ -f "$f" ] || continue; '
        f'[ "$f" = {_q(keep_file)} ] && continue; '
        'mv -f "$f" "${f%.sh}.disarmed" && echo disarmed=1; done; '
        if disarm
        else ""
    )
    return (
        f"(cd {_q(paths.timers)} 2>/dev/null && {{ {disarming}"
        'for f in *.sh *.firing; do [ -f "$f" ] && echo "timer=$f"; done; }); '
    )


def parse_timers(out: str, keep: str | None) -> tuple[list[str], list[str], int]:
    """(armed timers but `keep`, firing timers, how many were disarmed) from
    `timers_script`'s output."""
    armed: list[str] = []
    firing: list[str] = []
    disarmed = 0
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "timer":
            token, _, state = value.strip().partition(".")
            if state == "firing":
                firing.append(token)
            elif token != keep:
                armed.append(token)
        elif key == "disarmed":
            disarmed += 1
    return armed, firing, disarmed


def disarm_timers(transport: Transport, node: Node, keep: str | None = None) -> int:
    """Disarm every confirm-or-revert timer on the node but `keep`, and prove none is left
    armed or firing (raises naming the node otherwise); how many it disarmed."""
    script = timers_script(NodePaths.of(node), keep, disarm=True) + "true"
    out = transport.run(script, timeout=30).stdout
    armed, firing, disarmed = parse_timers(out, keep)
    check_timers(node.name, armed, firing, NodePaths.of(node))
    return disarmed


def check_timers(name: str, armed: Sequence[str], firing: Sequence[str], paths: NodePaths) -> None:
    """A node may change only when no older timer is armed or firing there."""
    if firing:
        raise TransportError(
            name,
            f"a confirm-or-revert timer is putting the node back right now "
            f"({paths.timers}/{firing[0]}.firing): run apply again once it is done",
        )
    if armed:
        raise TransportError(
            name, f"could not disarm the confirm-or-revert timer {paths.timers}/{armed[0]}.sh"
        )


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
    if facts.releases_symlink:
        raise TransportError(
            node.name,
            f"{paths.releases} is a symbolic link: lotdeploy never writes through one (make it "
            "a directory, or point release_dir at the real one)",
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
    temporaries = {name: posixpath.join(paths.tls_dir, f".{name}.lotdeploy.tmp") for name in tls}
    if tls:
        # every TLS file is staged next to its place before any is renamed, and `current`
        # moves only once all of them are in place: a failure leaves the old release current
        uid, _, gid = (facts.tls_owner or "0:0").partition(":")
        modes = {f.name: f.mode for f in bundle.files}
        for name in tls:
            source = posixpath.join(paths.release(rid), name)
            steps += [
                f"install -m {modes[name]:04o} -o {uid} -g {gid} {_q(source)} "
                f"{_q(temporaries[name])}",
                f"sync {_q(temporaries[name])}",
            ]
        for name in tls:
            steps.append(f"mv -f {_q(temporaries[name])} {_q(posixpath.join(paths.tls_dir, name))}")
        steps.append(f"sync {_q(paths.tls_dir)}")
    if facts.current != rid:
        link = paths.current + ".new"
        steps += [
            f"ln -sfn {_q(posixpath.join(RELEASES, rid))} {_q(link)}",
            f"mv -Tf {_q(link)} {_q(paths.current)}",
            f"sync {_q(paths.release_dir)}",
        ]
    steps.append(prune_releases(paths, {x for x in (rid, facts.current) if x}))
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
        leftovers = " ".join(_q(p) for p in [staging, archive, *temporaries.values()])
        transport.run(f"rm -rf {leftovers}", check=False, timeout=30)
        raise
    return _reload_outcome(node, out.stdout) if reload else None


def prune_releases(paths: NodePaths, keep: set[str], older: int | None = None) -> str:
    """The shell step that keeps `keep` and the newest `older` of lotdeploy's other releases
    (default: up to KEEP_RELEASES in all) and removes the rest, with the temporaries of
    killed uploads (one may hold the key and the password). Only what lotdeploy made is
    touched: a directory named as a release id that holds a manifest, never a symbolic
    link, never an operator's own file; a symlinked `releases/` is not entered."""
    if older is None:  # how many older releases stay for rollback
        older = max(KEEP_RELEASES - len(keep), 0)
    kept = " ".join(_q(x) for x in sorted(keep)) or "-"
    return (
        f"if [ ! -L {_q(paths.releases)} ] && cd {_q(paths.releases)}; then "
        f"n=0; for d in $(ls -1t); do "
        f'case "$d" in {RELEASE_NAME}) ;; *) continue;; esac; '
        f'[ -d "$d" ] && [ ! -L "$d" ] && [ -f "$d/{MANIFEST}" ] || continue; '
        f'case " {kept} " in *" $d "*) continue;; esac; '
        f'n=$((n+1)); [ "$n" -le {older} ] || rm -rf -- "$d"; done; '
        f"for t in .{RELEASE_NAME}.????????.tmp .{RELEASE_NAME}.????????.tmp.tar; do "
        f'[ -e "$t" ] && [ ! -L "$t" ] && rm -rf -- "$t"; done; cd /; fi'
    )


def remove_old(
    transport: Transport, node: Node, files: list[list[str]], old_release_dir: str | None
) -> list[str]:
    """Remove what lotdeploy wrote at paths the site no longer uses: each file in `files`
    ([path, sha256 it wrote]) only while it still holds that content, and in
    `old_release_dir` its `current` link and its releases (as `prune_releases` knows them),
    then the directories if empty. The paths it kept (changed since lotdeploy wrote them)."""
    steps = []
    for path, digest in files:
        steps.append(
            f"if printf '%s\\n' {_q(f'{digest}  {path}')} | sha256sum -c --status - "
            f"2>/dev/null; then rm -f -- {_q(path)}; elif [ -e {_q(path)} ]; then "
            f"echo kept={_q(path)}; fi"
        )
    if old_release_dir:
        old = NodePaths(old_release_dir, "/")
        steps += [
            f'case "$(readlink {_q(old.current)} 2>/dev/null)" in '
            f"{RELEASES}/{RELEASE_NAME}) rm -f -- {_q(old.current)};; esac",
            prune_releases(old, set(), older=0),
            f"rmdir {_q(old.timers)} {_q(old.releases)} {_q(old_release_dir)} 2>/dev/null || true",
        ]
    out = transport.run("\n".join(steps) + "\ntrue", timeout=60).stdout
    return [line[5:] for line in out.splitlines() if line.startswith("kept=")]


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
