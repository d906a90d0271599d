"""Atomic file writes (a reader sees the old file or the new one, never a torn one), locks,
and the one safe way to read a file a user names."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LockBusy(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(holder)


@contextlib.contextmanager
def exclusive_lock(path: Path, purpose: str, timeout: float = 0.0) -> Iterator[None]:
    """Hold an advisory `flock` on `path` while the block runs.

    The kernel drops it when the process ends, so a crashed run never leaves a stale lock.
    Waits up to `timeout` seconds, then raises LockBusy naming the holder (pid and purpose,
    which each holder writes into the file). Callers turn LockBusy into their layer's error.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(os.pread(fd, 200, 0).decode(errors="replace").strip()) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class UnreadableFile(Exception):
    """A user-named file was refused or could not be read; `reason` is safe to print."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


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
            while size <= max_bytes:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UnreadableFile(f"cannot read: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise UnreadableFile(f"is larger than {_size_text(max_bytes)}")
    return b"".join(chunks)


def _size_text(count: int) -> str:
    return f"{count // (1 << 20)} MiB" if count % (1 << 20) == 0 else f"{count} bytes"
