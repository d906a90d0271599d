"""Files lotdeploy owns: atomic writes, directories with exact modes, one lock primitive.

A reader sees the old file or the new one, never a torn one. Directories lotdeploy creates
get exactly the mode asked for, whatever the umask; directories it did not create are never
changed. Temporary files that a killed run left behind are removed by the next write into
the same directory (one of them may hold a private key).

The one safe way to read a file back is `read_regular_file` (bytes) or `read_json` (a JSON
document: also a depth cap and no NaN/Infinity); `parse_json` is the same rule for JSON that
came from elsewhere (a broker, a node). The one way to write a path a user names (`--out`,
`--report`...) is `write_output`. Destructive commands act only where `read_marker` finds the
marker they wrote (`write_marker`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

#: `.<name>.lotdeploy-<random>.tmp`, what tempfile.mkstemp makes for atomic_write below. The
#: word `lotdeploy` in it is what lets the sweep remove only what lotdeploy made: these
#: directories may be the user's own (`--report ~/reports/x.html`), with their own `.tmp`s.
_TEMPORARY_PREFIX = ".lotdeploy-"
_TEMPORARY = re.compile(r"^\..+\.lotdeploy-[a-z0-9_]{8}\.tmp$")
_swept: set[Path] = set()


def make_dirs(directory: Path, mode: int = 0o755) -> None:
    """Create `directory` and missing parents with exactly `mode` (the umask cannot widen
    it); existing directories are left as they are."""
    directory = Path(directory)
    missing = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(path, mode)
    if not directory.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(directory))


def is_temporary(name: str) -> bool:
    """Whether `name` is one of atomic_write's temporaries (what a sweep may remove)."""
    return _TEMPORARY.match(name) is not None


