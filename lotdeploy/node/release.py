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
is ever on a command line: secrets travel as file contents, in the release archive streamed
on the deploy command's stdin (or, over Ansible, a file uploaded into a private directory).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import secrets
import shlex
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

from lotdeploy.model import Node
from lotdeploy.render import MANIFEST, ROUTE_FILE, Bundle
from lotdeploy.secret import scrub
from lotdeploy.transport.base import RunResult, Transport, TransportError, command_label

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


#: Marks a line a node-side script writes to say what failed, in words for the operator.
_ERROR_MARK = "lotdeploy-error: "


@dataclass(frozen=True)
class Deployed:
    """What a deploy did on a node (its script's own report)."""

    #: the release `current` pointed at before
    previous: str | None
    #: the release was not on the node whole: it was unpacked from what was sent
    uploaded: bool
    #: the TLS files placed (those whose digest differed)
    tls_changed: tuple[str, ...]
    #: the reload ran (a TLS file changed, or one was owed)
    reloaded: bool
    #: the reload's failure (it does not undo the release: the caller records, then fails)
    reload_error: TransportError | None
    #: older confirm-or-revert timers disarmed
    disarmed: int


def deploy(
    transport: Transport,
    node: Node,
    bundle: Bundle,
    rid: str,
    *,
    force_reload: bool = False,
    keep_timer: str | None = None,
) -> Deployed:
    """Put release `rid` in place on `node` in ONE command that decides on the node: the
    release travels on its stdin (unpacked only when the node does not have it whole), the
    TLS files whose digest differs are staged and renamed, `current` moves last, old
    releases are pruned, older confirm-or-revert timers are disarmed first, and the reload
    runs when a TLS file changed (or `force_reload`). Raises naming the node and the cause;
    on any failure the previous release stays current and the broker's files as they
    were."""
    script = deploy_script(
        NodePaths.of(node),
        rid,
        [FileEntry(f.name, f.sha256, f.mode) for f in bundle.all_files()],
        keep_timer=keep_timer,
        reload_command=node.broker.reload_command,
        force_reload=force_reload,
        source="-",
    )
    out = transport.run(script, timeout=120 + RELOAD_TIMEOUT, input=_archive(bundle), check=False)
    return parse_deploy(node, out)


def switch_back(
    transport: Transport, node: Node, rid: str, entries: Sequence[FileEntry]
) -> Deployed:
    """Put `node` back on release `rid`, which must be on the node whole (every file its
    manifest lists, with its digest: else refused, nothing switched): the deploy script
    with nothing sent (the rollback's and a rollout's restore)."""
    script = deploy_script(
        NodePaths.of(node),
        rid,
        entries,
        keep_timer=None,
        reload_command=node.broker.reload_command,
        force_reload=False,
        source=None,
    )
    return parse_deploy(node, transport.run(script, timeout=120 + RELOAD_TIMEOUT, check=False))


@dataclass(frozen=True)
class FileEntry:
    """One file of a release as its manifest lists it (the manifest itself included)."""

    name: str
    sha256: str
    mode: int


