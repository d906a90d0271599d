"""Child processes that stop with lotdeploy: `guarded(argv)` runs a program under this guard.

lotdeploy starts long-lived children: OpenSSH control masters (the OpenSSH transport) and
`ansible-playbook` (the Ansible transport, through ansible-runner, which puts it in a
session of its own). Killed or interrupted, lotdeploy must not leave them deploying
without its lock. A process cannot make its children die with it by itself: SIGKILL
cannot be caught, and the kernel's parent-death signal follows the *thread* that started
the child (apply starts them from worker threads that end early).

So each such child runs under this small program (stdlib only, started as
`python -I -S guard.py PID -- PROGRAM ARGS...`): it starts PROGRAM in a process group of
its own, with a parent-death signal on it (the guard is single-threaded: PROGRAM dies with
the guard, even by SIGKILL), forwards SIGTERM/SIGINT/SIGHUP to that group, and watches
lotdeploy (PID): once lotdeploy is gone (reparented), it terminates the group (SIGTERM,
then SIGKILL after a grace period), closes the SSH control masters of
$LOTDEPLOY_GUARD_SSH_CONTROL_DIR (Ansible's, which daemonise), and exits. It exits with
PROGRAM's status otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

#: How often the guard looks whether lotdeploy is still there (seconds).
POLL = 0.2
#: How long the group gets to stop after SIGTERM before SIGKILL.
GRACE = 5.0
#: Names a directory of OpenSSH control sockets to close when lotdeploy is gone.
CONTROL_DIR_ENV = "LOTDEPLOY_GUARD_SSH_CONTROL_DIR"
_PR_SET_PDEATHSIG = 1


def guarded(argv: list[str]) -> list[str]:
    """`argv` run under the guard, watching this process."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), "--", *argv]


def shim(directory: str, program: str, real: str) -> str:
    """Write `directory/program`: a shell script that runs `real` under the guard (for a
    child started by a library that looks its program up in PATH, as ansible-runner does).
    Its path."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, program)
    words = " ".join(_sh(word) for word in guarded([real]))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as fh:
        fh.write(f'#!/bin/sh\nexec {words} "$@"\n')
    return path


def _sh(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _die_with_guard() -> None:
    """In the child, before exec: SIGTERM when the guard dies; a process group of its own."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    os.setpgid(0, 0)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Terminate the child's process group: SIGTERM, then SIGKILL after GRACE."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            child.poll()  # reap it: a zombie still counts as a member of its group
            try:
                os.killpg(child.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _close_control_masters() -> None:
    directory = os.environ.get(CONTROL_DIR_ENV, "")
    if not directory or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        try:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={path}", "-O", "exit", "lotdeploy"],
                capture_output=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: guard.py PARENT_PID -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    parent = int(args[0])
    try:
        child = subprocess.Popen(args[2:], preexec_fn=_die_with_guard)
    except OSError as exc:
        print(f"cannot run {args[2]}: {exc.strerror}", file=sys.stderr)
        return 127

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            status = child.wait(POLL)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:  # lotdeploy is gone: so is what it started
                _stop(child)
                _close_control_masters()
                child.wait()
                return 143
            continue
        _stop(child)  # whatever PROGRAM left in its group
        return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