def sweep_temporaries(directory: Path) -> None:
    """Remove atomic_write's temporaries left in `directory` by a killed run (once a run)."""
    directory = Path(directory)
    if directory in _swept:
        return
    _swept.add(directory)
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if _TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def atomic_write(
    path: Path,
    data: bytes | str | Iterable[str],
    mode: int = 0o644,
    dir_mode: int = 0o755,
    durable: bool = True,
) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync, rename.

    `data` may also be text in pieces (an iterable of str), written as they come.
    `durable=False` leaves out both fsyncs: the file is still never torn, and survives the
    writer's own crash, but not the machine's (for the lab broker's state, written on every
    route change of every lab node, where the machine's crash ends the lab anyway).

    The temporary file is private (0600) until it holds the data and gets `mode`; a
    symlink at `path` is replaced, never followed.
    """
    path = Path(path)
    make_dirs(path.parent, dir_mode)
    sweep_temporaries(path.parent)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}{_TEMPORARY_PREFIX}", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(payload, bytes):
                fh.write(payload)
            else:
                _write_pieces(fh, payload)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _write_pieces(fh: BinaryIO, pieces: Iterable[str], chunk: int = 1 << 20) -> None:
    """Write text pieces as UTF-8, about `chunk` characters per write."""
    batch: list[str] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= chunk:
            fh.write("".join(batch).encode())
            batch.clear()
            size = 0
    if batch:
        fh.write("".join(batch).encode())


def _unchanged(path: Path, payload: bytes, mode: int) -> bool:
    """True when `path` is a regular file (not a symlink) with exactly this content and mode."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != mode:
            return False
        if info.st_size != len(payload):
            return False
        with open(path, "rb") as fh:
            return fh.read(len(payload) + 1) == payload
    except OSError:
        return False


def atomic_write_many(
    directory: Path,
    files: list[tuple[str, bytes, int]],
    dir_mode: int = 0o755,
    skip_unchanged: bool = True,
) -> int:
    """Write several files of one directory atomically and durably (a DurableBatch of one
    directory); returns how many were written."""
    batch = DurableBatch()
    written = batch.add(directory, files, dir_mode, skip_unchanged)
    batch.commit()
    return written


class DurableBatch:
    """Files of one or more directories, written atomically and durably together.

    Each file goes to a private temporary next to its target; `commit` makes the
    temporaries durable (one syncfs(2) per file system for a large batch, else an fsync
    each), then renames them in the order added (put a manifest last) and makes the renames
    durable (many directories: one more syncfs per file system; else an fsync each).
    A reader sees each file old or new, never torn, and no rename happens
    before its data is on disk. A file that already has its content and mode is skipped
    (`skip_unchanged`). On any error nothing more is renamed and the temporaries go.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, Path]] = []
        self.directories: list[Path] = []

    def add(
        self,
        directory: Path,
        files: list[tuple[str, bytes, int]],
        dir_mode: int = 0o755,
        skip_unchanged: bool = True,
    ) -> int:
        directory = Path(directory)
        make_dirs(directory, dir_mode)
        sweep_temporaries(directory)
        staged = 0
        try:
            for name, payload, mode in files:
                target = directory / name
                if skip_unchanged and _unchanged(target, payload, mode):
                    continue
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{name}{_TEMPORARY_PREFIX}", suffix=".tmp", dir=directory
                )
                self.pending.append((tmp, target))
                os.fchmod(fd, mode)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                staged += 1
        except BaseException:
            self.abort()
            raise
        if staged and directory not in self.directories:
            self.directories.append(directory)
        return staged

    def commit(self) -> None:
        file_systems: list[Path] | None = None  # one directory on each, if syncfs is used
        try:
            if len(self.pending) >= SYNCFS_BATCH and _load_syncfs() is not None:
                devices: dict[int, Path] = {}
                for directory in self.directories:
                    devices.setdefault(os.stat(directory).st_dev, directory)
                file_systems = list(devices.values())
                for directory in file_systems:
                    _sync_file_system(directory)
            else:
                for tmp, _ in self.pending:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            while self.pending:
                tmp, target = self.pending[0]
                os.replace(tmp, target)
                self.pending.pop(0)
        except BaseException:
            self.abort()
            raise
        if file_systems is not None and len(self.directories) >= SYNCFS_DIRECTORIES:
            # One journal commit makes every rename of the batch durable, where an fsync per
            # directory costs about a millisecond each (a node's bundle is one directory).
            for directory in file_systems:
                _sync_file_system(directory)
        else:
            for directory in self.directories:
                fsync_dir(directory)
        self.directories.clear()

    def abort(self) -> None:
        for tmp, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.pending.clear()
        self.directories.clear()


#: From this many files on, one syncfs(2) makes a batch durable instead of one fsync each.
SYNCFS_BATCH = 16
#: From this many directories on, one more syncfs makes the renames durable instead of an
#: fsync per directory (a syncfs also waits for everything else written to the file system).
SYNCFS_DIRECTORIES = 16


@functools.cache
def _load_syncfs() -> Any:
    """libc's syncfs, or None; loaded on first use (ctypes costs every command ~10 ms)."""
    if os.name != "posix":
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.syncfs
        function.argtypes = [ctypes.c_int]
        return function
    except (OSError, AttributeError):
        return None


def _sync_file_system(directory: Path) -> None:
    """Flush the file system holding `directory` (every temporary just written to it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        if _load_syncfs()(fd) != 0:
            import ctypes

            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _open_lock_file(path: Path) -> int:
    """Open (or create) a lock file without following a symlink; refuse anything but a
    regular file of ours, so a lock never truncates or writes through to another file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the lock path is a symlink
            raise OSError(
                exc.errno, "is a symbolic link; refusing to follow it", str(path)
            ) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise OSError(1, "not a regular file owned by this user; refusing to use it", str(path))
    return fd


class LockBusy(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, holder: str, lock_id: str = "") -> None:
        self.holder = holder
        self.lock_id = lock_id
        super().__init__(holder)


@contextlib.contextmanager
def exclusive_lock(path: Path, purpose: str, timeout: float = 0.0) -> Iterator[None]:
    """Hold an advisory `flock` on `path` while the block runs.

    The kernel drops it when the process ends, so a crashed run never leaves a stale lock.
    Waits up to `timeout` seconds, then raises LockBusy naming the holder (pid and purpose,
    which each holder writes into the file). Callers turn LockBusy into their layer's error.
    """
    make_dirs(path.parent, 0o700)
    fd = _open_lock_file(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    text = os.pread(fd, 400, 0).decode(errors="replace")
                    holder, lock_id = parse_lock_record(text)
                    raise LockBusy(holder, lock_id) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, lock_record(purpose).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


_HOLDER: dict[int, str] = {}  # pid -> "lock ID on HOST by USER since TIME", one per process


def lock_record(purpose: str) -> str:
    """What a holder writes into its lock file: `pid N: purpose`, then `lock ID on HOST by
    USER since TIME`. The ID is what `lotdeploy force-unlock ID` names; it is one per
    process, so a run that takes the lock again writes the same bytes."""
    pid = os.getpid()
    if pid not in _HOLDER:
        import getpass
        import socket
        import uuid
        from datetime import UTC, datetime

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.geteuid())
        since = datetime.now(UTC).isoformat(timespec="seconds")
        _HOLDER[pid] = (
            f"lock {uuid.uuid4().hex[:12]} on {socket.gethostname()} by {user} since {since}"
        )
    return f"pid {pid}: {purpose}\n{_HOLDER[pid]}\n"


def parse_lock_record(record: str) -> tuple[str, str]:
    """(holder, lock id) from a lock file's text: `pid N: purpose` and the ID ("" if none)."""
    lines = record.strip().splitlines() or [""]
    words = lines[1].split() if len(lines) > 1 else []
    lock_id = words[1] if len(words) > 1 and words[0] == "lock" else ""
    return lines[0], lock_id


class LockHeld(Exception):
    """The lock is held right now by a live process (its flock is taken): breaking it would
    let a second run work beside that one. `holder` is its record."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(holder)


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the flock on `path` now (a dead holder's flock is gone
    with it, whatever its record still says)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the flock this took, if any
    return False


def break_lock(path: Path, lock_id: str, force: bool = False) -> str:
    """Remove the lock file at `path` if its record has `lock_id`; the record removed.

    A crashed run never needs this (the kernel drops its flock). A holder that is alive
    (its flock is taken) is refused unless `force`: the next run takes a new lock file and
    would overlap with it. `force` is for a holder that hangs, or one on another host
    sharing the workspace, which no flock here can see.
    """
    try:
        record = read_regular_file(path, 4096).decode(errors="replace").strip()
    except UnreadableFile as exc:
        if exc.missing:  # no lock file: nothing holds the workspace (the caller says so)
            raise FileNotFoundError(errno.ENOENT, "no lock file", str(path)) from None
        raise LockBusy("") from None
    _, held_id = parse_lock_record(record)
    if not held_id or held_id != lock_id:
        raise ValueError(" ".join(record.split()))
    if not force and lock_is_held(path):
        raise LockHeld(" ".join(record.split()))
    os.unlink(path)
    return " ".join(record.split())


class UnreadableFile(Exception):
    """A file (or a document from elsewhere) was refused or could not be read; `reason` is
    safe to print and says what is wrong, callers put the file's name in front of it.
    `missing`: the file does not exist (some callers treat that as "none yet")."""

    def __init__(self, reason: str, missing: bool = False, malformed: bool = False) -> None:
        self.reason = reason
        self.missing = missing
        #: the file was read, its content is what is wrong (not JSON, too deep, NaN...)
        self.malformed = malformed
        super().__init__(reason)

    def about(self, what: str) -> str:
        """The reason as words about `what` ("the plan"): `cannot read the plan: Permission
        denied`, `cannot read the plan: it is a FIFO, not a regular file`, `the plan is not
        JSON (line 1, column 2: ...)`."""
        cause = self.reason.removeprefix("cannot read: ")
        if cause != self.reason:
            return f"cannot read {what}: {cause}"
        if self.reason.endswith("not a regular file"):
            return f"cannot read {what}: it {self.reason}"
        return f"{what} {self.reason}"


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`.

    A FIFO or a device named as an input would hang or never end: stat first (nothing is
    opened that is not a regular file), then open non-blocking and fstat the descriptor (the
    path may have been swapped in between). The cap is checked on what is read, not on
    st_size, which a growing file or /proc entry does not honour.
    """
    data = _read_regular(path, max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(f"is larger than {_size_text(max_bytes)}")
    return data


def read_prefix(path: Path, size: int) -> bytes:
    """At most the first `size` bytes of `path`, by read_regular_file's rules (a FIFO or a
    device is refused, never opened for reading): to tell what kind of file it is."""
    return _read_regular(path, size)


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of the regular file `path` (UnreadableFile otherwise)."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"is {_kind(mode)}, not a regular file")
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise UnreadableFile(f"is {_kind(mode)}, not a regular file")
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                chunk = os.read(fd, min(1 << 20, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UnreadableFile(
            f"cannot read: {exc.strerror or exc}", missing=exc.errno == errno.ENOENT
        ) from None
    return b"".join(chunks)


def _size_text(count: int) -> str:
    return f"{count // (1 << 20)} MiB" if count % (1 << 20) == 0 else f"{count} bytes"


#: How deep a JSON document lotdeploy reads may nest (its own documents nest < 10 levels). A
#: deeper one is refused before it is parsed: the parser would recurse, and so would every
#: later walk over it (a copy, a dump), ending in RecursionError, an internal error.
JSON_MAX_DEPTH = 64
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)
#: bytes.translate's delete table: everything but the quotes and the brackets
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")


def _too_deep(data: bytes, limit: int) -> bool:
    """True when brackets nest more than `limit` deep (strings do not count).

    In C-speed passes, whatever the size: escapes out; then everything but quotes and
    brackets; then the strings (an empty-looking `""` in that skeleton is a string without
    brackets: if no quote is left after removing those, no string held a bracket, else the
    exact split on quotes); then, braces read as brackets, one pass per level removing the
    innermost pairs. A document that is not JSON may be called deep; it is refused anyway.
    """
    if b"\\" in data:
        data = _JSON_ESCAPE.sub(b"", data)
    skeleton = data.translate(None, _NOT_STRUCTURE)
    if b'"' in skeleton:
        brackets = skeleton.replace(b'""', b"")
        if b'"' in brackets:  # some string holds a bracket: pair the quotes exactly
            brackets = b"".join(skeleton.split(b'"')[0::2])
        skeleton = brackets
    skeleton = skeleton.translate(_BRACES_AS_BRACKETS)  # the same depth; a mismatch is not JSON
    for _ in range(limit):
        if not skeleton:
            return False
        shorter = skeleton.replace(b"[]", b"")  # the innermost pairs: exactly one level
        if len(shorter) == len(skeleton):  # unbalanced: not JSON; json.loads says where,
            return len(skeleton) > limit  # unless that many brackets would make it recurse
        skeleton = shorter
    return bool(skeleton)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


def parse_json(data: bytes | str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """A JSON document as Python values, or UnreadableFile saying why it is refused.

    Strict where Python's json is lenient: NaN, Infinity and numbers that overflow to them
    are refused (they are not JSON, and a NaN compares unequal to itself); nesting beyond
    `max_depth` is refused before parsing (no RecursionError); bytes must be UTF-8.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _too_deep(raw, max_depth):
        raise UnreadableFile(f"nests deeper than {max_depth} levels", malformed=True)
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"is not valid UTF-8 (byte {exc.start})", malformed=True) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise UnreadableFile(
            f"is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", malformed=True
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN, 1e999, an int of 5,000 digits
        why = str(exc).split(":")[0][:120]
        raise UnreadableFile(f"is not valid JSON ({why})", malformed=True) from None


def read_json(path: Path, max_bytes: int, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """The JSON document in `path`: `read_regular_file`'s rules (regular files only, opened
    without blocking, at most `max_bytes`) and `parse_json`'s. Any problem is one
    UnreadableFile whose reason the caller prints after the file's name."""
    return parse_json(read_regular_file(path, max_bytes), max_depth)


# -- output files a user names ----------------------------------------------------------------

#: How long writing into a FIFO waits for its reader before giving up.
FIFO_WAIT = 10.0


def _refused(path: Path, code: int, why: str) -> OSError:
    return OSError(code, why, str(path))


def _may_follow(path: Path, link: os.stat_result) -> bool:
    """The kernel's fs.protected_symlinks rule, applied before lotdeploy resolves a link
    itself: a link in a sticky world-writable directory (/tmp) is followed only when it is
    ours or its directory's owner's (else a stranger's link could aim our write anywhere)."""
    try:
        parent = os.stat(path.parent)
    except OSError:
        return False
    sticky_shared = parent.st_mode & stat.S_ISVTX and parent.st_mode & stat.S_IWOTH
    return not sticky_shared or link.st_uid in (os.geteuid(), parent.st_uid)


def _standard_stream(info: os.stat_result) -> int | None:
    """1 or 2 when `info` is the file our stdout or stderr already writes to (/dev/stdout,
    /proc/self/fd/1, or the very file stdout is redirected to): written through that
    descriptor, so nothing opens it a second time at another offset."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            other = os.fstat(fd)
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return fd
    return None


def _write_fd(fd: int, payload: bytes | Iterable[str]) -> None:
    pieces = [payload] if isinstance(payload, bytes) else (p.encode() for p in payload)
    for piece in pieces:
        view = memoryview(piece)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _write_in_place(path: Path, payload: bytes | Iterable[str], fifo: bool) -> None:
    """A device or a FIFO: opened for writing as it is (never replaced, never truncated
    beyond what opening does); a FIFO waits at most FIFO_WAIT seconds for a reader."""
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
    deadline = time.monotonic() + FIFO_WAIT
    while True:
        try:
            fd = os.open(path, flags)
            break
        except OSError as exc:
            if not (fifo and exc.errno == errno.ENXIO):  # ENXIO: a FIFO with no reader yet
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            if time.monotonic() >= deadline:
                raise _refused(
                    path, errno.ENXIO, f"is a FIFO no one reads (waited {FIFO_WAIT:g} s)"
                ) from None
            time.sleep(0.05)
    try:
        info = os.fstat(fd)
        if not (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
            raise _refused(path, errno.EINVAL, "changed while it was being opened")
        os.set_blocking(fd, True)
        _write_fd(fd, payload)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


def write_output(path: Path, data: bytes | str | Iterable[str], mode: int = 0o644) -> None:
    """Write a file the user named (`--out`, `--report`, `--prometheus`...), never destroying
    what is there in a way they did not ask for:

    - nothing there: created atomically with `mode` (missing parent directories 0755);
    - a regular file: replaced atomically (readers see the old or the new content);
    - a character device (/dev/null, a terminal) or a FIFO: written in place, never
      replaced by a regular file; a FIFO waits at most FIFO_WAIT seconds for a reader;
    - a symbolic link: never replaced. What it points to is written by these same rules,
      as a shell's `>` would (a regular file atomically, in its own directory); a link to
      nothing is refused, and so is a stranger's link in a sticky shared directory (/tmp);
    - /dev/stdout and the like (the file our stdout or stderr writes to): through that
      descriptor;
    - a directory, a socket, a block device: refused.

    Errors are OSError carrying the path; nothing is left half-written.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        atomic_write(path, payload, mode)
        return
    if stat.S_ISLNK(link.st_mode):
        if not _may_follow(path, link):
            raise _refused(
                path,
                errno.EPERM,
                "is another user's symbolic link in a shared directory; refusing to follow it",
            )
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise _refused(
                path, errno.ENOENT, "is a symbolic link to nothing; refusing to create its target"
            ) from None
    else:
        info = link
    kind = info.st_mode
    stream = _standard_stream(info) if not stat.S_ISDIR(kind) else None
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):
            import sys

            (sys.stdout if stream == 1 else sys.stderr).flush()
        _write_fd(stream, payload)
    elif stat.S_ISREG(kind):
        target = Path(os.path.realpath(path)) if stat.S_ISLNK(link.st_mode) else path
        atomic_write(target, payload, mode)
    elif stat.S_ISCHR(kind) or stat.S_ISFIFO(kind):
        _write_in_place(path, payload, fifo=stat.S_ISFIFO(kind))
    else:
        why = "a directory" if stat.S_ISDIR(kind) else _kind(kind)
        raise _refused(path, errno.EISDIR if stat.S_ISDIR(kind) else errno.EINVAL, f"is {why}")


# -- markers: what a destructive command may remove ----------------------------------------------

MARKER_FORMAT = "lotdeploy-marker/1"
#: A marker lists files, so it may be long; no more than this.
MARKER_MAX_BYTES = 16 * 1024 * 1024


def write_marker(path: Path, kind: str, **fields: Any) -> None:
    """Record that lotdeploy made what `path`'s directory holds (`kind`: "lab",
    "export-ansible"...); `fields` say what exactly (files written, an id)."""
    doc = {"format": MARKER_FORMAT, "kind": kind, **fields}
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n", 0o644)


def read_marker(path: Path, kind: str) -> dict[str, Any] | None:
    """The marker at `path` if it is lotdeploy's marker of `kind`; None when there is none.
    Anything else there (not ours, another kind, unreadable) is UnreadableFile: a command
    must then refuse to remove anything."""
    try:
        doc = read_json(path, MARKER_MAX_BYTES)
    except UnreadableFile as exc:
        if exc.missing:
            return None
        raise
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT:
        raise UnreadableFile("is not a lotdeploy marker")
    if doc.get("kind") != kind:
        raise UnreadableFile(f"marks a {doc.get('kind')!s:.40} directory, not a {kind} one")
    return doc