def deploy_script(
    paths: NodePaths,
    rid: str,
    entries: Sequence[FileEntry],
    *,
    keep_timer: str | None,
    reload_command: str,
    force_reload: bool,
    source: str | None,
    timers: bool = True,
) -> str:
    """The node-side deploy (pure: a shell script text): every release directory step in
    one place. The release's tar comes on stdin (`source` "-") or from a file already on
    the node (removed afterwards); with `source` None it must be on the node whole already
    (a rollback), else nothing switches. Lines it prints: `previous=`, `uploaded=1`,
    `tls=NAME`, `disarmed=1`, the reload's marked lines; a failure is one
    `lotdeploy-error: ...` line on stderr and a non-zero exit."""
    staging = posixpath.join(paths.releases, f".{rid}.{secrets.token_hex(4)}.tmp")
    release = paths.release(rid)
    keep = _q(f"{keep_timer}.sh" if keep_timer else "-")
    sums = "\n".join(f"{f.sha256}  {posixpath.join(release, f.name)}" for f in entries)
    files = " ".join(_q(posixpath.join(staging, f.name)) for f in entries)
    tls = [f for f in entries if f.name not in (ROUTE_FILE, MANIFEST)]
    symlinked = (
        f"{paths.releases} is a symbolic link: lotdeploy never writes through one (make it "
        "a directory, or point release_dir at the real one)"
    )
    no_tls_dir = f"{paths.tls_dir}: the broker's TLS directory does not exist on the node"
    lines = [
        "set -e",
        f"fail() {{ printf '{_ERROR_MARK}%s\\n' \"$*\" >&2; exit 3; }}",
        f"staging={_q(staging)}; tmps=''",
        "trap 'rm -rf \"$staging\" $tmps' EXIT",
        f"[ -L {_q(paths.releases)} ] && fail {_q(symlinked)}",
        f"mkerr=$(mkdir -p {_q(paths.releases)} 2>&1) || true",
        "umask 077",
    ]
    if timers:  # a timer belongs to one switch: any older one would revert this deploy
        lines += [
            f"if cd {_q(paths.timers)} 2>/dev/null; then",
            '  for f in *.firing; do [ -f "$f" ] && fail "a confirm-or-revert timer is '
            f"putting the node back right now ({paths.timers}/$f): run apply again once it "
            'is done"; done',
            f'  for f in *.sh; do [ -f "$f" ] && [ "$f" != {keep} ] && '
            'mv -f "$f" "${f%.sh}.disarmed" && echo disarmed=1; done',
            f'  for f in *.sh; do [ -f "$f" ] && [ "$f" != {keep} ] && '
            f'fail "could not disarm the confirm-or-revert timer {paths.timers}/$f"; done',
            "  cd /",
            "fi",
        ]
    lines += [
        f'previous=$(basename "$(readlink {_q(paths.current)} 2>/dev/null || true)")',
        'echo "previous=$previous"',
        f"if printf '%s\\n' {_q(sums)} | sha256sum -c --status - 2>/dev/null; then",
        "  cat >/dev/null" if source == "-" else "  :",  # what was sent is not needed
    ]
    if source is None:  # nothing sent: the release must be whole already
        lines += [
            "else",
            f"  bad=$(printf '%s\\n' {_q(sums)} | sha256sum -c --quiet - 2>&1 | "
            "sed -n 's/: FAILED.*$//p' | head -n 1)",
            f'  fail "release {rid} on the node is damaged ($(basename "${{bad:-manifest}}") '
            'does not match its manifest): nothing was switched"',
            "fi",
        ]
    else:
        lines += _unpack(paths, rid, source, files)
    if source not in (None, "-"):
        lines.append(f"rm -f {_q(source)}")
    if tls:
        # each TLS file that differs is staged beside its place first; all are renamed,
        # and only then does `current` move: a failure leaves the old release current
        lines.append(f"owner=$(stat -c %u:%g {_q(paths.tls_dir)} 2>/dev/null || true)")
        for i, f in enumerate(tls):
            placed = posixpath.join(paths.tls_dir, f.name)
            temporary = posixpath.join(paths.tls_dir, f".{f.name}.lotdeploy.tmp")
            lines += [
                f"c{i}=''",
                f'if [ "$({{ sha256sum < {_q(placed)}; }} 2>/dev/null | cut -c1-64)" != '
                f"{f.sha256} ]; then",
                f'  [ -n "$owner" ] || fail {_q(no_tls_dir)}',
                f'  tmps="$tmps {_q(temporary)}"',
                f'  install -m {f.mode:04o} -o "${{owner%:*}}" -g "${{owner#*:}}" '
                f"{_q(posixpath.join(release, f.name))} {_q(temporary)}",
                f"  sync {_q(temporary)}; c{i}=1",
                "fi",
            ]
        for i, f in enumerate(tls):
            placed = posixpath.join(paths.tls_dir, f.name)
            temporary = posixpath.join(paths.tls_dir, f".{f.name}.lotdeploy.tmp")
            lines.append(
                f'if [ -n "$c{i}" ]; then mv -f {_q(temporary)} {_q(placed)}; '
                f"echo tls={_q(f.name)}; changed=1; fi"
            )
        lines.append(f'[ -z "$changed" ] || sync {_q(paths.tls_dir)}')
    lines = ["changed=''", *lines] if tls else lines
    lines += [
        f'if [ "$previous" != {_q(rid)} ]; then',
        f"  ln -sfn {_q(posixpath.join(RELEASES, rid))} {_q(paths.current + '.new')}",
        f"  mv -Tf {_q(paths.current + '.new')} {_q(paths.current)}",
        f"  sync {_q(paths.release_dir)}",
        "fi",
        "trap - EXIT",
        prune_releases(paths, {rid}, keep_previous=True),
    ]
    reload_when = '[ -n "$changed" ]' if tls else "false"
    if force_reload:
        reload_when = "true"
    lines += [
        f"if {reload_when}; then",
        # after `set +e` a failing reload does not undo the release; its status and stderr
        # come back on marked lines (its stdout is dropped, as `run` hides it)
        "  set +e",
        f"  r=$( (eval {_q(reload_command)}) 2>&1 >/dev/null ); s=$?",
        f"  echo {_RELOAD_MARK}status=$s",
        f"  printf '%s\\n' \"$r\" | sed 's/^/{_RELOAD_MARK}err=/'",
        "fi",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def _unpack(paths: NodePaths, rid: str, source: str, files: str) -> list[str]:
    """The deploy script's branch for a release not on the node whole: unpack the tar (from
    `source`: "-" for stdin, or a file on the node) into a private staging directory, make
    it durable, rename it into place."""
    release = paths.release(rid)
    source = source if source == "-" else _q(source)
    return [
        "else",
        f'  [ -z "$mkerr" ] || fail "cannot create {paths.releases}: $mkerr"',
        '  rm -rf "$staging"; mkdir -m 0700 "$staging"',
        f'  if ! e=$(tar -x --no-same-owner -p -f {source} -C "$staging" 2>&1); then',
        "    fail \"cannot write $staging: $(printf '%s\\n' \"$e\" | grep -v 'Exiting with "
        "failure' | tail -n 1 | sed 's/^tar: [^:]*: //')\"",
        "  fi",
        f"  sync {files}",
        f"  rm -rf {_q(release)}",
        f'  mv -T "$staging" {_q(release)}',
        f"  sync {_q(paths.releases)}",
        "  echo uploaded=1",
        "fi",
    ]


def parse_deploy(node: Node, out: RunResult) -> Deployed:
    """The deploy script's report, or the error it said (raised, naming the node)."""
    if not out.ok:
        said = [ln for ln in out.stderr.splitlines() if ln.startswith(_ERROR_MARK)]
        if said:  # the script's own words: the path and the cause
            raise TransportError(node.name, scrub(said[-1].removeprefix(_ERROR_MARK)))
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])[-400:] or "no output on stderr"
        raise TransportError(
            node.name,
            scrub(f"deploying the release exited with status {out.exit_status}: {tail}"),
        )
    previous = None
    uploaded = False
    tls: list[str] = []
    disarmed = 0
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "previous" and value.strip().isalnum():
            previous = value.strip()
        elif key == "uploaded":
            uploaded = True
        elif key == "tls":
            tls.append(value.strip())
        elif key == "disarmed":
            disarmed += 1
    reloaded = any(ln.startswith(_RELOAD_MARK + "status=") for ln in out.stdout.splitlines())
    error = _reload_outcome(node, out.stdout) if reloaded else None
    return Deployed(previous, uploaded, tuple(tls), reloaded, error, disarmed)


def prune_releases(
    paths: NodePaths, keep: set[str], older: int | None = None, keep_previous: bool = False
) -> str:
    """The shell step that keeps `keep` and the newest `older` of lotdeploy's other releases
    (default: up to KEEP_RELEASES in all) and removes the rest, with the temporaries of
    killed uploads (one may hold the key and the password). Only what lotdeploy made is
    touched: a directory named as a release id that holds a manifest, never a symbolic
    link, never an operator's own file; a symlinked `releases/` is not entered."""
    if older is None:  # how many older releases stay for rollback
        older = max(KEEP_RELEASES - len(keep) - (1 if keep_previous else 0), 0)
    kept = " ".join(_q(x) for x in sorted(keep)) or "-"
    if keep_previous:  # the release `current` pointed at before (a deploy's $previous)
        kept += " $previous"

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
